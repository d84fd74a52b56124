"""Cross-dataset training: the dataset-aware focal loss, label masks, per-class evaluation."""
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from kit.det.cross_dataset import dataset_aware_focal_loss, label_mask_for, merge_label_spaces, prior_label_mask
from kit.eval.recall import recall_by_class


def toy(seed=0, n=40, c=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 2
    labels = torch.randint(-1, 3, (n,), generator=g)  # classes 0..2 only, -1 background
    targets = torch.zeros(n, c)
    targets[labels >= 0, labels[labels >= 0]] = 1
    return logits, targets, labels


def test_all_ones_mask_is_the_plain_focal_loss():
    logits, targets, labels = toy()
    plain = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2, reduction="sum") / (labels >= 0).sum()
    assert torch.allclose(dataset_aware_focal_loss(logits, targets, torch.ones(5, dtype=torch.bool)), plain)
    assert torch.allclose(dataset_aware_focal_loss(logits, targets, torch.ones(40, 5)), plain)


def test_masked_classes_are_ignored_exactly():
    logits, targets, labels = toy(1)
    mask = torch.tensor([True, True, True, False, False])
    logits.requires_grad_(True)
    loss = dataset_aware_focal_loss(logits, targets, mask)
    loss.backward()
    assert (logits.grad[:, 3:] == 0).all() and (logits.grad[:, :3] != 0).all()
    # any value in the masked columns gives the same loss, bit for bit
    changed = logits.detach().clone()
    changed[:, 3:] = torch.randn(40, 2) * 50
    assert torch.equal(dataset_aware_focal_loss(changed, targets, mask), loss.detach())
    # and it equals the focal loss on the counted columns alone, with the same normaliser
    kept = sigmoid_focal_loss(logits.detach()[:, :3], targets[:, :3], reduction="sum") / (labels >= 0).sum()
    assert torch.allclose(loss.detach(), kept)
    # the normaliser is the number of positives, not of unmasked entries
    no_pos = dataset_aware_focal_loss(logits.detach(), torch.zeros(40, 5), mask)
    assert torch.allclose(no_pos, sigmoid_focal_loss(logits.detach()[:, :3], torch.zeros(40, 3), reduction="sum"))


def test_per_prior_masks_follow_the_dataset_of_each_image():
    mask = label_mask_for(torch.tensor([0, 1, 1]), [[0, 1, 2], [2, 3, 4, 5]], num_classes=6)
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    per_prior = prior_label_mask(mask, 4)
    assert per_prior.shape == (12, 6) and torch.equal(per_prior[4:8], mask[1].expand(4, 6))
    with pytest.raises(ValueError, match="subset"):
        label_mask_for(torch.tensor([0]), [[0, 7]], num_classes=6)
    with pytest.raises(ValueError, match="dataset_ids"):
        label_mask_for(torch.tensor([2]), [[0], [1]], num_classes=6)


def test_bad_masks_and_shapes_raise():
    logits, targets, _ = toy(2)
    with pytest.raises(ValueError, match="does not cover the labels"):
        dataset_aware_focal_loss(logits, targets, torch.tensor([True, False, True, True, True]))
    with pytest.raises(ValueError, match="broadcast"):
        dataset_aware_focal_loss(logits, targets, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        dataset_aware_focal_loss(logits, targets[:, :4], torch.ones(5, dtype=torch.bool))


def test_merge_label_spaces_maps_duplicates_to_one_index():
    merged, maps = merge_label_spaces([["circle", "square", "triangle"], ["triangle", "ring"]])
    assert merged == ["circle", "square", "triangle", "ring"]
    assert maps[0].tolist() == [0, 1, 2] and maps[1].tolist() == [2, 3]
    with pytest.raises(ValueError, match="twice"):
        merge_label_spaces([["a", "a"]])


def test_dataset_aware_atss_loss_with_full_mask_is_atss_and_partial_mask_ignores_classes(scenes):
    from kit.det.atss import ATSSHead, atss_loss
    from kit.det.cross_dataset import dataset_aware_atss_loss
    from kit.det.detector import DenseDetector

    torch.manual_seed(0)
    model = DenseDetector(ATSSHead(6, 16, 16), widths=(8, 16, 16, 16), fpn_channels=16)
    images, boxes, labels = scenes.batch(range(3))
    out = model(images)
    plain = atss_loss(out, boxes, labels)
    full = dataset_aware_atss_loss(out, boxes, labels, torch.ones(3, 6, dtype=torch.bool))
    assert all(torch.equal(plain[k], full[k]) for k in plain)  # an all-True mask changes nothing, bit for bit
    present = torch.zeros(3, 6, dtype=torch.bool)
    for i, l in enumerate(labels):
        present[i, l] = True
    partial = dataset_aware_atss_loss(out, boxes, labels, present)
    assert partial["cls"] < plain["cls"] and torch.equal(partial["box"], plain["box"])
    # the classes an image's dataset does not label get no gradient from that image
    out.cls_logits.retain_grad()
    partial["cls"].backward()
    assert (out.cls_logits.grad[~present[:, None, :].expand_as(out.cls_logits)] == 0).all()
    with pytest.raises(ValueError, match="does not cover"):
        dataset_aware_atss_loss(out, boxes, labels, ~present)
    with pytest.raises(ValueError, match=r"label_mask must be \(B, C\)"):
        dataset_aware_atss_loss(out, boxes, labels, present[:2])


def test_recall_by_class_counts_matches_above_threshold():
    gt_boxes = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([[5.0, 5, 15, 15]])]
    gt_labels = [torch.tensor([0, 1]), torch.tensor([1])]
    dets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [20, 20, 30, 30]]),
             "scores": torch.tensor([0.9, 0.2, 0.8]), "labels": torch.tensor([0, 1, 0])},
            {"boxes": torch.tensor([[5.0, 5, 15, 15]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([1])}]
    recall = recall_by_class(dets, gt_boxes, gt_labels, num_classes=3, score_threshold=0.3)
    assert recall[0] == 1.0 and recall[1] == 0.5 and torch.isnan(recall[2])  # the 0.2 box is below the threshold
    assert recall_by_class(dets, gt_boxes, gt_labels, 3, score_threshold=0.1)[1] == 1.0
    with pytest.raises(ValueError, match="one entry per image"):
        recall_by_class(dets[:1], gt_boxes, gt_labels, 3)


def test_coco_evaluate_restricted_to_classes(scenes):
    from kit.data.shapes import to_coco
    from kit.eval.coco import coco_evaluate

    coco = to_coco(scenes)
    perfect = [{"boxes": scenes.targets(i)[0], "scores": torch.ones(len(scenes.targets(i)[1])),
                "labels": scenes.targets(i)[1]} for i in range(len(scenes))]
    # drop every detection of class 0: AP over classes 1.. stays perfect, class 0 alone is 0
    without_0 = [{k: v[d["labels"] != 0] for k, v in d.items()} for d in perfect]
    assert coco_evaluate(coco, without_0, 64, class_ids=[1, 2, 3, 4, 5])["AP"] == pytest.approx(1.0)
    assert coco_evaluate(coco, without_0, 64, class_ids=[0])["AP"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="class_ids"):
        coco_evaluate(coco, perfect, 64, class_ids=[9])
