"""Bad input to the segmenters (kit.seg): each row a call that must be refused, with the
exception type and a phrase of its message."""
import pytest
import torch

from kit.seg.models import TinyFCN, segmentation_loss
from kit.seg.tree_filter_net import NonLocalBlock, PlainFusion, TreeFilterFCN, TreeFilterFusion

MODEL = TinyFCN(3)
LOGITS = torch.zeros(2, 4, 8, 8)

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
]


@pytest.mark.parametrize("build, error, phrase", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_refused(build, error, phrase):
    with pytest.raises(error, match=phrase):
        build()
