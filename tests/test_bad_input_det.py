"""Bad input to the detection kit (assigners, losses, detectors) and the deformable ops.

One table of inputs that must be refused (the exception type and a phrase of its message),
then the cases that must *work*: an image with no object, valid boxes whose GIoU loss and
gradient are bit-identical to torchvision's, inverted *predicted* boxes that get a positive
loss, valid ops unchanged. torchvision's deformable kernel segfaults on NaN offsets, so it is
never called with them here: every test of this module runs with the kernel replaced by a
stub that fails the test if reached (the checks must raise before it).
"""
import dataclasses

import pytest
import torch
import torchvision
from torchvision.ops import generalized_box_iou_loss

import kit.det.tood as tood_module
import kit.ops.deform_conv as deform_module
from kit.det import assigners, atss, autoassign, borderdet, hps, hungarian, tood
from kit.det.cross_dataset import dataset_aware_atss_loss, dataset_aware_focal_loss
from kit.det.detector import DenseDetector, DenseOutput
from kit.det.losses import focal_loss_prob, giou_loss, quality_focal_loss_prob
from kit.det.priors import point_priors
from kit.det.validation import check_gt, check_gt_boxes
from kit.ops.deform_conv import DeformConv2d, deform_conv2d
from kit.ops.deformable_kernels import DeformableKernel2d, deformable_kernel_conv2d
from kit.ops.ms_deform_attn import MSDeformAttn

NUM_CLASSES = 3
IMAGE = 64


@pytest.fixture(autouse=True)
def no_torchvision_deform_kernel(monkeypatch):
    """torchvision's deform_conv2d must never run in this module (it segfaults on NaN offsets)."""
    def stub(*args, **kwargs):
        raise AssertionError("torchvision's deform_conv2d kernel was reached")
    monkeypatch.setattr(deform_module, "tv_deform_conv2d", stub)
    monkeypatch.setattr(tood_module, "deform_conv2d", stub)


# --------------------------------------------------------------------------- builders


def dense_output(batch: int = 2, logits: bool = True) -> DenseOutput:
    """A DenseOutput of random predictions on a 64 px image's priors (strides 8/16/32)."""
    gen = torch.Generator().manual_seed(0)
    priors = point_priors([(IMAGE // s, IMAGE // s) for s in (8, 16, 32)], [8, 16, 32])
    n = priors.points.shape[0]
    raw = torch.randn(batch, n, NUM_CLASSES, generator=gen) - 3
    sizes = 4 + 20 * torch.rand(batch, n, 4, generator=gen)
    boxes = torch.cat([priors.points - sizes[..., :2], priors.points + sizes[..., 2:]], dim=-1)  # (B, N, 4)
    return DenseOutput(cls_probs=raw.sigmoid(), boxes=boxes, priors=priors,
                       cls_logits=raw if logits else None,
                       centerness_logits=torch.randn(batch, n, generator=gen) if logits else None)


def good_gt(batch: int = 2):
    boxes = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 20.0, 60.0, 50.0]]) for _ in range(batch)]
    labels = [torch.tensor([0, 2]) for _ in range(batch)]
    return boxes, labels


def gt_with(box, image: int = 1, dtype=torch.float32):
    """Good ground truth whose image ``image`` has ``box`` as its second object."""
    boxes, labels = good_gt()
    boxes[image] = torch.stack([boxes[image][0], torch.tensor(box)]).to(dtype)
    return boxes, labels


INVERTED = [30.0, 40.0, 4.0, 6.0]  # x2 < x1 and y2 < y1
XYWH = [40.0, 30.0, 12.0, 16.0]  # (x, y, w, h) read as xyxy: x2 < x1
NAN = [float("nan"), 6.0, 30.0, 40.0]


def anchors_and_levels():
    out = dense_output()
    return out.priors.anchor_boxes(4.0), out.priors.num_per_level


def atss_with(gt_box):
    anchors, levels = anchors_and_levels()
    return lambda: assigners.atss_assign(anchors, levels, torch.tensor([gt_box]))


