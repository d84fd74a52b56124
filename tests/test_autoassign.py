"""AutoAssign: the centre prior, the positive / negative weights, the loss, the head."""
import math

import pytest
import torch
import torch.nn.functional as F

from kit.det.autoassign import AutoAssignHead, CenterPrior, autoassign_loss, autoassign_weights, inside_mask
from kit.det.boxes import box_iou, generalized_box_iou
from kit.det.detector import DenseDetector
from kit.det.priors import point_priors


def test_center_prior_is_one_at_mu_and_decreases_away_from_it():
    prior = CenterPrior(num_classes=3)
    with torch.no_grad():
        prior.mean[1] = torch.tensor([0.5, -1.0])
        prior.sigma[1] = torch.tensor([1.0, 2.0])
    box = torch.tensor([[20.0, 30.0, 60.0, 50.0]])  # centre (40, 40)
    stride = 8.0
    peak = torch.tensor([40.0 + 0.5 * stride, 40.0 - 1.0 * stride])  # centre + stride * mu
    directions = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.6, -0.8]])
    distances = torch.tensor([0.0, 2.0, 5.0, 11.0, 20.0])
    points = peak + distances[:, None, None] * directions[None]  # (5 distances, 5 directions, 2)
    g = prior(points.view(-1, 2), torch.full((25,), stride), box, torch.tensor([1])).view(5, 5)
    assert torch.allclose(g[0], torch.ones(5))
    assert (g[1:] < g[:-1]).all()  # strictly decreasing away from mu, in every direction
    expected = math.exp(-(2.0 / stride) ** 2 / 2)  # 2 px along x is 0.25 strides, sigma_x = 1
    assert g[1, 0].item() == pytest.approx(expected, rel=1e-6)
    # Another class keeps mu = 0: its peak is the box centre.
    assert prior(torch.tensor([[40.0, 40.0]]), torch.tensor([stride]), box, torch.tensor([2])).item() == 1.0
    with pytest.raises(ValueError, match="gt_labels"):
        prior(peak[None], torch.tensor([stride]), box, torch.tensor([3]))


def _case(seed=0, num_classes=4):
    generator = torch.Generator().manual_seed(seed)
    priors = point_priors([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    n = priors.points.shape[0]
    gt_boxes = torch.tensor([[6.0, 10.0, 40.0, 30.0], [30.0, 20.0, 60.0, 62.0], [33.0, 25.0, 50.0, 40.0]])
    gt_labels = torch.tensor([1, 3, 3])
    ltrb = torch.rand(n, 4, generator=generator) * 20 + 1
    pred = torch.cat([priors.points - ltrb[:, :2], priors.points + ltrb[:, 2:]], 1)
    cls = torch.rand(n, num_classes, generator=generator) * 0.9
    obj = torch.rand(n, generator=generator)
    return priors, pred, cls, obj, gt_boxes, gt_labels


def test_positive_and_negative_weight_invariants():
    priors, pred, cls, obj, gt_boxes, gt_labels = _case()
    prior = CenterPrior(4)
    w = autoassign_weights(cls, obj, pred, priors.points, priors.strides, gt_boxes, gt_labels, prior)
    inside = w["inside"]
    assert inside.any(0).all()
    # w+ sums to 1 over each object's inside locations and is 0 outside.
    assert torch.allclose(w["pos_weight"].sum(0), torch.ones(3), atol=1e-6)
    assert (w["pos_weight"][~inside] == 0).all() and (w["prior"][~inside] == 0).all()
    # w- lies in [0, 1]; 1 outside every box and for classes no object here has.
    neg = w["neg_weight"]
    assert (neg >= 0).all() and (neg <= 1).all()
    outside_all = ~inside.any(1)
    assert (neg[outside_all] == 1).all() and (neg[:, [0, 2]] == 1).all()
    # Object 0 (the only one of class 1): w- is 0 at its inside location of highest IoU.
    ious = box_iou(pred, gt_boxes).max(1).values
    best = torch.nonzero(inside[:, 0]).flatten()[ious[inside[:, 0]].argmax()]
    assert neg[best, 1] == 0 and neg[inside[:, 0], 1].min() == 0
    # Inside both class-3 objects: the later object (index 2) writes last.
    both = inside[:, 1] & inside[:, 2]
    assert both.any()
    t = 1 / (1 - ious)
    own = t[inside[:, 2]]
    expected = 1 - (t[both] - own.min() + 1e-12) / (own.max() - own.min() + 1e-12)
    assert torch.allclose(neg[both, 3], expected, atol=1e-6)


def test_constant_confidence_makes_w_plus_proportional_to_the_prior():
    priors, pred, cls, obj, gt_boxes, gt_labels = _case(1)
    w = autoassign_weights(torch.zeros_like(cls), obj, pred, priors.points, priors.strides, gt_boxes, gt_labels,
                           CenterPrior(4))
    assert torch.allclose(w["confidence"], torch.ones_like(w["confidence"]))
    assert torch.allclose(w["pos_weight"], w["prior"] / w["prior"].sum(0, keepdim=True), atol=1e-7)


def _reference_loss(cls, obj, pred, points, strides, gt_boxes, gt_labels, mean, sigma):
    """The official cvpods ``AutoAssign.losses`` for one image, written out with loops."""
    m = len(gt_labels)
    positive, g_all = [], []
    neg_weight = torch.ones_like(cls)
    best_iou = box_iou(pred, gt_boxes).max(1).values
    for j in range(m):
        x1, y1, x2, y2 = gt_boxes[j]
        inside = (points[:, 0] - x1 > 0) & (points[:, 1] - y1 > 0) & (x2 - points[:, 0] > 0) & (y2 - points[:, 1] > 0)
        centre = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2])
        d = (points - centre) / strides[:, None]
        g = torch.exp(-(d - mean[gt_labels[j]]) ** 2 / (2 * sigma[gt_labels[j]] ** 2)).prod(1)
        p_loc = torch.exp(-5 * (1 - generalized_box_iou(pred, gt_boxes[j:j + 1])[:, 0]))
        p = cls[:, gt_labels[j]] * obj * p_loc
        weight = torch.exp(3 * p) * g * inside
        bag = (weight / weight.sum().clamp(min=1e-12) * p).sum()
        positive.append(F.binary_cross_entropy(bag, torch.tensor(1.0)))
        g_all.append(g[inside])
        t = 1 / (1 - best_iou[inside]).clamp(min=1e-12)
        neg_weight[inside, gt_labels[j]] = 1 - (t - t.min() + 1e-12) / (t.max() - t.min() + 1e-12)
    joint = cls * obj[:, None] * neg_weight
    negative = (joint ** 2 * F.binary_cross_entropy(joint, torch.zeros_like(joint), reduction="none")).sum()
    mass = torch.cat(g_all).sum()
    return 0.25 * sum(positive) / m, 0.75 * negative / mass, 0.75 * m / mass


