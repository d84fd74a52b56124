"""A two-stage detector: region proposals, then a head per region (Faster R-CNN, Ren et al. 2015).

::

    images (B, 3, H, W) -> backbone -> one stride-16 map (B, F, H/16, W/16)
      -> RPN (kit.det.rpn): proposals [(P_i, 4)] xyxy px per image
      -> RoI head: class logits (R, C + 1) and box deltas (R, 4C), or (R, 4) class-agnostic

The head is the switch, as :class:`kit.det.detector.DenseHead` is for the one-stage detectors: a
:class:`RoIHead` only maps ``(features, proposals, image_size)`` to logits and deltas (the heavy
Faster R-CNN head in :mod:`kit.det.roi_heads`; R-FCN, Light-Head and ThunderNet pool the same
proposals their own way). Everything around it is here, the same for every head.

Training the second stage (Fast R-CNN, Girshick 2015), :func:`sample_rois` and :func:`fast_rcnn_loss`:

1. the ground-truth boxes join each image's proposals, so every object has a positive RoI even
   while the RPN still proposes nothing useful;
2. each RoI goes to the object of highest IoU if that IoU >= 0.5, else to background
   (:func:`kit.det.assigners.max_iou_assign`, no low-quality matches);
3. ``num_rois`` per image (128; orig. 512, Light-Head 256) are drawn at random, at most 25 %
   positives, negatives filling the rest (torchvision's ``BalancedPositiveNegativeSampler``);
4. a positive's target is its object encoded relative to the RoI, ``(dx, dy, dw, dh)`` times the
   weights (10, 10, 5, 5), i.e. divided by the stds (0.1, 0.1, 0.2, 0.2) (torchvision's ``BoxCoder``);
5. the loss: cross-entropy over C + 1 classes on every sampled RoI, plus smooth L1 (beta 1/9) on
   the positives' deltas at their class's slot, summed and divided by the number of sampled
   RoIs (torchvision's ``fastrcnn_loss``).

Inference, :func:`detect_from_rois` (torchvision's ``RoIHeads.postprocess_detections``): softmax;
every RoI decoded once per class and clipped to the image; background dropped; scores >
``score_threshold`` (0.05); boxes under 0.01 px dropped; NMS per class (0.5); the
``max_per_image`` (100) best. RoIs with non-finite outputs are dropped with a warning.

Conventions: column 0 of the logits is background and column c + 1 the kit's class c (labels
are 0..C-1 outside this module, as the COCO evaluator's category ids): torchvision's order
(mmdetection puts background last). Class-specific deltas have 4 columns per class and none for
background (torchvision reserves a background slot it never trains). BoxCoder and the sampler
come from ``torchvision.models.detection._utils``, the one module that defines them.
Long because the sampling, the loss and the decoding share one detector's options and conventions.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from kit.det.assigners import max_iou_assign
from kit.det.roi_heads import RoIHead
from kit.det.rpn import ANCHOR_SIZES, ASPECT_RATIOS, RPN, region_proposal_network
from kit.det.validation import check_gt, check_shape
from kit.nn.backbone import TinyResNet
from kit.runtime import evaluating, seed_everything

__all__ = ["BOX_CODER", "RoIHead", "RoISample", "sample_rois", "encode_boxes", "decode_deltas", "fast_rcnn_loss",
           "detect_from_rois", "TinyResNetC4", "TwoStageDetector", "two_stage_detector"]

BOX_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))  # = 1 / stds (0.1, 0.1, 0.2, 0.2); dw, dh clipped at log(1000/16)


def encode_boxes(gt_boxes: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Matched objects (R, 4) relative to their RoIs (R, 4) -> weighted deltas (R, 4)."""
    return BOX_CODER.encode_single(gt_boxes, rois)