def tal_with(gt_box=None, scores=None, gt_labels=None, gt_dtype=torch.float32):
    out = dense_output()
    gt_boxes = torch.tensor([gt_box if gt_box is not None else [4.0, 6.0, 30.0, 40.0]], dtype=gt_dtype)
    gt_labels = gt_labels if gt_labels is not None else torch.tensor([1])
    scores = scores if scores is not None else out.cls_probs[0]
    return lambda: assigners.task_aligned_assign(scores, out.boxes[0], out.priors.points, gt_boxes, gt_labels)


def loss_call(fn, gt, batch: int = 2, **kw):
    out = dense_output(batch)
    return lambda: fn(out, *gt, **kw)


def autoassign_output() -> DenseOutput:
    """dense_output() as AutoAssignHead gives it: ImpObj logits instead of centre-ness."""
    out = dense_output()
    return dataclasses.replace(out, objectness_logits=out.centerness_logits, centerness_logits=None)


def autoassign_call(gt):
    out = autoassign_output()
    prior = autoassign.CenterPrior(NUM_CLASSES)
    return lambda: autoassign.autoassign_loss(out, *gt, prior)


def detr_targets(boxes, labels=(0,)):
    return [{"labels": torch.tensor(list(labels)), "boxes": torch.tensor(boxes)}]


def detr_outputs():
    gen = torch.Generator().manual_seed(0)
    return {"logits": torch.randn(1, 5, NUM_CLASSES, generator=gen), "boxes": torch.rand(1, 5, 4, generator=gen)}


def nan_offsets(shape):
    offsets = torch.zeros(shape)
    offsets.view(-1)[3] = float("nan")
    return offsets


def deform_with_nan(backend):
    x, weight = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    return lambda: deform_conv2d(x, nan_offsets((1, 18, 3, 3)), weight, backend=backend)


def deform_module_with_nan_weight():
    layer = DeformConv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        layer.offset_conv.weight[0, 0, 1, 1] = float("nan")  # one NaN weight in the offset branch
    return lambda: layer(torch.randn(1, 2, 5, 5))


def tood_forward_with_nan_offset_weight():
    head = tood.TOODHead(NUM_CLASSES, 16, 16, stacked_convs=2)
    model = DenseDetector(head, fpn_channels=16)
    with torch.no_grad():
        head.reg_offset_module[-1].weight[0, 0, 1, 1] = float("nan")
    return lambda: model(torch.rand(1, 3, IMAGE, IMAGE))


def dk_global_with_nan():
    layer = DeformableKernel2d(4, kernel_size=1, scope_size=2, mode="global")
    with torch.no_grad():
        layer.kernel_offset_fc.bias[0] = float("nan")
    return lambda: layer(torch.randn(1, 4, 6, 6))


def msda_with_flat_reference_points():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes = torch.tensor([[4, 4], [2, 2]])
    return lambda: attn(torch.randn(1, 3, 16), torch.rand(1, 3, 2), torch.randn(1, 20, 16), shapes)


