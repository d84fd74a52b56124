"""A dense one-stage detector: backbone -> FPN -> a dense head, one point prior per location.

The head is a switch, not a copy: the ATSS baseline (:class:`kit.det.atss.ATSSHead`) and
TOOD's T-Head (:class:`kit.det.tood.TOODHead`) plug into the same :class:`DenseDetector`, see
the same features and are decoded, post-processed and evaluated the same way. Every head
returns, per level, class scores (probabilities), ltrb distances in stride units, and any
extra maps it wants to show; the detector flattens the levels and decodes boxes in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kit.det.boxes import distance2bbox
from kit.det.postprocess import postprocess
from kit.det.priors import Priors, point_priors
from kit.nn.backbone import TinyResNet
from kit.nn.fpn import FPN


@dataclass
class DenseOutput:
    """A dense head's predictions for a batch, levels flattened (N priors in all).

    cls_probs: (B, N, C) class probabilities; boxes: (B, N, 4) xyxy pixels; priors: the
    priors (shared by the batch); cls_logits / centerness_logits: (B, N, C) / (B, N) where the
    head has them; maps: per-level extra maps for figures (name -> list of (B, ., H, W)).
    """

    cls_probs: torch.Tensor
    boxes: torch.Tensor
    priors: Priors
    cls_logits: torch.Tensor | None = None
    centerness_logits: torch.Tensor | None = None
    maps: dict = field(default_factory=dict)

    def detection_scores(self) -> torch.Tensor:
        """Scores ranked at test time: class probability, times centre-ness where predicted."""
        if self.centerness_logits is None:
            return self.cls_probs
        return self.cls_probs * self.centerness_logits.sigmoid()[..., None]


def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """[(B, K, H_l, W_l)] -> (B, sum_l H_l W_l, K), row-major within each level."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def pad_targets(gt_boxes: list, gt_labels: list):
    """Per-image targets [(M_i, 4)], [(M_i,)] -> padded (B, M, 4) boxes and (B, M) labels (-1 = pad)."""
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"{len(gt_boxes)} box lists but {len(gt_labels)} label lists")
    most = max([1] + [len(b) for b in gt_boxes])
    device = gt_boxes[0].device if gt_boxes else None
    boxes = torch.zeros((len(gt_boxes), most, 4), device=device)
    labels = torch.full((len(gt_boxes), most), -1, dtype=torch.long, device=device)
    for i, (b, l) in enumerate(zip(gt_boxes, gt_labels)):
        if b.shape != (len(l), 4):
            raise ValueError(f"image {i}: boxes {tuple(b.shape)} do not match labels {tuple(l.shape)}")
        boxes[i, : len(b)], labels[i, : len(l)] = b, l
    return boxes, labels


def gather_targets(assigned: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
    """Per-prior targets from an assignment.

    assigned: (B, N) object index per prior (-1 negative); boxes (B, M, 4), labels (B, M)
    from :func:`pad_targets`. Returns the matched boxes (B, N, 4) (zeros for negatives) and
    labels (B, N) (-1 for negatives).
    """
    index = assigned.clamp(min=0)
    matched_boxes = torch.gather(boxes, 1, index[..., None].expand(-1, -1, 4))
    matched_labels = torch.where(assigned >= 0, torch.gather(labels, 1, index), -1)
    return matched_boxes * (assigned >= 0)[..., None], matched_labels


class Scale(nn.Module):
    """A learnable scalar per FPN level (FCOS), multiplying the box distances."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class DenseDetector(nn.Module):
    """Backbone + FPN (P3-P5, strides 8/16/32) + a dense head."""

    def __init__(self, head: nn.Module, widths=(16, 32, 64, 128), fpn_channels: int = 64,
                 channels_last: bool = True):
        super().__init__()
        head_channels = getattr(head, "in_channels", None)  # the heads of kit.det record theirs
        if head_channels is not None and head_channels != fpn_channels:
            raise ValueError(f"the head takes {head_channels} input channels but the FPN gives "
                             f"fpn_channels={fpn_channels}; build the head with in_channels={fpn_channels}")
        # channels-last memory makes the small CPU convolutions here ~20% faster (measured).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone = TinyResNet(widths)
        self.fpn = FPN(self.backbone.out_channels, fpn_channels)
        self.strides = self.backbone.strides
        self.head = head
        self.num_classes = head.num_classes
        self.to(memory_format=self.memory_format)

    def weight_dtype(self) -> torch.dtype:
        """The dtype of the weights, which images must have (autocast casts inside the convs)."""
        return next(self.backbone.parameters()).dtype

    def forward(self, images: torch.Tensor) -> DenseOutput:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        dtype = self.weight_dtype()
        if images.dtype != dtype:
            hint = " (uint8 pixels: use images.float() / 255)" if not images.is_floating_point() else ""
            raise TypeError(f"images must be {dtype} in [0, 1] like the detector's weights, got {images.dtype}{hint}")
        images = images.contiguous(memory_format=self.memory_format)
        features = self.fpn(self.backbone(images))  # [(B, F, H/s, W/s)] for s in 8, 16, 32
        priors = point_priors([f.shape[-2:] for f in features], self.strides, device=images.device)
        level_points = priors.split(priors.points)
        out = self.head(features, level_points, self.strides)
        if "boxes" in out:  # a head that resamples its boxes (TOOD) returns them decoded
            boxes = flatten_levels(out.pop("boxes"))  # (B, N, 4) xyxy, stride units
        else:
            distances = flatten_levels(out.pop("distances"))  # (B, N, 4) ltrb, stride units
            boxes = distance2bbox(priors.points[None] / priors.strides[None, :, None], distances)
        boxes = boxes * priors.strides[None, :, None]  # stride units -> pixels
        cls_probs = flatten_levels(out.pop("cls_probs"))
        cls_logits = out.pop("cls_logits", None)
        centerness = out.pop("centerness_logits", None)
        return DenseOutput(
            cls_probs=cls_probs, boxes=boxes, priors=priors,
            cls_logits=flatten_levels(cls_logits) if cls_logits is not None else None,
            centerness_logits=flatten_levels(centerness)[..., 0] if centerness is not None else None,
            maps=out,
        )

    @torch.no_grad()
    def detect(self, images: torch.Tensor, **postprocess_options) -> list[dict]:
        """Detections per image (boxes, scores, labels) in eval mode.

        A head with a ``test_outputs(out) -> (scores, boxes)`` method (BorderDet's second stage)
        chooses its own test-time scores and boxes; otherwise they are ``detection_scores()``
        and ``boxes``.
        """
        was_training = self.training
        self.eval()
        out = self(images)
        self.train(was_training)
        if hasattr(self.head, "test_outputs"):
            scores, boxes = self.head.test_outputs(out)
        else:
            scores, boxes = out.detection_scores(), out.boxes
        return postprocess(scores, boxes, **postprocess_options)