def decode_deltas(box_deltas: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Deltas (R, 4K) applied to their RoIs (R, 4) -> boxes (R, K, 4) xyxy px, one per slot."""
    return BOX_CODER.decode_single(box_deltas, rois).view(box_deltas.shape[0], -1, 4)


class RoISample(NamedTuple):
    """The RoIs :func:`sample_rois` drew, per image: rois [(S_i, 4)] xyxy px; labels [(S_i,)],
    0 background and c + 1 for class c; box_targets [(S_i, 4)], encoded (zeros for background);
    gt_index [(S_i,)], the matched object (-1 background)."""

    rois: list
    labels: list
    box_targets: list
    gt_index: list


def sample_rois(proposals: list, gt_boxes: list, gt_labels: list, num_rois: int = 128,
                positive_fraction: float = 0.25, iou_threshold: float = 0.5, *, validate: bool = True) -> RoISample:
    """Steps 1-4 of the module docstring: the RoIs the second stage trains on, per image.

    proposals [(P_i, 4)], gt_boxes [(M_i, 4)] xyxy px, gt_labels [(M_i,)] in 0..C-1. The draw
    uses torch's global generator (``torch.randperm``), as torchvision's sampler does.
    """
    _check_sampling_options(num_rois, positive_fraction, iou_threshold)
    if validate:
        for i, p in enumerate(proposals):
            check_shape(f"proposals[{i}]", p, (None, 4))
        check_gt(gt_boxes, gt_labels, len(proposals), like=proposals[0] if len(proposals) else None)
    candidates, labels, matches = [], [], []
    for props, boxes, classes in zip(proposals, gt_boxes, gt_labels):
        rois = torch.cat([props, boxes])  # (P + M, 4): 1. the objects join the proposals
        gt_index = max_iou_assign(rois, boxes, iou_threshold, iou_threshold, match_low_quality=False,
                                  validate=False).gt_index  # 2. (P + M,), -1 below the threshold
        label = torch.zeros_like(gt_index)
        label[gt_index >= 0] = classes[gt_index[gt_index >= 0]] + 1  # 0 background, c + 1 class c
        candidates.append(rois), labels.append(label), matches.append(gt_index)
    positive, negative = BalancedPositiveNegativeSampler(num_rois, positive_fraction)(labels)  # 3. masks
    sample = RoISample([], [], [], [])
    for rois, label, gt_index, boxes, pos, neg in zip(candidates, labels, matches, gt_boxes, positive, negative):
        keep = torch.where(pos.bool() | neg.bool())[0]  # (S,) in candidate order, as torchvision
        rois, label, gt_index = rois[keep], label[keep], gt_index[keep]
        targets = rois.new_zeros(rois.shape)  # 4. (S, 4), filled for positives only
        targets[label > 0] = encode_boxes(boxes[gt_index[label > 0]], rois[label > 0])
        for field, value in zip(sample, (rois, label, targets, gt_index)):
            field.append(value)
    return sample


def _check_sampling_options(num_rois: int, positive_fraction: float, iou_threshold: float) -> None:
    if isinstance(num_rois, bool) or not isinstance(num_rois, int) or num_rois < 1:
        raise ValueError(f"num_rois must be an int >= 1, got {num_rois!r}")
    if not 0 < positive_fraction <= 1 or not 0 < iou_threshold <= 1:
        raise ValueError(f"positive_fraction and iou_threshold must be in (0, 1], got {positive_fraction}, {iou_threshold}")


def _check_head_outputs(class_logits: torch.Tensor, box_deltas: torch.Tensor, num_rois: int) -> int:
    """class_logits (R, C + 1) and box_deltas (R, 4C) or (R, 4) for ``num_rois`` RoIs; returns C."""
    check_shape("class_logits", class_logits, (num_rois, None))
    num_classes = class_logits.shape[1] - 1
    if num_classes < 1:
        raise ValueError(f"class_logits must have C + 1 >= 2 columns (column 0 background), got {class_logits.shape[1]}")
    if box_deltas.dim() != 2 or box_deltas.shape[0] != num_rois or box_deltas.shape[1] not in (4, 4 * num_classes):
        raise ValueError(f"box_deltas must be (R, 4 * C) = ({num_rois}, {4 * num_classes}) or (R, 4) class-agnostic, "
                         f"got {tuple(box_deltas.shape)}")
    return num_classes


def fast_rcnn_loss(class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: torch.Tensor,
                   box_targets: torch.Tensor, beta: float = 1 / 9) -> dict[str, torch.Tensor]:
    """Step 5: ``{"cls", "box"}`` over the sampled RoIs, all images concatenated.

    class_logits (R, C + 1); box_deltas (R, 4C) or (R, 4); labels (R,) in 0..C (0 background);
    box_targets (R, 4). Both terms are divided by R, as torchvision's ``fastrcnn_loss``.
    """
    check_shape("labels", labels, (None,))
    num_rois = labels.shape[0]
    num_classes = _check_head_outputs(class_logits, box_deltas, num_rois)
    check_shape("box_targets", box_targets, (num_rois, 4))
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}] (0 background), got {labels.min()}..{labels.max()}")
    if num_rois == 0:  # nothing sampled: zero terms that keep the graph
        zero = class_logits.sum() * 0 + box_deltas.sum() * 0
        return {"cls": zero, "box": zero}
    cls = F.cross_entropy(class_logits.float(), labels)
    positive = torch.where(labels > 0)[0]  # (R+,)
    slots = box_deltas.float().view(num_rois, -1, 4)  # (R, K, 4)
    slot = labels[positive] - 1 if slots.shape[1] > 1 else torch.zeros_like(positive)
    box = F.smooth_l1_loss(slots[positive, slot], box_targets[positive], beta=beta, reduction="sum") / num_rois
    return {"cls": cls, "box": box}


def detect_from_rois(class_logits: torch.Tensor, box_deltas: torch.Tensor, rois: list, image_size: tuple[int, int],
                     score_threshold: float = 0.05, nms_iou_threshold: float = 0.5,
                     max_per_image: int = 100) -> list[dict]:
    """The head's outputs -> per image ``{boxes (D, 4) xyxy px, scores (D,), labels (D,) in 0..C-1}``,
    best first, D <= ``max_per_image`` (see the module docstring)."""
    _check_detection_options(score_threshold, nms_iou_threshold, max_per_image)
    _check_head_outputs(class_logits, box_deltas, sum(len(r) for r in rois))
    class_logits, box_deltas = class_logits.detach().float(), box_deltas.detach().float()
    all_rois = torch.cat(list(rois)) if len(rois) else box_deltas.new_zeros(0, 4)
    finite = torch.isfinite(class_logits).all(1) & torch.isfinite(box_deltas).all(1)  # (R,)
    if not finite.all():
        warnings.warn(f"detect_from_rois dropped {int((~finite).sum())} of {len(finite)} RoIs with non-finite logits "
                      f"or deltas (NaN/inf: a diverged model?)", RuntimeWarning, stacklevel=2)
    scores = class_logits.softmax(-1)[:, 1:]  # (R, C), background dropped
    num_classes = scores.shape[1]
    boxes = clip_boxes_to_image(decode_deltas(box_deltas, all_rois), tuple(image_size))  # (R, K, 4)
    boxes = boxes.expand(-1, num_classes, -1)  # (R, C, 4); a class-agnostic box serves every class
    labels = torch.arange(num_classes, device=scores.device).expand_as(scores)  # (R, C)
    results, counts = [], [len(r) for r in rois]
    for b, s, lab, ok in zip(*(t.split(counts) for t in (boxes, scores, labels, finite))):  # per image
        keep = ok[:, None] & (s > score_threshold)  # (R_i, C)
        b, s, lab = b[keep], s[keep], lab[keep]  # one row per kept (RoI, class)
        small = remove_small_boxes(b, min_size=1e-2)
        b, s, lab = b[small], s[small], lab[small]
        kept = batched_nms(b, s, lab, nms_iou_threshold)[:max_per_image]  # NMS per class, best first
        results.append({"boxes": b[kept], "scores": s[kept], "labels": lab[kept]})
    return results


def _check_detection_options(score_threshold: float, nms_iou_threshold: float, max_per_image: int) -> None:
    if not 0 <= score_threshold < 1:
        raise ValueError(f"score_threshold must be in [0, 1) (scores are probabilities), got {score_threshold}")
    if not 0 < nms_iou_threshold <= 1:
        raise ValueError(f"nms_iou_threshold must be in (0, 1], got {nms_iou_threshold}")
    if isinstance(max_per_image, bool) or not isinstance(max_per_image, int) or max_per_image < 1:
        raise ValueError(f"max_per_image must be an int >= 1, got {max_per_image!r}")


class TinyResNetC4(nn.Module):
    """:class:`kit.nn.backbone.TinyResNet` cut after its third stage: C4, stride 16, ``widths[2]``
    channels (the map Faster R-CNN C4, R-FCN and Light-Head's RPN use). Its state dict keys are
    TinyResNet's, so ``load_state_dict(resnet.state_dict(), strict=False)`` takes C2-C4 of one."""

    def __init__(self, widths=(16, 32, 64, 128)):
        super().__init__()
        resnet = TinyResNet(widths)
        self.stem, self.stages = resnet.stem, nn.Sequential(*resnet.stages[:3])  # C5 is dropped
        self.out_channels, self.stride = widths[2], 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))  # (B, widths[2], H/16, W/16)


