"""Bad input to LOCE's pieces (kit.det.equilibrium_loss, kit.det.feature_memory): each row a call that
must be refused, with the exception type and a phrase of its message; then the empty inputs that are legit."""
import pytest
import torch

from kit.det.equilibrium_loss import MeanScore, equilibrium_loss, instance_mean_scores, margin_matrix
from kit.det.feature_memory import FeatureMemory, jittered_boxes, sampling_probabilities

Z = torch.zeros(4, 3)
Y = torch.tensor([0, 1, 2, 1])
M = torch.full((3,), 0.01)
MEMORY = FeatureMemory(2, (3,), queue_size=4)
NAN = float("nan")

BAD = [
    ("ebl: logits one column", lambda: equilibrium_loss(torch.zeros(4, 1), Y, M[:1]), ValueError, r"logits must be \(R, C \+ 1\)"),
    ("ebl: int logits", lambda: equilibrium_loss(Z.long(), Y, M), TypeError, r"logits must be float"),
    ("ebl: NaN logits", lambda: equilibrium_loss(Z.index_fill(0, torch.tensor([1]), NAN), Y, M), ValueError,
     r"logits has 3 non-finite values"),
    ("ebl: labels of another length", lambda: equilibrium_loss(Z, Y[:3], M), ValueError, r"labels must be \(4,\)"),
    ("ebl: float labels", lambda: equilibrium_loss(Z, Y.float(), M), TypeError, r"labels must be long"),
    ("ebl: label beyond the columns", lambda: equilibrium_loss(Z, torch.tensor([0, 1, 3, 1]), M), ValueError,
     r"labels must lie in 0..2"),
    ("ebl: mean score without background", lambda: equilibrium_loss(Z, Y, M[1:]), ValueError,
     r"mean_score must be a \(3,\) tensor \(column 0 background\)"),
    ("ebl: zero mean score", lambda: equilibrium_loss(Z, Y, torch.tensor([0.01, 0.0, 0.1])), ValueError, r"finite and > 0"),
    ("ebl: NaN mean score", lambda: equilibrium_loss(Z, Y, torch.tensor([0.01, NAN, 0.1])), ValueError, r"finite and > 0"),
    ("ebl: int mean score", lambda: equilibrium_loss(Z, Y, torch.ones(3, dtype=torch.long)), TypeError, r"mean_score must be float"),
    ("ebl: NaN weight", lambda: equilibrium_loss(Z, Y, M, weight=torch.tensor([1.0, NAN, 1.0, 1.0])), ValueError,
     r"weight must be a finite \(4,\) tensor"),
    ("margins: 2-D mean score", lambda: margin_matrix(torch.ones(2, 2)), ValueError, r"mean_score must be a \(C \+ 1,\) tensor"),
    ("tracker: alpha 1", lambda: MeanScore(3, alpha=1.0), ValueError, r"alpha must be in \(0, 1\)"),
    ("tracker: NaN alpha", lambda: MeanScore(3, alpha=NAN), ValueError, r"alpha must be a finite number"),
    ("tracker: zero classes", lambda: MeanScore(0), ValueError, r"num_classes must be an int >= 1"),
    ("tracker: class out of range", lambda: MeanScore(3).update(torch.tensor([3]), torch.tensor([0.5])), ValueError,
     r"classes must lie in 0..2"),
    ("tracker: score above 1", lambda: MeanScore(3).update(torch.tensor([1]), torch.tensor([1.5])), ValueError,
     r"scores must be probabilities in \[0, 1\]"),
    ("tracker: NaN score", lambda: MeanScore(3).update(torch.tensor([1]), torch.tensor([NAN])), ValueError,
     r"scores must be probabilities"),
    ("tracker: scores of another length", lambda: MeanScore(3).update(torch.tensor([1, 2]), torch.tensor([0.5])), ValueError,
     r"scores must be a float tensor of shape \(2,\)"),
    ("tracker: float classes", lambda: MeanScore(3).update(torch.tensor([1.0]), torch.tensor([0.5])), ValueError,
     r"classes must be a 1-D long tensor"),
    ("instances: float labels", lambda: instance_mean_scores(Z.softmax(-1), Y.float(), Y), TypeError, r"labels must be long"),
    ("instances: NaN probabilities", lambda: instance_mean_scores(torch.full((4, 3), NAN), Y, Y), ValueError,
     r"probabilities must be finite"),
    ("instances: one id, two labels", lambda: instance_mean_scores(Z.softmax(-1), Y, torch.zeros(4, dtype=torch.long)),
     ValueError, r"carry different labels"),
    ("memory: zero queue", lambda: FeatureMemory(2, (3,), queue_size=0), ValueError, r"queue_size must be an int >= 1"),
    ("memory: features of another shape", lambda: MEMORY.enqueue(torch.zeros(2, 4), torch.tensor([0, 1]), torch.zeros(2, 4)),
     ValueError, r"features must be \(M, 3\)"),
    ("memory: label out of range", lambda: MEMORY.enqueue(torch.zeros(2, 3), torch.tensor([0, 2]), torch.zeros(2, 4)),
     ValueError, r"labels must lie in 0..1"),
    ("memory: NaN features", lambda: MEMORY.enqueue(torch.full((1, 3), NAN), torch.tensor([0]), torch.zeros(1, 4)),
     ValueError, r"features and box_targets must be finite"),
    ("memory: targets of another shape", lambda: MEMORY.enqueue(torch.zeros(1, 3), torch.tensor([0]), torch.zeros(1, 2)),
     ValueError, r"box_targets must be \(1, 4\)"),
    ("memory: probabilities of another length", lambda: MEMORY.sample(torch.ones(3)), ValueError,
     r"class_probabilities must be \(2,\)"),
    ("memory: all-zero probabilities", lambda: MEMORY.sample(torch.zeros(2)), ValueError, r"not all 0"),
    ("memory: NaN probabilities", lambda: MEMORY.sample(torch.tensor([NAN, 1.0])), ValueError, r"must be finite"),
    ("sampling: negative mean score", lambda: sampling_probabilities(torch.tensor([-0.1, 0.5])), ValueError,
     r"mean scores must be finite and >= 0"),
    ("jitter: NaN boxes", lambda: jittered_boxes(torch.tensor([[NAN, 0.0, 4.0, 4.0]]), 16), ValueError,
     r"gt_boxes must be finite float"),
    ("jitter: (M, 5) boxes", lambda: jittered_boxes(torch.zeros(1, 5), 16), ValueError, r"gt_boxes must be \(M, 4\)"),
]


@pytest.mark.parametrize("build, error, phrase", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_refused(build, error, phrase):
    with pytest.raises(error, match=phrase):
        build()


def test_empty_inputs_are_legit():
    z = torch.zeros(0, 3, requires_grad=True)
    loss = equilibrium_loss(z, torch.zeros(0, dtype=torch.long), M)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    classes, scores = instance_mean_scores(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert classes.shape == (0,) and scores.shape == (0,)
    tracker = MeanScore(2)
    assert torch.equal(tracker.update(torch.zeros(0, dtype=torch.long), torch.zeros(0)), torch.full((3,), 0.01))
    memory = FeatureMemory(2, (3,), queue_size=4)
    memory.enqueue(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    features, labels, targets, drawn = memory.sample(torch.ones(2))  # every queue empty: nothing drawn comes back
    assert features.shape == (0, 3) and labels.shape == (0,) and targets.shape == (0, 4) and len(drawn) == 8
    assert jittered_boxes(torch.zeros(0, 4), 16).shape == (0, 16, 4)
