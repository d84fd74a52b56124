import dataclasses

import pytest
import torch
import torch.nn.functional as F

import kit
from kit.det.atss import ATSSHead
from kit.det.autoassign import AutoAssignHead
from kit.det.borderdet import BorderHead, border_targets
from kit.det.detector import DenseDetector, dense_detector, flatten_levels, gather_targets, pad_targets
from kit.det.postprocess import postprocess
from kit.det.tood import TaskDecomposition, TOODHead, align_boxes, normalized_alignment, tood_loss
from kit.runtime import evaluating


def test_task_decomposition_bmm_equals_conv_of_weighted_features():
    torch.manual_seed(0)
    decomp = TaskDecomposition(feat_channels=8, stacked_convs=3, la_down_rate=4)
    torch.nn.init.normal_(decomp.layer_attention[0].weight, std=0.3)  # make the attention non-trivial
    torch.nn.init.normal_(decomp.layer_attention[2].weight, std=0.3)
    feat = torch.randn(2, 24, 5, 6)
    w = decomp.attention(F.adaptive_avg_pool2d(feat, 1))  # (B, 3)
    weighted = torch.cat([w[:, k, None, None, None] * feat[:, 8 * k:8 * (k + 1)] for k in range(3)], 1)
    reference = torch.relu(decomp.norm(F.conv2d(weighted, decomp.reduction_conv.weight)))
    assert torch.allclose(decomp(feat), reference, atol=1e-5)
    assert not torch.allclose(w[:, 0], w[:, 1])


def test_align_boxes_with_zero_offsets_is_the_identity_exactly():
    boxes = torch.randn(2, 4, 5, 7)
    assert torch.equal(align_boxes(boxes, torch.zeros(2, 8, 5, 7)), boxes)


def test_align_boxes_reads_each_side_at_its_own_offset():
    boxes = torch.arange(4 * 5 * 6, dtype=torch.float32).view(1, 4, 5, 6)
    offsets = torch.zeros(1, 8, 5, 6)
    offsets[:, 0] = 1.0  # side 0 (left): dy = +1 -> reads the row below
    offsets[:, 3] = -1.0  # side 1 (top): dx = -1 -> reads the column to the left
    aligned = align_boxes(boxes, offsets)
    assert torch.equal(aligned[0, 0, :4], boxes[0, 0, 1:])
    assert torch.equal(aligned[0, 0, 4], torch.zeros(6))  # outside the map: zero
    assert torch.equal(aligned[0, 1, :, 1:], boxes[0, 1, :, :-1])
    assert torch.equal(aligned[0, 2:], boxes[0, 2:])
    half = offsets.clone().zero_()
    half[:, 1] = 0.5  # side 0, dx = 0.5 -> bilinear halfway
    assert torch.allclose(align_boxes(boxes, half)[0, 0, :, :-1], boxes[0, 0, :, :-1] + 0.5)
    with pytest.raises(ValueError, match="offsets"):
        align_boxes(boxes, torch.zeros(1, 4, 5, 6))


def test_normalized_alignment_max_equals_max_iou_per_object():
    assigned = torch.tensor([[0, 0, 1, -1, 1, 0]])
    alignment = torch.tensor([[0.2, 0.4, 0.1, 0.0, 0.05, 0.3]])
    ious = torch.tensor([[0.5, 0.7, 0.6, 0.0, 0.4, 0.9]])
    t_hat = normalized_alignment(assigned, alignment, ious, num_objects=2)
    assert torch.isclose(t_hat[0, [0, 1, 5]].max(), torch.tensor(0.9))
    assert torch.isclose(t_hat[0, [2, 4]].max(), torch.tensor(0.6))
    assert t_hat[0, 3] == 0
    assert torch.allclose(t_hat[0, 0] / t_hat[0, 1], torch.tensor(0.5))  # ratios of t are kept


HEADS = {  # one head of every family, small
    "atss": lambda c: ATSSHead(c, 16, 16),
    "tood": lambda c: TOODHead(c, 16, 16),
    "autoassign": lambda c: AutoAssignHead(c, 16, 16, force_topk=True),
    "borderdet": lambda c: BorderHead(c, 16, 16, border_channels=(8, 4)),
}


@pytest.mark.parametrize("family", sorted(HEADS))
def test_the_head_detector_contract(scenes, family):
    """Every head: its output type's fields, figure maps only on request and without changing a
    number, a loss that reaches every parameter, and detect() ranking the head's test outputs."""
    torch.manual_seed(0)
    num_classes = scenes.config.num_classes
    model = DenseDetector(HEADS[family](num_classes), widths=(8, 16, 16, 16), fpn_channels=16)
    images, boxes, labels = scenes.batch(range(4))
    out = model(images)
    n = 8 * 8 + 4 * 4 + 2 * 2
    assert isinstance(out, model.head.output_type) and out.maps == {}
    assert out.cls_probs.shape == (4, n, num_classes) and out.boxes.shape == (4, n, 4)
    assert (out.cls_probs >= 0).all() and (out.cls_probs <= 1).all()
    quality = {"atss": "centerness_logits", "borderdet": "centerness_logits", "autoassign": "objectness_logits"}
    for name in ("centerness_logits", "objectness_logits"):
        value = getattr(out, name)
        assert (value.shape == (4, n)) if quality.get(family) == name else value is None, name

    with torch.no_grad():  # a head with figure maps takes with_maps; the others refuse it
        mapped = model(images, with_maps=True) if family in ("tood", "borderdet") else model(images)
    assert bool(mapped.maps) == (family in ("tood", "borderdet"))
    for f in dataclasses.fields(out):
        if f.name not in ("maps", "priors") and getattr(out, f.name) is not None:
            assert torch.equal(getattr(mapped, f.name), getattr(out, f.name)), f.name

    losses = model.loss(images, boxes, labels, **({"warmup": True} if family == "tood" else {}))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    unreached = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unreached, unreached

    with evaluating(model):  # detect runs in eval mode (batch norm's running statistics)
        scores, _ = model.head.test_outputs(model(images))
    dets = model.detect(images, score_threshold=0.0, max_per_image=5)
    assert len(dets) == 4 and all(len(d["boxes"]) == 5 for d in dets)
    # the best detection of an image is its best test-time score: NMS never removes the top box
    assert torch.allclose(torch.stack([d["scores"][0] for d in dets]), scores.flatten(1).max(1).values)


