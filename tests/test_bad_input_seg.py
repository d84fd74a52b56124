"""Bad input to the segmenters (kit.seg): each row a call that must be refused, with the
exception type and a phrase of its message."""
import pytest
import torch

from kit.hpo.truncated_normal_ppo import TruncatedNormalPolicy
from kit.seg.alternation import alternating_batch_for, dat_loss, dataset_at, iteration_batches, sampled_dataset_at
from kit.seg.auto_seg_loss import (OFFICIAL_BF1_CONTROL_POINTS, OFFICIAL_MIOU_CONTROL_POINTS, auto_seg_loss,
                                   control_points_from_theta)
from kit.seg.dataset_bn import DatasetBatchNorm2d, convert_to_dataset_bn, set_dataset, using_dataset
from kit.seg.dynamic_routing import (DynamicRoutingNet, RoutingCell, RoutingSpace, budget_loss, budget_rate,
                                     matched_hrnet_gates, special_case_gates)
from kit.seg.models import TinyFCN, segmentation_loss
from kit.seg.seg_losses import dice_loss, lovasz_softmax
from kit.seg.tree_filter_net import NonLocalBlock, PlainFusion, TreeFilterFCN, TreeFilterFusion

MODEL = TinyFCN(3)
LOGITS = torch.zeros(2, 4, 8, 8)
DBN = DatasetBatchNorm2d(2, 2)
X2 = torch.zeros(2, 2, 3, 3)


def _enter(module, dataset):
    with using_dataset(module, dataset):
        pass


def _net(seed=0, layers=5, scales=3, **kwargs):
    torch.manual_seed(seed)
    return DynamicRoutingNet(4, layers, scales, base_channels=8, decoder_channels=8, **kwargs)


LOGITS3 = torch.zeros(1, 3, 4, 4)
LABELS = torch.zeros(1, 4, 4, dtype=torch.long)
MIOU_POINTS = torch.tensor(OFFICIAL_MIOU_CONTROL_POINTS)
BF1_POINTS = torch.tensor(OFFICIAL_BF1_CONTROL_POINTS)

