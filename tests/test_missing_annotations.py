"""P16's missing-annotation pieces: the catalog's invariants."""
import functools

import torch

from kit.data.longtail_scenes import LongTailSceneConfig, aux_view, class_groups, generate, image_counts
from kit.det import missing_annotations as ma
from kit.det.equalization_loss import equalization_loss, sigmoid_cross_entropy
from kit.det.region_detector import RegionDetector, region_proposals


def test_ignored_rois_contribute_zero_loss_and_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 0, 3, 0])
    freq = torch.tensor([0.5, 0.02, 0.3, 0.01])
    weights = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    loss = ma.weighted_equalization_loss(logits, labels, freq, 0.05, weights)
    loss.backward()
    assert bool((logits.grad[weights == 0] == 0).all()) and bool((logits.grad[weights == 1] != 0).any())
    # the ignored rows' logits can be anything: the loss does not move
    scrambled = logits.detach().clone()
    scrambled[weights == 0] = 50.0
    assert torch.allclose(ma.weighted_equalization_loss(scrambled, labels, freq, 0.05, weights), loss.detach())
    # and the kept rows give the plain EQL of those rows, times kept / all (divided by N = all RoIs)
    kept = weights == 1
    assert torch.allclose(loss.detach(), equalization_loss(logits.detach()[kept], labels[kept], freq, 0.05) * kept.sum() / 6)


def test_all_ones_weights_are_p09s_eql_and_lambda_zero_is_bce():
    torch.manual_seed(1)
    logits, labels, freq = torch.randn(9, 5), torch.randint(0, 6, (9,)), torch.rand(5)
    for lam in (0.0, 0.3, 1.0):
        assert torch.equal(ma.weighted_equalization_loss(logits, labels, freq, lam),
                           equalization_loss(logits, labels, freq, lam))
        assert torch.equal(ma.weighted_equalization_loss(logits, labels, freq, lam, torch.ones(9)),
                           equalization_loss(logits, labels, freq, lam))
    assert torch.equal(ma.weighted_equalization_loss(logits, labels, freq, 0.0), sigmoid_cross_entropy(logits, labels))


def test_ignore_only_background_rois_near_aux_boxes_of_not_exhaustive_classes():
    rois = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40], [20, 20, 30, 30]])
    roi_labels = torch.tensor([0, 0, 2, 0, 0])
    aux_boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    aux_labels = torch.tensor([1, 2])
    not_exhaustive = torch.tensor([False, True, False])  # class 1 not exhaustive, class 2 exhaustive
    w = ma.ignore_weights(rois, roi_labels, aux_boxes, aux_labels, not_exhaustive)
    # bg near the class-1 aux box: ignored (IoU 1 and 0.81); fg there: kept; far: kept; near class 2 (exhaustive): kept
    assert w.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_aux_boxes_become_positives_and_duplicates_are_dropped():
    boxes, labels = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1])
    aux_boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    aux_labels = torch.tensor([1, 1, 2])
    merged_boxes, merged_labels = ma.merge_aux_targets(boxes, labels, aux_boxes, aux_labels)
    assert merged_labels.tolist() == [1, 1, 2]  # the annotated box, the new one, the same place with another class
    assert torch.equal(merged_boxes[1], aux_boxes[1])


def _scenes(p_miss):
    config = LongTailSceneConfig(num_images=40, image_size=32, num_classes=6, p_miss=p_miss, seed=1690, max_objects=4)
    return generate(config, use_cache=False)


def test_sampled_rois_reduce_to_p09_with_nothing_missing_and_no_aux():
    scenes = _scenes(0.0)
    groups = class_groups(scenes)
    freq = image_counts(scenes).float() / len(scenes)
    lam = float(min(f for f, g in zip(freq.tolist(), groups) if g == "f"))
    idx = list(range(8))
    images = scenes.float_images(idx)
    boxes = [scenes.targets(i)[0] for i in idx]
    labels = [scenes.targets(i)[1] for i in idx]
    props = region_proposals(boxes, 32, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    model = RegionDetector(6, functools.partial(equalization_loss, image_frequency=freq, lam=lam), "sigmoid", num_rois=32)
    torch.manual_seed(5)
    reference = model.loss(images, boxes, labels, props)
    torch.manual_seed(5)
    ours = ma.roi_losses(ma.sample_training_rois(model, images, boxes, labels, props), freq, lam)
    assert torch.equal(reference["cls"], ours["cls"]) and torch.equal(reference["box"], ours["box"])
    # with p_miss = 0 the truth is the annotation: no false background, and aux positives add nothing new
    aux = aux_view(scenes, groups)
    torch.manual_seed(5)
    out = ma.sample_training_rois(model, images, boxes, labels, props, [aux.targets(i)[0] for i in idx],
                                  [aux.targets(i)[1] for i in idx], scenes.not_exhaustive[idx],
                                  [torch.zeros(0, 4)] * 8, use_aux_positives=True, use_ignore=True)
    assert bool((out["weights"] == 1).all()) and bool((out["false_background"] == -1).all())
    assert torch.equal(ma.roi_losses(out, freq, lam)["cls"], ours["cls"])


def test_the_fix_turns_false_background_into_positives_or_ignored():
    scenes = _scenes(1.0)
    groups = ["f"] * 6  # every class in the aux set: every dropped object has an aux box
    aux = aux_view(scenes, groups)
    idx = [i for i in range(len(scenes)) if bool(scenes.not_exhaustive[i].any())][:8]
    assert idx, "p_miss = 1 must drop something"
    images = scenes.float_images(idx)
    ann = [scenes.targets(i) for i in idx]
    truth = [scenes.targets(i, truth=True)[0] for i in idx]
    missing = [scenes.boxes[i][(scenes.truth_labels[i] >= 0) & (scenes.labels[i] < 0)] for i in idx]
    props = region_proposals(truth, 32, generator=torch.Generator().manual_seed(4))
    model = RegionDetector(6, lambda logits, labels: logits.sum() * 0, "sigmoid", num_rois=64)
    args = (model, images, [a[0] for a in ann], [a[1] for a in ann], props, [aux.targets(i)[0] for i in idx],
            [aux.targets(i)[1] for i in idx], scenes.not_exhaustive[idx], missing)
    torch.manual_seed(0)
    plain = ma.sample_training_rois(*args)
    assert bool((plain["false_background"] >= 0).any())
    for use_aux, use_ignore in ((False, True), (True, False), (True, True)):
        torch.manual_seed(0)
        out = ma.sample_training_rois(*args, use_aux_positives=use_aux, use_ignore=use_ignore)
        kept_false_bg = (out["false_background"] >= 0) & (out["weights"] > 0)
        assert not bool(kept_false_bg.any()), (use_aux, use_ignore)
        if use_aux:  # positives from aux boxes carry their class and a box target
            assert int((out["labels"] > 0).sum()) > int((plain["labels"] > 0).sum())