BAD = [
    # id, call, exception type, phrase of the message
    # -- item 1: ground truth that cannot be right, in every assigner
    ("atss-inverted-gt", atss_with(INVERTED), ValueError, r"gt_boxes has 1 boxes with x2 < x1 or y2 < y1"),
    ("atss-xywh-as-xyxy", atss_with(XYWH), ValueError, r"xywh passed as xyxy"),
    ("atss-nan-gt", atss_with(NAN), ValueError, r"gt_boxes has 1 boxes with non-finite coordinates"),
    ("atss-float64-gt", lambda: assigners.atss_assign(*anchors_and_levels(), torch.tensor([[4.0, 6.0, 30.0, 40.0]],
                                                                                       dtype=torch.float64)),
     TypeError, r"dtype torch.float64; expected torch.float32"),
    ("max-iou-inverted-gt", lambda: assigners.max_iou_assign(anchors_and_levels()[0], torch.tensor([INVERTED])),
     ValueError, r"x2 < x1"),
    ("tal-inverted-gt", tal_with(INVERTED), ValueError, r"x2 < x1 or y2 < y1"),
    ("tal-nan-gt", tal_with(NAN), ValueError, r"non-finite"),
    ("tal-float64-gt", tal_with(gt_dtype=torch.float64), TypeError, r"expected torch.float32, the predictions' dtype"),
    ("tal-logits-not-probs", tal_with(scores=dense_output().cls_logits[0]), ValueError,
     r"expected probabilities in \[0, 1\].*logits"),
    ("tal-nan-scores", tal_with(scores=torch.full_like(dense_output().cls_probs[0], float("nan"))),
     FloatingPointError, r"non-finite"),
    ("tal-float-labels", tal_with(gt_labels=torch.tensor([1.0])), TypeError, r"integer tensor of class indices"),
    ("hps-inverted-gt", lambda: hps.hps_assign(dense_output().cls_probs[0], dense_output().boxes[0],
                                               dense_output().priors.points, torch.tensor([INVERTED]),
                                               torch.tensor([0]), topk=5), ValueError, r"x2 < x1"),
    ("hps-logits-not-probs", lambda: hps.hps_assign(dense_output().cls_logits[0], dense_output().boxes[0],
                                                    dense_output().priors.points, torch.tensor([[4.0, 6.0, 30.0, 40.0]]),
                                                    torch.tensor([0]), topk=5), ValueError, r"probabilities in \[0, 1\]"),
    # -- item 1: the loss entry points
    ("atss-loss-inverted-gt", loss_call(atss.atss_loss, gt_with(INVERTED)), ValueError,
     r"gt_boxes\[1\] has 1 boxes with x2 < x1 or y2 < y1 .*first: \[30\.0, 40\.0, 4\.0, 6\.0\]"),
    ("atss-loss-nan-gt", loss_call(atss.atss_loss, gt_with(NAN)), ValueError, r"gt_boxes\[1\] has 1 boxes with non-finite"),
    ("atss-loss-float64-gt", loss_call(atss.atss_loss, gt_with([4.0, 6.0, 30.0, 40.0], dtype=torch.float64)),
     TypeError, r"gt_boxes\[1\] has dtype torch.float64; expected torch.float32"),
    ("atss-loss-label-out-of-range", loss_call(atss.atss_loss, (good_gt()[0], [torch.tensor([0, 2]), torch.tensor([0, 3])])),
     ValueError, r"gt_labels\[1\] must lie in \[0, 3\)"),
    ("atss-loss-fewer-lists", loss_call(atss.atss_loss, good_gt(1)), ValueError,
     r"gt_boxes has 1 lists for a batch of 2 images"),
    ("atss-loss-batch-of-0", loss_call(atss.atss_loss, ([], []), batch=0), ValueError, r"0 images"),
    ("atss-targets-inverted-gt", lambda: atss.atss_targets(dense_output(), gt_with(INVERTED)[0]), ValueError, r"x2 < x1"),
    ("atss-terms-assignment-shape", loss_call(atss.atss_loss_terms, good_gt(), assigned=torch.zeros(2, 5, dtype=torch.long)),
     ValueError, r"assigned must have shape \(2, 84\)"),
    ("tood-loss-fewer-lists", loss_call(tood.tood_loss, good_gt(1), warmup=False), ValueError,
     r"gt_boxes has 1 lists for a batch of 2 images"),
    ("tood-loss-inverted-gt", loss_call(tood.tood_loss, gt_with(INVERTED), warmup=False), ValueError, r"x2 < x1"),
    ("tood-warmup-xywh-gt", loss_call(tood.tood_loss, gt_with(XYWH), warmup=True), ValueError, r"xywh passed as xyxy"),
    ("tal-targets-nan-gt", loss_call(tood.tal_targets, gt_with(NAN)), ValueError, r"non-finite"),
    ("hps-targets-fewer-lists", loss_call(hps.hps_targets, good_gt(1), topk=5), ValueError, r"1 lists for a batch of 2"),
    ("autoassign-inverted-gt", autoassign_call(gt_with(INVERTED)), ValueError, r"x2 < x1"),
    ("autoassign-float64-gt", autoassign_call(gt_with([4.0, 6.0, 30.0, 40.0], dtype=torch.float64)), TypeError,
     r"float64; expected torch.float32"),
    ("border-targets-inverted-gt", lambda: borderdet.border_targets(dense_output().boxes, *gt_with(INVERTED)),
     ValueError, r"x2 < x1"),
    ("border-targets-fewer-lists", lambda: borderdet.border_targets(dense_output().boxes, *good_gt(1)),
     ValueError, r"1 lists for a batch of 2"),
    ("detr-targets-inverted-pixels", lambda: hungarian.targets_from_pixels(*gt_with(INVERTED), IMAGE),
     ValueError, r"x2 < x1"),
    ("set-loss-negative-width", lambda: hungarian.set_loss(detr_outputs(), detr_targets([[0.5, 0.5, -0.2, 0.3]]),
                                                           NUM_CLASSES), ValueError, r"w < 0 or h < 0"),
    ("set-loss-nan-box", lambda: hungarian.set_loss(detr_outputs(), detr_targets([[0.5, NAN[0], 0.2, 0.3]]),
                                                    NUM_CLASSES), ValueError, r"not finite"),
    ("set-loss-float64-boxes", lambda: hungarian.set_loss(
        detr_outputs(), [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]], dtype=torch.float64)}],
        NUM_CLASSES), TypeError, r"float64; expected torch.float32"),
    ("match-negative-width", lambda: hungarian.hungarian_match(detr_outputs()["logits"], detr_outputs()["boxes"],
                                                               detr_targets([[0.5, 0.5, -0.2, 0.3]])),
     ValueError, r"w < 0 or h < 0"),
    ("cross-dataset-class-index-targets", lambda: dataset_aware_focal_loss(
        torch.zeros(4, 3), torch.tensor([[2.0, 0, 0]] * 4), torch.ones(3, dtype=torch.bool)),
     ValueError, r"probabilities in \[0, 1\] for targets"),
    ("dataset-aware-loss-label-mask-rows", loss_call(dataset_aware_atss_loss, good_gt(),
                                                     label_mask=torch.ones(1, NUM_CLASSES, dtype=torch.bool)),
     ValueError, r"label_mask must be \(B, C\) = \(2, 3\)"),
    # -- item 1: the losses themselves
    ("giou-inverted-target", lambda: giou_loss(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[10.0, 10.0, 0.0, 0.0]])),
     ValueError, r"target_boxes has 1 boxes with x2 < x1"),
    ("giou-rows-mismatch", lambda: giou_loss(torch.zeros(3, 4), torch.zeros(2, 4)), ValueError, r"one row per prediction"),
    ("qfl-fewer-label-rows", lambda: quality_focal_loss_prob(torch.full((6, 3), 0.5), torch.tensor([0, -1, 1]),
                                                             torch.full((6,), 0.5)), ValueError,
     r"labels must have shape \(6,\), one row per prediction"),
    ("qfl-fewer-quality-rows", lambda: quality_focal_loss_prob(torch.full((6, 3), 0.5), torch.full((6,), -1),
                                                               torch.full((3,), 0.5)), ValueError, r"quality must have shape"),
    ("qfl-label-out-of-range", lambda: quality_focal_loss_prob(torch.full((2, 3), 0.5), torch.tensor([3, -1]),
                                                               torch.full((2,), 0.5)), ValueError, r"labels must lie in \[-1, 3\)"),
    ("focal-prob-target-rows", lambda: focal_loss_prob(torch.full((6, 3), 0.5), torch.zeros(3, 3)), ValueError,
     r"targets must have shape \(6, 3\)"),
    # -- item 2: deformable paths refuse non-finite offsets before the kernel
    ("deform-conv-nan-offset-torchvision", deform_with_nan("torchvision"), FloatingPointError,
     r"offset has 1 non-finite values.*diverged"),
    ("deform-conv-nan-offset-auto", deform_with_nan("auto"), FloatingPointError, r"non-finite"),
    ("deform-conv-inf-offset-torch", lambda: deform_conv2d(torch.randn(1, 2, 5, 5), torch.full((1, 18, 3, 3), float("inf")),
                                                           torch.randn(3, 2, 3, 3), backend="torch"),
     FloatingPointError, r"non-finite"),
    ("dcn-module-nan-weight", deform_module_with_nan_weight(), FloatingPointError, r"offset has .* non-finite"),
    ("tood-align-nan-offsets", lambda: tood.align_boxes(torch.randn(1, 4, 3, 3), nan_offsets((1, 8, 3, 3))),
     FloatingPointError, r"TOOD's box offsets has 1 non-finite"),
    ("tood-forward-nan-offset-weight", tood_forward_with_nan_offset_weight(), FloatingPointError, r"TOOD's box offsets"),
    ("dk-local-nan-kernel-offset", lambda: deformable_kernel_conv2d(torch.randn(1, 2, 5, 5), nan_offsets((1, 18, 3, 3)),
                                                                    torch.randn(2, 1, 4, 4), 3),
     FloatingPointError, r"kernel_offset has 1 non-finite"),
    ("dk-local-nan-image-offset", lambda: deformable_kernel_conv2d(torch.randn(1, 2, 5, 5), torch.zeros(1, 18, 3, 3),
                                                                   torch.randn(2, 1, 4, 4), 3,
                                                                   image_offset=nan_offsets((1, 18, 3, 3))),
     FloatingPointError, r"image_offset has 1 non-finite"),
    ("dk-global-nan-offset", dk_global_with_nan(), FloatingPointError, r"kernel offsets has"),
    # -- item 3: clear errors instead of obscure ones
    ("detector-uint8-images", lambda: DenseDetector(atss.ATSSHead(NUM_CLASSES, 16, 16), fpn_channels=16)(
        torch.zeros(1, 3, IMAGE, IMAGE, dtype=torch.uint8)), TypeError, r"images must be torch.float32 .*images.float\(\) / 255"),
    ("detector-float64-images", lambda: DenseDetector(atss.ATSSHead(NUM_CLASSES, 16, 16), fpn_channels=16)(
        torch.zeros(1, 3, IMAGE, IMAGE, dtype=torch.float64)), TypeError, r"images must be torch.float32 .*got torch.float64"),
    ("detector-head-channels", lambda: DenseDetector(atss.ATSSHead(NUM_CLASSES, 32, 32), fpn_channels=16),
     ValueError, r"head takes 32 input channels but the FPN gives fpn_channels=16"),
    ("detector-tood-head-channels", lambda: DenseDetector(tood.TOODHead(NUM_CLASSES, 64, 16), fpn_channels=16),
     ValueError, r"in_channels=16"),
    ("msda-reference-points-without-levels", msda_with_flat_reference_points(), ValueError,
     r"reference_points must be \(N, Lq, L, 2 or 4\) = \(1, 3, 2, 2\|4\).*got \(1, 3, 2\)"),
]


