"""TOOD: Task-aligned One-stage Object Detection (Feng et al., ICCV 2021, arXiv 2108.07755).

Two parts, both here, following mmdetection's ``TOODHead`` (official code: fcjian/TOOD):

**T-Head.** ``stacked_convs`` conv-GN-ReLU layers are shared by both tasks; their outputs
``X_1..X_N`` are the *task-interactive* features. Each task then takes its own mixture of
them (*task decomposition*, :class:`TaskDecomposition`): a layer attention
``w = sigmoid(fc2(relu(fc1(GAP(cat_k X_k)))))`` in R^N scales each ``X_k`` before a 1x1
reduction. The two predictions are then *aligned*:

* classification: ``P = sqrt(sigmoid(cls(Y_cls)) * sigmoid(M))``, with ``M`` a spatial
  probability map computed from ``cat_k X_k``;
* boxes: each of the four sides is read at its own learned offset,
  ``B_align(i, j, c) = B(i + O_{2c}, j + O_{2c+1}, c)`` (bilinear), with ``O`` computed from
  ``cat_k X_k``. mmdetection does this with a 1x1 deformable conv whose weights are all ones
  and whose groups are the 4 channels; we call :func:`torchvision.ops.deform_conv2d` the
  same way (its offsets are (dy, dx) pairs, one pair per group).

**Task Alignment Learning (TAL).** Assignment by :func:`kit.det.assigners.task_aligned_assign`
(``t = s * u^6``, top 13 over all levels), then a normalised target
``t_hat = t / max(t) * max(u)`` per object, used as the soft label of a quality focal loss
and as the weight of the GIoU loss. For the first part of training (mmdetection:
``initial_epoch = 4`` of 12) the predictions are too poor to rank priors, so TOOD warms up
with ATSS assignment, a focal loss on probabilities and centre-ness-weighted GIoU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from kit.det.assigners import task_aligned_assign
from kit.det.atss import ANCHOR_SCALE, BOX_WEIGHT, TOPK, atss_targets, conv_gn_relu, prior_bias
from kit.det.boxes import centerness_target, distance2bbox, paired_iou
from kit.det.detector import DenseHead, DenseOutput, Scale, gather_targets, pad_targets
from kit.det.losses import focal_loss_prob, giou_loss, one_hot, quality_focal_loss_prob
from kit.det.validation import check_gt, check_probs
from kit.ops.deform_conv import check_finite_offsets


class TaskDecomposition(nn.Module):
    """Layer attention over the stacked features, then a 1x1 reduction to one task's features.

    in: feat (B, N*F, H, W) = cat_k X_k; out: (B, F, H, W). The attention ``w`` (B, N) scales
    the 1x1 weights instead of the features (a bmm), which is the same product with less
    memory: ``conv1x1(cat_k w_k X_k) == (W * w) @ cat_k X_k``.
    """

    def __init__(self, feat_channels: int, stacked_convs: int, la_down_rate: int = 8):
        super().__init__()
        self.feat_channels, self.stacked_convs = feat_channels, stacked_convs
        in_channels = feat_channels * stacked_convs
        self.layer_attention = nn.Sequential(
            nn.Conv2d(in_channels, in_channels // la_down_rate, 1), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels // la_down_rate, stacked_convs, 1), nn.Sigmoid())
        self.reduction_conv = nn.Conv2d(in_channels, feat_channels, 1, bias=False)
        self.norm = nn.GroupNorm(max(1, feat_channels // 8), feat_channels)
        for module in self.layer_attention:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.001)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.reduction_conv.weight, std=0.01)

    def attention(self, avg_feat: torch.Tensor) -> torch.Tensor:
        """Layer attention (B, N) from the pooled stacked features (B, N*F, 1, 1)."""
        return self.layer_attention(avg_feat).flatten(1)

    def forward(self, feat: torch.Tensor, avg_feat: torch.Tensor | None = None) -> torch.Tensor:
        """One task's features (B, F, H, W) from the stacked ones (B, N*F, H, W), pooled ``avg_feat`` optional."""
        b, _, h, w = feat.shape
        n, f = self.stacked_convs, self.feat_channels
        if avg_feat is None:
            avg_feat = F.adaptive_avg_pool2d(feat, 1)
        weight = self.attention(avg_feat)  # (B, N)
        # (B, F_out, N, F_in): the 1x1 weights of the block of X_k scaled by w_k.
        conv_weight = weight.view(b, 1, n, 1) * self.reduction_conv.weight.view(1, f, n, f)
        out = torch.bmm(conv_weight.reshape(b, f, n * f), feat.reshape(b, n * f, h * w))
        return torch.relu(self.norm(out.view(b, f, h, w)))  # (B, F, H, W)


