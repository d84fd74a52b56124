"""Bad input to evaluation and detection post-processing: a clear error, or dropped and counted.

pycocotools trusts its input (a NaN box matches every object at every IoU threshold, a label
outside the categories is ignored), so the evaluator checks it first. Each row of ``BAD``
builds one call from the shared ``scenes`` fixture and names the exception and a phrase of
its message; the tests after it are inputs that must *work*.
"""
import warnings

import pytest
import torch

from kit.data.shapes import to_coco
from kit.det.atss import ATSSHead
from kit.det.detector import DenseDetector
from kit.det.postprocess import postprocess
from kit.eval.alignment import misalignment
from kit.eval.coco import coco_evaluate, evaluate_detector
from kit.eval.recall import recall_by_class
from kit.eval.seg_metrics import boundary_f1, boundary_iou, miou_ignoring
from kit.eval.segmentation import confusion_matrix, iou_per_class


def perfect(scenes, **change):
    """The ground truth as detections (AP 1.0); ``change`` edits image 0: field -> fn(tensor)."""
    dets = []
    for i in range(len(scenes)):
        boxes, labels = scenes.targets(i)
        det = {"boxes": boxes.clone(), "scores": torch.ones(len(boxes)), "labels": labels.clone()}
        if i == 0:
            det.update({field: fn(det[field]) for field, fn in change.items()})
        dets.append(det)
    return dets


def with_nan(t, value=float("nan")):
    t = t.clone().float()
    t.view(-1)[0] = value
    return t


def coco(scenes, **change):
    return coco_evaluate(to_coco(scenes), perfect(scenes, **change), scenes.config.image_size)


def results(scenes, **change):
    """The ground truth as ready COCO result dicts; ``change`` edits result 0."""
    gt = to_coco(scenes)
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
           for a in gt["annotations"]]
    res[0].update(change)
    return coco_evaluate(gt, res, scenes.config.image_size)


def dense(scores=None, boxes=None, **options):
    scores = torch.rand(2, 5, 3) if scores is None else scores
    boxes = torch.tensor([0.0, 0, 10, 10]).repeat(2, 5, 1) if boxes is None else boxes
    return postprocess(scores, boxes, **options)


def recall(scenes, gt_change=None, **change):
    gt_boxes = [scenes.targets(i)[0] for i in range(len(scenes))]
    gt_labels = [scenes.targets(i)[1] for i in range(len(scenes))]
    if gt_change:
        gt_boxes[0], gt_labels[0] = gt_change(gt_boxes[0], gt_labels[0])
    return recall_by_class(perfect(scenes, **change), gt_boxes, gt_labels, scenes.config.num_classes)


def aligned(scores=None, gt_labels=None):
    points = torch.tensor([[5.0, 5.0], [15.0, 5.0]])
    boxes = torch.tensor([[0.0, 0, 12, 10], [0, 0, 20, 10]])
    scores = torch.tensor([[0.9], [0.2]]) if scores is None else scores
    gt_labels = torch.tensor([0]) if gt_labels is None else gt_labels
    return misalignment(scores, boxes, points, torch.tensor([[0.0, 0, 20, 10]]), gt_labels)


MAP = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1], [0, 2, 2, 1], [0, 0, 1, 1]]])  # (1, 4, 4) class map


