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
import warnings

import numpy as np
import torch
from torchvision.ops import box_convert

from kit.runtime import evaluating

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def area_ranges(image_size: int, reference_size: int = 256) -> list[list[float]]:
    """pycocotools ``areaRng`` (all, small, medium, large) scaled from COCO's 32/96 px."""
    if image_size <= 0 or reference_size <= 0:
        raise ValueError(f"image_size and reference_size must be positive, got {image_size}, {reference_size}")
    factor = image_size / reference_size
    small, large = (32 * factor) ** 2, (96 * factor) ** 2
    return [[0.0, 1e10], [0.0, small], [small, large], [large, 1e10]]


def _first(tensor: torch.Tensor, bad: torch.Tensor) -> list:
    """The first offending row of ``tensor`` (for an error message)."""
    return tensor[bad.nonzero()[0, 0]].tolist()


def check_image_detections(det: dict, where: str, category_ids: list[int] | None) -> None:
    """One image's ``{boxes (D, 4), scores (D,), labels (D,)}``: shapes agree, values finite,
    labels among ``category_ids``. A handful of reductions, no loop over boxes."""
    missing = sorted({"boxes", "scores", "labels"} - set(det))
    if missing:
        raise ValueError(f"{where} lacks {missing}; each image needs boxes (D, 4), scores (D,) and labels (D,)")
    boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}['boxes'] must have shape (D, 4) xyxy, got {tuple(boxes.shape)}")
    for field in ("scores", "labels"):
        if tuple(det[field].shape) != (len(boxes),):
            raise ValueError(f"{where}['{field}'] has shape {tuple(det[field].shape)} for {len(boxes)} boxes; "
                             f"need one per box, shape ({len(boxes)},)")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{where}['labels'] must be an integer tensor of category ids, got {labels.dtype}")
    bad_boxes = ~torch.isfinite(boxes).all(1)  # (D,)
    if bad_boxes.any():
        raise ValueError(f"{where}['boxes'] has {int(bad_boxes.sum())} non-finite boxes (first: "
                         f"{_first(boxes, bad_boxes)}); boxes must be finite xyxy pixels")
    bad_scores = ~torch.isfinite(scores)
    if bad_scores.any():
        raise ValueError(f"{where}['scores'] has {int(bad_scores.sum())} non-finite scores (first: "
                         f"{_first(scores, bad_scores)}); scores must be finite")
    if category_ids is not None:
        unknown = ~torch.isin(labels, torch.tensor(category_ids, device=labels.device))
        if unknown.any():
            raise ValueError(f"{where}['labels'] has {int(unknown.sum())} labels that are no category of the ground "
                             f"truth (e.g. {sorted(set(labels[unknown].tolist()))[:5]}); allowed: {category_ids}")


def detections_to_coco(detections: list[dict], image_ids: list[int] | None = None,
                       category_ids: list[int] | None = None) -> list[dict]:
    """Per-image ``{boxes (D, 4) xyxy, scores (D,), labels (D,)}`` -> COCO result dicts.

    Checks each image (see :func:`check_image_detections`; labels only if ``category_ids`` is
    given) and leaves the input tensors untouched.
    """
    results = []
    for index, det in enumerate(detections):
        image_id = image_ids[index] if image_ids is not None else index
        check_image_detections(det, f"detections[{index}] (image_id {image_id})", category_ids)
        xywh = box_convert(det["boxes"].detach().cpu().double(), "xyxy", "xywh")  # (D, 4), a new tensor
        for box, score, label in zip(xywh.tolist(), det["scores"].tolist(), det["labels"].tolist()):
            results.append({"image_id": int(image_id), "category_id": int(label), "bbox": box, "score": float(score)})
    return results


def _check_results(results: list, category_ids: list[int], image_ids: list[int]) -> None:
    """Ready COCO result dicts: each has image_id, category_id, bbox [x, y, w, h], score; the
    ids are known, bbox and score finite, w and h >= 0. Checked as arrays, not one by one."""
    if not results:
        return
    fields = ("image_id", "category_id", "bbox", "score")
    for index, result in enumerate(results):  # the list is Python already; pycocotools walks it too
        if not isinstance(result, dict) or not set(fields) <= set(result):
            raise ValueError(f"results[{index}] must be a dict with {list(fields)} (or pass per-image dicts with "
                             f"boxes, scores, labels), got {result!r:.200}")
    image, category = (np.asarray([r[f] for r in results]) for f in ("image_id", "category_id"))
    bbox = np.asarray([r["bbox"] for r in results], dtype=float)
    score = np.asarray([r["score"] for r in results], dtype=float)
    if bbox.shape != (len(results), 4):
        raise ValueError(f"every result's bbox must be [x, y, w, h]; got bboxes of shape {bbox.shape}")

    def fail(bad: np.ndarray, field: str, allowed: str) -> None:
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(f"results[{first}] (image_id {results[first]['image_id']}) has {field} "
                             f"{results[first][field]!r} ({int(bad.sum())} results like it); {allowed}")

    fail(~np.isin(image, image_ids), "image_id", "image_id must be an image of the ground truth")
    fail(~np.isin(category, category_ids), "category_id", f"category_id must be one of {category_ids}")
    fail(~np.isfinite(bbox).all(1), "bbox", "bbox must be finite [x, y, w, h] pixels")
    fail((bbox[:, 2:] < 0).any(1), "bbox", "bbox must be [x, y, w, h] with w >= 0 and h >= 0")
    fail(~np.isfinite(score), "score", "score must be finite")


