"""Sparse R-CNN and Dynamic Sparse R-CNN (DLA + DPG): shapes, the catalog's invariants, a few training steps."""
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.models.detection._utils import BoxCoder

from kit.det import hungarian
from kit.det.dynamic_sparse_rcnn import (DynamicProposalGenerator, dla_schedule, dynamic_sparse_rcnn, ot_assigner,
                                         stage_costs, transport_plan)
from kit.det.optimal_transport import ot_assign
from kit.det.sparse_rcnn import SparseRCNN, apply_deltas, hungarian_assigner, sparse_rcnn_loss

NUM_CLASSES, IMAGE = 3, 64
SMALL = dict(num_proposals=12, num_stages=3, hidden_dim=32, dynamic_dim=8, num_heads=4, image_size=IMAGE,
             widths=(8, 16, 16, 16))


def scene(seed: int = 0, batch: int = 2):
    """Images (B, 3, 64, 64) and targets with 2 and 3 objects."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, IMAGE, IMAGE, generator=gen)
    boxes, labels = [], []
    for i in range(batch):
        m = 2 + i % 2
        xy = torch.rand(m, 2, generator=gen) * 40
        wh = 8 + torch.rand(m, 2, generator=gen) * 16
        boxes.append(torch.cat([xy, xy + wh], 1))
        labels.append(torch.randint(0, NUM_CLASSES, (m,), generator=gen))
    return images, hungarian.targets_from_pixels(boxes, labels, IMAGE)


def random_outputs(seed: int, batch: int = 2, queries: int = 12):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, NUM_CLASSES, generator=gen) - 2
    boxes = torch.cat([0.2 + 0.6 * torch.rand(batch, queries, 2, generator=gen),
                       0.1 + 0.3 * torch.rand(batch, queries, 2, generator=gen)], -1)
    return logits, boxes


def test_shapes_and_detect():
    torch.manual_seed(0)
    model = SparseRCNN(NUM_CLASSES, **SMALL)
    images, _ = scene()
    out = model(images)
    assert out["logits"].shape == (2, 12, NUM_CLASSES) and out["boxes"].shape == (2, 12, 4)
    assert len(out["stages"]) == 3 and out["expert_weights"] is None
    assert torch.allclose(out["proposals"], torch.tensor([0.5, 0.5, 1.0, 1.0]).expand(2, 12, 4))
    assert torch.isfinite(out["boxes"]).all()
    plain, with_nms = model.detect(images), model.detect(images, nms_iou_threshold=0.5)
    assert all(len(a["scores"]) == 12 * NUM_CLASSES and len(b["scores"]) <= len(a["scores"])
               for a, b in zip(plain, with_nms))


def test_boxes_are_detached_between_stages():
    """The gradient of stage 2's loss reaches stage 2 but no box regressor of stage 1 (only through features)."""
    torch.manual_seed(0)
    model = SparseRCNN(NUM_CLASSES, **SMALL)
    out = model(scene()[0])
    out["stages"][1]["boxes"].sum().backward(inputs=[model.stages[0].box_deltas.weight])
    grad = model.stages[0].box_deltas.weight.grad
    assert grad is None or torch.count_nonzero(grad) == 0