def test_loss_equals_the_official_formula_written_out():
    priors, pred, cls, obj, gt_boxes, gt_labels = _case(2)
    prior = CenterPrior(4)
    with torch.no_grad():
        prior.mean.normal_(0, 0.3)
        prior.sigma.uniform_(0.7, 1.5)

    class Out:  # the fields of DenseOutput the loss reads, for one image
        cls_probs, boxes, objectness_logits = cls[None], pred[None], torch.logit(obj)[None]
    Out.priors = priors
    losses = autoassign_loss(Out, [gt_boxes], [gt_labels], prior)
    expected = _reference_loss(cls, obj, pred, priors.points, priors.strides, gt_boxes, gt_labels,
                               prior.mean.detach(), prior.sigma.detach())
    for name, value in zip(("pos", "neg", "center"), expected):
        assert losses[name].item() == pytest.approx(value.item(), rel=1e-4), name


def test_force_topk_gives_a_tiny_object_candidates():
    priors = point_priors([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    tiny = torch.tensor([[9.0, 9.0, 11.0, 11.0]])  # between the points at 4 and 12
    prior = CenterPrior(2)(priors.points, priors.strides, tiny, torch.tensor([0]))
    assert not inside_mask(priors.points, tiny, prior).any()
    forced = inside_mask(priors.points, tiny, prior, force_topk=True, topk=9)
    assert forced.sum() == 9
    assert prior[forced[:, 0], 0].min() >= prior[~forced[:, 0], 0].max()


def test_head_detector_gradients_and_empty_images(scenes):
    torch.manual_seed(0)
    model = DenseDetector(AutoAssignHead(scenes.config.num_classes, 16, 16), widths=(8, 16, 16, 16), fpn_channels=16)
    assert model.head.reg_conv.bias.detach().tolist() == [4.0] * 4
    images, boxes, labels = scenes.batch(range(4))
    boxes[1], labels[1] = boxes[1][:0], labels[1][:0]  # an image with no object
    out = model(images)
    assert (out.boxes[..., 2:] >= out.boxes[..., :2]).all()  # relu distances: never inverted
    losses = autoassign_loss(out, boxes, labels, model.head.center_prior, force_topk=True)
    assert set(losses) == {"pos", "neg", "center"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    prior = model.head.center_prior
    assert prior.mean.grad.abs().sum() > 0 and prior.sigma.grad.abs().sum() > 0
    assert model.head.objectness_conv.weight.grad.abs().sum() > 0
    empty = autoassign_loss(model(images[:2]), [boxes[1]] * 2, [labels[1]] * 2, prior)
    assert all(torch.isfinite(v) for v in empty.values()) and empty["pos"] == 0


def test_bad_inputs():
    priors, pred, cls, obj, gt_boxes, gt_labels = _case()
    with pytest.raises(ValueError, match="obj_probs"):
        autoassign_weights(cls, obj[:-1], pred, priors.points, priors.strides, gt_boxes, gt_labels, CenterPrior(4))
    with pytest.raises(ValueError, match="gt_boxes"):
        autoassign_weights(cls, obj, pred, priors.points, priors.strides, gt_boxes[:, :3], gt_labels, CenterPrior(4))
    with pytest.raises(ValueError, match="num_classes"):
        CenterPrior(0)

    class NoObj:
        cls_probs, objectness_logits = cls[None], None
    with pytest.raises(ValueError, match="ImpObj"):
        autoassign_loss(NoObj, [gt_boxes], [gt_labels], CenterPrior(4))
