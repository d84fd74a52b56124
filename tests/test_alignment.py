import math

import pytest
import torch

from kit.eval.alignment import kendall_tau, misalignment


def test_misalignment_distance_and_same():
    points = torch.tensor([[5.0, 5.0], [15.0, 5.0], [50.0, 50.0]])
    gt = torch.tensor([[0.0, 0.0, 20.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 12.0, 10.0], [0.0, 0.0, 20.0, 10.0], [0.0, 0.0, 20.0, 10.0]])
    scores = torch.tensor([[0.9], [0.2], [0.99]])  # prior 2 is outside: ignored
    m = misalignment(scores, boxes, points, gt, torch.tensor([0]))
    assert m["distance"].tolist() == [10.0] and m["same"].tolist() == [False]
    assert m["iou_of_best_scored"].item() == pytest.approx(0.6) and m["best_iou"].item() == pytest.approx(1.0)
    aligned = misalignment(torch.tensor([[0.1], [0.8], [0.0]]), boxes, points, gt, torch.tensor([0]))
    assert aligned["distance"].tolist() == [0.0] and aligned["same"].tolist() == [True]


def test_objects_without_priors_inside_are_skipped():
    points = torch.tensor([[5.0, 5.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 31.0, 31.0]])
    m = misalignment(torch.rand(1, 2), torch.tensor([[0.0, 0, 10, 10]]), points, gt, torch.tensor([0, 1]))
    assert len(m["distance"]) == 1
    with pytest.raises(ValueError, match="same priors"):
        misalignment(torch.rand(2, 2), torch.zeros(1, 4), points, gt, torch.tensor([0, 1]))


def test_misalignment_refuses_what_would_pick_a_wrong_prior():
    points = torch.tensor([[5.0, 5.0], [15.0, 5.0]])
    gt, boxes = torch.tensor([[0.0, 0.0, 20.0, 10.0]]), torch.tensor([[0.0, 0.0, 12.0, 10.0]] * 2)
    with pytest.raises(ValueError, match="non-finite"):  # argmax would take the NaN as the best score
        misalignment(torch.tensor([[float("nan")], [0.2]]), boxes, points, gt, torch.tensor([0]))
    with pytest.raises(ValueError, match="no -1 padding"):  # -1 would read the last class's scores
        misalignment(torch.rand(2, 3), boxes, points, gt, torch.tensor([-1]))


def test_kendall_tau_counts_concordant_pairs():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # one discordant pair (2, 3) of six: tau = (5 - 1) / 6
    assert kendall_tau(x, torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(2 / 3)
    assert kendall_tau(x, -x) == pytest.approx(-1.0)
    assert kendall_tau(x, x.exp()) == pytest.approx(1.0)  # ranks only: any increasing map
    assert math.isnan(kendall_tau(x[:1], x[:1]))
