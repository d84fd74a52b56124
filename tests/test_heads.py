import pytest
import torch
import torch.nn.functional as F

from kit.det.atss import ATSSHead, atss_loss
from kit.det.detector import DenseDetector, gather_targets, pad_targets
from kit.det.postprocess import postprocess
from kit.det.tood import TaskDecomposition, TOODHead, align_boxes, normalized_alignment, tood_loss


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


@pytest.mark.parametrize("head_kind", ["atss", "tood"])
def test_detector_shapes_and_a_few_steps_reduce_the_loss(scenes, head_kind):
    torch.manual_seed(0)
    head = ATSSHead(scenes.config.num_classes, 16, 16) if head_kind == "atss" else TOODHead(scenes.config.num_classes, 16, 16)
    model = DenseDetector(head, widths=(8, 16, 16, 16), fpn_channels=16)
    images, boxes, labels = scenes.batch(range(4))
    out = model(images)
    n = 8 * 8 + 4 * 4 + 2 * 2
    assert out.cls_probs.shape == (4, n, scenes.config.num_classes) and out.boxes.shape == (4, n, 4)
    assert (out.cls_probs >= 0).all() and (out.cls_probs <= 1).all()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss():
        o = model(images)
        return sum(atss_loss(o, boxes, labels).values()) if head_kind == "atss" else \
            sum(tood_loss(o, boxes, labels, warmup=False).values())

    first = loss().item()
    for _ in range(15):
        opt.zero_grad()
        total = loss()
        total.backward()
        opt.step()
    assert loss().item() < first
    dets = model.detect(images, max_per_image=5)
    assert len(dets) == 4 and all(len(d["boxes"]) <= 5 for d in dets)


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
    [det] = postprocess(scores, boxes, score_thr=0.05, nms_iou=0.6)
    assert det["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert det["labels"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="scores"):
        postprocess(scores[0], boxes)
