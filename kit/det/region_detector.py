"""The long-tail chapter's detector: a Fast R-CNN second stage on class-agnostic proposals.

::

    images (B, 3, H, W) -> TinyResNet stem + C2, C3: one stride-8 map (B, F, H/8, W/8)
      + proposals [(P_i, 4)] xyxy px per image (:func:`region_proposals`, no RPN)
      -> RoIAlign 7 x 7 -> 2 fc (kit.det.roi_heads.FasterRCNNHead, class-agnostic box)
      -> class logits: (R, C + 1) softmax, column 0 background | (R, C) sigmoid, no background
         box deltas (R, 4)

Equalization loss, LOCE and the LVIS challenge recipe change one thing: how the classifier of a
region is trained when the classes are long-tailed. The proposals are therefore not learned:
at training they are the objects jittered (each object gets ``per_object`` boxes of varied
overlap) plus ``num_random`` boxes anywhere; at test the same generator runs with the test
split's own seed, knowing where objects are but not their classes. Every arm of a page sees the
same proposals, so a difference in AP is a difference in classification (and box refinement),
which is what these papers change. A real detector's RPN misses small and rare objects too;
that part of the gap is out of scope here, and the pages say so.

Training samples RoIs as the chapter's two-stage detector does (:func:`kit.det.two_stage.sample_rois`:
objects join the proposals, IoU >= 0.5 foreground, 128 per image, at most 25 % foreground) and
takes the box term of :func:`kit.det.two_stage.fast_rcnn_loss`'s form (smooth L1 on the
foreground, divided by the number of sampled RoIs). The classification loss is the argument:
``cls_loss(logits, labels)`` with labels 0 background, ``c + 1`` class ``c``.

Scoring: a softmax head scores class ``c`` by ``softmax(z)[c + 1]``; a sigmoid head (EQL) by
``sigmoid(z_c)``, its biases started at the prior ``-log((1 - p) / p)``, p = 0.001 as in
``eql.detectron2`` (without it, with many classes, early training collapses to "background").
Detections: per class above ``score_threshold``, NMS 0.5 per class, at most ``max_per_image``
(300, LVIS's limit) per image (:func:`kit.det.postprocess.postprocess`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import clip_boxes_to_image

from kit.det.postprocess import postprocess
from kit.det.roi_heads import FasterRCNNHead
from kit.det.two_stage import decode_deltas, sample_rois
from kit.det.validation import check_gt, check_shape
from kit.nn.backbone import TinyResNet
from kit.runtime import evaluating

__all__ = ["SCORINGS", "region_proposals", "RegionDetector"]

SCORINGS = ("softmax", "sigmoid")


def _check_count(name: str, value, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def region_proposals(gt_boxes: list, image_size: int, per_object: int = 8, num_random: int = 16,
                     jitter: float = 0.25, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Class-agnostic proposals per image: [(per_object * M_i + num_random, 4)] xyxy px, clipped.

    gt_boxes [(M_i, 4)] xyxy px. Each object gets ``per_object`` boxes whose centre moves by
    N(0, jitter) of its size and whose sides scale by exp(N(0, jitter)), so their IoU with the
    object spreads over roughly 0.2-0.9; the random boxes have uniform centres and log-uniform
    sides in [4 px, image_size].
    """
    _check_count("per_object", per_object)
    _check_count("num_random", num_random)
    _check_count("image_size", image_size, 1)
    if not (isinstance(jitter, (int, float)) and math.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"jitter must be a finite fraction >= 0 of the object size, got {jitter!r}")
    proposals = []
    for i, boxes in enumerate(gt_boxes):
        check_shape(f"gt_boxes[{i}]", boxes, (None, 4))
        boxes = boxes.float().cpu()
        centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)  # (M, 2)
        noise = torch.randn(len(boxes), per_object, 4, generator=generator)                       # (M, k, 4)
        new_centre = centre[:, None] + noise[..., :2] * jitter * size[:, None]                     # (M, k, 2)
        new_size = size[:, None] * (noise[..., 2:] * jitter).exp()                                 # (M, k, 2)
        jittered = torch.cat([new_centre - new_size / 2, new_centre + new_size / 2], -1).reshape(-1, 4)
        u = torch.rand(num_random, 4, generator=generator)                                         # (n, 4)
        side = 4.0 * (image_size / 4.0) ** u[:, 2:]                                                # log-uniform
        random_centre = u[:, :2] * image_size
        random = torch.cat([random_centre - side / 2, random_centre + side / 2], -1)
        both = torch.cat([jittered, random]).clamp(0, image_size)                                  # (P, 4)
        both[:, 2:] = torch.maximum(both[:, 2:], both[:, :2] + 1)                                  # >= 1 px
        proposals.append(both.to(gt_boxes[i].device))
    return proposals


class _StrideEight(nn.Module):
    """TinyResNet's stem and its first two stages: (B, 3, H, W) -> (B, widths[1], H/8, W/8)."""

    def __init__(self, widths):
        super().__init__()
        resnet = TinyResNet(tuple(widths) + (1,) * (4 - len(widths)))
        self.stem, self.stages = resnet.stem, nn.Sequential(*resnet.stages[:2])
        self.out_channels = widths[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))


