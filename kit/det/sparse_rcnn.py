"""Sparse R-CNN (Sun et al., CVPR 2021, arXiv 2011.12450): a few learned boxes refined in a cascade.

No anchors, no dense candidates, no NMS. The detector owns ``N`` learnable **proposal boxes**
(normalised ``(cx, cy, w, h)``, one set for every image) and as many **proposal features**
(``N x d``). ``T`` dynamic-head stages refine them; stage ``t``:

1. RoIAlign ``7 x 7`` of every box on the FPN level its size picks (``roi (B N, 49, d)``;
   :class:`kit.ops.roi_align.MultiLevelRoIAlign`, torchvision's ``MultiScaleRoIAlign`` with a
   faster CPU backward);
2. self-attention among the ``N`` proposal features of one image;
3. **DynamicConv**: the proposal feature generates two ``1 x 1`` layers (``d -> d_dyn -> d``)
   that are applied to its own RoI feature (instance interaction), then a linear layer;
4. an FFN; then a classification branch (focal, ``K`` sigmoids) and a regression branch whose
   deltas move the stage's boxes. The next stage starts from these boxes, **detached**, and
   from the updated proposal features.

Every stage has its own set loss (deep supervision) with its own matching: Hungarian, cost
``2 focal + 5 L1 + 2 (-GIoU)`` (:func:`kit.det.hungarian.match_cost`, focal mode), one query per
object. :func:`sparse_rcnn_loss` takes the matching as a parameter (an *assigner*), so that
Dynamic Sparse R-CNN (:mod:`kit.det.dynamic_sparse_rcnn`) can swap in optimal transport.

Choices taken from the official code (``PeizeSun/SparseR-CNN``, ``projects/SparseRCNN/sparsercnn/``
``head.py`` ``RCNNHead`` / ``DynamicConv`` / ``DynamicHead``, ``detector.py`` and ``loss.py``, read):
post-norm residual blocks (attention, DynamicConv, FFN) each followed by LayerNorm; DynamicConv
with LayerNorm + ReLU after each dynamic layer and after its output layer; 1 classification and
3 regression ``Linear (no bias) -> LayerNorm -> ReLU`` layers; deltas ``(dx, dy, dw, dh)`` with
weights ``(2, 2, 1, 1)`` and ``dw, dh`` clamped at ``log(1e5 / 16)``; initial boxes the whole image
(``cx = cy = 0.5, w = h = 1``); xavier init in the heads and a 0.01 prior on the class bias.
Deviations, for the kit's scale: hidden ``d`` 64 (orig. 256), dynamic dim 16 (orig. 64), FFN
``4 d`` (orig. 2048), no dropout (orig. 0.0 too in the config), T 3 stages (orig. 6); the RoI
level rule uses ``canonical_scale = image_size / 2`` (orig. 224 on 800 px images, which would
put every box of a 128 px image on P2); the L1 term of cost and loss is on normalised
``(cx, cy, w, h)`` as in :mod:`kit.det.hungarian` (orig. normalised ``xyxy``); losses are
normalised by the number of positives (= objects under Hungarian matching).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_convert, generalized_box_iou, sigmoid_focal_loss

from kit.det.hungarian import hungarian_match
from kit.det.set_detector import SetDetector, postprocess_set
from kit.det.validation import check_shape
from kit.nn.backbone import TinyResNet
from kit.nn.fpn import FPN
from kit.ops.roi_align import MultiLevelRoIAlign
from kit.runtime import evaluating

__all__ = ["DynamicConv", "DynamicStage", "StaticProposals", "SparseRCNN", "apply_deltas", "stage_loss",
           "hungarian_assigner", "sparse_rcnn_loss"]

SCALE_CLAMP = math.log(100000.0 / 16)  # the official cap on dw, dh before exp
DELTA_WEIGHTS = (2.0, 2.0, 1.0, 1.0)
LOSS_WEIGHTS = (2.0, 5.0, 2.0)  # focal, L1, GIoU: the same in matching cost and loss


def apply_deltas(deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (R, 4) xyxy moved by deltas (R, 4) ``(dx, dy, dw, dh)`` (Fast R-CNN coding, weights 2, 2, 1, 1)."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    dx, dy, dw, dh = (deltas / deltas.new_tensor(DELTA_WEIGHTS)).unbind(-1)
    dw, dh = dw.clamp(max=SCALE_CLAMP), dh.clamp(max=SCALE_CLAMP)
    new_cx, new_cy = cx + dx * widths, cy + dy * heights
    new_w, new_h = widths * dw.exp(), heights * dh.exp()
    return torch.stack([new_cx - new_w / 2, new_cy - new_h / 2, new_cx + new_w / 2, new_cy + new_h / 2], dim=-1)


def _linear_norm_relu(dim: int, count: int) -> nn.Sequential:
    return nn.Sequential(*[layer for _ in range(count)
                           for layer in (nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU())])


class DynamicConv(nn.Module):
    """Instance interaction: each proposal feature (R, d) writes two 1x1 layers for its own RoI (R, S, d)."""

    def __init__(self, hidden_dim: int, dynamic_dim: int, pool_size: int):
        super().__init__()
        self.hidden_dim, self.dynamic_dim = hidden_dim, dynamic_dim
        self.num_params = hidden_dim * dynamic_dim
        self.dynamic_layer = nn.Linear(hidden_dim, 2 * self.num_params)
        self.norm1, self.norm2 = nn.LayerNorm(dynamic_dim), nn.LayerNorm(hidden_dim)
        self.out_layer = nn.Linear(hidden_dim * pool_size ** 2, hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)

    def forward(self, proposal_features: torch.Tensor, roi_features: torch.Tensor) -> torch.Tensor:
        params = self.dynamic_layer(proposal_features)  # (R, 2 d d_dyn)
        first = params[:, :self.num_params].view(-1, self.hidden_dim, self.dynamic_dim)  # (R, d, d_dyn)
        second = params[:, self.num_params:].view(-1, self.dynamic_dim, self.hidden_dim)  # (R, d_dyn, d)
        x = F.relu(self.norm1(torch.bmm(roi_features, first)))  # (R, S, d_dyn)
        x = F.relu(self.norm2(torch.bmm(x, second)))  # (R, S, d)
        return F.relu(self.norm3(self.out_layer(x.flatten(1))))  # (R, d)


class DynamicStage(nn.Module):
    """One cascade stage (official ``RCNNHead``): attention -> DynamicConv -> FFN -> class + box."""

    def __init__(self, num_classes: int, hidden_dim: int, dynamic_dim: int, num_heads: int, ffn_dim: int,
                 pool_size: int = 7, num_cls_layers: int = 1, num_reg_layers: int = 3):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.interact = DynamicConv(hidden_dim, dynamic_dim, pool_size)
        self.ffn = nn.Sequential(nn.Linear(hidden_dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, hidden_dim))
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(hidden_dim) for _ in range(3))
        self.cls_layers = _linear_norm_relu(hidden_dim, num_cls_layers)
        self.reg_layers = _linear_norm_relu(hidden_dim, num_reg_layers)
        self.class_logits = nn.Linear(hidden_dim, num_classes)
        self.box_deltas = nn.Linear(hidden_dim, 4)

    def forward(self, roi_features: torch.Tensor, boxes: torch.Tensor, features: torch.Tensor):
        """roi (B N, S, d), boxes (B, N, 4) xyxy px, features (B, N, d) -> logits (B, N, K), boxes, features."""
        b, n, d = features.shape
        features = self.norm1(features + self.self_attn(features, features, features, need_weights=False)[0])
        flat = features.reshape(b * n, d)
        flat = self.norm2(flat + self.interact(flat, roi_features))  # (B N, d)
        flat = self.norm3(flat + self.ffn(flat))
        logits = self.class_logits(self.cls_layers(flat))  # (B N, K)
        new_boxes = apply_deltas(self.box_deltas(self.reg_layers(flat)), boxes.reshape(b * n, 4))
        return logits.view(b, n, -1), new_boxes.view(b, n, 4), flat.view(b, n, d)


class StaticProposals(nn.Module):
    """Sparse R-CNN's proposals: the same N learned boxes (whole image at init) and features for every image."""

    def __init__(self, num_proposals: int, hidden_dim: int):
        super().__init__()
        self.boxes = nn.Embedding(num_proposals, 4)  # normalised (cx, cy, w, h)
        nn.init.constant_(self.boxes.weight[:, :2], 0.5)
        nn.init.constant_(self.boxes.weight[:, 2:], 1.0)
        self.features = nn.Embedding(num_proposals, hidden_dim)

    def forward(self, levels: list[torch.Tensor]):
        """-> boxes (B, N, 4) normalised cxcywh, features (B, N, d), expert weights None."""
        b = levels[0].shape[0]
        return (self.boxes.weight[None].expand(b, -1, -1), self.features.weight[None].expand(b, -1, -1), None)