BAD = [
    # COCO evaluation of per-image tensors
    ("coco: NaN box", lambda s: coco(s, boxes=with_nan), ValueError,
     r"detections\[0\] \(image_id 0\)\['boxes'\] has 1 non-finite boxes .*must be finite"),
    ("coco: inf box", lambda s: coco(s, boxes=lambda b: with_nan(b, float("inf"))), ValueError, r"\['boxes'\] has 1 non-finite"),
    ("coco: NaN score", lambda s: coco(s, scores=with_nan), ValueError,
     r"detections\[0\] \(image_id 0\)\['scores'\] has 1 non-finite"),
    ("coco: 1-based labels", lambda s: coco_evaluate(to_coco(s), [{**d, "labels": d["labels"] + 1} for d in perfect(s)], 64),
     ValueError, r"no category of the ground truth .*allowed: \[0, 1, 2, 3, 4, 5\]"),
    ("coco: scores shorter than boxes", lambda s: coco(s, scores=lambda t: t[:-1]), ValueError,
     r"detections\[0\] \(image_id 0\)\['scores'\] has shape .* need one per box"),
    ("coco: labels longer than boxes", lambda s: coco(s, labels=lambda t: torch.cat([t, t[:1]])), ValueError,
     r"\['labels'\] has shape"),
    ("coco: float labels", lambda s: coco(s, labels=lambda t: t.float() + 0.5), TypeError, r"\['labels'\] must be an integer"),
    ("coco: boxes not (D, 4)", lambda s: coco(s, boxes=lambda b: b[:, :3]), ValueError, r"\['boxes'\] must have shape \(D, 4\)"),
    ("coco: an image without scores", lambda s: coco_evaluate(to_coco(s), [{"boxes": torch.zeros(0, 4)}] * len(s), 64),
     ValueError, r"detections\[0\] \(image_id 0\) lacks \['labels', 'scores'\]"),
    ("coco: unknown image_ids", lambda s: coco_evaluate(to_coco(s), perfect(s), 64, image_ids=[i + 1 for i in range(len(s))]),
     ValueError, r"image_ids \[24\] are no images"),
    # COCO evaluation of ready result dicts
    ("results: NaN bbox", lambda s: results(s, bbox=[float("nan"), 0.0, 5.0, 5.0]), ValueError,
     r"results\[0\] \(image_id 0\) has bbox .*must be finite"),
    ("results: negative width", lambda s: results(s, bbox=[10.0, 10.0, -4.0, 5.0]), ValueError, r"w >= 0 and h >= 0"),
    ("results: NaN score", lambda s: results(s, score=float("nan")), ValueError, r"results\[0\] .* has score nan"),
    ("results: unknown category_id", lambda s: results(s, category_id=6), ValueError, r"category_id must be one of \[0, 1"),
    ("results: unknown image_id", lambda s: results(s, image_id=99), ValueError, r"image_id 99.*must be an image"),
    ("results: no score", lambda s: coco_evaluate(to_coco(s), [{"image_id": 0, "category_id": 0, "bbox": [0, 0, 1, 1]}], 64),
     ValueError, r"results\[0\] must be a dict with"),
    # post-processing
    ("postprocess: logits as scores", lambda s: dense(torch.randn(2, 5, 3) * 3), ValueError, r"probabilities in \[0, 1\].*logits"),
    ("postprocess: inf score", lambda s: dense(with_nan(torch.rand(2, 5, 3), float("inf"))), ValueError, r"probabilities"),
    ("postprocess: score_threshold 1", lambda s: dense(score_threshold=1.0), ValueError, r"score_threshold must be in \[0, 1\)"),
    ("postprocess: negative score_threshold", lambda s: dense(score_threshold=-0.1), ValueError, r"score_threshold must be in \[0, 1\)"),
    ("postprocess: pre_nms_topk 0", lambda s: dense(pre_nms_topk=0), ValueError, r"pre_nms_topk must be an int >= 1"),
    ("postprocess: max_per_image 0", lambda s: dense(max_per_image=0), ValueError, r"max_per_image must be an int >= 1"),
    ("postprocess: float max_per_image", lambda s: dense(max_per_image=2.5), TypeError, r"max_per_image must be an int"),
    # recall at a score threshold
    ("recall: NaN box", lambda s: recall(s, boxes=with_nan), ValueError, r"detections\[0\]\['boxes'\] has 1 non-finite"),
    ("recall: scores shorter than boxes", lambda s: recall(s, scores=lambda t: t[:-1]), ValueError,
     r"detections\[0\]\['scores'\] has shape"),
    ("recall: unknown detection label", lambda s: recall(s, labels=lambda t: t + 6), ValueError,
     r"detections\[0\]\['labels'\].*allowed: \[0, 1, 2, 3, 4, 5\]"),
    ("recall: gt label out of range", lambda s: recall(s, gt_change=lambda b, l: (b, l + 6)), ValueError,
     r"gt_labels\[0\] has labels in .*allowed: \[0, 6\)"),
    ("recall: gt labels longer than boxes", lambda s: recall(s, gt_change=lambda b, l: (b, torch.cat([l, l[:1]]))),
     ValueError, r"gt_boxes\[0\] .* and gt_labels\[0\] .* must be \(M, 4\) and \(M,\)"),
    # semantic segmentation
    ("confusion: float class ids", lambda s: confusion_matrix(torch.tensor([0.7, 1.2]), torch.tensor([0, 1]), 2), TypeError,
     r"predicted must hold integer class ids"),
    ("iou: non-square confusion", lambda s: iou_per_class(torch.ones(3, 2)), ValueError, r"square \(C, C\)"),
    ("iou: NaN in confusion", lambda s: iou_per_class(with_nan(torch.ones(2, 2))), ValueError, r"counts >= 0"),
    # segmentation metrics with an ignore label (kit.eval.seg_metrics)
    ("seg miou: float prediction", lambda s: miou_ignoring(torch.rand(1, 4, 4), MAP, 3), TypeError,
     r"predicted must hold integer class ids \(e.g. logits.argmax\(1\)\), got torch.float32"),
    ("seg miou: bool target", lambda s: miou_ignoring(MAP, MAP > 0, 3), TypeError, r"target must hold integer class ids"),
    ("seg miou: a list", lambda s: miou_ignoring([[0, 1]], MAP, 3), TypeError, r"predicted must be a torch.Tensor"),
    ("seg miou: shapes differ", lambda s: miou_ignoring(MAP, MAP[:, :3], 3), ValueError,
     r"predicted \(1, 4, 4\) and target \(1, 3, 4\) must be equal \(B, H, W\) or \(H, W\)"),
    ("seg miou: 4-d maps", lambda s: miou_ignoring(MAP[None], MAP[None], 3), ValueError, r"must be equal \(B, H, W\)"),
    ("seg miou: zero labels", lambda s: miou_ignoring(MAP, MAP, 0), ValueError, r"num_labels \(background included\) must be >= 1"),
    ("seg miou: float num_labels", lambda s: miou_ignoring(MAP, MAP, 3.0), TypeError, r"num_labels .* must be an int"),
    ("seg miou: predicted 255", lambda s: miou_ignoring(MAP.clone().fill_(255), MAP, 3), ValueError,
     r"predicted ids must lie in \[0, 3\), got \[255, 255\]"),
    ("seg miou: target beyond the labels", lambda s: miou_ignoring(MAP, MAP + 1, 3), ValueError,
     r"target ids must lie in \[0, 3\) or be ignore_index=255"),
    ("seg miou: ignore_index is a label", lambda s: miou_ignoring(MAP, MAP, 3, ignore_index=2), ValueError,
     r"ignore_index 2 is a label id \(num_labels=3\)"),
    ("seg miou: 255 with ignore_index None", lambda s: miou_ignoring(MAP, MAP.clone().fill_(255), 3, ignore_index=None),
     ValueError, r"target ids must lie in \[0, 3\) or be ignore_index=None"),
    ("bf1: negative tolerance", lambda s: boundary_f1(MAP, MAP, 3, tolerance=-1), ValueError,
     r"tolerance must be a finite number of pixels >= 0, got -1"),
    ("bf1: NaN tolerance", lambda s: boundary_f1(MAP, MAP, 3, tolerance=float("nan")), ValueError, r"tolerance must be a finite"),
    ("bf1: tensor tolerance", lambda s: boundary_f1(MAP, MAP, 3, tolerance=torch.tensor(2.0)), ValueError,
     r"tolerance must be a finite number"),
    ("biou: zero width", lambda s: boundary_iou(MAP, MAP, 3, width=0), ValueError, r"width must be an int >= 1 \(pixels\), got 0"),
    ("biou: fractional width", lambda s: boundary_iou(MAP, MAP, 3, width=1.5), ValueError, r"width must be an int >= 1"),
    ("biou: float target", lambda s: boundary_iou(MAP, MAP.float(), 3), TypeError, r"target must hold integer class ids"),
    # classification / localisation misalignment
    ("misalignment: -1 padding label", lambda s: aligned(gt_labels=torch.tensor([-1])), ValueError,
     r"gt_labels must be class ids in \[0, 1\) \(no -1 padding\)"),
    ("misalignment: NaN score", lambda s: aligned(scores=torch.tensor([[float("nan")], [0.2]])), ValueError,
     r"scores has 1 non-finite"),
]


