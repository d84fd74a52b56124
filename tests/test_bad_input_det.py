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
from kit.det.optimal_transport import background_cost, dynamic_k, linear_schedule, ot_assign, sinkhorn_log
from kit.det.priors import point_priors
from kit.det.equalization_loss import class_gradients, equalization_loss, softmax_cross_entropy
from kit.det.region_detector import RegionDetector, region_proposals
from kit.det.roi_heads import FasterRCNNHead, head_flops
from kit.det.rpn import region_proposal_network
from kit.det.two_stage import TwoStageDetector, detect_from_rois, fast_rcnn_loss, sample_rois, two_stage_detector
from kit.det.validation import check_gt, check_gt_boxes
from kit.ops.deform_conv import DeformConv2d, deform_conv2d
from kit.ops.deformable_kernels import DeformableKernel2d, deformable_kernel_conv2d
from kit.ops.ms_deform_attn import MSDeformAttn
from kit.det.light_head import LargeSeparableConv, LightHeadHead, RFCNHead
from kit.nn.detnet import DetNetBottleneck, TinyDetNet, TopDownNeck, stage_flops, tiny_detnet
from kit.det.dynamic_sparse_rcnn import DynamicProposalGenerator, dla_schedule, ot_assigner
from kit.det.sparse_rcnn import SparseRCNN, stage_loss
from kit.ops.ps_roi_align import bin_channel_map, ps_roi_align
from kit.ops.roi_align import MultiLevelRoIAlign, roi_align
from kit.det.thundernet import ContextEnhancement, LightRPNFeature, SpatialAttention, ThunderNet, ThunderNetHead, thundernet
from kit.nn.snet import SNet, ShuffleUnit
from kit.data.emblem_scenes import EmblemSceneConfig
from kit.det.adj_nms import adj_nms, soft_nms, vote
from kit.det.tsd import TSDDetector, TSDHead, progressive_constraint, shift_boxes
from kit.ops.delta_roi_align import delta_roi_align

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


def tiny_sparse_rcnn():
    return SparseRCNN(NUM_CLASSES, num_proposals=4, num_stages=1, hidden_dim=16, dynamic_dim=4, image_size=IMAGE,
                      widths=(8, 8, 8, 8))


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


PS_ROIS = torch.tensor([[0, 4.0, 6.0, 30.0, 40.0], [1, 20.0, 20.0, 60.0, 50.0]])


def ps_roi_align_with(features=None, boxes=None, output_size=3, **kw):
    """ps_roi_align on two 18-channel 8x8 maps (C = 2, 3x3 bins) with one bad piece swapped in."""
    features = torch.randn(2, 18, 8, 8) if features is None else features
    return lambda: ps_roi_align(features, PS_ROIS if boxes is None else boxes, output_size, **kw)


ROI_BOXES = [torch.tensor([[4.0, 6.0, 30.0, 40.0]]), torch.tensor([[20.0, 20.0, 60.0, 50.0]])]


def roi_align_with(features=None, boxes=None, output_size=7, sampling_ratio=2):
    """kit.ops.roi_align.roi_align on two 4-channel 8x8 maps with one bad piece swapped in."""
    features = torch.randn(2, 4, 8, 8) if features is None else features
    return lambda: roi_align(features, ROI_BOXES if boxes is None else boxes, output_size, 1 / 16, sampling_ratio)


def rois_with(column, value):
    rois = PS_ROIS.clone()
    rois[0, column] = value
    return rois


def two_stage(**detector_options):
    """A tiny two-stage detector (C4 of 16 channels, 2fc of 16) for 64 px images."""
    return two_stage_detector(FasterRCNNHead, NUM_CLASSES, seed=0, widths=(8, 8, 16, 16), fc_channels=16,
                              detector_options=detector_options or None)


def two_stage_loss(gt):
    return lambda: two_stage().loss(torch.rand(2, 3, IMAGE, IMAGE), *gt)


def roi_outputs(rois: int = 5, logit_columns: int = NUM_CLASSES + 1, delta_columns: int = 4 * NUM_CLASSES):
    """Head outputs for ``rois`` RoIs: zero logits (R, ``logit_columns``), zero deltas (R, ``delta_columns``)."""
    return torch.zeros(rois, logit_columns), torch.zeros(rois, delta_columns)


def detect_with(rois=5, **options):
    return lambda: detect_from_rois(*roi_outputs(), [torch.tensor([[4.0, 6.0, 30.0, 40.0]] * rois)], (IMAGE, IMAGE),
                                    **options)


def rpn_with(**options):
    return lambda: region_proposal_network(16, **options)


def sinkhorn_with(cost=None, supply=None, demand=None, epsilon=0.1, num_iters=10):
    """sinkhorn_log on a valid (2, 3) problem, with one argument replaced."""
    cost = torch.rand(2, 3) if cost is None else cost
    supply = torch.tensor([1.0, 2.0]) if supply is None else supply
    demand = torch.ones(3) if demand is None else demand
    return lambda: sinkhorn_log(cost, supply, demand, epsilon, num_iters)


def ot_assign_with(**changes):
    """ot_assign on a valid problem (5 queries, 2 objects), with some arguments replaced."""
    kwargs = {"cost_fg": torch.rand(5, 2), "ious": 0.3 * torch.rand(5, 2), "cost_bg": torch.rand(5)}
    kwargs.update(changes)
    return lambda: ot_assign(**kwargs)