class SparseRCNN(SetDetector):
    """Tiny ResNet C2..C5 -> FPN P2..P5 -> proposals -> T dynamic stages.

    forward(images (B, 3, H, W)) -> ``{"logits": (B, N, K), "boxes": (B, N, 4) normalised cxcywh``
    (last stage), ``"stages": [{"logits", "boxes"}] * T, "proposals": (B, N, 4) normalised cxcywh,
    "expert_weights": (B, M) or None}``. ``proposals`` replaces the static proposals (DPG).
    """

    class_mode = "focal"

    def __init__(self, num_classes: int, num_proposals: int = 32, num_stages: int = 3, hidden_dim: int = 64,
                 dynamic_dim: int = 16, num_heads: int = 4, ffn_dim: int | None = None, image_size: int = 128,
                 widths=(16, 32, 64, 128), pool_size: int = 7, sampling_ratio: int = 2,
                 proposals: nn.Module | None = None):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("num_proposals", num_proposals),
                            ("num_stages", num_stages), ("hidden_dim", hidden_dim), ("dynamic_dim", dynamic_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        self.num_classes, self.num_proposals, self.hidden_dim = num_classes, num_proposals, hidden_dim
        self.backbone = TinyResNet(widths, num_outputs=4)  # C2..C5, strides 4..32
        self.fpn = FPN(self.backbone.out_channels, hidden_dim)
        self.pooler = MultiLevelRoIAlign([4, 8, 16, 32], pool_size, sampling_ratio=sampling_ratio,
                                         canonical_scale=max(1, image_size // 2), canonical_level=4)
        self.proposals = proposals if proposals is not None else StaticProposals(num_proposals, hidden_dim)
        self.stages = nn.ModuleList(DynamicStage(num_classes, hidden_dim, dynamic_dim, num_heads,
                                                 ffn_dim or 4 * hidden_dim, pool_size)
                                    for _ in range(num_stages))
        for p in self.stages.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for stage in self.stages:
            nn.init.constant_(stage.class_logits.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, images: torch.Tensor) -> dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        b, _, h, w = images.shape
        levels = self.fpn(self.backbone(images))  # P2..P5, (B, d, h_l, w_l)
        start_boxes, features, weights = self.proposals(levels)  # (B, N, 4), (B, N, d), (B, M) | None
        scale = images.new_tensor([w, h, w, h])
        boxes = box_convert(start_boxes, "cxcywh", "xyxy") * scale  # (B, N, 4) px
        stages = []
        for stage in self.stages:
            roi = self.pooler(levels, list(boxes.unbind(0)))  # (B N, d, 7, 7)
            logits, new_boxes, features = stage(roi.flatten(2).transpose(1, 2), boxes, features)
            stages.append({"logits": logits, "boxes": box_convert(new_boxes / scale, "xyxy", "cxcywh")})
            boxes = new_boxes.detach()  # the official cascade: no gradient through the next stage's boxes
        return {**stages[-1], "stages": stages, "proposals": start_boxes, "expert_weights": weights}

    @torch.no_grad()
    def detect(self, images: torch.Tensor, topk: int = 100, nms_iou_threshold: float | None = None) -> list[dict]:
        """Last-stage top-k over queries x classes (no NMS, as the paper); ``nms_iou_threshold`` adds
        class-wise NMS, to measure duplicates left by one-to-many training."""
        with evaluating(self):
            out = self(images)
        detections = postprocess_set(out["logits"], out["boxes"], images.shape[-1], self.class_mode, topk)
        if nms_iou_threshold is None:
            return detections
        if not 0 < nms_iou_threshold <= 1:
            raise ValueError(f"nms_iou_threshold must be in (0, 1] or None, got {nms_iou_threshold!r}")
        kept = []
        for det in detections:
            keep = batched_nms(det["boxes"], det["scores"], det["labels"], nms_iou_threshold)
            kept.append({key: value[keep] for key, value in det.items()})
        return kept


# --------------------------------------------------------------------------- the loss

Assigner = Callable[[torch.Tensor, torch.Tensor, list, int], list]


def hungarian_assigner(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], stage: int) -> list:
    """Sparse R-CNN's matching at every stage: [(query indices, object indices)] per image, one query per object."""
    return hungarian_match(logits, boxes, targets, mode="focal", weights=LOSS_WEIGHTS)


def stage_loss(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], matches: list) -> dict:
    """Weighted focal / L1 / GIoU terms of one stage for the given (query, object) pairs per image.

    logits (B, N, K), boxes (B, N, 4) normalised cxcywh. A query may appear once; an object
    any number of times (one-to-many). Normalised by the number of positive queries (>= 1).
    """
    check_shape("logits", logits, (len(targets), None, None))
    check_shape("boxes", boxes, (len(targets), logits.shape[1], 4))
    device = logits.device
    image = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)]).to(device)
    query = torch.cat([q for q, _ in matches]).to(device)
    labels = torch.cat([t["labels"][o] for t, (_, o) in zip(targets, matches)]).to(device)
    gt_boxes = torch.cat([t["boxes"][o] for t, (_, o) in zip(targets, matches)]).to(device)
    num_pos = max(1.0, float(len(query)))
    one_hot = torch.zeros_like(logits)
    one_hot[image, query, labels] = 1.0
    w_cls, w_l1, w_giou = LOSS_WEIGHTS
    loss_cls = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="sum") / num_pos
    pred = boxes[image, query]  # (P, 4)
    loss_l1 = F.l1_loss(pred, gt_boxes, reduction="sum") / num_pos
    giou = torch.diag(generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(gt_boxes, "cxcywh", "xyxy")))
    return {"cls": w_cls * loss_cls, "l1": w_l1 * loss_l1, "giou": w_giou * (1 - giou).sum() / num_pos}


def sparse_rcnn_loss(outputs: dict, targets: list[dict], assigner: Assigner = hungarian_assigner,
                     stats: dict | None = None) -> dict:
    """Sum over stages of :func:`stage_loss`, each stage matched on its own (detached) predictions.

    Returns the last stage's ``cls``, ``l1``, ``giou`` and ``aux`` (all earlier stages summed);
    the training loss is their sum. ``stats``, if given, receives ``positives``: per stage, the
    number of positive queries per object (floats, for the mechanism checks).
    """
    stages = outputs["stages"]
    num_objects = max(1, sum(len(t["labels"]) for t in targets))
    terms, positives = [], []
    for t, stage in enumerate(stages):
        matches = assigner(stage["logits"].detach(), stage["boxes"].detach(), targets, t)
        positives.append(sum(len(q) for q, _ in matches) / num_objects)
        terms.append(stage_loss(stage["logits"], stage["boxes"], targets, matches))
    losses = dict(terms[-1])
    if len(terms) > 1:
        losses["aux"] = sum(sum(term.values()) for term in terms[:-1])
    if stats is not None:
        stats["positives"] = positives
    return losses