@pytest.mark.parametrize("build, error, phrase", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_refused(scenes, build, error, phrase):
    with pytest.raises(error, match=phrase):
        build(scenes)


# --- inputs that must work -----------------------------------------------------------------


def test_nan_in_the_box_branch_is_dropped_counted_and_warned(scenes):
    """An untrained ATSS detector scores ~0 AP; one NaN weight in its box branch used to give
    0.37 AP (the NaN boxes matched everything). Now every NaN box is dropped, with a warning."""
    torch.manual_seed(0)
    model = DenseDetector(ATSSHead(scenes.config.num_classes, 16, 16), widths=(8, 16, 16, 16), fpn_channels=16)
    clean = evaluate_detector(model, scenes, score_threshold=0.0)
    with torch.no_grad():
        model.head.reg_conv.weight[0, 0, 1, 1] = float("nan")  # the left distance of every prior is NaN
    with pytest.warns(RuntimeWarning, match=r"dropped \d+ predictions with a non-finite box"):
        broken = evaluate_detector(model, scenes, score_threshold=0.0)
    assert clean["AP"] < 0.05 and broken["AP"] == 0.0


def test_a_clean_detector_evaluates_without_a_warning(scenes):
    torch.manual_seed(0)
    model = DenseDetector(ATSSHead(scenes.config.num_classes, 16, 16), widths=(8, 16, 16, 16), fpn_channels=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_detector(model, scenes)


def test_postprocess_drops_and_counts_nonfinite_predictions():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30], [float("nan"), 0, 10, 10], [40, 40, 50, 50]]])
    scores = torch.tensor([[[0.9], [0.8], [0.95], [float("nan")]]])
    stats = {}
    [det] = postprocess(scores, boxes, stats=stats)
    assert stats == {"dropped_nonfinite": 2}
    assert det["scores"].tolist() == pytest.approx([0.9, 0.8]) and torch.isfinite(det["boxes"]).all()
    with pytest.warns(RuntimeWarning, match="dropped 2 of 4 predictions"):
        postprocess(scores, boxes)  # no stats dict: the caller is told by a warning


