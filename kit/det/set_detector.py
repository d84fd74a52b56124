"""What DETR-style set detectors share at test time: top-k over (query, class) pairs, no NMS.

A set detector (:class:`kit.det.detr.DETR`, :class:`kit.det.deformable_detr.DeformableDETR`)
predicts ``Q`` boxes as normalised ``(cx, cy, w, h)`` with class logits; trained with the
Hungarian set loss (:mod:`kit.det.hungarian`), each object has one query, so detections need
no NMS. :func:`postprocess_set` turns the outputs into per-image detections in pixels, as
Deformable DETR's ``PostProcess`` does.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert

from kit.runtime import evaluating

__all__ = ["SetDetector", "postprocess_set"]


def postprocess_set(logits: torch.Tensor, boxes: torch.Tensor, image_size: int, mode: str,
                    topk: int = 100) -> list[dict]:
    """Top-k over queries x classes: per image ``{boxes (D, 4) xyxy pixels, scores (D,), labels (D,)}``.

    logits (B, Q, K) (``"focal"``) or (B, Q, K + 1) (``"softmax"``, last column "no object");
    boxes (B, Q, 4) normalised (cx, cy, w, h). Scores are sigmoid probabilities (``"focal"``) or
    softmax probabilities without the no-object column (``"softmax"``). Taking the top-k over
    (query, class) pairs, as Deformable DETR's ``PostProcess`` does, lets a query offer its
    second-best class too; DETR's own post-processing keeps one class per query (that gives a
    slightly lower AP). Detections whose box or score is not finite are dropped (``D <= topk``).
    """
    if mode == "softmax":
        probs = logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    elif mode == "focal":
        probs = logits.float().sigmoid()
    else:
        raise ValueError(f"mode must be 'focal' or 'softmax', got {mode!r}")
    b, q, k = probs.shape
    scores, index = probs.flatten(1).topk(min(topk, q * k), dim=1)  # (B, D)
    query, label = index // k, index % k
    xyxy = box_convert(boxes.float(), "cxcywh", "xyxy") * image_size  # (B, Q, 4)
    picked = torch.gather(xyxy, 1, query[..., None].expand(-1, -1, 4))  # (B, D, 4)
    finite = torch.isfinite(picked).all(-1) & torch.isfinite(scores)  # (B, D)
    return [{"boxes": picked[i][finite[i]], "scores": scores[i][finite[i]], "labels": label[i][finite[i]]}
            for i in range(b)]


class SetDetector(nn.Module):
    """Base of DETR-style detectors: ``forward`` returns the final decoder layer's ``logits`` and
    normalised cxcywh ``boxes``; ``class_mode`` names the classifier (and the loss's mode)."""

    class_mode: str

    @torch.no_grad()
    def detect(self, images: torch.Tensor, topk: int = 100) -> list[dict]:
        """Detections per image in pixels (eval mode), top-k over queries x classes, as
        :func:`postprocess_set`."""
        with evaluating(self):
            out = self(images)
        return postprocess_set(out["logits"], out["boxes"], images.shape[-1], self.class_mode, topk)