def coco_evaluate(coco_gt: dict, detections: list[dict] | list, image_size: int,
                  reference_size: int = 256, image_ids: list[int] | None = None,
                  class_ids: list[int] | None = None) -> dict[str, float]:
    """COCO box metrics (AP, AP50, AP75, APs, APm, APl, in [0, 1]) of ``detections``.

    coco_gt: a COCO-format dict (e.g. :func:`kit.data.shapes.to_coco`); detections: per-image
    dicts in the order of ``coco_gt['images']`` (or of ``image_ids``), or COCO result dicts.
    Both are checked first (finite boxes and scores, one score and label per box, known
    categories and images): pycocotools trusts its input, and a NaN box matches every object.
    A metric with no ground truth in its group is NaN (pycocotools' -1). ``class_ids``
    restricts the evaluation to those categories (pycocotools' ``params.catIds``).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    known = sorted(c["id"] for c in coco_gt["categories"])
    if class_ids is not None and (not class_ids or not set(class_ids) <= set(known)):
        raise ValueError(f"class_ids must be a non-empty subset of the categories {known}, got {class_ids}")
    known_images = [img["id"] for img in coco_gt["images"]]

    if detections and isinstance(detections[0], dict) and "boxes" in detections[0]:
        ids = image_ids if image_ids is not None else known_images
        if len(ids) != len(detections):
            raise ValueError(f"{len(detections)} detection sets for {len(ids)} images")
        if not set(ids) <= set(known_images):
            raise ValueError(f"image_ids {sorted(set(ids) - set(known_images))[:5]} are no images of the ground truth")
        results = detections_to_coco(detections, ids, known)
    else:
        results = list(detections)
        _check_results(results, known, known_images)
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


def scene_batches(scenes, batch_size: int = 32, device=None):
    """The images of a :class:`kit.data.shapes.ShapeScenes` in order, ``batch_size`` at a time:
    yields ``(images (B, 3, H, W), gt_boxes [(M_i, 4)], gt_labels [(M_i,)])``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(scenes), batch_size):
        yield scenes.batch(range(start, min(start + batch_size, len(scenes))), device)


def predict_batches(model, scenes, batch_size: int = 32, device=None, **forward_options):
    """The validation loop: yields ``(images, gt_boxes, gt_labels, model(images, **forward_options))``
    over ``scenes`` (see :func:`scene_batches`), with ``model`` in eval mode and autograd off
    (:func:`kit.runtime.evaluating`; the mode is restored when the loop ends)."""
    device = device or next(model.parameters()).device
    with evaluating(model):
        for images, gt_boxes, gt_labels in scene_batches(scenes, batch_size, device):
            yield images, gt_boxes, gt_labels, model(images, **forward_options)


def evaluate_detector(model, scenes, batch_size: int = 32, device=None, **postprocess_options) -> dict[str, float]:
    """Run ``model.detect`` over a :class:`kit.data.shapes.ShapeScenes` and return COCO metrics.

    A dense detector's post-processing drops predictions with a non-finite box or score (a
    diverged model); if it dropped any, one warning gives their total, and the metrics are
    those of the finite predictions. A set detector (DETR) drops nothing, and a non-finite box
    stops :func:`coco_evaluate` with an error.
    """
    from kit.data.shapes import to_coco
    from kit.det.detector import DenseDetector

    device = device or next(model.parameters()).device
    stats = {"dropped_nonfinite": 0}
    if isinstance(model, DenseDetector):  # its detect passes options on to kit.det.postprocess
        postprocess_options = {**postprocess_options, "stats": stats}
    detections = []
    with torch.no_grad():
        for images, _, _ in scene_batches(scenes, batch_size, device):
            detections += model.detect(images, **postprocess_options)
    if stats["dropped_nonfinite"]:
        warnings.warn(f"evaluate_detector: post-processing dropped {stats['dropped_nonfinite']} predictions with a "
                      f"non-finite box or score over {len(scenes)} images (NaN/inf: a diverged model?); the metrics "
                      f"count only the finite ones", RuntimeWarning, stacklevel=2)
    return coco_evaluate(to_coco(scenes), detections, scenes.config.image_size)
