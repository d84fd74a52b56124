"""The two-stage detector (kit.det.rpn, kit.det.two_stage, kit.det.roi_heads).

Invariants of the RoI sampling (the positive fraction and count, the ground truth among the
positives), of the box coding and of inference (max detections, per-class NMS); numerical
agreement with torchvision's own Faster R-CNN pieces on the same inputs: the RPN's forward,
``RoIHeads.select_training_samples``, ``fastrcnn_loss`` and ``RoIHeads.postprocess_detections``;
then the detector end to end: it trains (the loss falls over 20 AdamW steps on a fixed batch,
images without objects train too), runs under ``kit.train.train`` and its detections pass the
COCO evaluator.
"""
import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import box_iou

from kit.data.shapes import ShapeSceneConfig, generate
from kit.det.roi_heads import FasterRCNNHead, RoIHead
from kit.det.rpn import region_proposal_network
from kit.det.two_stage import (TinyResNetC4, TwoStageDetector, decode_deltas, detect_from_rois, encode_boxes,
                               fast_rcnn_loss, sample_rois, two_stage_detector)
from kit.eval.coco import check_image_detections, detections_to_coco, evaluate_detector
from kit.train import train

NUM_CLASSES = 3
IMAGE = 96


def tiny_detector(seed: int = 0, **detector_options) -> TwoStageDetector:
    return two_stage_detector(FasterRCNNHead, NUM_CLASSES, seed=seed, widths=(8, 16, 32, 64), fc_channels=64,
                              detector_options=detector_options or None)