class TwoStageDetector(nn.Module):
    """backbone (images -> one map) + :class:`kit.det.rpn.RPN` + a :class:`RoIHead`.

    ``forward(images)`` gives detections (the RPN's train or test proposal counts follow the
    mode), ``detect`` the same in eval mode; ``loss(images, gt_boxes, gt_labels)`` the four terms
    ``rpn_objectness``, ``rpn_box``, ``cls``, ``box``, which :func:`kit.train.train` sums. The
    sampling and test options are attributes set here, the one place both paths read them from.
    """

    def __init__(self, backbone: nn.Module, rpn: RPN, roi_head: RoIHead, *, num_rois: int = 128,
                 positive_fraction: float = 0.25, iou_threshold: float = 0.5, score_threshold: float = 0.05,
                 nms_iou_threshold: float = 0.5, max_per_image: int = 100, channels_last: bool = True):
        super().__init__()
        if not isinstance(rpn, RPN):
            raise TypeError(f"the rpn must be a kit.det.rpn.RPN, got {type(rpn).__name__}")
        if not isinstance(roi_head, RoIHead):
            raise TypeError(f"the roi_head must be a kit.det.roi_heads.RoIHead, got {type(roi_head).__name__}")
        channels = getattr(backbone, "out_channels", roi_head.in_channels)
        if channels != roi_head.in_channels:
            raise ValueError(f"the head takes {roi_head.in_channels} input channels but the backbone gives "
                             f"{channels}; build the head with in_channels={channels}")
        _check_sampling_options(num_rois, positive_fraction, iou_threshold)
        _check_detection_options(score_threshold, nms_iou_threshold, max_per_image)
        self.backbone, self.rpn, self.roi_head = backbone, rpn, roi_head
        self.num_classes = roi_head.num_classes
        self.num_rois, self.positive_fraction, self.iou_threshold = num_rois, positive_fraction, iou_threshold
        self.detection_options = {"score_threshold": score_threshold, "nms_iou_threshold": nms_iou_threshold,
                                  "max_per_image": max_per_image}
        # channels-last memory speeds up the small CPU convolutions, as in kit.det.detector.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], the weights' dtype -> the backbone's map (B, F, h, w)."""
        self.check_images(images)
        return self.backbone(images.contiguous(memory_format=self.memory_format))

    def check_images(self, images: torch.Tensor) -> None:  # (B, 3, H, W) of the weights' dtype
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        dtype = next(self.backbone.parameters()).dtype
        if images.dtype != dtype:
            hint = " (uint8 pixels: use images.float() / 255)" if not images.is_floating_point() else ""
            raise TypeError(f"images must be {dtype} in [0, 1] like the detector's weights, got {images.dtype}{hint}")

    def forward(self, images: torch.Tensor, **detection_options) -> list[dict]:
        """Detections per image ``{boxes, scores, labels}``; options override ``detection_options``."""
        features = self.features(images)
        proposals, _ = self.rpn(images, features)
        class_logits, box_deltas = self.roi_head(features, proposals, tuple(images.shape[-2:]))
        return detect_from_rois(class_logits, box_deltas, proposals, tuple(images.shape[-2:]),
                                **{**self.detection_options, **detection_options})

    def detect(self, images: torch.Tensor, **detection_options) -> list[dict]:
        """:meth:`forward` in eval mode without autograd (what :func:`kit.eval.coco.evaluate_detector` calls)."""
        with evaluating(self):
            return self(images, **detection_options)

    def loss(self, images: torch.Tensor, gt_boxes: list, gt_labels: list) -> dict[str, torch.Tensor]:
        """The RPN's and the second stage's loss terms on a batch (sum them for the total)."""
        self.check_images(images)
        check_gt(gt_boxes, gt_labels, images.shape[0], self.num_classes, like=images)
        features = self.features(images)
        proposals, rpn_losses = self.rpn(images, features, gt_boxes)
        sample = sample_rois(proposals, gt_boxes, gt_labels, self.num_rois, self.positive_fraction,
                             self.iou_threshold, validate=False)
        class_logits, box_deltas = self.roi_head(features, sample.rois, tuple(images.shape[-2:]))
        losses = fast_rcnn_loss(class_logits, box_deltas, torch.cat(sample.labels), torch.cat(sample.box_targets))
        return {**rpn_losses, **losses}


