"""COCO box AP through pycocotools, with area ranges scaled to small images.

COCO calls an object small below 32^2 px and large above 96^2 px, thresholds set for
photos about 640 px wide. Our images are 64-256 px, so the thresholds are scaled by
``image_size / reference_size`` (default reference 256 px: at 96 px, small < 12^2 px and
large > 36^2 px, which keeps all three groups populated by the shape generator's sizes).
Everything else (IoU thresholds 0.50:0.95, 100 detections per image, the interpolation) is
pycocotools' own.
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def area_ranges(image_size: int, reference_size: int = 256) -> list[list[float]]:
    """pycocotools ``areaRng`` (all, small, medium, large) scaled from COCO's 32/96 px."""
    if image_size <= 0 or reference_size <= 0:
        raise ValueError(f"image_size and reference_size must be positive, got {image_size}, {reference_size}")
    factor = image_size / reference_size
    small, large = (32 * factor) ** 2, (96 * factor) ** 2
    return [[0.0, 1e10], [0.0, small], [small, large], [large, 1e10]]


def detections_to_coco(detections: list[dict], image_ids: list[int] | None = None) -> list[dict]:
    """Per-image ``{boxes (D, 4) xyxy, scores (D,), labels (D,)}`` -> COCO result dicts."""
    results = []
    for index, det in enumerate(detections):
        image_id = image_ids[index] if image_ids is not None else index
        boxes = det["boxes"].detach().cpu().double()
        boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
        for box, score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
            results.append({"image_id": int(image_id), "category_id": int(label), "bbox": box, "score": float(score)})
    return results


def coco_evaluate(coco_gt: dict, detections: list[dict] | list, image_size: int,
                  reference_size: int = 256, image_ids: list[int] | None = None,
                  class_ids: list[int] | None = None) -> dict[str, float]:
    """COCO box metrics (AP, AP50, AP75, APs, APm, APl, in [0, 1]) of ``detections``.

    coco_gt: a COCO-format dict (e.g. :func:`kit.data.shapes.to_coco`); detections: per-image
    dicts in the order of ``coco_gt['images']`` (or of ``image_ids``), or COCO result dicts.
    A metric with no ground truth in its group is NaN (pycocotools' -1). ``class_ids``
    restricts the evaluation to those categories (pycocotools' ``params.catIds``).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    known = {c["id"] for c in coco_gt["categories"]}
    if class_ids is not None and (not class_ids or not set(class_ids) <= known):
        raise ValueError(f"class_ids must be a non-empty subset of the categories {sorted(known)}, got {class_ids}")

    if detections and isinstance(detections[0], dict) and "boxes" in detections[0]:
        ids = image_ids if image_ids is not None else [img["id"] for img in coco_gt["images"]]
        if len(ids) != len(detections):
            raise ValueError(f"{len(detections)} detection sets for {len(ids)} images")
        results = detections_to_coco(detections, ids)
    else:
        results = list(detections)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = copy.deepcopy(coco_gt)
        gt.createIndex()
        if not results:  # pycocotools cannot load an empty result list
            return {name: 0.0 for name in METRICS}
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.areaRng = area_ranges(image_size, reference_size)
        if class_ids is not None:
            evaluator.params.catIds = [int(c) for c in class_ids]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats[:6]
    return {name: (float("nan") if value < 0 else float(value)) for name, value in zip(METRICS, stats)}


@torch.no_grad()
def evaluate_detector(model, scenes, batch_size: int = 32, device=None, **postprocess_options) -> dict[str, float]:
    """Run ``model.detect`` over a :class:`kit.data.shapes.ShapeScenes` and return COCO metrics."""
    from kit.data.shapes import to_coco

    device = device or next(model.parameters()).device
    detections = []
    for start in range(0, len(scenes), batch_size):
        images, _, _ = scenes.batch(range(start, min(start + batch_size, len(scenes))), device)
        detections += model.detect(images, **postprocess_options)
    return coco_evaluate(to_coco(scenes), detections, scenes.config.image_size)