def align_boxes(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Read each box side at its own offset: B_align(i, j, c) = B(i + O_2c, j + O_2c+1, c).

    boxes: (B, 4, H, W); offsets: (B, 8, H, W) as (dy, dx) per side. Bilinear, zero outside.
    A 1x1 deformable conv with unit weights and one group per channel is exactly this.
    Non-finite offsets (a diverging run) raise FloatingPointError before the kernel is called:
    torchvision's CPU kernel crashes the process on NaN offsets.
    """
    if boxes.dim() != 4 or offsets.dim() != 4 or boxes.shape[1] != 4 or offsets.shape[1] != 8 \
            or boxes.shape[0] != offsets.shape[0] or boxes.shape[-2:] != offsets.shape[-2:]:
        raise ValueError(f"need boxes (B, 4, H, W) and offsets (B, 8, H, W); got {tuple(boxes.shape)}, {tuple(offsets.shape)}")
    check_finite_offsets(offsets, "TOOD's box offsets")
    weight = boxes.new_ones(4, 1, 1, 1)  # out 4 channels, 1 input channel per group -> groups = 4
    return deform_conv2d(boxes.contiguous(), offsets.to(boxes.dtype).contiguous(), weight)


class TOODHead(DenseHead):
    """The T-Head: shared interactive convs, task decomposition, aligned predictions.

    Its loss is :func:`tood_loss` with the head's TAL settings (``topk``, ``alpha``, ``beta``)
    and the warm-up's ATSS settings (``anchor_scale``, ``atss_topk``).
    """

    def __init__(self, num_classes: int, in_channels: int = 64, feat_channels: int = 64,
                 stacked_convs: int = 3, num_levels: int = 3, align_cls: bool = True, align_box: bool = True,
                 topk: int = 13, alpha: float = 1.0, beta: float = 6.0, anchor_scale: float = ANCHOR_SCALE,
                 atss_topk: int = TOPK, box_weight: float = BOX_WEIGHT):
        super().__init__(num_classes, in_channels)
        self.stacked_convs = stacked_convs
        self.align_cls, self.align_box = align_cls, align_box  # switches for ablations
        self.topk, self.alpha, self.beta = topk, alpha, beta  # TAL
        self.anchor_scale, self.atss_topk, self.box_weight = anchor_scale, atss_topk, box_weight
        self.inter_convs = nn.ModuleList(conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels)
                                         for i in range(stacked_convs))
        stacked = feat_channels * stacked_convs
        self.cls_decomp = TaskDecomposition(feat_channels, stacked_convs, stacked_convs * 8)
        self.reg_decomp = TaskDecomposition(feat_channels, stacked_convs, stacked_convs * 8)
        self.tood_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.tood_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.cls_prob_module = nn.Sequential(  # the spatial probability map M
            nn.Conv2d(stacked, feat_channels // 4, 1), nn.ReLU(inplace=True),
            nn.Conv2d(feat_channels // 4, 1, 3, padding=1))
        self.reg_offset_module = nn.Sequential(  # the per-side offsets O
            nn.Conv2d(stacked, feat_channels // 4, 1), nn.ReLU(inplace=True),
            nn.Conv2d(feat_channels // 4, 8, 3, padding=1))
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self._init_weights()

    def _init_weights(self):
        for conv in [block[0] for block in self.inter_convs] + [self.tood_cls, self.tood_reg]:
            nn.init.normal_(conv.weight, std=0.01)
        for module, std in [(self.cls_prob_module, 0.01), (self.reg_offset_module, 0.001)]:
            for conv in module:
                if isinstance(conv, nn.Conv2d):
                    nn.init.normal_(conv.weight, std=std)
                    nn.init.zeros_(conv.bias)
        nn.init.constant_(self.tood_cls.bias, prior_bias(0.01))
        nn.init.zeros_(self.tood_reg.bias)
        nn.init.constant_(self.cls_prob_module[-1].bias, prior_bias(0.01))

    def forward(self, features, level_points, strides, with_maps: bool = False) -> dict:
        """Per level: ``cls_probs`` (B, C, H, W), the aligned probabilities, and ``boxes``
        (B, 4, H, W), the aligned xyxy boxes in stride units. With ``with_maps``, also the figure
        maps ``offsets`` O (B, 8, H, W) as (dy, dx) per side in cells, ``prob_map`` M (B, 1, H, W),
        ``unaligned_boxes`` (B, 4, H, W) and the layer attentions ``attention_cls`` /
        ``attention_reg`` (B, N)."""
        names = ("cls_probs", "boxes") + (("offsets", "prob_map", "unaligned_boxes", "attention_cls",
                                           "attention_reg") if with_maps else ())
        out = {name: [] for name in names}
        for x, points, stride, scale in zip(features, level_points, strides, self.scales):
            b, _, h, w = x.shape
            inter = []
            for conv in self.inter_convs:  # task-interactive features X_1..X_N
                x = conv(x)
                inter.append(x)
            feat = torch.cat(inter, 1)  # (B, N*F, H, W)
            avg_feat = F.adaptive_avg_pool2d(feat, 1)
            cls_feat = self.cls_decomp(feat, avg_feat)  # (B, F, H, W)
            reg_feat = self.reg_decomp(feat, avg_feat)

            # Aligned classification: geometric mean of the class score and the map M.
            prob_map = self.cls_prob_module(feat).sigmoid()  # (B, 1, H, W)
            cls_probs = self.tood_cls(cls_feat).sigmoid()  # (B, C, H, W)
            if self.align_cls:
                cls_probs = (cls_probs * prob_map).sqrt()

            # Boxes in stride units at this level's points, then each side resampled.
            distances = scale(self.tood_reg(reg_feat).exp()).float()  # (B, 4, H, W) ltrb
            grid = (points / stride).T.reshape(1, 2, h, w)  # (1, 2, H, W) xy
            boxes = distance2bbox(grid.permute(0, 2, 3, 1), distances.permute(0, 2, 3, 1))
            boxes = boxes.permute(0, 3, 1, 2).contiguous()  # (B, 4, H, W) xyxy
            offsets = self.reg_offset_module(feat)  # (B, 8, H, W)
            out["cls_probs"].append(cls_probs)
            out["boxes"].append(align_boxes(boxes, offsets) if self.align_box else boxes)
            if with_maps:
                out["offsets"].append(offsets)
                out["prob_map"].append(prob_map)
                out["unaligned_boxes"].append(boxes)
                out["attention_cls"].append(self.cls_decomp.attention(avg_feat))  # (B, N)
                out["attention_reg"].append(self.reg_decomp.attention(avg_feat))
        return out

    def loss(self, out: DenseOutput, gt_boxes: list, gt_labels: list, warmup: bool = False) -> dict:
        """:func:`tood_loss` with this head's settings: the ATSS warm-up while ``warmup``, TAL after."""
        return tood_loss(out, gt_boxes, gt_labels, warmup, topk=self.topk, alpha=self.alpha, beta=self.beta,
                         anchor_scale=self.anchor_scale, atss_topk=self.atss_topk, box_weight=self.box_weight)


def normalized_alignment(assigned: torch.Tensor, alignment: torch.Tensor, ious: torch.Tensor,
                         num_objects: int) -> torch.Tensor:
    """TOOD's soft target ``t_hat = t / max(t) * max(u)``, maxima over each object's positives.

    assigned: (B, N) object index (-1 negative); alignment: (B, N) metric ``t``; ious: (B, N)
    IoU of each prior's predicted box with its object. Returns (B, N), 0 for negatives.
    """
    batch, prior = torch.nonzero(assigned >= 0, as_tuple=True)
    group = batch * num_objects + assigned[batch, prior]  # one id per (image, object)
    size = assigned.shape[0] * num_objects
    t, u = alignment[batch, prior], ious[batch, prior]
    max_t = torch.zeros(size, device=t.device, dtype=t.dtype).scatter_reduce(0, group, t, "amax")
    max_u = torch.zeros(size, device=u.device, dtype=u.dtype).scatter_reduce(0, group, u, "amax")
    target = torch.zeros_like(alignment)
    target[batch, prior] = t / (max_t[group] + 1e-7) * max_u[group]  # 1e-7: mmdetection's 10e-8
    return target


def tal_targets(out: DenseOutput, gt_boxes: list, gt_labels: list, topk: int = 13,
                alpha: float = 1.0, beta: float = 6.0):
    """TAL for a batch: assigned (B, N), metric t (B, N), both from the detached predictions.

    The ground truth is validated (:func:`kit.det.validation.check_gt`), one list per image.
    """
    check_gt(gt_boxes, gt_labels, out.cls_probs.shape[0], out.cls_probs.shape[-1], like=out.boxes)
    return _tal_assignment(out, gt_boxes, gt_labels, topk, alpha, beta)


def _tal_assignment(out: DenseOutput, gt_boxes: list, gt_labels: list, topk: int, alpha: float, beta: float):
    """:func:`tal_targets` on ground truth the caller has validated already."""
    check_probs(out.cls_probs, "out.cls_probs")  # once for the batch, not per image
    results = [task_aligned_assign(out.cls_probs[b].detach().float(), out.boxes[b].detach().float(),
                                   out.priors.points, gt_boxes[b], gt_labels[b], topk, alpha, beta, validate=False)
               for b in range(len(gt_boxes))]
    return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])