def test_postprocess_accepts_a_zero_threshold_and_counts_nothing_on_clean_input():
    stats = {}
    dets = dense(score_threshold=0.0, stats=stats)
    assert stats == {"dropped_nonfinite": 0} and len(dets) == 2


def test_evaluating_float64_cpu_tensors_twice_gives_the_same_ap_and_leaves_them_unchanged(scenes):
    dets = perfect(scenes, boxes=lambda b: b)
    for det in dets:
        det["boxes"] = (det["boxes"] + 2.0).double()  # shifted: AP < 1, so an xywh conversion in place would show
    before = [det["boxes"].clone() for det in dets]
    first = coco_evaluate(to_coco(scenes), dets, scenes.config.image_size)
    second = coco_evaluate(to_coco(scenes), dets, scenes.config.image_size)
    assert first == second and 0 < first["AP"] < 1
    assert all(torch.equal(det["boxes"], b) for det, b in zip(dets, before))


def test_images_without_detections_and_valid_result_dicts_are_accepted(scenes):
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    dets = perfect(scenes)
    dets[0] = empty
    assert 0 < coco_evaluate(to_coco(scenes), dets, scenes.config.image_size)["AP"] < 1
    gt = to_coco(scenes)
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
           for a in gt["annotations"]]
    assert coco_evaluate(gt, res, scenes.config.image_size)["AP"] == pytest.approx(1.0)
