"""Bad input to the segmenters (kit.seg): each row a call that must be refused, with the
exception type and a phrase of its message."""
import pytest
import torch

from kit.seg.models import TinyFCN, segmentation_loss

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
]


@pytest.mark.parametrize("build, error, phrase", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_refused(build, error, phrase):
    with pytest.raises(error, match=phrase):
        build()