def tood_loss(out: DenseOutput, gt_boxes: list, gt_labels: list, warmup: bool, topk: int = 13,
              alpha: float = 1.0, beta: float = 6.0, anchor_scale: float = ANCHOR_SCALE, atss_topk: int = TOPK,
              box_weight: float = BOX_WEIGHT) -> dict:
    """TOOD's loss for a batch: the ATSS warm-up while ``warmup``, Task Alignment Learning after.

    gt_boxes / gt_labels: one (M_i, 4) / (M_i,) tensor per image, validated first
    (:func:`kit.det.validation.check_gt`: finite xyxy boxes of ``out.boxes``' dtype, labels
    in ``[0, C)``, as many lists as images).
    """
    check_gt(gt_boxes, gt_labels, out.cls_probs.shape[0], out.cls_probs.shape[-1], like=out.boxes)
    padded_boxes, padded_labels = pad_targets(gt_boxes, gt_labels)
    if warmup:
        assigned = atss_targets(out, gt_boxes, anchor_scale, atss_topk, validate=False).gt_index
    else:
        assigned, alignment = _tal_assignment(out, gt_boxes, gt_labels, topk, alpha, beta)
    matched_boxes, labels = gather_targets(assigned, padded_boxes, padded_labels)  # (B, N, 4), (B, N)
    batch, prior = torch.nonzero(labels >= 0, as_tuple=True)  # the P positives
    pred, target = out.boxes[batch, prior], matched_boxes[batch, prior]  # (P, 4)
    probs = out.cls_probs.flatten(0, 1)  # (B*N, C)

    if warmup:
        num_pos = max(1.0, float(batch.numel()))
        loss_cls = focal_loss_prob(probs, one_hot(labels.flatten(), probs.shape[-1])).sum() / num_pos
        weight = centerness_target(out.priors.points[prior], target)  # (P,)
    else:
        ious = torch.zeros_like(alignment)
        ious[batch, prior] = paired_iou(pred.detach().float(), target)
        t_hat = normalized_alignment(assigned, alignment, ious, padded_boxes.shape[1])  # (B, N)
        loss_cls = quality_focal_loss_prob(probs, labels.flatten(), t_hat.flatten()).sum() \
            / t_hat.sum().clamp(min=1.0)
        weight = t_hat[batch, prior]
    loss_box = box_weight * (giou_loss(pred, target) * weight).sum() / weight.sum().clamp(min=1.0)
    return {"cls": loss_cls, "box": loss_box}
