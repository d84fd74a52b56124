"""Bad input to P16's missing-annotation pieces (kit.det.missing_annotations): each row a call that
must be refused, with the exception type and a phrase of its message; then the empty inputs that are
legitimate and must work."""
import pytest
import torch

from kit.det import missing_annotations as ma
from kit.det.region_detector import RegionDetector

BOX = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
LABEL = torch.tensor([1])
EMPTY_BOXES = torch.zeros(0, 4)
EMPTY_LABELS = torch.zeros(0, dtype=torch.long)
NE = torch.zeros(3, dtype=torch.bool)
FREQ = torch.tensor([0.5, 0.1, 0.01])
LOGITS = torch.zeros(2, 3)
Y = torch.tensor([0, 1])
NAN_BOX = torch.tensor([[0.0, float("nan"), 10.0, 10.0]])
MODEL = RegionDetector(3, lambda logits, labels: logits.sum() * 0, "sigmoid", num_rois=8)
IMAGES = torch.zeros(1, 3, 32, 32)

BAD = [
    ("merge: boxes (M, 3)", lambda: ma.merge_aux_targets(torch.zeros(1, 3), LABEL, BOX, LABEL), ValueError, r"boxes"),
    ("merge: int boxes", lambda: ma.merge_aux_targets(BOX.long(), LABEL, BOX, LABEL), TypeError,
     r"boxes must be float xyxy pixels"),
    ("merge: NaN aux box", lambda: ma.merge_aux_targets(BOX, LABEL, NAN_BOX, LABEL), ValueError,
     r"aux_boxes has 1 non-finite values"),
    ("merge: labels of another length", lambda: ma.merge_aux_targets(BOX, torch.tensor([1, 2]), BOX, LABEL), ValueError,
     r"labels must be \(1,\), one per box"),
    ("merge: float aux labels", lambda: ma.merge_aux_targets(BOX, LABEL, BOX, LABEL.float()), TypeError,
     r"aux_labels must be long"),
    ("merge: -1 padding left in", lambda: ma.merge_aux_targets(BOX, torch.tensor([-1]), BOX, LABEL), ValueError,
     r"labels must be class ids >= 0"),
    ("merge: duplicate IoU 0", lambda: ma.merge_aux_targets(BOX, LABEL, BOX, LABEL, duplicate_iou=0), ValueError,
     r"iou_threshold must be in \(0, 1\]"),
    ("ignore: float RoI labels", lambda: ma.ignore_weights(BOX, LABEL.float(), BOX, LABEL, NE), ValueError,
     r"roi_labels must be long \(1,\)"),
    ("ignore: inf RoI", lambda: ma.ignore_weights(NAN_BOX.nan_to_num(nan=float("inf")), LABEL, BOX, LABEL, NE),
     ValueError, r"rois has 1 non-finite values"),
    ("ignore: not_exhaustive as int", lambda: ma.ignore_weights(BOX, LABEL, BOX, LABEL, NE.long()), ValueError,
     r"not_exhaustive must be a \(C,\) bool tensor"),
    ("ignore: aux class beyond C", lambda: ma.ignore_weights(BOX, LABEL, BOX, torch.tensor([3]), NE), ValueError,
     r"aux_labels must be < C = 3, got 3"),
    ("ignore: IoU threshold 1.5", lambda: ma.ignore_weights(BOX, LABEL, BOX, LABEL, NE, 1.5), ValueError,
     r"iou_threshold must be in \(0, 1\]"),
    ("false bg: NaN missing box", lambda: ma.false_background(BOX, LABEL, NAN_BOX), ValueError,
     r"missing_boxes has 1 non-finite values"),
    ("loss: NaN logits", lambda: ma.weighted_equalization_loss(torch.full((2, 3), float("nan")), Y, FREQ, 0.05),
     ValueError, r"logits has 6 non-finite values"),
    ("loss: logits of another width", lambda: ma.weighted_equalization_loss(torch.zeros(2, 4), Y, FREQ, 0.05),
     ValueError, r"logits must have 3 columns here, got 4"),
    ("loss: label beyond C", lambda: ma.weighted_equalization_loss(LOGITS, torch.tensor([0, 4]), FREQ, 0.05),
     ValueError, r"labels must lie in \[0, 3\]"),
    ("loss: float labels", lambda: ma.weighted_equalization_loss(LOGITS, Y.float(), FREQ, 0.05), TypeError,
     r"labels must be long"),
    ("loss: weights of another length", lambda: ma.weighted_equalization_loss(LOGITS, Y, FREQ, 0.05, torch.ones(3)),
     ValueError, r"roi_weights must be \(2,\), one per RoI"),
    ("loss: bool weights", lambda: ma.weighted_equalization_loss(LOGITS, Y, FREQ, 0.05, torch.ones(2, dtype=torch.bool)),
     TypeError, r"roi_weights must be float"),
    ("loss: NaN weight", lambda: ma.weighted_equalization_loss(LOGITS, Y, FREQ, 0.05, torch.tensor([1.0, float("nan")])),
     ValueError, r"roi_weights must be finite and in \[0, 1\]"),
    ("loss: weight 2", lambda: ma.weighted_equalization_loss(LOGITS, Y, FREQ, 0.05, torch.tensor([1.0, 2.0])),
     ValueError, r"roi_weights must be finite and in \[0, 1\]"),
    ("loss: frequency above 1", lambda: ma.weighted_equalization_loss(LOGITS, Y, torch.tensor([0.5, 2.0, 0.1]), 0.05),
     ValueError, r"image_frequency must be fractions"),
    ("sample: aux ingredient without aux boxes",
     lambda: ma.sample_training_rois(MODEL, IMAGES, [BOX], [LABEL], [BOX], use_aux_positives=True), ValueError,
     r"the aux ingredients need aux_boxes and aux_labels"),
    ("sample: ignore without not_exhaustive",
     lambda: ma.sample_training_rois(MODEL, IMAGES, [BOX], [LABEL], [BOX], [BOX], [LABEL], use_ignore=True),
     ValueError, r"use_ignore needs not_exhaustive \(1, 3\) bool"),
    ("sample: missing boxes for two images",
     lambda: ma.sample_training_rois(MODEL, IMAGES, [BOX], [LABEL], [BOX], missing_boxes=[BOX, BOX]), ValueError,
     r"missing_boxes must hold one tensor per image \(1\)"),
    ("sample: NaN images",
     lambda: ma.sample_training_rois(MODEL, torch.full((1, 3, 32, 32), float("nan")), [BOX], [LABEL], [BOX]),
     ValueError, r"images has 3072 non-finite values"),
]