def two_stage_detector(head_class: type, num_classes: int, *, seed: int | None = None,
                       widths=(16, 32, 64, 128), anchor_sizes=ANCHOR_SIZES, aspect_ratios=ASPECT_RATIOS,
                       rpn_options: dict | None = None, detector_options: dict | None = None, device=None,
                       backbone: nn.Module | None = None, **head_options) -> TwoStageDetector:
    """The chapter's two-stage detector: ``head_class(num_classes=..., in_channels=widths[2],
    **head_options)`` on :class:`TinyResNetC4` and an RPN of ``anchor_sizes`` x ``aspect_ratios``.

    ``backbone`` (images -> one map, with an int ``out_channels``) replaces :class:`TinyResNetC4`
    and ``widths``; the caller builds it, so seeds it (DetNet's page passes its own).
    ``seed`` seeds everything first (:func:`kit.runtime.seed_everything`); the backbone, the RPN
    and the head are then built in that order. ``rpn_options`` go to
    :func:`kit.det.rpn.region_proposal_network` (proposal counts, thresholds),
    ``detector_options`` to :class:`TwoStageDetector` (sampling, test options).
    """
    if seed is not None:
        seed_everything(seed)
    if backbone is None:
        backbone = TinyResNetC4(widths)
    elif not isinstance(getattr(backbone, "out_channels", None), int):
        raise ValueError(f"the backbone must have an int out_channels (its map's channels), got {backbone!r:.60}")
    rpn = region_proposal_network(backbone.out_channels, anchor_sizes, aspect_ratios, **(rpn_options or {}))
    head = head_class(num_classes=num_classes, in_channels=backbone.out_channels, **head_options)
    return TwoStageDetector(backbone, rpn, head, **(detector_options or {})).to(device)