@pytest.mark.parametrize("case, call, error, phrase", BAD, ids=[row[0] for row in BAD])
def test_bad_input_is_refused(case, call, error, phrase):
    with pytest.raises(error, match=phrase):
        call()


# --------------------------------------------------------------------------- what must work


def test_images_without_objects_are_legitimate():
    out = dense_output()
    empty = ([torch.zeros(0, 4), torch.tensor([[4.0, 6.0, 30.0, 40.0]])], [torch.zeros(0, dtype=torch.long), torch.tensor([1])])
    check_gt(*empty, num_images=2, num_classes=NUM_CLASSES, like=out.boxes)
    check_gt_boxes(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), NUM_CLASSES, like=out.boxes)
    for losses in (atss.atss_loss(out, *empty), tood.tood_loss(out, *empty, warmup=False),
                   tood.tood_loss(out, *empty, warmup=True),
                   autoassign.autoassign_loss(autoassign_output(), *empty, autoassign.CenterPrior(NUM_CLASSES))):
        assert all(torch.isfinite(v) for v in losses.values())
    anchors, levels = anchors_and_levels()
    assigned, _ = assigners.atss_assign(anchors, levels, torch.zeros(0, 4))
    assert (assigned == -1).all()
    assert hungarian.targets_from_pixels(*empty, IMAGE)[0]["boxes"].shape == (0, 4)