def jittered(boxes: torch.Tensor, count: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    """``count`` copies of each box (M, 4) with corners moved by up to ``scale`` of its size."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (M, 4)
    noise = (torch.rand(count, *boxes.shape, generator=gen) * 2 - 1) * scale * size  # (count, M, 4)
    return (boxes + noise).reshape(-1, 4)


def random_boxes(count: int, gen: torch.Generator, low: float = 4.0, high: float = 40.0) -> torch.Tensor:
    xy = torch.rand(count, 2, generator=gen) * (IMAGE - high)
    wh = low + torch.rand(count, 2, generator=gen) * (high - low)
    return torch.cat([xy, xy + wh], dim=1)


GT_BOXES = torch.tensor([[10.0, 12.0, 40.0, 50.0], [50.0, 40.0, 90.0, 70.0], [20.0, 60.0, 36.0, 80.0]])
GT_LABELS = torch.tensor([0, 2, 1])


def outputs(gen: torch.Generator, rois: list, num_classes: int = NUM_CLASSES, agnostic: bool = False):
    """Random head outputs for ``rois``: logits (R, C + 1), deltas (R, 4C) or (R, 4)."""
    r = sum(len(x) for x in rois)
    logits = torch.randn(r, num_classes + 1, generator=gen) * 2
    deltas = torch.randn(r, 4 if agnostic else 4 * num_classes, generator=gen)
    return logits, deltas


def torchvision_roi_heads(**options) -> RoIHeads:
    """torchvision's RoIHeads with the kit's defaults (no pooling, head or predictor: not called)."""
    settings = {"fg_iou_thresh": 0.5, "bg_iou_thresh": 0.5, "batch_size_per_image": 128, "positive_fraction": 0.25,
                "bbox_reg_weights": (10.0, 10.0, 5.0, 5.0), "score_thresh": 0.05, "nms_thresh": 0.5,
                "detections_per_img": 100, **options}
    return RoIHeads(None, None, None, **settings)


# --------------------------------------------------------------------------- sampling


def test_sampler_takes_the_positive_fraction_and_the_count():
    gen = torch.Generator().manual_seed(0)
    near = jittered(GT_BOXES, 40, 0.05, gen)  # IoU > 0.5 with their object: 120 positives
    far = random_boxes(400, gen) + 200  # outside the image region of the objects: negatives
    torch.manual_seed(0)
    sample = sample_rois([torch.cat([near, far])], [GT_BOXES], [GT_LABELS], num_rois=64, positive_fraction=0.25)
    labels = sample.labels[0]
    assert len(labels) == 64 and int((labels > 0).sum()) == 16  # int(64 * 0.25) positives, the rest negatives
    # Few positives: all of them (the three objects themselves), negatives fill up to the count.
    sample = sample_rois([far], [GT_BOXES], [GT_LABELS], num_rois=64)
    assert len(sample.labels[0]) == 64 and int((sample.labels[0] > 0).sum()) == 3
    # Few candidates of both kinds: every candidate once.
    sample = sample_rois([far[:5]], [GT_BOXES], [GT_LABELS], num_rois=64)
    assert len(sample.rois[0]) == 8 and len(torch.unique(sample.rois[0], dim=0)) == 8


def test_ground_truth_is_always_among_the_positives():
    gen = torch.Generator().manual_seed(1)
    proposals = [random_boxes(30, gen) + 200, jittered(GT_BOXES, 2, 0.3, gen)]
    sample = sample_rois(proposals, [GT_BOXES, GT_BOXES], [GT_LABELS, GT_LABELS], num_rois=128)
    for rois, labels, targets, gt_index in zip(*sample):
        for m, (box, label) in enumerate(zip(GT_BOXES, GT_LABELS)):
            row = (rois == box).all(1).nonzero()[0, 0]  # the object is a sampled RoI ...
            assert labels[row] == label + 1 and gt_index[row] == m  # ... labelled with its own class
            assert torch.allclose(targets[row], torch.zeros(4), atol=1e-6)  # ... needing no correction
        assert (box_iou(rois[labels > 0], GT_BOXES).max(1).values >= 0.5).all()
        assert (labels[gt_index < 0] == 0).all() and (targets[labels == 0] == 0).all()


def test_sampling_agrees_with_torchvision_select_training_samples():
    gen = torch.Generator().manual_seed(2)
    proposals = [torch.cat([jittered(GT_BOXES, 30, 0.25, gen), random_boxes(200, gen)]), random_boxes(50, gen)]
    gt_boxes, gt_labels = [GT_BOXES, torch.zeros(0, 4)], [GT_LABELS, torch.zeros(0, dtype=torch.long)]
    torch.manual_seed(7)
    ours = sample_rois(proposals, gt_boxes, gt_labels, num_rois=128, positive_fraction=0.25)
    torch.manual_seed(7)
    targets = [{"boxes": b, "labels": lab + 1} for b, lab in zip(gt_boxes, gt_labels)]  # torchvision: 0 = background
    rois, _, labels, regression = torchvision_roi_heads().select_training_samples([p.clone() for p in proposals], targets)
    for i in range(2):
        assert torch.equal(ours.rois[i], rois[i]) and torch.equal(ours.labels[i], labels[i])
        positive = labels[i] > 0
        torch.testing.assert_close(ours.box_targets[i][positive], regression[i][positive], rtol=0, atol=1e-6)
    assert int((ours.labels[0] > 0).sum()) == 32 and (ours.labels[1] == 0).all()


def test_box_coding_round_trip_and_slots():
    gen = torch.Generator().manual_seed(3)
    rois, gt = random_boxes(50, gen, 4, 60), random_boxes(50, gen, 4, 60)
    deltas = encode_boxes(gt, rois)  # (50, 4)
    torch.testing.assert_close(decode_deltas(deltas, rois)[:, 0], gt, rtol=0, atol=1e-4)
    # Slot k of (R, 4K) deltas decodes to box k: the layout fast_rcnn_loss and detect_from_rois read.
    slots = torch.cat([torch.zeros_like(deltas), deltas, torch.zeros_like(deltas)], dim=1)  # (50, 12)
    decoded = decode_deltas(slots, rois)  # (50, 3, 4)
    torch.testing.assert_close(decoded[:, 1], gt, rtol=0, atol=1e-4)
    torch.testing.assert_close(decoded[:, 0], rois, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- loss and inference vs torchvision


@pytest.mark.parametrize("agnostic", [False, True], ids=["class-specific", "class-agnostic"])
def test_fast_rcnn_loss_matches_torchvision(agnostic):
    gen = torch.Generator().manual_seed(4)
    logits, deltas = outputs(gen, [torch.zeros(70, 4)], agnostic=agnostic)
    labels = torch.randint(0, NUM_CLASSES + 1, (70,), generator=gen)
    targets = torch.randn(70, 4, generator=gen)
    ours = fast_rcnn_loss(logits, deltas, labels, targets)
    # torchvision reads 4 (C + 1) deltas, slot 0 for background: give it one, or the agnostic box in every slot.
    padded = deltas.repeat(1, NUM_CLASSES + 1) if agnostic else torch.cat([torch.zeros(70, 4), deltas], dim=1)
    cls, box = fastrcnn_loss(logits, padded, [labels[:30], labels[30:]], [targets[:30], targets[30:]])
    torch.testing.assert_close(ours["cls"], cls, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours["box"], box, rtol=1e-6, atol=0)


@pytest.mark.parametrize("agnostic", [False, True], ids=["class-specific", "class-agnostic"])
def test_detections_match_torchvision_postprocess(agnostic):
    gen = torch.Generator().manual_seed(5)
    rois = [jittered(GT_BOXES, 20, 0.3, gen), random_boxes(40, gen)]
    logits, deltas = outputs(gen, rois, agnostic=agnostic)
    deltas = deltas * 0.5
    ours = detect_from_rois(logits, deltas, rois, (IMAGE, IMAGE), score_threshold=0.05, nms_iou_threshold=0.5,
                            max_per_image=30)
    padded = deltas.repeat(1, NUM_CLASSES + 1) if agnostic else torch.cat([torch.zeros(len(logits), 4), deltas], 1)
    boxes, scores, labels = torchvision_roi_heads(detections_per_img=30).postprocess_detections(
        logits, padded, rois, [(IMAGE, IMAGE)] * 2)
    for i in range(2):
        assert len(ours[i]["boxes"]) > 5
        torch.testing.assert_close(ours[i]["boxes"], boxes[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(ours[i]["scores"], scores[i], rtol=1e-6, atol=0)
        assert torch.equal(ours[i]["labels"], labels[i] - 1)  # the kit's labels are 0..C-1


def test_inference_keeps_max_detections_and_nms_per_class():
    gen = torch.Generator().manual_seed(6)
    rois = [jittered(GT_BOXES, 60, 0.2, gen)]  # heavily overlapping RoIs
    logits, deltas = outputs(gen, rois)
    for most in (1, 7, 100):
        det = detect_from_rois(logits, deltas * 0.3, rois, (IMAGE, IMAGE), nms_iou_threshold=0.4,
                               max_per_image=most)[0]
        assert len(det["boxes"]) <= most
        assert (det["scores"][:-1] >= det["scores"][1:]).all() and (det["scores"] > 0.05).all()
        for c in det["labels"].unique():
            same = det["boxes"][det["labels"] == c]
            overlap = box_iou(same, same) - torch.eye(len(same))
            assert (overlap <= 0.4 + 1e-6).all()
    assert len(det["labels"].unique()) > 1  # several classes kept boxes at the same place
    # Non-finite outputs are dropped with a warning, the rest is unchanged.
    bad = logits.clone()
    bad[0] = float("nan")
    with pytest.warns(RuntimeWarning, match="dropped 1 of"):
        det = detect_from_rois(bad, deltas, rois, (IMAGE, IMAGE))[0]
    assert torch.isfinite(det["boxes"]).all()


# --------------------------------------------------------------------------- the RPN


def test_rpn_matches_torchvision_forward_and_respects_the_counts():
    torch.manual_seed(0)
    rpn = region_proposal_network(16, post_nms_topk_train=40, post_nms_topk_test=20)
    images, features = torch.rand(2, 3, IMAGE, IMAGE), torch.randn(2, 16, IMAGE // 16, IMAGE // 16)
    gt = [GT_BOXES, torch.zeros(0, 4)]
    torch.manual_seed(1)
    proposals, losses = rpn(images, features, gt)
    torch.manual_seed(1)
    image_list = ImageList(images, [(IMAGE, IMAGE)] * 2)
    reference, reference_losses = RegionProposalNetwork.forward(rpn, image_list, {"0": features},
                                                                [{"boxes": b} for b in gt])
    for ours, theirs in zip(proposals, reference):
        assert torch.equal(ours, theirs) and len(ours) == 40
        assert (ours >= 0).all() and (ours <= IMAGE).all()
    torch.testing.assert_close(losses["rpn_objectness"], reference_losses["loss_objectness"], rtol=0, atol=0)
    torch.testing.assert_close(losses["rpn_box"], reference_losses["loss_rpn_box_reg"], rtol=0, atol=0)
    rpn.eval()
    proposals, losses = rpn(images, features)
    assert losses == {} and all(len(p) == 20 for p in proposals)
    assert set(rpn(images, features, gt)[1]) == {"rpn_objectness", "rpn_box"}  # losses in eval mode too


# --------------------------------------------------------------------------- the detector


def test_heads_and_backbone_shapes():
    backbone = TinyResNetC4((8, 16, 32, 64))
    features = backbone(torch.rand(2, 3, IMAGE, IMAGE))
    assert features.shape == (2, 32, IMAGE // 16, IMAGE // 16) and backbone.stride == 16
    proposals = [GT_BOXES, torch.zeros(0, 4)]
    for agnostic, width in ((False, 4 * NUM_CLASSES), (True, 4)):
        head = FasterRCNNHead(NUM_CLASSES, 32, fc_channels=32, class_agnostic=agnostic)
        logits, deltas = head(features, proposals, (IMAGE, IMAGE))
        assert logits.shape == (3, NUM_CLASSES + 1) and deltas.shape == (3, width)
    assert isinstance(head, RoIHead) and head.num_box_slots == 1


def test_loss_falls_when_overfitting_a_fixed_batch():
    scenes = generate(ShapeSceneConfig(num_images=2, image_size=IMAGE, num_classes=NUM_CLASSES, seed=1), use_cache=False)
    images, boxes, labels = scenes.batch(range(2))
    model = tiny_detector()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for step in range(20):
        torch.manual_seed(step)
        losses = model.loss(images, boxes, labels)
        assert set(losses) == {"rpn_objectness", "rpn_box", "cls", "box"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert sum(totals[-3:]) / 3 < 0.6 * totals[0], totals


def test_images_without_objects_train():
    model = tiny_detector()
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)] * 2
    losses = model.loss(torch.rand(2, 3, IMAGE, IMAGE), *empty)
    assert losses["box"].item() == 0 and losses["rpn_box"].item() == 0 and losses["cls"].item() > 0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_detector_trains_under_kit_train_and_its_detections_pass_the_evaluator():
    scenes = generate(ShapeSceneConfig(num_images=4, image_size=IMAGE, num_classes=NUM_CLASSES, seed=2), use_cache=False)
    model = tiny_detector(max_per_image=20)
    history = train(model, lambda step: scenes.batch([step % 4, (step + 1) % 4]),
                    lambda m, batch, step: m.loss(*batch), iterations=2,
                    optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), progress=False)
    assert len(history) == 2 and torch.isfinite(torch.tensor(history["loss"].to_numpy())).all()
    assert model.training  # detect restores the mode
    detections = model.detect(scenes.batch(range(4))[0])
    assert model.training and len(detections) == 4
    for i, det in enumerate(detections):
        check_image_detections(det, f"detections[{i}]", list(range(NUM_CLASSES)))
        assert len(det["boxes"]) <= 20
    assert len(detections_to_coco(detections, category_ids=list(range(NUM_CLASSES)))) == sum(
        len(d["boxes"]) for d in detections)
    metrics = evaluate_detector(model, scenes, batch_size=2)
    assert set(metrics) >= {"AP", "AP50"} and all(0 <= v <= 1 for v in metrics.values() if v == v)


def test_the_factory_is_seeded():
    a, b, c = tiny_detector(seed=3), tiny_detector(seed=3), tiny_detector(seed=4)
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
    assert not all(torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters()))