BAD = [
    ("fcn: zero classes", lambda: TinyFCN(0), ValueError,
     r"num_classes \(object classes, background not counted\) must be >= 1, got 0"),
    ("fcn: float classes", lambda: TinyFCN(2.0), TypeError, r"must be an int, got float"),
    ("fcn: uint8 images", lambda: MODEL(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)), TypeError,
     r"images must be float in \[0, 1\].*images.float\(\) / 255"),
    ("fcn: one-channel images", lambda: MODEL(torch.zeros(1, 1, 16, 16)), ValueError, r"images must be \(B, 3, H, W\)"),
    ("loss: targets of another size", lambda: segmentation_loss(LOGITS, torch.zeros(2, 8, 9, dtype=torch.long)),
     ValueError, r"targets \(B, H, W\) of the same B, H, W"),
    ("loss: float targets", lambda: segmentation_loss(LOGITS, torch.zeros(2, 8, 8)), TypeError, r"targets must be long"),
    ("loss: label beyond the logits", lambda: segmentation_loss(LOGITS, torch.full((2, 8, 8), 4)), ValueError,
     r"label ids in \[0, 4\) or 255 \(ignored\), got values in \[4, 4\]"),
    ("loss: -1 padding", lambda: segmentation_loss(LOGITS, torch.full((2, 8, 8), -1)), ValueError, r"label ids in \[0, 4\)"),
    ("ltf net: unknown aggregator", lambda: TreeFilterFCN(3, "psp"), ValueError,
     r"aggregator must be one of \('plain', 'tree_filter', 'non_local'\), got 'psp'"),
    ("ltf net: stage out of range", lambda: TreeFilterFCN(3, stages=(3,)), ValueError,
     r"stages must be a non-empty tuple of fusion indices in \(0, 1, 2\)"),
    ("ltf net: no stage", lambda: TreeFilterFCN(3, stages=()), ValueError, r"stages must be a non-empty tuple"),
    ("ltf net: groups not dividing the decoder", lambda: TreeFilterFCN(3, decoder_channels=24, groups=16), ValueError,
     r"groups must be an int >= 1 that divides channels \(24\), got 16"),
    ("ltf net: uint8 images", lambda: TreeFilterFCN(3)(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)), TypeError,
     r"images must be float in \[0, 1\]"),
    ("ltf fusion: maps of two sizes", lambda: TreeFilterFusion(4, 2)(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 5)),
     ValueError, r"previous \(1, 4, 4, 4\) and latent \(1, 4, 4, 5\) must have one shape"),
    ("ltf fusion: non-finite latent", lambda: TreeFilterFusion(4, 2)(torch.zeros(1, 4, 3, 3),
                                                                     torch.full((1, 4, 3, 3), float("nan"))),
     ValueError, r"guidance has 36 non-finite values"),
    ("plain fusion: 3-d map", lambda: PlainFusion()(torch.zeros(4, 4, 4), torch.zeros(4, 4, 4)), ValueError,
     r"previous must be a \(B, C, H, W\) tensor"),
    ("non-local: zero channels", lambda: NonLocalBlock(0), ValueError, r"channels must be an int >= 1, got 0"),
    ("non-local: 3-d map", lambda: NonLocalBlock(4)(torch.zeros(4, 3, 3)), ValueError, r"x must be a \(B, C, H, W\)"),
    ("dataset bn: zero datasets", lambda: DatasetBatchNorm2d(4, 0), ValueError, r"num_datasets must be >= 1, got 0"),
    ("dataset bn: float datasets", lambda: DatasetBatchNorm2d(4, 2.0), TypeError, r"num_datasets must be an int, got float"),
    ("dataset bn: index out of range", lambda: DBN(X2, dataset=2), ValueError, r"dataset index must be in \[0, 2\), got 2"),
    ("dataset bn: negative index", lambda: set_dataset(DBN, -1), ValueError, r"dataset index must be in \[0, 2\), got -1"),
    ("dataset bn: float index", lambda: DBN(X2, dataset=1.0), TypeError, r"dataset must be an int index, got float"),
    ("dataset bn: bool index", lambda: set_dataset(DBN, True), TypeError, r"dataset must be an int index, got bool"),
    ("dataset bn: string index", lambda: set_dataset(DBN, "0"), TypeError, r"dataset must be an int index, got str"),
    ("dataset bn: mixed batch", lambda: DBN(X2, dataset=torch.tensor([0, 1])), ValueError,
     r"a batch must come from one dataset .* got samples of datasets \[0, 1\]"),
    ("dataset bn: float per-sample ids", lambda: DBN(X2, dataset=torch.tensor([0.0, 0.0])), TypeError,
     r"per-sample dataset ids must be a 1-d integer tensor"),
    ("dataset bn: empty per-sample ids", lambda: DBN(X2, dataset=torch.tensor([], dtype=torch.long)), ValueError,
     r"per-sample dataset ids are empty"),
    ("dataset bn: no active dataset", lambda: DatasetBatchNorm2d(2, 2)(X2), RuntimeError,
     r"no dataset is active .*using_dataset\(model, d\)"),
    ("dataset bn: from a LayerNorm", lambda: DatasetBatchNorm2d.from_batchnorm(torch.nn.LayerNorm(2), 2), TypeError,
     r"bn must be a torch.nn.BatchNorm2d, got LayerNorm"),
    ("convert: not a module", lambda: convert_to_dataset_bn("model", 2), TypeError,
     r"module must be a torch.nn.Module, got str"),
    ("convert: zero datasets", lambda: convert_to_dataset_bn(TinyFCN(2), 0), ValueError, r"num_datasets must be >= 1"),
    ("set_dataset: unconverted model", lambda: set_dataset(TinyFCN(2), 0), ValueError,
     r"TinyFCN has no DatasetBatchNorm2d: convert it with convert_to_dataset_bn first"),
    ("using_dataset: index out of range", lambda: _enter(DBN, 5), ValueError, r"dataset index must be in \[0, 2\)"),
    ("dat: negative step", lambda: dataset_at(-1, 2), ValueError, r"step must be >= 0, got -1"),
    ("dat: zero datasets", lambda: dataset_at(0, 0), ValueError, r"num_datasets must be >= 1, got 0"),
    ("dat: float step", lambda: dataset_at(1.0, 2), TypeError, r"step must be an int, got float"),
    ("dat: no batch functions", lambda: alternating_batch_for([]), ValueError,
     r"batch_fors must be a non-empty list of per-dataset step -> batch functions"),
    ("dat: batch function not callable", lambda: alternating_batch_for([lambda s: s, 3]), TypeError,
     r"batch_fors\[1\] must be callable"),
    ("dat: negative iteration", lambda: iteration_batches([lambda s: s])(-1), ValueError, r"iteration must be >= 0"),
    ("dat loss: no batches", lambda: dat_loss(DBN, [], lambda m, d, b: 0), ValueError, r"at least one"),
    ("sampled dat: negative weight", lambda: sampled_dataset_at(0, [1, -1], 0), ValueError,
     r"weights must be a non-empty 1-d sequence of finite values >= 0"),
    ("sampled dat: all-zero weights", lambda: sampled_dataset_at(0, [0, 0], 0), ValueError, r"with a positive sum"),
    ("cell: odd channels", lambda: RoutingCell(7, True, True), ValueError, r"channels must be an even int >= 2"),
    ("cell: wrong channels in", lambda: RoutingCell(8, True, True)(torch.zeros(1, 4, 4, 4)), ValueError,
     r"x must be \(B, 8, h, w\), got \(1, 4, 4, 4\)"),
    ("space: zero layers", lambda: RoutingSpace(0, 3), ValueError, r"num_layers must be an int >= 1, got 0"),
    ("space: five scales", lambda: RoutingSpace(4, 5), ValueError, r"num_scales must be in 1..4"),
    ("space: no such cell", lambda: RoutingSpace(4, 3).routes(1, 2), ValueError, r"no cell \(1, 2\) in a 4 x 3 space"),
    ("special: unknown name", lambda: special_case_gates(RoutingSpace(5, 3), "pspnet"), ValueError,
     r"special case must be one of \('raw', 'fcn', 'unet', 'hrnet'\), got 'pspnet'"),
    ("special: unet too shallow", lambda: special_case_gates(RoutingSpace(4, 3), "unet"), ValueError,
     r"needs num_layers >= 5, got 4"),
    ("net: zero classes", lambda: DynamicRoutingNet(0), ValueError, r"num_classes .* must be an int >= 1, got 0"),
    ("net: uint8 images", lambda: _net()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)), TypeError,
     r"images must be float in \[0, 1\]"),
    ("net: gray images", lambda: _net()(torch.zeros(1, 1, 32, 32)), ValueError, r"images must be \(B, 3, H, W\)"),
    ("net: side not a multiple", lambda: _net()(torch.zeros(1, 3, 36, 36)), ValueError,
     r"image sides must be multiples of 16 .* got \(36, 36\)"),
    ("net: coarsest map 1 x 1", lambda: _net()(torch.zeros(1, 3, 16, 16)), ValueError, r"at least 2 x 2"),
    ("net: gates for another space", lambda: _net(fixed_gates=special_case_gates(RoutingSpace(4, 3), "raw")),
     ValueError, r"fixed_gates must be a dict with one entry per cell"),
    ("net: a gate above 1", lambda: _net(fixed_gates={**special_case_gates(RoutingSpace(5, 3), "raw"),
                                                      (1, 0): torch.tensor([1.0, 2.0])}),
     ValueError, r"fixed gates of cell \(1, 0\) must be 2 values in \[0, 1\] for routes \['keep', 'down'\]"),
    ("matched: fraction 0", lambda: matched_hrnet_gates(_net(), 32, 0.0), ValueError, r"fraction must be in \(0, 1\]"),
    ("budget: 2-d flops", lambda: budget_loss(torch.zeros(2, 2), 1.0, 0.4, 1.0), ValueError,
     r"expected_flops must be a non-empty \(B,\) tensor"),
    ("budget: zero C_max", lambda: budget_loss(torch.zeros(2), 0.0, 0.4, 1.0), ValueError, r"max_flops .* must be > 0"),
    ("budget: mu above 1", lambda: budget_loss(torch.zeros(2), 1.0, 1.5, 1.0), ValueError,
     r"mu \(the target fraction of C_max\) must be in \[0, 1\], got 1.5"),
    ("budget: negative weight", lambda: budget_loss(torch.zeros(2), 1.0, 0.4, -1.0), ValueError,
     r"weight \(lambda\) must be >= 0"),
    ("budget rate: step past the end", lambda: budget_rate(10, 10), ValueError, r"step must be in \[0, iterations\)"),
    ("asl: unknown metric", lambda: auto_seg_loss(LOGITS3, LABELS, MIOU_POINTS, "BIoU"), ValueError, r"metric must be one of \('mIoU', 'BF1'\)"),
    ("asl: control points of the wrong length", lambda: auto_seg_loss(LOGITS3, LABELS, MIOU_POINTS[:8], "mIoU"), ValueError,
     r"control points for mIoU must have shape \(12,\), got \(8,\)"),
    ("asl: non-monotone control points", lambda: auto_seg_loss(LOGITS3, LABELS, torch.tensor([0.5, 0.5, 0.4, 0.6, 0.7, 0.8] * 2), "mIoU"), ValueError,
     r"curve 0 of mIoU: .* must increase in x strictly"),
    ("asl: float labels", lambda: auto_seg_loss(LOGITS3, LABELS.float(), MIOU_POINTS), TypeError, r"labels must be long class ids"),
    ("asl: label beyond the logits", lambda: auto_seg_loss(LOGITS3, torch.full((1, 4, 4), 3), MIOU_POINTS), ValueError,
     r"labels must be label ids in \[0, 3\) or 255 \(ignored\), got values in \[3, 3\]"),
    ("asl: 3-d logits", lambda: auto_seg_loss(LOGITS3[0], LABELS, MIOU_POINTS), ValueError, r"logits must be a float \(B, L, H, W\)"),
    ("asl: labels of another size", lambda: auto_seg_loss(LOGITS3, LABELS[:, :3], MIOU_POINTS), ValueError, r"labels must be \(B, H, W\)"),
    ("asl: fractional BF1 tolerance", lambda: auto_seg_loss(LOGITS3, LABELS, BF1_POINTS, "BF1", tolerance=1.5), ValueError,
     r"tolerance must be an int >= 0"),
    ("asl: theta above 1", lambda: control_points_from_theta(torch.full((12,), 1.2), "mIoU"), ValueError, r"theta must lie in \[0, 1\]"),
    ("asl: theta of the wrong length", lambda: control_points_from_theta(torch.full((6,), 0.5), "mIoU"), ValueError,
     r"theta for mIoU must end in a dimension of 12"),
    ("lovasz: float labels", lambda: lovasz_softmax(LOGITS3, LABELS.float()), TypeError, r"labels must be long"),
    ("dice: -1 padding", lambda: dice_loss(LOGITS3, torch.full((1, 4, 4), -1)), ValueError, r"labels must be label ids in \[0, 3\)"),
    ("dice: zero smoothing", lambda: dice_loss(LOGITS3, LABELS, smooth=0), ValueError, r"smooth and exponent must be > 0"),
    ("ppo policy: mu on the bound", lambda: TruncatedNormalPolicy([0.0, 0.5]), ValueError, r"mu must lie strictly inside \(0.0, 1.0\)"),
    ("ppo policy: zero sigma", lambda: TruncatedNormalPolicy([0.5], 0.0), ValueError, r"sigma must be > 0"),
    ("ppo policy: empty interval", lambda: TruncatedNormalPolicy([0.5], 0.2, 1.0, 1.0), ValueError, r"high must exceed low"),
    ("ppo policy: one sample with the mean", lambda: TruncatedNormalPolicy([0.5]).sample(1), ValueError, r"num_samples must be an int >= 2"),
    ("ppo update: theta of another dimension", lambda: TruncatedNormalPolicy([0.5]).ppo_update(torch.zeros(3, 2), torch.zeros(3)), ValueError, r"theta must be \(S, 1\)"),
    ("ppo update: NaN reward", lambda: TruncatedNormalPolicy([0.5]).ppo_update(torch.zeros(2, 1), torch.tensor([0.0, float("nan")])),
     ValueError, r"rewards must be finite"),
    ("ppo update: theta outside the support", lambda: TruncatedNormalPolicy([0.5]).ppo_update(torch.tensor([[0.5], [1.5]]), torch.zeros(2)),
     ValueError, r"theta must be samples in \[0.0, 1.0\].*got 1 values outside it or NaN"),
    ("ppo update: NaN theta", lambda: TruncatedNormalPolicy([0.5]).ppo_update(torch.tensor([[0.5], [float("nan")]]), torch.zeros(2)),
     ValueError, r"got 1 values outside it or NaN"),
    ("lovasz: NaN logits", lambda: lovasz_softmax(torch.full((1, 3, 4, 4), float("nan")), LABELS), ValueError,
     r"logits has 48 non-finite values \(NaN or inf\)"),
    ("dice: inf logits", lambda: dice_loss(LOGITS3.index_fill(1, torch.tensor([0]), float("inf")), LABELS), ValueError,
     r"logits has 16 non-finite values"),
    ("asl: NaN logits", lambda: auto_seg_loss(LOGITS3.index_fill(2, torch.tensor([1]), float("nan")), LABELS, MIOU_POINTS), ValueError,
     r"logits has 12 non-finite values"),
    ("routing net: NaN images", lambda: _net()(torch.full((1, 3, 32, 32), float("nan"))), ValueError,
     r"images has 3072 non-finite values \(NaN or inf\)"),
]


@pytest.mark.parametrize("build, error, phrase", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_refused(build, error, phrase):
    with pytest.raises(error, match=phrase):
        build()