class RegionDetector(nn.Module):
    """Backbone (stride 8) + a class-agnostic Fast R-CNN head, scored by softmax or sigmoid.

    ``cls_loss(logits, labels) -> scalar``: logits (R, C + 1) for ``scoring="softmax"``, (R, C)
    for ``"sigmoid"``; labels (R,) in 0..C, 0 background.
    """

    def __init__(self, num_classes: int, cls_loss: Callable, scoring: str = "softmax", widths=(16, 32),
                 fc_channels: int = 128, num_rois: int = 128, prior: float = 0.001,
                 score_threshold: float = 1e-4, max_per_image: int = 300):
        super().__init__()
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        if not callable(cls_loss):
            raise TypeError(f"cls_loss must be a function (logits, labels) -> loss, got {type(cls_loss).__name__}")
        if len(widths) != 2:
            raise ValueError(f"widths must give the two stages' channels (C2, C3), got {widths}")
        if not 0 < prior < 1:
            raise ValueError(f"prior must be a probability in (0, 1), got {prior}")
        _check_count("num_rois", num_rois, 1)
        self.backbone = _StrideEight(widths)
        self.head = FasterRCNNHead(num_classes, widths[1], fc_channels=fc_channels, class_agnostic=True)
        self.num_classes, self.scoring, self.cls_loss, self.num_rois = num_classes, scoring, cls_loss, num_rois
        self.detection_options = {"score_threshold": score_threshold, "max_per_image": max_per_image}
        if scoring == "sigmoid":
            with torch.no_grad():  # background column unused; the classes start at the prior
                self.head.classifier.bias[1:] = -math.log((1 - prior) / prior)

    def check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(getattr(images, 'shape', ()))}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got {images.dtype} (uint8 pixels: images.float() / 255)")
        non_finite = int((~torch.isfinite(images)).sum())
        if non_finite:
            raise ValueError(f"images has {non_finite} non-finite values (NaN or inf)")

    def forward(self, images: torch.Tensor, proposals: list) -> tuple[torch.Tensor, torch.Tensor]:
        """-> class logits (R, C + 1) or (R, C), box deltas (R, 4) for the proposals of every image, in order."""
        self.check_images(images)
        if len(proposals) != images.shape[0]:
            raise ValueError(f"need one proposal tensor per image ({images.shape[0]}), got {len(proposals)}")
        features = self.backbone(images)                                            # (B, F, H/8, W/8)
        logits, deltas = self.head(features, proposals, tuple(images.shape[-2:]))    # (R, C + 1), (R, 4)
        return (logits if self.scoring == "softmax" else logits[:, 1:]), deltas

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (R, C) from :meth:`forward`'s logits."""
        return logits.softmax(-1)[:, 1:] if self.scoring == "softmax" else logits.sigmoid()

    def sampled_outputs(self, images, gt_boxes: list, gt_labels: list, proposals: list):
        """Sample RoIs (see the module docstring) and run the head: -> (logits, deltas, labels (R,), box_targets (R, 4))."""
        check_gt(gt_boxes, gt_labels, images.shape[0], self.num_classes, like=images)
        sample = sample_rois(proposals, gt_boxes, gt_labels, self.num_rois)
        logits, deltas = self(images, sample.rois)
        return logits, deltas, torch.cat(sample.labels), torch.cat(sample.box_targets)

    def loss_from(self, logits, deltas, labels, box_targets, beta: float = 1 / 9) -> dict[str, torch.Tensor]:
        """``{"cls": cls_loss(logits, labels), "box": smooth L1 on the foreground / R}``."""
        cls = self.cls_loss(logits.float(), labels)
        foreground = labels > 0
        box = F.smooth_l1_loss(deltas.float()[foreground], box_targets[foreground], beta=beta,
                               reduction="sum") / max(1, labels.numel())
        return {"cls": cls, "box": box}

    def loss(self, images, gt_boxes: list, gt_labels: list, proposals: list) -> dict[str, torch.Tensor]:
        return self.loss_from(*self.sampled_outputs(images, gt_boxes, gt_labels, proposals))

    def detect(self, images: torch.Tensor, proposals: list, **options) -> list[dict]:
        """Detections per image ``{boxes (D, 4), scores (D,), labels (D,) in 0..C-1}``, best first, in eval mode."""
        options = {**self.detection_options, **options}
        with evaluating(self), torch.no_grad():
            logits, deltas = self(images, proposals)
        scores = self.scores(logits.float())                                                    # (R, C)
        boxes = decode_deltas(deltas.float(), torch.cat(proposals).float())[:, 0]               # (R, 4)
        boxes = clip_boxes_to_image(boxes, tuple(images.shape[-2:]))
        results = []
        for s, b in zip(scores.split([len(p) for p in proposals]), boxes.split([len(p) for p in proposals])):
            results += postprocess(s[None], b[None], score_threshold=options["score_threshold"],
                                   nms_iou_threshold=0.5, pre_nms_topk=max(1000, options["max_per_image"]),
                                   max_per_image=options["max_per_image"])
        return results
