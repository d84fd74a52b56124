"""Bad input to the segmenters (kit.seg): each row a call that must be refused, with the
exception type and a phrase of its message."""
import pytest
import torch

from kit.seg.alternation import alternating_batch_for, dat_loss, dataset_at, iteration_batches, sampled_dataset_at
from kit.seg.dataset_bn import DatasetBatchNorm2d, convert_to_dataset_bn, set_dataset, using_dataset
from kit.seg.models import TinyFCN, segmentation_loss
from kit.seg.tree_filter_net import NonLocalBlock, PlainFusion, TreeFilterFCN, TreeFilterFusion

MODEL = TinyFCN(3)
LOGITS = torch.zeros(2, 4, 8, 8)
DBN = DatasetBatchNorm2d(2, 2)
X2 = torch.zeros(2, 2, 3, 3)


def _enter(module, dataset):
    with using_dataset(module, dataset):
        pass

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
]


@pytest.mark.parametrize("build, error, phrase", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_refused(build, error, phrase):
    with pytest.raises(error, match=phrase):
        build()