@pytest.mark.parametrize("build, error, phrase", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_refused(build, error, phrase):
    with pytest.raises(error, match=phrase):
        build()


def test_empty_inputs_are_legitimate():
    boxes, labels = ma.merge_aux_targets(EMPTY_BOXES, EMPTY_LABELS, EMPTY_BOXES, EMPTY_LABELS)
    assert boxes.shape == (0, 4) and labels.shape == (0,)
    boxes, labels = ma.merge_aux_targets(EMPTY_BOXES, EMPTY_LABELS, BOX, LABEL)  # no annotation, one aux box
    assert torch.equal(boxes, BOX) and torch.equal(labels, LABEL)
    assert torch.equal(ma.ignore_weights(EMPTY_BOXES, EMPTY_LABELS, BOX, LABEL, NE), torch.ones(0))
    assert torch.equal(ma.ignore_weights(BOX, torch.tensor([0]), EMPTY_BOXES, EMPTY_LABELS, NE), torch.ones(1))
    assert torch.equal(ma.false_background(BOX, torch.tensor([0]), EMPTY_BOXES), torch.tensor([-1]))
    zero = ma.weighted_equalization_loss(torch.zeros(0, 3, requires_grad=True), EMPTY_LABELS, FREQ, 0.05, torch.ones(0))
    assert float(zero.detach()) == 0 and zero.requires_grad
    out = ma.sample_training_rois(MODEL, IMAGES, [EMPTY_BOXES], [EMPTY_LABELS], [BOX], [EMPTY_BOXES], [EMPTY_LABELS],
                                  torch.zeros(1, 3, dtype=torch.bool), [EMPTY_BOXES], True, True)
    assert bool((out["labels"] == 0).all()) and bool((out["weights"] == 1).all())
