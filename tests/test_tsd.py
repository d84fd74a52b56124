"""kit.det.tsd: the decoupling head's invariants, its progressive constraint and one training step."""
import torch

from kit.det.roi_heads import FasterRCNNHead
from kit.det.tsd import TSDDetector, TSDHead, progressive_constraint, shift_boxes, tsd_detector
from kit.det.two_stage import two_stage_detector


def features_and_proposals(seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 16, 6, 6, generator=g)
    corner = torch.rand(10, 2, generator=g) * 60
    boxes = torch.cat([corner, corner + 10 + torch.rand(10, 2, generator=g) * 30], 1)
    return features, [boxes[:6], boxes[6:]]


def test_zero_offsets_pool_the_sibling_features_and_the_forward_is_the_decoupled_head():
    features, proposals = features_and_proposals()
    head = TSDHead(3, 16, fc_channels=32, offset_channels=24).eval()
    logits, deltas, delta_c, delta_r, shifted, roi_features = head.decoupled(features, proposals, (96, 96))
    assert delta_c.abs().max() == 0 and delta_r.abs().max() == 0  # the offset branches start at zero
    assert torch.equal(shifted, torch.cat(proposals))
    assert torch.allclose(head.classifier(head.cls_fcs(roi_features)), logits, atol=1e-5)
    assert torch.allclose(head.regressor(head.reg_fcs(roi_features)), deltas, atol=1e-5)
    out_logits, out_deltas = head(features, proposals, (96, 96))
    assert out_logits.shape == (10, 4) and out_deltas.shape == (10, 12)
    assert torch.equal(out_logits, logits) and torch.equal(out_deltas, deltas)


def test_shifted_proposal_is_a_pure_translation_scaled_by_gamma():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 8.0, 16.0]])
    delta_r = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    moved = shift_boxes(boxes, delta_r, 0.1)
    assert torch.allclose(moved[:, 2:] - moved[:, :2], boxes[:, 2:] - boxes[:, :2])
    assert torch.allclose(moved[:, :2] - boxes[:, :2], torch.tensor([[4.0, -4.0], [0.4, 0.4]]))


def test_progressive_constraint_margins_and_zero_when_beaten():
    labels = torch.tensor([0, 2, 1])
    sibling = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 9.0], [0.0, 1.0, 0.0]])
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 60.0, 80.0]])
    sib_boxes = gt + torch.tensor([[2.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # the second is perfect
    loss = progressive_constraint(sibling, sibling.clone(), labels, sib_boxes, sib_boxes.clone(), gt, 0.3, 0.3)
    p = sibling.softmax(-1)[torch.arange(3), labels]
    assert torch.allclose(loss["pc_cls"], torch.clamp(1 - p, max=0.3).mean())  # equal heads pay the margin
    iou0 = 18 * 20 / (22 * 20)
    assert torch.allclose(loss["pc_loc"], torch.tensor([min(0.3, 1 - iou0), 0.0]).mean())  # margin <= 1 - IoU
    better = sibling.clone()
    better[torch.arange(3), labels] += 20.0
    beaten = progressive_constraint(sibling, better, labels, sib_boxes, gt, gt, 0.3, 0.3)
    assert beaten["pc_cls"] < 1e-6 and beaten["pc_loc"] == 0
    assert all(v >= 0 for v in loss.values())


def test_progressive_constraint_does_not_train_the_sibling():
    labels = torch.tensor([1, 0])
    sibling = torch.tensor([[0.5, 0.2, -0.1], [1.0, 0.0, 0.3]], requires_grad=True)
    decoupled = sibling.detach().clone().requires_grad_(True)  # equal heads: both margins are active
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    sib_boxes = boxes.clone().requires_grad_(True)
    dh_boxes = (boxes + 1).requires_grad_(True)
    loss = progressive_constraint(sibling, decoupled, labels, sib_boxes, dh_boxes, boxes, 0.3, 0.3)
    (loss["pc_cls"] + loss["pc_loc"]).backward()
    assert sibling.grad is None and sib_boxes.grad is None
    assert decoupled.grad.abs().sum() > 0 and dh_boxes.grad.abs().sum() > 0


def test_same_seed_same_backbone_and_rpn_and_one_step_trains_every_branch():
    baseline = two_stage_detector(FasterRCNNHead, 3, seed=0, widths=(8, 8, 16, 16))
    model = tsd_detector(3, seed=0, widths=(8, 8, 16, 16), fc_channels=32, offset_channels=24,
                         detector_options=dict(num_rois=16))
    assert isinstance(model, TSDDetector) and model.num_rois == 16
    for a, b in ((baseline.backbone, model.backbone), (baseline.rpn, model.rpn)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    images = torch.rand(2, 3, 96, 96)
    gt_boxes = [torch.tensor([[10.0, 12.0, 60.0, 70.0]]), torch.tensor([[30.0, 20.0, 90.0, 60.0], [5.0, 5.0, 30.0, 40.0]])]
    gt_labels = [torch.tensor([0]), torch.tensor([2, 1])]
    losses = model.loss(images, gt_boxes, gt_labels)
    assert set(losses) == {"rpn_objectness", "rpn_box", "sibling_cls", "sibling_box", "cls", "box", "pc_cls", "pc_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    head = model.roi_head
    for name, module in (("sibling", head.sibling), ("cls_fcs", head.cls_fcs), ("reg_fcs", head.reg_fcs),
                         ("delta_c", head.delta_c[2]), ("delta_r", head.delta_r[2]), ("backbone", model.backbone)):
        assert sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None) > 0, name
    detections = model.detect(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}
    empty = model.loss(images, [torch.zeros(0, 4), gt_boxes[1]], [torch.zeros(0, dtype=torch.long), gt_labels[1]])
    assert all(torch.isfinite(v) for v in empty.values())
