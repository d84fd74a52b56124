"""BorderDet: border targets, refinement, the border branch and the detector around it."""
import pytest
import torch

from kit.det.atss import ATSSHead
from kit.det.borderdet import (BorderBranch, BorderHead, border_losses, border_targets, feature_map_boxes,
                               refine_boxes)
from kit.det.boxes import box_iou
from kit.det.detector import DenseDetector


def test_feature_map_boxes_put_cell_centres_on_integers_and_clamp():
    boxes = torch.tensor([[4.0, 12.0, 20.0, 28.0], [-30.0, -5.0, 200.0, 90.0]])
    mapped = feature_map_boxes(boxes, stride=8, height=6, width=10)
    assert mapped[0].tolist() == [0.0, 1.0, 2.0, 3.0]  # the centre of cell j, (j + 0.5) * 8, goes to j
    assert mapped[1].tolist() == [0.0, 0.0, 9.0, 5.0]  # clamped to [0, W-1] x [0, H-1]


def test_zero_delta_keeps_the_coarse_box_and_the_target_delta_reaches_the_object():
    coarse = torch.tensor([[[10.0, 10.0, 30.0, 50.0], [0.0, 0.0, 4.0, 4.0], [12.0, 8.0, 31.0, 47.0]]])
    assert torch.equal(refine_boxes(coarse, torch.zeros_like(coarse)), coarse)
    gt = torch.tensor([[11.0, 9.0, 32.0, 48.0]])
    labels, targets = border_targets(coarse, [gt], [torch.tensor([2])], iou_threshold=0.6)
    assert labels.tolist() == [[2, -1, 2]]  # box 1 does not overlap the object
    assert (targets[0, 1] == 0).all()
    refined = refine_boxes(coarse, targets)
    assert torch.allclose(refined[0, [0, 2]], gt.expand(2, 4), atol=1e-5)
    # The threshold is on the coarse box's IoU: 0.6 in, just below out.
    iou = box_iou(coarse[0], gt)[:, 0]
    strict, _ = border_targets(coarse, [gt], [torch.tensor([2])], iou_threshold=float(iou[2]) + 1e-4)
    assert strict[0, 2] == -1
    empty, empty_targets = border_targets(coarse, [gt[:0]], [torch.tensor([], dtype=torch.long)])
    assert (empty == -1).all() and (empty_targets == 0).all()
    with pytest.raises(ValueError, match="iou_threshold"):
        border_targets(coarse, [gt], [torch.tensor([2])], iou_threshold=0.0)


def test_border_branch_shapes_and_side_major_layout():
    torch.manual_seed(0)
    branch = BorderBranch(in_channels=8, border_channels=3, pool_size=4)
    feature = torch.randn(2, 8, 5, 6)
    boxes = torch.tensor([1.0, 1.0, 3.0, 4.0]).expand(2, 30, 4)
    fused_inputs = []
    branch.fuse.register_forward_pre_hook(lambda module, args: fused_inputs.append(args[0]))
    assert branch(feature, boxes).shape == (2, 8, 5, 6)
    pooled, argmax = branch.pooled(feature, boxes, return_argmax=True)
    assert pooled.shape == argmax.shape == (2, 3, 30, 4) and argmax.max() <= 4
    # side-major: the fuse conv sees the C channels of side 0 (top), then side 1, ... then the point's own
    fused = fused_inputs[0]  # (B, 4C + C, H, W)
    for side in range(4):
        assert torch.equal(fused[:, 3 * side:3 * (side + 1)], pooled[..., side].reshape(2, 3, 5, 6))
    assert torch.equal(fused[:, 12:], branch.current_point(feature))


def _model(num_classes, head_cls=BorderHead):
    torch.manual_seed(0)
    head = head_cls(num_classes, 16, 16, border_channels=(8, 4), iou_threshold=0.3) if head_cls is BorderHead \
        else head_cls(num_classes, 16, 16)
    return DenseDetector(head, widths=(8, 16, 16, 16), fpn_channels=16)


def test_border_losses_do_not_reach_the_first_stage_box_regression(scenes):
    model = _model(scenes.config.num_classes)
    images, boxes, labels = scenes.batch(range(4))
    out = model(images)
    coarse_labels, _ = border_targets(out.boxes.detach(), boxes, labels)
    losses = model.head.loss(out, boxes, labels)
    assert {"cls", "box", "centerness", "border_cls", "border_box"} == set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    (losses["border_cls"] + losses["border_box"]).backward()
    assert model.head.reg_conv.weight.grad is None  # B0 is detached
    assert all(scale.scale.grad is None for scale in model.head.scales)
    assert model.head.border_reg_conv.weight.grad.abs().sum() > 0
    assert model.head.reg_tower[0][0].weight.grad.abs().sum() > 0  # the tower feeds the branch
    assert coarse_labels.shape == out.boxes.shape[:2]
    model.zero_grad(set_to_none=True)
    model.head.detach_towers = True  # the switch: the border stage no longer reaches the towers
    losses = model.head.loss(model(images), boxes, labels)
    (losses["border_cls"] + losses["border_box"]).backward()
    assert model.head.reg_tower[0][0].weight.grad is None and model.head.border_reg_conv.weight.grad is not None


def test_test_time_switches(scenes):
    model = _model(scenes.config.num_classes)
    images, boxes, labels = scenes.batch(range(4))
    with torch.no_grad():
        out = model(images)
    model.head.rescore = model.head.refine = False
    scores, refined = model.head.test_outputs(out)
    assert torch.equal(scores, out.detection_scores()) and torch.equal(refined, out.boxes)
    model.head.rescore = True  # rescoring: sqrt(sqrt(cls * ctr) * border_cls), boxes untouched
    scores, refined = model.head.test_outputs(out)
    expected = (out.detection_scores().sqrt() * out.border_cls_logits.sigmoid()).sqrt()
    assert torch.equal(scores, expected) and torch.equal(refined, out.boxes)
    model.head.rescore, model.head.refine = False, True  # refining: B0 + bbox_std * wh * delta
    scores, refined = model.head.test_outputs(out)
    assert torch.equal(scores, out.detection_scores())
    assert torch.equal(refined, refine_boxes(out.boxes, out.border_deltas, model.head.bbox_std))


def test_border_losses_need_the_border_outputs(scenes):
    model = _model(scenes.config.num_classes, ATSSHead)
    images, boxes, labels = scenes.batch(range(2))
    with pytest.raises(ValueError, match="BorderHead"):
        border_losses(model(images), boxes, labels)