def test_apply_deltas_matches_torchvision_box_coder():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 4 + 30 * torch.rand(20, 2, generator=gen)], 1)
    deltas = torch.randn(20, 4, generator=gen)
    reference = BoxCoder(weights=(2.0, 2.0, 1.0, 1.0)).decode_single(deltas, boxes)
    torch.testing.assert_close(apply_deltas(deltas, boxes), reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(apply_deltas(torch.zeros(20, 4), boxes), boxes)


def test_ot_with_unit_supply_and_small_epsilon_is_the_hungarian_assignment():
    """k_i = 1, epsilon -> 0: the OT assignment equals linear_sum_assignment on C_fg - C_bg."""
    _, targets = scene(3, batch=1)
    for seed in range(5):
        logits, boxes = random_outputs(seed, batch=1)
        cost_fg, cost_bg, ious = stage_costs(logits[0], boxes[0], targets[0])
        rows, cols = linear_sum_assignment((cost_fg - cost_bg[:, None]).numpy())
        assignment = ot_assign(cost_fg, ious, cost_bg, supply=1.0, epsilon=1e-3, num_iters=3000)
        expected = torch.full((12,), -1, dtype=torch.long)
        expected[torch.as_tensor(rows)] = torch.as_tensor(cols)
        assert torch.equal(assignment.gt_index, expected)
        # and the Hungarian assigner of Sparse R-CNN finds the same pairs
        (query, obj), = hungarian_assigner(logits, boxes, targets, 0)
        assert sorted(zip(query.tolist(), obj.tolist())) == sorted(zip(rows.tolist(), cols.tolist()))


def test_transport_plan_marginals():
    _, targets = scene(4, batch=1)
    logits, boxes = random_outputs(1, batch=1)
    plan = transport_plan(logits[0], boxes[0], targets[0], supply=2.5, epsilon=0.1, num_iters=200)  # (G + 1, N)
    g = len(targets[0]["labels"])
    torch.testing.assert_close(plan.sum(1), torch.tensor([2.5] * g + [12 - 2.5 * g]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plan.sum(0), torch.ones(12), rtol=1e-3, atol=1e-3)


def test_positives_per_object_follow_the_schedule_and_do_not_decrease():
    """Same predictions at every stage, k_t = 1, 2, 3: positives per object ~ k_t, non-decreasing."""
    schedule = [1.0, 2.0, 3.0]
    assigner = ot_assigner(schedule, epsilon=0.05, num_iters=200)
    _, targets = scene(5)
    for seed in range(3):
        logits, boxes = random_outputs(seed)
        counts = []
        for stage in range(3):
            matches = assigner(logits, boxes, targets, stage)
            per_object = torch.cat([torch.bincount(o, minlength=len(t["labels"])) for (_, o), t in zip(matches, targets)])
            counts.append(per_object.float())
        means = [float(c.mean()) for c in counts]
        assert all(abs(m - k) <= 0.5 for m, k in zip(means, schedule)), means
        assert means == sorted(means), means


def test_dla_schedule_is_the_reimplementation_formula():
    assert dla_schedule(6) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert dla_schedule(3) == [2.0, 2.5, 3.0]


def test_supply_is_capped_when_objects_would_exceed_the_proposals():
    """3 objects x k = 5 > 12 proposals: every proposal is positive, each object gets 4."""
    _, targets = scene(6, batch=2)
    logits, boxes = random_outputs(2)
    (query, obj), = ot_assigner([5.0])(logits[1:], boxes[1:], targets[1:], 0)
    assert len(targets[1]["labels"]) == 3 and len(query) == 12
    assert torch.bincount(obj, minlength=3).tolist() == [4, 4, 4]


def test_dpg_one_hot_reproduces_one_expert_and_weights_sum_to_one():
    torch.manual_seed(0)
    generator = DynamicProposalGenerator(num_proposals=12, hidden_dim=32, num_experts=4)
    with torch.no_grad():
        generator.expert_boxes.uniform_(0.1, 0.9)
        generator.gate[-1].weight.normal_()
    for m in range(4):
        boxes, features = generator.mix(torch.nn.functional.one_hot(torch.tensor([m, m]), 4).float())
        assert torch.equal(boxes[0], generator.expert_boxes[m]) and torch.equal(features[1], generator.expert_features[m])
    levels = [torch.randn(2, 32, s, s) for s in (16, 8, 4, 2)]
    _, _, weights = generator(levels)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert not torch.allclose(weights[0], weights[1])  # image-conditioned


def test_one_expert_is_sparse_rcnn():
    images, _ = scene()
    torch.manual_seed(0)
    static = SparseRCNN(NUM_CLASSES, **SMALL)
    dynamic = dynamic_sparse_rcnn(NUM_CLASSES, num_experts=1, **SMALL)
    state = {k: v for k, v in static.state_dict().items() if not k.startswith("proposals.")}
    dynamic.load_state_dict(state, strict=False)
    with torch.no_grad():
        dynamic.proposals.expert_boxes.copy_(static.proposals.boxes.weight[None])
        dynamic.proposals.expert_features.copy_(static.proposals.features.weight[None])
    a, b = static(images), dynamic(images)
    assert torch.equal(b["expert_weights"], torch.ones(2, 1))
    torch.testing.assert_close(a["logits"], b["logits"])
    torch.testing.assert_close(a["boxes"], b["boxes"])


@pytest.mark.parametrize("arm", ["hungarian", "dla+dpg"])
def test_a_few_training_steps_reduce_the_loss(arm):
    torch.manual_seed(0)
    if arm == "hungarian":
        model, assigner = SparseRCNN(NUM_CLASSES, **SMALL), hungarian_assigner
    else:
        model, assigner = dynamic_sparse_rcnn(NUM_CLASSES, num_experts=2, **SMALL), ot_assigner(dla_schedule(3))
    images, targets = scene(7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        stats = {}
        loss = sum(sparse_rcnn_loss(model(images), targets, assigner, stats).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    expected = [1.0] * 3 if arm == "hungarian" else None
    if expected:
        assert stats["positives"] == expected
    else:
        assert stats["positives"][-1] > 1.0