def test_figure_maps_are_computed_only_on_request():
    torch.manual_seed(0)
    model = DenseDetector(TOODHead(3, 16, 16), widths=(8, 16, 16, 16), fpn_channels=16)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain, mapped = model(images), model(images, with_maps=True)
    assert plain.maps == {}
    assert set(mapped.maps) == {"offsets", "prob_map", "unaligned_boxes", "attention_cls", "attention_reg"}
    # with zero offsets the aligned boxes are the unaligned ones (in pixels)
    torch.nn.init.zeros_(model.head.reg_offset_module[-1].weight)
    with torch.no_grad():
        still = model(images, with_maps=True)
    unaligned = flatten_levels(still.maps["unaligned_boxes"]) * still.priors.strides[None, :, None]
    assert torch.equal(still.boxes, unaligned)


def test_heads_read_their_own_settings(scenes):
    """The loss and the test path take a head's settings from the head (one place)."""
    torch.manual_seed(0)
    num_classes = scenes.config.num_classes
    model = DenseDetector(BorderHead(num_classes, 16, 16, border_channels=(8, 4), bbox_std=0.25),
                          widths=(8, 16, 16, 16), fpn_channels=16)
    images, boxes, labels = scenes.batch(range(2))
    with torch.no_grad():
        out = model(images)
    wh = (out.boxes[..., 2:] - out.boxes[..., :2]).repeat(1, 1, 2)
    _, refined = model.head.test_outputs(out)
    assert torch.allclose(refined, out.boxes + 0.25 * wh * out.border_deltas)
    # the box target is (G - B0) / (bbox_std * wh(B0)): the head's bbox_std scales the L1 loss's target
    model.head.iou_threshold = 0.3
    labels_b, targets = border_targets(out.boxes, boxes, labels, 0.3, 0.25)
    positive = labels_b >= 0
    expected = (out.border_deltas[positive] - targets[positive]).abs().sum() / max(1, int(positive.sum()))
    assert positive.any() and torch.allclose(model.head.loss(out, boxes, labels)["border_box"], expected)


def test_dense_detector_reproduces_the_paired_initial_weights():
    """share_atss_trunk: the trunk is the ATSS baseline's of that seed, the head as if built after it."""
    kit.seed_everything(3)
    reference = DenseDetector(ATSSHead(4, 16, 16), (8, 16, 16, 16), fpn_channels=16)
    by_hand = DenseDetector(TOODHead(4, 16, 16), (8, 16, 16, 16), fpn_channels=16)
    by_hand.backbone.load_state_dict(reference.backbone.state_dict())
    by_hand.fpn.load_state_dict(reference.fpn.state_dict())
    built = dense_detector(TOODHead, 4, 16, seed=3, share_atss_trunk=True, widths=(8, 16, 16, 16))
    baseline = dense_detector(ATSSHead, 4, 16, seed=3, widths=(8, 16, 16, 16))
    for name, value in by_hand.state_dict().items():
        assert torch.equal(built.state_dict()[name], value), name
    for name, value in reference.state_dict().items():
        assert torch.equal(baseline.state_dict()[name], value), name
    unpaired = dense_detector(TOODHead, 4, 16, seed=3, widths=(8, 16, 16, 16))  # head first: another trunk
    assert not torch.equal(next(built.backbone.parameters()), next(unpaired.backbone.parameters()))


def test_tood_warmup_loss_and_gradients(scenes):
    torch.manual_seed(0)
    model = DenseDetector(TOODHead(6, 16, 16), widths=(8, 16, 16, 16), fpn_channels=16)
    images, boxes, labels = scenes.batch(range(3))
    losses = tood_loss(model(images), boxes, labels, warmup=True)
    assert set(losses) == {"cls", "box"}
    sum(losses.values()).backward()
    grads = [p.grad for p in model.head.reg_offset_module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_targets_padding_and_gathering():
    boxes, labels = pad_targets([torch.ones(2, 4), torch.zeros(0, 4)], [torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)])
    assert boxes.shape == (2, 2, 4) and labels.tolist() == [[1, 2], [-1, -1]]
    matched, matched_labels = gather_targets(torch.tensor([[1, -1, 0], [-1, -1, -1]]), boxes, labels)
    assert matched_labels.tolist() == [[2, -1, 1], [-1, -1, -1]]
    assert matched[0, 1].abs().sum() == 0
    with pytest.raises(ValueError, match="do not match"):
        pad_targets([torch.ones(2, 4)], [torch.tensor([1])])


def test_postprocess_thresholds_and_nms():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]]])
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.0, 0.03]]])
    [det] = postprocess(scores, boxes, score_threshold=0.05, nms_iou_threshold=0.6)
    assert det["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert det["labels"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="scores"):
        postprocess(scores[0], boxes)
