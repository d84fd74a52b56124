import itertools

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from kit.det.hungarian import (classification_cost, hungarian_match, match_cost, set_loss,
                               targets_from_pixels)


def random_case(queries, objects, classes, mode, seed):
    g = torch.Generator().manual_seed(seed)
    width = classes + 1 if mode == "softmax" else classes
    logits = torch.randn(1, queries, width, generator=g) * 2
    boxes = torch.cat([torch.rand(1, queries, 2, generator=g), 0.05 + 0.4 * torch.rand(1, queries, 2, generator=g)], -1)
    target = {"labels": torch.randint(0, classes, (objects,), generator=g),
              "boxes": torch.cat([torch.rand(objects, 2, generator=g), 0.05 + 0.4 * torch.rand(objects, 2, generator=g)], -1)}
    return logits, boxes, [target]


@pytest.mark.parametrize("mode", ["focal", "softmax"])
def test_matcher_finds_the_brute_force_optimum(mode):
    for seed, (queries, objects) in enumerate([(3, 3), (5, 2), (6, 4), (4, 1), (6, 6)]):
        logits, boxes, targets = random_case(queries, objects, 3, mode, seed)
        cost = match_cost(logits[0], boxes[0], targets[0]["labels"], targets[0]["boxes"], mode)
        (rows, cols), = hungarian_match(logits, boxes, targets, mode)
        assert sorted(cols.tolist()) == list(range(objects)) and len(set(rows.tolist())) == objects
        best = min(sum(float(cost[q, j]) for j, q in enumerate(perm))
                   for perm in itertools.permutations(range(queries), objects))
        assert abs(float(cost[rows, cols].sum()) - best) < 1e-5


def test_cost_terms_match_their_definitions():
    logits, boxes, targets = random_case(4, 3, 5, "focal", 0)
    labels, tboxes = targets[0]["labels"], targets[0]["boxes"]
    only_l1 = match_cost(logits[0], boxes[0], labels, tboxes, weights=(0, 1, 0))
    assert torch.allclose(only_l1, (boxes[0][:, None] - tboxes[None]).abs().sum(-1), atol=1e-6)
    only_giou = match_cost(logits[0], boxes[0], labels, tboxes, weights=(0, 0, 1))
    xyxy = lambda b: box_convert(b, "cxcywh", "xyxy")
    assert torch.allclose(only_giou, -generalized_box_iou(xyxy(boxes[0]), xyxy(tboxes)))
    # focal class cost: focal loss of a positive minus that of a negative, at p(c_j)
    cost = classification_cost(logits[0], labels, "focal")
    for q, j in itertools.product(range(4), range(3)):
        x = logits[0, q, labels[j]]
        pos = sigmoid_focal_loss(x, torch.tensor(1.0))
        neg = sigmoid_focal_loss(x, torch.tensor(0.0))
        assert abs(float(cost[q, j]) - float(pos - neg)) < 1e-4
    soft = classification_cost(logits[0], labels, "softmax")
    assert torch.allclose(soft, -logits[0].softmax(-1)[:, labels])


def test_perfect_predictions_have_zero_box_loss_and_queries_can_be_shuffled():
    logits, boxes, targets = random_case(6, 3, 4, "focal", 1)
    boxes = boxes.clone()
    boxes[0, [4, 0, 2]] = targets[0]["boxes"]  # three queries sit exactly on the objects
    losses = set_loss({"logits": logits, "boxes": boxes}, targets, 4)
    assert float(losses["l1"]) < 1e-6 and float(losses["giou"]) < 1e-6
    shuffle = torch.randperm(6)
    shuffled = set_loss({"logits": logits[:, shuffle], "boxes": boxes[:, shuffle]}, targets, 4)
    for key in losses:
        assert torch.allclose(losses[key], shuffled[key], atol=1e-6)


def test_focal_class_loss_is_torchvision_over_the_number_of_objects():
    logits, boxes, targets = random_case(5, 2, 3, "focal", 2)
    (rows, cols), = hungarian_match(logits, boxes, targets)
    one_hot = torch.zeros_like(logits)
    one_hot[0, rows, targets[0]["labels"][cols]] = 1
    expected = 2.0 * sigmoid_focal_loss(logits, one_hot, reduction="sum") / 2
    assert torch.allclose(set_loss({"logits": logits, "boxes": boxes}, targets, 3)["cls"], expected)


def test_aux_layers_and_empty_images():
    logits, boxes, targets = random_case(5, 2, 3, "softmax", 3)
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    outputs = {"logits": logits.repeat(2, 1, 1), "boxes": boxes.repeat(2, 1, 1)}
    outputs["aux"] = [dict(outputs)]
    losses = set_loss(outputs, targets + [empty], 3, mode="softmax")
    assert torch.allclose(losses["aux"], losses["cls"] + losses["l1"] + losses["giou"])
    (rows, cols), = hungarian_match(logits, boxes, [empty], "softmax")
    assert rows.numel() == 0 and cols.numel() == 0
    nothing = set_loss({"logits": logits, "boxes": boxes}, [empty], 3, mode="softmax")  # a batch without objects
    assert float(nothing["l1"]) == 0 and float(nothing["giou"]) == 0 and float(nothing["cls"]) > 0


def test_targets_from_pixels():
    (target,) = targets_from_pixels([torch.tensor([[10.0, 20, 30, 60]])], [torch.tensor([2])], 100)
    assert torch.allclose(target["boxes"], torch.tensor([[0.2, 0.4, 0.2, 0.4]]))


def test_bad_inputs_raise_clear_errors():
    logits, boxes, targets = random_case(2, 2, 3, "focal", 4)
    with pytest.raises(ValueError, match="no-object"):
        set_loss({"logits": logits, "boxes": boxes}, targets, 3, mode="softmax")
    with pytest.raises(ValueError, match="only 2 queries"):
        big = {"labels": torch.zeros(3, dtype=torch.long), "boxes": torch.rand(3, 4)}
        set_loss({"logits": logits, "boxes": boxes}, [big], 3)
    with pytest.raises(ValueError, match="labels must lie"):
        bad = {"labels": torch.tensor([0, 3]), "boxes": torch.rand(2, 4)}
        set_loss({"logits": logits, "boxes": boxes}, [bad], 3)
    with pytest.raises(ValueError, match="mode must be"):
        set_loss({"logits": logits, "boxes": boxes}, targets, 3, mode="ce")