def test_degenerate_but_valid_gt_boxes_pass():
    """x2 == x1 (a zero-width box) is allowed: the rule is x2 >= x1."""
    check_gt_boxes(torch.tensor([[5.0, 5.0, 5.0, 9.0]]))


def test_giou_loss_on_valid_boxes_is_bit_identical_to_torchvision():
    gen = torch.Generator().manual_seed(0)
    low = 50 * torch.rand(64, 2, generator=gen)
    pred = torch.cat([low, low + 20 * torch.rand(64, 2, generator=gen)], 1)
    pred[0, 2] = pred[0, 0]  # a zero-width prediction is valid
    low = 50 * torch.rand(64, 2, generator=gen)
    target = torch.cat([low, low + 20 * torch.rand(64, 2, generator=gen)], 1)
    ours_in, ref_in = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    ours = giou_loss(ours_in, target)
    reference = generalized_box_iou_loss(ref_in, target, reduction="none")
    assert torch.equal(ours, reference)
    (ours * torch.arange(64.0)).sum().backward()
    (reference * torch.arange(64.0)).sum().backward()
    assert torch.equal(ours_in.grad, ref_in.grad)


def test_giou_loss_of_a_doubly_inverted_prediction_is_not_a_perfect_score():
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    pred = torch.tensor([[10.0, 10.0, 0.0, 0.0],  # inverted on both axes: torchvision says 0
                         [9.0, 12.0, 1.0, -2.0],  # inverted on both axes, larger than the target
                         [10.0, 0.0, 0.0, 10.0],  # inverted in x only: torchvision's loss >= 1, kept
                         [2.0, 2.0, 8.0, 8.0]], requires_grad=True)  # valid
    plain = generalized_box_iou_loss(pred.detach(), target, reduction="none")
    assert float(plain[0]) == pytest.approx(0.0) and float(plain[1]) < 1  # the bug this fixes
    loss = giou_loss(pred, target)
    values = loss.detach()
    assert float(values[0]) >= 1.0 and float(values[1]) >= 1.0  # collapsed to its centre
    assert torch.equal(values[2:], plain[2:])  # one axis inverted, and valid: unchanged
    assert float(values[2]) >= 1.0
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all()