BAD = [
    # id, call, exception type, phrase of the message
    # -- the long-tail chapter: equalization loss and the region detector
    ("eql-nan-logits", lambda: equalization_loss(torch.full((2, 3), float("nan")), torch.tensor([0, 1]), torch.full((3,), 0.1), 0.05),
     ValueError, r"logits has 6 non-finite values"),
    ("eql-frequency-length", lambda: equalization_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.full((4,), 0.1), 0.05),
     ValueError, r"logits must have 4 columns here, got 3"),
    ("eql-frequency-above-one", lambda: equalization_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0.1, 2.0, 0.1]), 0.05),
     ValueError, r"image_frequency must be fractions of the training images in \[0, 1\]"),
    ("eql-lambda-above-one", lambda: equalization_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.full((3,), 0.1), 5.0),
     ValueError, r"lam \(lambda\) must be a frequency in \[0, 1\], got 5.0"),
    ("eql-float-labels", lambda: equalization_loss(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), torch.full((3,), 0.1), 0.05),
     TypeError, r"labels must be long \(0 background, c \+ 1 class c\)"),
    ("eql-label-beyond", lambda: equalization_loss(torch.zeros(2, 3), torch.tensor([0, 4]), torch.full((3,), 0.1), 0.05),
     ValueError, r"labels must lie in \[0, 3\] \(0 background\), got 0..4"),
    ("eql-labels-per-roi", lambda: equalization_loss(torch.zeros(2, 3), torch.tensor([0]), torch.full((3,), 0.1), 0.05),
     ValueError, r"labels must be \(2,\), one per RoI"),
    ("softmax-ce-label-beyond", lambda: softmax_cross_entropy(torch.zeros(2, 4), torch.tensor([0, 4])), ValueError,
     r"labels must lie in \[0, 3\]"),
    ("class-gradients-weights-shape", lambda: class_gradients(torch.zeros(2, 3), torch.tensor([0, 1]), torch.ones(3, 3)),
     ValueError, r"weights must be \(2, 3\) like the logits"),
    ("proposals-negative-count", lambda: region_proposals([torch.zeros(0, 4)], 64, per_object=-1), ValueError,
     r"per_object must be an int >= 0, got -1"),
    ("proposals-nan-jitter", lambda: region_proposals([torch.zeros(0, 4)], 64, jitter=float("nan")), ValueError,
     r"jitter must be a finite fraction >= 0"),
    ("proposals-boxes-shape", lambda: region_proposals([torch.zeros(3, 5)], 64), ValueError, r"gt_boxes\[0\]"),
    ("region-detector-scoring", lambda: RegionDetector(3, softmax_cross_entropy, "focal"), ValueError,
     r"scoring must be one of \('softmax', 'sigmoid'\), got 'focal'"),
    ("region-detector-loss-not-callable", lambda: RegionDetector(3, "bce"), TypeError, r"cls_loss must be a function"),
    ("region-detector-uint8-images", lambda: RegionDetector(3, softmax_cross_entropy)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), [torch.zeros(1, 4)]),
     TypeError, r"images must be float in \[0, 1\], got torch.uint8"),
    ("region-detector-nan-images", lambda: RegionDetector(3, softmax_cross_entropy)(torch.full((1, 3, 32, 32), float("nan")), [torch.zeros(1, 4)]),
     ValueError, r"images has 3072 non-finite values"),
    ("region-detector-proposals-per-image", lambda: RegionDetector(3, softmax_cross_entropy)(torch.zeros(2, 3, 32, 32), [torch.zeros(1, 4)]),
     ValueError, r"need one proposal tensor per image \(2\), got 1"),
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
    # -- RoIAlign (kit.ops.roi_align)
    ("roialign-3d-features", roi_align_with(features=torch.randn(4, 8, 8)), ValueError,
     r"features must be a \(B, C, H, W\) tensor, got \(4, 8, 8\)"),
    ("roialign-integer-features", roi_align_with(features=torch.zeros(2, 4, 8, 8, dtype=torch.long)), TypeError,
     r"features must be floating point, got torch.int64"),
    ("roialign-empty-map", roi_align_with(features=torch.randn(2, 4, 0, 8)), ValueError, r"non-empty map"),
    ("roialign-nan-features", roi_align_with(features=torch.full((2, 4, 8, 8), float("nan"))), ValueError,
     r"features contain NaN or inf"),
    ("roialign-boxes-one-tensor", roi_align_with(boxes=torch.zeros(2, 5)), ValueError,
     r"boxes must be a list of \(R_i, 4\) xyxy tensors, one per image \(2\)"),
    ("roialign-fewer-box-lists", roi_align_with(boxes=ROI_BOXES[:1]), ValueError, r"one per image \(2\).*length 1"),
    ("roialign-boxes-with-index", roi_align_with(boxes=[torch.zeros(1, 5)] * 2), ValueError,
     r"boxes\[0\] must be an \(R, 4\) xyxy tensor, got \(1, 5\)"),
    ("roialign-integer-boxes", roi_align_with(boxes=[b.long() for b in ROI_BOXES]), TypeError,
     r"boxes\[0\] must be floating point"),
    ("roialign-nan-box", roi_align_with(boxes=[torch.tensor([[0.0, float("nan"), 4.0, 4.0]])] * 2), ValueError,
     r"boxes\[0\] contain NaN or inf"),
    ("roialign-inverted-box", roi_align_with(boxes=[torch.tensor([[9.0, 0.0, 4.0, 4.0]])] * 2), ValueError,
     r"x2 >= x1 and y2 >= y1"),
    ("roialign-output-size-0", roi_align_with(output_size=0), ValueError, r"output_size must be an int >= 1"),
    ("roialign-float-sampling-ratio", roi_align_with(sampling_ratio=2.0), ValueError, r"sampling_ratio must be an int"),
    ("multilevel-strides-not-powers-of-two", lambda: MultiLevelRoIAlign([4, 6]), ValueError,
     r"strides must be a non-empty list of powers of two"),
    ("multilevel-strides-coarsest-first", lambda: MultiLevelRoIAlign([8, 4]), ValueError, r"finest first"),
    ("multilevel-wrong-level-count", lambda: MultiLevelRoIAlign([4, 8])([torch.randn(1, 2, 8, 8)],
                                                                       [torch.zeros(0, 4)]), ValueError,
     r"expected 2 levels \(strides \[4, 8\]\), got 1"),
    # -- PSRoIAlign (kit.ops.ps_roi_align)
    ("psroi-3d-features", ps_roi_align_with(features=torch.randn(18, 8, 8)), ValueError,
     r"features must be \(N, C \* ph \* pw, H, W\).*got \(18, 8, 8\)"),
    ("psroi-channels-not-multiple", ps_roi_align_with(features=torch.randn(2, 16, 8, 8)), ValueError,
     r"positive multiple of ph \* pw = 9, got \(2, 16, 8, 8\)"),
    ("psroi-empty-map", ps_roi_align_with(features=torch.randn(2, 18, 0, 8)), ValueError, r"non-empty map"),
    ("psroi-integer-features", ps_roi_align_with(features=torch.zeros(2, 18, 8, 8, dtype=torch.long)), TypeError,
     r"features must be floating point, got torch.int64"),
    ("psroi-nan-features", ps_roi_align_with(features=torch.full((2, 18, 8, 8), float("nan"))), ValueError,
     r"features contain NaN or inf"),
    ("psroi-boxes-without-batch-index", ps_roi_align_with(boxes=PS_ROIS[:, 1:]), ValueError,
     r"boxes must be \(K, 5\) as \[batch_index, x1, y1, x2, y2\].*got \(2, 4\)"),
    ("psroi-boxes-not-a-tensor", ps_roi_align_with(boxes=PS_ROIS.numpy()), TypeError, r"got ndarray"),
    ("psroi-integer-boxes", ps_roi_align_with(boxes=PS_ROIS.long()), TypeError, r"boxes must be floating point"),
    ("psroi-list-fewer-images", ps_roi_align_with(boxes=[PS_ROIS[:1, 1:]]), ValueError,
     r"boxes has 1 tensors for a batch of 2 images"),
    ("psroi-list-rois-with-index", ps_roi_align_with(boxes=[PS_ROIS, PS_ROIS]), ValueError,
     r"boxes\[0\] must be a \(Ki, 4\) tensor.*got \(2, 5\)"),
    ("psroi-fractional-batch-index", ps_roi_align_with(boxes=rois_with(0, 0.5)), ValueError, r"integral batch indices"),
    ("psroi-batch-index-out-of-range", ps_roi_align_with(boxes=rois_with(0, 2)), ValueError,
     r"batch indices in \[0, 1\], got values in \[1, 2\]"),
    ("psroi-nan-box", ps_roi_align_with(boxes=rois_with(1, float("nan"))), ValueError, r"boxes contain NaN or inf"),
    ("psroi-inverted-box", ps_roi_align_with(boxes=rois_with(3, 1.0)), ValueError, r"x2 >= x1 and y2 >= y1"),
    ("psroi-output-size-0", ps_roi_align_with(output_size=0), ValueError, r"output_size must be an int >= 1"),
    ("psroi-output-size-triple", ps_roi_align_with(output_size=(3, 3, 1)), ValueError, r"or a pair \(ph, pw\)"),
    ("psroi-spatial-scale-0", ps_roi_align_with(spatial_scale=0.0), ValueError, r"spatial_scale must be a finite number > 0"),
    ("psroi-spatial-scale-nan", ps_roi_align_with(spatial_scale=float("nan")), ValueError, r"finite number > 0"),
    ("psroi-float-sampling-ratio", ps_roi_align_with(sampling_ratio=2.0), ValueError, r"sampling_ratio must be an int"),
    ("psroi-map-channels-not-multiple", lambda: bin_channel_map(7, 7, 480), ValueError,
     r"num_channels must be a positive multiple of ph \* pw = 49"),
    # -- the two-stage detector (kit.det.rpn, kit.det.two_stage, kit.det.roi_heads)
    ("two-stage-uint8-images", lambda: two_stage()(torch.zeros(1, 3, IMAGE, IMAGE, dtype=torch.uint8)), TypeError,
     r"images must be torch.float32 .*images.float\(\) / 255"),
    ("two-stage-gray-images", lambda: two_stage()(torch.zeros(1, 1, IMAGE, IMAGE)), ValueError,
     r"images must be \(B, 3, H, W\), got \(1, 1, 64, 64\)"),
    ("two-stage-loss-inverted-gt", two_stage_loss(gt_with(INVERTED)), ValueError,
     r"gt_boxes\[1\] has 1 boxes with x2 < x1 or y2 < y1"),
    ("two-stage-loss-nan-gt", two_stage_loss(gt_with(NAN)), ValueError, r"gt_boxes\[1\] has 1 boxes with non-finite"),
    ("two-stage-loss-float64-gt", two_stage_loss(gt_with([4.0, 6.0, 30.0, 40.0], dtype=torch.float64)), TypeError,
     r"gt_boxes\[1\] has dtype torch.float64; expected torch.float32"),
    ("two-stage-loss-label-out-of-range", two_stage_loss((good_gt()[0], [torch.tensor([0, 2]), torch.tensor([0, 3])])),
     ValueError, r"gt_labels\[1\] must lie in \[0, 3\)"),
    ("two-stage-loss-fewer-lists", two_stage_loss(good_gt(1)), ValueError, r"gt_boxes has 1 lists for a batch of 2 images"),
    ("two-stage-head-channels", lambda: TwoStageDetector(two_stage().backbone, region_proposal_network(16),
                                                         FasterRCNNHead(NUM_CLASSES, 32)), ValueError,
     r"head takes 32 input channels but the backbone gives 16; build the head with in_channels=16"),
    ("two-stage-not-an-rpn", lambda: TwoStageDetector(two_stage().backbone, torch.nn.Identity(), FasterRCNNHead(3, 16)),
     TypeError, r"the rpn must be a kit.det.rpn.RPN, got Identity"),
    ("two-stage-not-a-roi-head", lambda: TwoStageDetector(two_stage().backbone, region_proposal_network(16),
                                                          torch.nn.Identity()), TypeError,
     r"the roi_head must be a kit.det.roi_heads.RoIHead, got Identity"),
    ("two-stage-num-rois-0", lambda: two_stage(num_rois=0), ValueError, r"num_rois must be an int >= 1, got 0"),
    ("two-stage-positive-fraction-0", lambda: two_stage(positive_fraction=0.0), ValueError,
     r"positive_fraction and iou_threshold must be in \(0, 1\]"),
    ("roi-head-0-classes", lambda: FasterRCNNHead(0, 16), ValueError, r"num_classes must be an int >= 1, got 0"),
    ("sample-rois-proposals-5-columns", lambda: sample_rois([torch.zeros(3, 5)], *good_gt(1)), ValueError,
     r"proposals\[0\] must have shape \(\*, 4\), got \(3, 5\)"),
    ("sample-rois-inverted-gt", lambda: sample_rois([torch.zeros(3, 4)] * 2, *gt_with(INVERTED)), ValueError,
     r"gt_boxes\[1\] has 1 boxes with x2 < x1"),
    ("fast-rcnn-loss-delta-columns", lambda: fast_rcnn_loss(*roi_outputs(delta_columns=8), torch.zeros(5, dtype=torch.long),
                                                           torch.zeros(5, 4)), ValueError,
     r"box_deltas must be \(R, 4 \* C\) = \(5, 12\) or \(R, 4\) class-agnostic, got \(5, 8\)"),
    ("fast-rcnn-loss-label-out-of-range", lambda: fast_rcnn_loss(*roi_outputs(), torch.full((5,), 4), torch.zeros(5, 4)),
     ValueError, r"labels must lie in \[0, 3\] \(0 background\)"),
    ("fast-rcnn-loss-no-background-column", lambda: fast_rcnn_loss(*roi_outputs(logit_columns=1, delta_columns=4),
                                                                  torch.zeros(5, dtype=torch.long), torch.zeros(5, 4)),
     ValueError, r"C \+ 1 >= 2 columns \(column 0 background\)"),
    ("detect-rois-count-mismatch", detect_with(rois=4), ValueError, r"class_logits must have shape \(4, \*\), got \(5, 4\)"),
    ("detect-score-threshold-1", detect_with(score_threshold=1.0), ValueError, r"score_threshold must be in \[0, 1\)"),
    ("detect-nms-threshold-0", detect_with(nms_iou_threshold=0.0), ValueError, r"nms_iou_threshold must be in \(0, 1\]"),
    ("detect-max-per-image-float", detect_with(max_per_image=10.0), ValueError, r"max_per_image must be an int >= 1"),
    ("rpn-features-3d", lambda: region_proposal_network(16)(torch.zeros(2, 3, IMAGE, IMAGE), torch.zeros(2, 16, 4)),
     ValueError, r"features must be one map \(B, F, h, w\) with B = 2 images, got \(2, 16, 4\)"),
    ("rpn-no-anchor-sizes", rpn_with(anchor_sizes=()), ValueError, r"anchor_sizes must be a non-empty sequence"),
    ("rpn-negative-aspect-ratio", rpn_with(aspect_ratios=(1.0, -2.0)), ValueError, r"aspect_ratios must be .*positive"),
    ("rpn-pre-nms-topk-0", rpn_with(pre_nms_topk_test=0), ValueError, r"pre_nms_topk_test must be an int >= 1, got 0"),
    ("rpn-thresholds-swapped", rpn_with(pos_iou_threshold=0.3, neg_iou_threshold=0.7), ValueError,
     r"need 0 <= neg_iou_threshold <= pos_iou_threshold <= 1"),
    ("rpn-positive-fraction-0", rpn_with(positive_fraction=0.0), ValueError, r"positive_fraction must be in \(0, 1\]"),
    # -- DetNet's backbone (kit.nn.detnet)
    ("detnet-identity-shortcut-channels", lambda: DetNetBottleneck(16, 32), ValueError,
     r"an identity shortcut \(type A\) needs in_channels == out_channels and stride 1, got 16 -> 32"),
    ("detnet-identity-shortcut-stride", lambda: DetNetBottleneck(16, 16, stride=2), ValueError,
     r"type A\) needs .* stride 2; use projection=True"),
    ("detnet-dilation-0", lambda: DetNetBottleneck(16, 16, dilation=0), ValueError, r"dilation must be an int >= 1, got 0"),
    ("detnet-stride-3", lambda: DetNetBottleneck(16, 16, stride=3, projection=True), ValueError,
     r"stride must be 1 or 2, got 3"),
    ("detnet-two-widths", lambda: TinyDetNet(widths=(16, 32)), ValueError, r"widths are the channels of stages 2-4"),
    ("detnet-three-stage-strides", lambda: TinyDetNet(stage_strides=(1, 1, 1)), ValueError,
     r"stage_strides must have two entries \(stages 5 and 6\)"),
    ("detnet-blocks-0", lambda: tiny_detnet(blocks=(0, 2)), ValueError, r"blocks must be an int >= 1, got 0"),
    ("detnet-gray-images", lambda: tiny_detnet()(torch.zeros(1, 1, IMAGE, IMAGE)), ValueError,
     r"images must be \(B, 3, H, W\), got \(1, 1, 64, 64\)"),
    ("detnet-set-dilation-three", lambda: tiny_detnet().set_dilation((1, 2, 2)), ValueError,
     r"dilation must be an int or two ints"),
    ("detnet-flops-not-detnet", lambda: stage_flops(torch.nn.Identity(), IMAGE), TypeError,
     r"backbone must be a TinyDetNet, got Identity"),
    ("detnet-neck-unknown", lambda: tiny_detnet(neck="pan"), ValueError,
     r"neck must be one of \('fpn', 'last'\), got 'pan'"),
    ("detnet-topdown-two-levels", lambda: TopDownNeck((64, 64), 64), ValueError,
     r"in_channels are the channels of C4, C5, C6 \(three ints\), got \(64, 64\)"),
    ("detnet-topdown-channels-0", lambda: TopDownNeck((64, 0, 64), 64), ValueError,
     r"in_channels of C5 must be an int >= 1, got 0"),
    ("detnet-topdown-missing-c6", lambda: TopDownNeck((8, 8, 8), 8)({"C4": torch.zeros(1, 8, 4, 4),
                                                                    "C5": torch.zeros(1, 8, 4, 4)}), ValueError,
     r"the neck reads the maps \('C4', 'C5', 'C6'\), missing \['C6'\]"),
    # -- optimal transport (OTA / Dynamic Sparse R-CNN): Sinkhorn and the assignment
    ("sinkhorn-nan-cost", sinkhorn_with(cost=torch.tensor([[0.0, float("nan"), 1.0], [1.0, 1.0, 1.0]])),
     ValueError, r"cost has 1 non-finite values"),
    ("sinkhorn-inf-cost", sinkhorn_with(cost=torch.tensor([[0.0, float("inf"), 1.0], [1.0, 1.0, 1.0]])),
     ValueError, r"use a large finite cost"),
    ("sinkhorn-negative-supply", sinkhorn_with(supply=torch.tensor([-1.0, 4.0])), ValueError, r"supply must be >= 0"),
    ("sinkhorn-nan-demand", sinkhorn_with(demand=torch.tensor([1.0, float("nan"), 1.0])), ValueError,
     r"demand has 1 non-finite"),
    ("sinkhorn-unequal-totals", sinkhorn_with(supply=torch.tensor([1.0, 3.0])), ValueError,
     r"total supply 4 != total demand 3"),
    ("sinkhorn-supply-shape", sinkhorn_with(supply=torch.ones(3)), ValueError, r"supply must have shape \(2\), got \(3,\)"),
    ("sinkhorn-cost-1d", sinkhorn_with(cost=torch.rand(6)), ValueError, r"cost must have shape \(\*, \*\)"),
    ("sinkhorn-integer-cost", sinkhorn_with(cost=torch.ones(2, 3, dtype=torch.long)), TypeError,
     r"cost must be a floating-point tensor"),
    ("sinkhorn-float64-supply", sinkhorn_with(supply=torch.tensor([1.0, 2.0], dtype=torch.float64)), TypeError,
     r"supply has dtype torch.float64; expected torch.float32, the cost's dtype"),
    ("sinkhorn-zero-epsilon", sinkhorn_with(epsilon=0.0), ValueError, r"epsilon must be a finite number > 0"),
    ("sinkhorn-zero-iters", sinkhorn_with(num_iters=0), ValueError, r"num_iters must be an int >= 1"),
    ("ot-assign-ious-above-1", ot_assign_with(ious=torch.full((5, 2), 1.5)), ValueError,
     r"ious must be IoUs, finite in \[0, 1\]"),
    ("ot-assign-nan-ious", ot_assign_with(ious=torch.full((5, 2), float("nan"))), ValueError, r"and NaN"),
    ("ot-assign-ious-shape", ot_assign_with(ious=torch.rand(5, 3)), ValueError, r"ious must have shape \(5, 2\)"),
    ("ot-assign-cost-bg-shape", ot_assign_with(cost_bg=torch.rand(4)), ValueError, r"cost_bg must have shape \(5\)"),
    ("ot-assign-nan-cost", ot_assign_with(cost_fg=torch.tensor([[float("nan"), 0.0]] + [[0.0, 0.0]] * 4)),
     ValueError, r"cost_fg has 1 non-finite"),
    ("ot-assign-float64-ious", ot_assign_with(ious=torch.rand(5, 2, dtype=torch.float64)), TypeError,
     r"ious has dtype torch.float64; expected torch.float32"),
    ("ot-assign-supply-above-queries", ot_assign_with(supply=3), ValueError,
     r"the 2 objects supply 6 units but there are only 5 queries"),
    ("ot-assign-zero-supply", ot_assign_with(supply=torch.tensor([1.0, 0.0])), ValueError,
     r"supply must be finite and > 0 for every object"),
    ("ot-assign-supply-shape", ot_assign_with(supply=torch.ones(3)), ValueError,
     r"supply must be a number or an \(M,\) = \(2,\) tensor"),
    ("ot-assign-zero-iou-topk", ot_assign_with(iou_topk=0), ValueError, r"iou_topk must be an int >= 1"),
    ("dynamic-k-float-iou-topk", lambda: dynamic_k(torch.rand(5, 2), 2.5), ValueError, r"iou_topk must be an int >= 1"),
    ("linear-schedule-no-stages", lambda: linear_schedule(1.0, 3.0, 0), ValueError, r"num_stages must be an int >= 1"),
    ("background-cost-1d-logits", lambda: background_cost(torch.rand(5)), ValueError, r"logits must have shape \(\*, \*\)"),
    # -- Light-Head R-CNN and R-FCN heads (kit.det.light_head)
    ("large-separable-even-kernel", lambda: LargeSeparableConv(8, 8, kernel_size=14), ValueError,
     r"kernel_size must be odd \(so the map keeps its size\), got 14"),
    ("large-separable-zero-mid", lambda: LargeSeparableConv(8, 8, mid_channels=0), ValueError,
     r"mid_channels must be an int >= 1, got 0"),
    ("light-head-alpha-0", lambda: LightHeadHead(3, 16, alpha=0), ValueError, r"alpha must be an int >= 1, got 0"),
    ("light-head-float-pooled-size", lambda: LightHeadHead(3, 16, pooled_size=7.0), ValueError,
     r"pooled_size must be an int >= 1, got 7.0"),
    ("rfcn-zero-hidden", lambda: RFCNHead(3, 16, hidden_channels=0), ValueError, r"hidden_channels must be an int >= 1"),
    ("rfcn-zero-classes", lambda: RFCNHead(0, 16), ValueError, r"num_classes must be an int >= 1, got 0"),
    ("two-stage-backbone-without-out-channels", lambda: two_stage_detector(FasterRCNNHead, 3, backbone=torch.nn.Identity()),
     ValueError, r"the backbone must have an int out_channels \(its map's channels\), got Identity\(\)"),
    ("head-flops-zero-rois", lambda: head_flops(RFCNHead(3, 16), torch.rand(1, 16, 4, 4), 0, (64, 64)), ValueError,
     r"num_rois must be an int >= 1, got 0"),
    ("head-flops-3d-features", lambda: head_flops(RFCNHead(3, 16), torch.rand(16, 4, 4), 5, (64, 64)), ValueError,
     r"features must be \(B, C, h, w\), got \(16, 4, 4\)"),
    # -- ThunderNet (kit.nn.snet, kit.det.thundernet)
    ("snet-three-widths", lambda: SNet(widths=(24, 48, 96)), ValueError, r"SNet needs 4 widths \(stem, C3, C4, C5\)"),
    ("snet-unknown-output", lambda: SNet(outputs=("C2",)), ValueError, r"outputs must be a non-empty sequence of"),
    ("snet-gray-images", lambda: SNet()(torch.rand(1, 1, 64, 64)), ValueError, r"images must be \(B, 3, H, W\)"),
    ("shuffle-unit-stride-3", lambda: ShuffleUnit(24, 48, 3), ValueError, r"stride must be 1 or 2, got 3"),
    ("shuffle-unit-even-kernel", lambda: ShuffleUnit(48, 48, 1, kernel_size=4), ValueError, r"kernel_size must be odd"),
    ("shuffle-unit-stride-1-width-change", lambda: ShuffleUnit(24, 48, 1), ValueError,
     r"equal to in_channels at stride 1"),
    ("cem-without-c4", lambda: ContextEnhancement(8, 16, terms=("C5", "global")), ValueError,
     r"terms must include 'C4'"),
    ("cem-mismatched-batches", lambda: ContextEnhancement(8, 16)(torch.rand(2, 8, 4, 4), torch.rand(1, 16, 2, 2)),
     ValueError, r"C4 and C5 must be maps \(B, C, h, w\) of one batch"),
    ("light-rpn-even-kernel", lambda: LightRPNFeature(49, 16, kernel_size=4), ValueError, r"kernel_size must be odd"),
    ("sam-grid-mismatch", lambda: SpatialAttention(16, 49)(torch.rand(1, 49, 4, 4), torch.rand(1, 16, 5, 5)),
     ValueError, r"F_CEM must be \(B, 49, h, w\) on F_RPN's grid"),
    ("thundernet-head-not-alpha-p2", lambda: ThunderNetHead(3, 100), ValueError,
     r"in_channels must be alpha \* pooled_size\^2 \(245 = 5 \* 7 \* 7\), got 100"),
    ("thundernet-resnet-backbone", lambda: ThunderNet(torch.nn.Conv2d(3, 8, 1), *thundernet_parts()), TypeError,
     r"the backbone must be a kit.nn.snet.SNet with outputs \('C4', 'C5'\)"),
    ("thundernet-uint8-images", lambda: thundernet(3, rpn_channels=16).loss(
        torch.zeros(1, 3, 64, 64, dtype=torch.uint8), [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)]),
     TypeError, r"uint8 pixels: use images.float\(\) / 255"),
    # -- Sparse R-CNN and Dynamic Sparse R-CNN (kit.det.sparse_rcnn, kit.det.dynamic_sparse_rcnn)
    ("sparse-rcnn-zero-proposals", lambda: SparseRCNN(3, num_proposals=0), ValueError,
     r"num_proposals must be an int >= 1, got 0"),
    ("sparse-rcnn-heads-do-not-divide", lambda: SparseRCNN(3, hidden_dim=30, num_heads=4), ValueError,
     r"hidden_dim \(30\) must be divisible by num_heads \(4\)"),
    ("sparse-rcnn-unbatched-image", lambda: tiny_sparse_rcnn()(torch.rand(3, 64, 64)), ValueError,
     r"images must be \(B, 3, H, W\), got \(3, 64, 64\)"),
    ("sparse-rcnn-nms-threshold-0", lambda: tiny_sparse_rcnn().detect(torch.rand(1, 3, 64, 64), nms_iou_threshold=0.0),
     ValueError, r"nms_iou_threshold must be in \(0, 1\] or None"),
    ("stage-loss-batch-mismatch", lambda: stage_loss(torch.rand(2, 4, 3), torch.rand(2, 4, 4), detr_targets([[0.5, 0.5, 0.2, 0.2]]),
                                                     [(torch.tensor([0]), torch.tensor([0]))]), ValueError,
     r"logits must have shape \(1, \*, \*\)"),
    ("dla-schedule-negative-supply", lambda: dla_schedule(8), ValueError, r"the schedule must stay finite and > 0"),
    ("dla-schedule-no-stages", lambda: dla_schedule(0), ValueError, r"num_stages must be an int >= 1, got 0"),
    ("ot-assigner-empty-supplies", lambda: ot_assigner([]), ValueError, r"supplies must be a non-empty list"),
    ("ot-assigner-zero-supply", lambda: ot_assigner([1.0, 0.0]), ValueError, r"finite numbers > 0, one per stage"),
    ("ot-assigner-stage-beyond-schedule", lambda: ot_assigner([1.0])(torch.rand(1, 4, 3), torch.rand(1, 4, 4),
                                                                     detr_targets([[0.5, 0.5, 0.2, 0.2]]), 1),
     ValueError, r"stage 1 has no supply: the schedule has 1 stages"),
    ("dpg-zero-experts", lambda: DynamicProposalGenerator(8, 16, num_experts=0), ValueError,
     r"num_experts must be an int >= 1, got 0"),
    ("dpg-mix-wrong-weights", lambda: DynamicProposalGenerator(8, 16, 4).mix(torch.ones(2, 3) / 3), ValueError,
     r"weights must be \(B, 4\), got \(2, 3\)"),
    ("dpg-three-levels", lambda: DynamicProposalGenerator(8, 16, 4)([torch.rand(1, 16, s, s) for s in (8, 4, 2)]),
     ValueError, r"expected 4 pyramid levels, got 3"),
    # -- TSD, adj-NMS, voting, emblem scenes (kit.ops.delta_roi_align, kit.det.tsd, kit.det.adj_nms, kit.data.emblem_scenes)
    ("delta-roi-align-nan-offsets", lambda: delta_roi_align(torch.rand(1, 4, 6, 6), [torch.tensor([[0.0, 0.0, 40.0, 40.0]])],
                                                            torch.full((1, 2), float("nan"))), ValueError, r"offsets must be finite"),
    ("delta-roi-align-offsets-shape", lambda: delta_roi_align(torch.rand(1, 4, 6, 6), [torch.tensor([[0.0, 0.0, 40.0, 40.0]])],
                                                              torch.zeros(1, 2, 5, 5)), ValueError,
     r"offsets must be \(R, 2, p, p\) per bin or \(R, 2\) per RoI"),
    ("delta-roi-align-3d-features", lambda: delta_roi_align(torch.rand(4, 6, 6), [torch.zeros(1, 4)]), ValueError,
     r"features must be \(B, C, h, w\), got \(4, 6, 6\)"),
    ("delta-roi-align-zero-sampling", lambda: delta_roi_align(torch.rand(1, 4, 6, 6), [torch.zeros(1, 4)], sampling_ratio=0),
     ValueError, r"sampling_ratio must be an int >= 1, got 0"),
    ("delta-roi-align-nan-gamma", lambda: delta_roi_align(torch.rand(1, 4, 6, 6), [torch.zeros(1, 4)], gamma=float("nan")),
     ValueError, r"gamma must be a finite number"),
    ("delta-roi-align-batch-index", lambda: delta_roi_align(torch.rand(1, 4, 6, 6), torch.tensor([[1.0, 0.0, 0.0, 9.0, 9.0]])),
     ValueError, r"roi batch indices must be whole numbers in \[0, 0\]"),
    ("delta-roi-align-nan-box", lambda: delta_roi_align(torch.rand(1, 4, 6, 6), [torch.tensor([[0.0, float("nan"), 9.0, 9.0]])]),
     ValueError, r"rois must be finite"),
    ("delta-roi-align-boxes-3-columns", lambda: delta_roi_align(torch.rand(1, 4, 6, 6), [torch.zeros(2, 3)]), ValueError,
     r"boxes\[0\] must be \(R_i, 4\) xyxy"),
    ("tsd-head-zero-fc", lambda: TSDHead(3, 16, fc_channels=0), ValueError, r"fc_channels must be an int >= 1, got 0"),
    ("tsd-head-gamma-0", lambda: TSDHead(3, 16, gamma=0.0), ValueError, r"gamma must be in \(0, 1\]"),
    ("tsd-detector-plain-head", lambda: TSDDetector(*tsd_parts()[:2], FasterRCNNHead(3, 64)), TypeError,
     r"the roi_head of a TSDDetector must be a TSDHead, got FasterRCNNHead"),
    ("tsd-detector-margin-1.5", lambda: TSDDetector(*tsd_parts(), margin_cls=1.5), ValueError,
     r"margin_cls must be in \[0, 1\]"),
    ("pc-logits-shape-mismatch", lambda: progressive_constraint(torch.rand(3, 4), torch.rand(3, 5), torch.zeros(3, dtype=torch.long),
                                                                *[torch.rand(0, 4)] * 3), ValueError, r"sibling_logits must have shape \(3, 5\)"),
    ("pc-gt-boxes-mismatch", lambda: progressive_constraint(torch.rand(2, 4), torch.rand(2, 4), torch.ones(2, dtype=torch.long),
                                                            torch.rand(2, 4), torch.rand(2, 4), torch.rand(1, 4)), ValueError,
     r"gt_boxes must have shape \(2, 4\)"),
    ("shift-boxes-delta-r-3", lambda: shift_boxes(torch.rand(2, 4), torch.rand(2, 3)), ValueError,
     r"delta_r must have shape \(2, 2\)"),
    ("soft-nms-sigma-0", lambda: soft_nms(torch.rand(2, 4), torch.rand(2), sigma=0.0), ValueError, r"sigma must be a number > 0"),
    ("soft-nms-sigma-nan", lambda: soft_nms(torch.rand(2, 4), torch.rand(2), sigma=float("nan")), ValueError,
     r"sigma must be a number > 0"),
    ("soft-nms-threshold-1", lambda: soft_nms(torch.rand(2, 4), torch.rand(2), score_threshold=1.0), ValueError,
     r"score_threshold must be in \[0, 1\)"),
    ("soft-nms-nan-score", lambda: soft_nms(torch.rand(2, 4), torch.tensor([0.5, float("nan")])), ValueError,
     r"boxes and scores must be finite"),
    ("soft-nms-int-boxes", lambda: soft_nms(torch.ones(2, 4, dtype=torch.long), torch.rand(2)), TypeError,
     r"boxes and scores must be floating point"),
    ("soft-nms-scores-shape", lambda: soft_nms(torch.rand(3, 4), torch.rand(2)), ValueError, r"scores must have shape \(3\), got \(2,\)"),
    ("adj-nms-float-labels", lambda: adj_nms(torch.rand(2, 4), torch.rand(2), torch.zeros(2)), TypeError,
     r"labels must be integers"),
    ("adj-nms-threshold-0", lambda: adj_nms(torch.rand(2, 4), torch.rand(2), torch.zeros(2, dtype=torch.long), 0.0), ValueError,
     r"nms_threshold must be in \(0, 1\]"),
    ("vote-no-models", lambda: vote([]), ValueError, r"detections must be a non-empty list, one dict per model"),
    ("vote-threshold-2", lambda: vote([{"boxes": torch.rand(1, 4), "scores": torch.rand(1), "labels": torch.zeros(1, dtype=torch.long)}], 2.0),
     ValueError, r"iou_threshold must be in \[0, 1\]"),
    ("vote-missing-labels", lambda: vote([{"boxes": torch.rand(1, 4), "scores": torch.rand(1)}]), ValueError,
     r"detections\[0\] must be a dict with boxes, scores and labels"),
    ("emblem-config-7-classes", lambda: EmblemSceneConfig(num_images=4, num_classes=7), ValueError, r"num_classes must be in 1..6"),
    ("emblem-config-scale-0", lambda: EmblemSceneConfig(num_images=4, emblem_scale=0.0), ValueError,
     r"emblem_scale must be in \(0, 0.5\]"),
]


def tsd_parts():
    """A TSD detector's backbone, RPN and head."""
    model = two_stage_detector(TSDHead, 3)
    return model.backbone, model.rpn, model.roi_head


def thundernet_parts():
    """A ThunderNet's parts after its backbone (CEM, light RPN, RPN, SAM, head)."""
    model = thundernet(3, rpn_channels=16)
    return model.backbone.cem, model.rpn_feature, model.rpn, model.sam, model.roi_head


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


def test_empty_tsd_and_nms_inputs_are_legitimate():
    assert delta_roi_align(torch.rand(2, 4, 6, 6), [torch.zeros(0, 4), torch.zeros(0, 4)]).shape == (0, 4, 7, 7)
    keep, scores = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.numel() == 0 and scores.numel() == 0
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    assert vote([empty, empty])["boxes"].shape == (0, 4)
    assert shift_boxes(torch.zeros(0, 4), torch.zeros(0, 2)).shape == (0, 4)
