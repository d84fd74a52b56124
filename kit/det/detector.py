"""A dense one-stage detector: backbone -> FPN -> a dense head, one point prior per location.

The head is a switch, not a copy: the ATSS baseline (:class:`kit.det.atss.ATSSHead`), TOOD's
T-Head (:class:`kit.det.tood.TOODHead`), AutoAssign's and BorderDet's heads all subclass
:class:`DenseHead`, plug into the same :class:`DenseDetector`, see the same features and are
decoded, post-processed and evaluated the same way.

The contract between a head and the detector:

* ``head(features, level_points, strides)`` returns, per FPN level, a dict of maps: ``cls_probs``
  (B, C, H, W) and either ``distances`` (B, 4, H, W) ltrb or ``boxes`` (B, 4, H, W) xyxy, both in
  stride units, plus any field of the head's :attr:`DenseHead.output_type` it predicts
  (``cls_logits``, ``centerness_logits``, ...). Figure-only maps are computed only when the
  detector is called with ``with_maps=True``, which passes ``with_maps=True`` to the head (a
  head without figure maps does not take the argument);
* the detector flattens the levels into the head's output type (a :class:`DenseOutput`) and
  decodes the boxes in pixels;
* ``head.loss(out, gt_boxes, gt_labels)`` is the head's training loss, reading the head's own
  configuration (``model.loss(images, gt_boxes, gt_labels)`` for short); ``head.test_outputs(out)``
  gives the scores and boxes that :meth:`DenseDetector.detect` ranks at test time.

:func:`dense_detector` builds the chapter's detector for a head class, optionally on the
backbone and FPN weights of the ATSS baseline of the same seed (paired runs).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from kit.det.boxes import distance2bbox
from kit.det.postprocess import postprocess
from kit.det.priors import Priors, point_priors
from kit.nn.backbone import TinyResNet
from kit.nn.fpn import FPN
from kit.runtime import evaluating, seed_everything


@dataclass
class DenseOutput:
    """A dense head's predictions for a batch, levels flattened (N priors in all).

    cls_probs: (B, N, C) class probabilities; boxes: (B, N, 4) xyxy pixels; priors: the priors
    (shared by the batch). Where the head predicts them: cls_logits (B, N, C);
    centerness_logits (B, N), FCOS/ATSS centre-ness; objectness_logits (B, N), AutoAssign's
    implicit objectness (ImpObj). maps: figure-only outputs, name -> one tensor per level (maps
    (B, ., H_l, W_l), or per-image values such as TOOD's layer attention (B, N)), empty unless
    the detector was called with ``with_maps=True``.
    """

    cls_probs: torch.Tensor
    boxes: torch.Tensor
    priors: Priors
    cls_logits: torch.Tensor | None = None
    centerness_logits: torch.Tensor | None = None
    objectness_logits: torch.Tensor | None = None
    maps: dict = field(default_factory=dict)

    #: fields predicted as one channel per prior: (B, 1, H, W) maps become (B, N)
    SCALAR_FIELDS = ("centerness_logits", "objectness_logits")

    @classmethod
    def from_levels(cls, levels: dict, priors: Priors):
        """Flatten a head's per-level dict (see the module docstring) and decode its boxes in pixels."""
        if "boxes" in levels:  # a head that resamples its boxes (TOOD) returns them decoded
            boxes = flatten_levels(levels.pop("boxes"))  # (B, N, 4) xyxy, stride units
        else:
            distances = flatten_levels(levels.pop("distances"))  # (B, N, 4) ltrb, stride units
            boxes = distance2bbox(priors.points[None] / priors.strides[None, :, None], distances)
        predicted = {}
        for f in dataclasses.fields(cls):
            if f.name in levels and f.name != "maps":
                flat = flatten_levels(levels.pop(f.name))  # (B, N, K)
                predicted[f.name] = flat[..., 0] if f.name in cls.SCALAR_FIELDS else flat
        return cls(boxes=boxes * priors.strides[None, :, None], priors=priors, maps=levels, **predicted)

    def detection_scores(self) -> torch.Tensor:
        """Scores ranked at test time: class probability, times centre-ness or objectness where predicted."""
        quality = self.centerness_logits if self.centerness_logits is not None else self.objectness_logits
        if quality is None:
            return self.cls_probs
        return self.cls_probs * quality.sigmoid()[..., None]


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


class DenseHead(nn.Module):
    """The base of every dense head: what :class:`DenseDetector` asks of a head.

    A subclass implements ``forward(features, level_points, strides) -> dict`` (per level, see
    the module docstring; features [(B, in_channels, H_l, W_l)], level_points [(H_l W_l, 2)] xy
    px, strides [s_l]) and :meth:`loss`; it overrides :meth:`test_outputs` when its test-time
    scores or boxes are not the first stage's (BorderDet), and :attr:`output_type` when it
    predicts fields :class:`DenseOutput` lacks. Its hyper-parameters are attributes set in
    ``__init__``, the one place its loss and its test path read them from.
    """

    output_type: type = DenseOutput

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.in_channels = num_classes, in_channels  # DenseDetector checks in_channels

    def loss(self, out: DenseOutput, gt_boxes: list, gt_labels: list, **options) -> dict[str, torch.Tensor]:
        """The head's training loss terms for a batch; gt_boxes / gt_labels per image (M_i, 4) / (M_i,)."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss")

    def test_outputs(self, out: DenseOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, N, C) and boxes (B, N, 4) px ranked at test time: by default
        :meth:`DenseOutput.detection_scores` and the predicted boxes."""
        return out.detection_scores(), out.boxes


class DenseDetector(nn.Module):
    """Backbone + FPN (P3-P5, strides 8/16/32) + a :class:`DenseHead`."""

    def __init__(self, head: DenseHead, widths=(16, 32, 64, 128), fpn_channels: int = 64,
                 channels_last: bool = True):
        super().__init__()
        if not isinstance(head, DenseHead):
            raise TypeError(f"the head must be a kit.det.detector.DenseHead, got {type(head).__name__}")
        if head.in_channels != fpn_channels:
            raise ValueError(f"the head takes {head.in_channels} input channels but the FPN gives "
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

    def forward(self, images: torch.Tensor, with_maps: bool = False) -> DenseOutput:
        """images (B, 3, H, W) in [0, 1] -> the head's output type; ``with_maps`` asks the head
        for its figure-only maps (``out.maps``)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        dtype = self.weight_dtype()
        if images.dtype != dtype:
            hint = " (uint8 pixels: use images.float() / 255)" if not images.is_floating_point() else ""
            raise TypeError(f"images must be {dtype} in [0, 1] like the detector's weights, got {images.dtype}{hint}")
        images = images.contiguous(memory_format=self.memory_format)
        features = self.fpn(self.backbone(images))  # [(B, F, H/s, W/s)] for s in 8, 16, 32
        priors = point_priors([f.shape[-2:] for f in features], self.strides, device=images.device)
        maps_request = {"with_maps": True} if with_maps else {}  # heads without figure maps need not take it
        levels = self.head(features, priors.split(priors.points), self.strides, **maps_request)
        return self.head.output_type.from_levels(levels, priors)

    def loss(self, images: torch.Tensor, gt_boxes: list, gt_labels: list, **options) -> dict[str, torch.Tensor]:
        """The head's loss terms on a batch: ``head.loss(self(images), gt_boxes, gt_labels, **options)``."""
        return self.head.loss(self(images), gt_boxes, gt_labels, **options)

    def detect(self, images: torch.Tensor, **postprocess_options) -> list[dict]:
        """Detections per image (boxes, scores, labels), in eval mode, of the head's
        :meth:`DenseHead.test_outputs`, through :func:`kit.det.postprocess.postprocess`."""
        with evaluating(self):
            scores, boxes = self.head.test_outputs(self(images))
            return postprocess(scores, boxes, **postprocess_options)


def dense_detector(head_class: type, num_classes: int, channels: int, *, seed: int | None = None,
                   share_atss_trunk: bool = False, widths=(16, 32, 64, 128), device=None,
                   **head_options) -> DenseDetector:
    """The chapter's dense detector: ``head_class(num_classes, channels, channels, **head_options)``
    on the backbone of ``widths`` and an FPN of ``channels``.

    ``seed`` seeds everything first (:func:`kit.runtime.seed_everything`). ``share_atss_trunk``
    pairs a method with its ATSS baseline at that seed: the ATSS detector is built first (as the
    baseline's own run builds it) and the new detector copies its backbone and FPN weights.
    """
    if seed is not None:
        seed_everything(seed)
    if share_atss_trunk:
        from kit.det.atss import ATSSHead  # atss builds on this module

        atss_options = head_options if head_class is ATSSHead else {}
        reference = DenseDetector(ATSSHead(num_classes, channels, channels, **atss_options), widths,
                                  fpn_channels=channels)
        if head_class is ATSSHead:  # the baseline itself
            return reference.to(device)
    model = DenseDetector(head_class(num_classes, channels, channels, **head_options), widths, fpn_channels=channels)
    if share_atss_trunk:
        model.backbone.load_state_dict(reference.backbone.state_dict())
        model.fpn.load_state_dict(reference.fpn.state_dict())
    return model.to(device)