def test_valid_calls_are_unchanged():
    """Valid input runs on every entry point of the table (the checks raise nothing) and gives
    finite losses and assignments that use the objects."""
    out = dense_output()
    gt = good_gt()
    for losses in (atss.atss_loss(out, *gt), tood.tood_loss(out, *gt, warmup=False)):
        assert set(losses) >= {"cls", "box"} and all(torch.isfinite(v) for v in losses.values())
    assignment, topk_used = hps.hps_targets(out, *gt, topk=5)
    assert assignment.gt_index.shape == out.cls_probs.shape[:2] and (assignment.gt_index >= 0).any()
    assert all(t.tolist() == [5, 5] for t in topk_used)
    assert (atss.atss_targets(out, gt[0]).gt_index >= 0).any()
    borderdet.border_targets(out.boxes, *gt)
    targets = hungarian.targets_from_pixels(*gt, IMAGE)
    outputs = {"logits": torch.randn(2, 5, NUM_CLASSES), "boxes": torch.rand(2, 5, 4)}
    assert all(torch.isfinite(v) for v in hungarian.set_loss(outputs, targets, NUM_CLASSES).values())
    x, offset = torch.randn(1, 2, 5, 5), torch.randn(1, 18, 3, 3)
    assert torch.equal(deform_conv2d(x, offset, torch.ones(3, 2, 3, 3), backend="torch"),
                       deform_module.deform_conv2d_reference(x, offset, torch.ones(3, 2, 3, 3)))
    DenseDetector(atss.ATSSHead(NUM_CLASSES, 16, 16), fpn_channels=16)(torch.rand(1, 3, IMAGE, IMAGE))


def test_tood_align_boxes_still_matches_torchvision(monkeypatch):
    """With finite offsets align_boxes calls the kernel as before (the real one, for this test)."""
    monkeypatch.setattr(tood_module, "deform_conv2d", torchvision.ops.deform_conv2d)
    boxes, offsets = torch.randn(1, 4, 4, 5), torch.randn(1, 8, 4, 5) * 0.4
    expected = torchvision.ops.deform_conv2d(boxes, offsets, torch.ones(4, 1, 1, 1))
    assert torch.equal(tood.align_boxes(boxes, offsets), expected)
