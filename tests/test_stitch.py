"""Stitcher: stitch4 against a loop version of the official collate, the feedback rule."""
import math

import pytest
import torch
import torch.nn.functional as F

from kit.det.stitch import StitchFeedback, small_loss_ratio, stitch4, stitched_size


def random_targets(g, h, w, m=3):
    xy = torch.rand(m, 2, generator=g) * torch.tensor([w, h]) * 0.6
    wh = torch.rand(m, 2, generator=g) * torch.tensor([w, h]) * 0.35 + 2
    return torch.cat([xy, xy + wh], 1), torch.randint(0, 5, (m,), generator=g)


def reference_stitch(images, boxes, labels, size_divisible):
    """A loop version of maskrcnn-benchmark's to_image_list_synthesize_4."""
    height, width = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
    if size_divisible:
        height = math.ceil(height / size_divisible) * size_divisible
        width = math.ceil(width / size_divisible) * size_divisible
    out, out_boxes, out_labels = [], [], []
    for b in range(len(images) // 4):
        canvas = images[0].new_zeros(3, height, width)
        new_h, new_w = height // 2, width // 2
        parts = []
        for q, (ox, oy) in enumerate([(0, 0), (new_w, 0), (0, new_h), (new_w, new_h)]):
            image = images[4 * b + q]
            canvas[:, oy:oy + new_h, ox:ox + new_w] = F.interpolate(image[None], size=(new_h, new_w), mode="nearest")[0]
            h, w = image.shape[1:]
            box = boxes[4 * b + q].clone()
            box[:, [0, 2]] = box[:, [0, 2]] * new_w / w + ox
            box[:, [1, 3]] = box[:, [1, 3]] * new_h / h + oy
            parts.append(box)
        out.append(canvas)
        out_boxes.append(torch.cat(parts))
        out_labels.append(torch.cat(labels[4 * b:4 * b + 4]))
    return torch.stack(out), out_boxes, out_labels


@pytest.mark.parametrize("size_divisible", [0, 32])
def test_stitch4_matches_the_official_loop_on_mixed_sizes(size_divisible):
    g = torch.Generator().manual_seed(0)
    sizes = [(60, 80), (64, 50), (45, 64), (64, 64), (30, 30), (58, 62), (64, 40), (52, 64)]
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    targets = [random_targets(g, h, w) for h, w in sizes]
    boxes, labels = [t[0] for t in targets], [t[1] for t in targets]
    stitched, s_boxes, s_labels = stitch4(images, boxes, labels, size_divisible)
    ref, r_boxes, r_labels = reference_stitch(images, boxes, labels, size_divisible)
    assert torch.equal(stitched, ref)
    assert all(torch.allclose(a, b) for a, b in zip(s_boxes, r_boxes))
    assert all(torch.equal(a, b) for a, b in zip(s_labels, r_labels))


def test_stitched_image_has_the_padded_batch_size_and_boxes_stay_in_their_tiles():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 90, 100, generator=g)
    targets = [random_targets(g, 90, 100, m=4) for _ in range(8)]
    boxes, labels = [t[0] for t in targets], [t[1] for t in targets]
    stitched, s_boxes, s_labels = stitch4(images, boxes, labels, size_divisible=32)
    assert stitched.shape == (2, 3, 96, 128)  # a regular batch of these images pads to 96 x 128 too
    for b in range(2):
        for q, (col, row) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
            tile = s_boxes[b][4 * q:4 * q + 4]
            assert (tile[:, [0, 2]] >= col * 64).all() and (tile[:, [0, 2]] <= (col + 1) * 64).all()
            assert (tile[:, [1, 3]] >= row * 48).all() and (tile[:, [1, 3]] <= (row + 1) * 48).all()
            scale = torch.tensor([64 / 100, 48 / 90] * 2)
            assert torch.allclose((tile - torch.tensor([col * 64, row * 48] * 2)) / scale, boxes[4 * b + q], atol=1e-4)
        assert sorted(s_labels[b].tolist()) == sorted(torch.cat(labels[4 * b:4 * b + 4]).tolist())
    # without padding, a batch of equal images keeps its size and areas drop by 4
    same, same_boxes, _ = stitch4(images[:4, :, :, :96].contiguous(), boxes[:4], labels[:4])
    assert same.shape == (1, 3, 90, 96)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    assert torch.allclose(area(same_boxes[0]), area(torch.cat(boxes[:4])) * (48 / 96) * (45 / 90))
    # uint8 images work the same (nearest neighbour)
    as_bytes = (images * 255).to(torch.uint8)
    assert torch.equal(stitch4(as_bytes, boxes, labels)[0], (stitch4(as_bytes.float(), boxes, labels)[0]).to(torch.uint8))


def test_stitch4_rejects_bad_inputs():
    images = torch.rand(4, 3, 32, 32)
    boxes, labels = [torch.zeros(1, 4)] * 4, [torch.zeros(1, dtype=torch.long)] * 4
    with pytest.raises(ValueError, match="multiple of 4"):
        stitch4(images[:3], boxes[:3], labels[:3])
    with pytest.raises(ValueError, match="one box"):
        stitch4(images, boxes[:3], labels)
    with pytest.raises(ValueError, match="odd side"):
        stitch4(torch.rand(4, 3, 33, 32), boxes, labels)
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        stitch4(images, [torch.zeros(1, 3)] * 4, labels)
    with pytest.raises(ValueError, match="size_divisible"):
        stitched_size([32], [32], -1)
    assert stitched_size([33], [31], 32) == (64, 32)


def test_small_loss_ratio():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20], [0, 0, 30, 30]])  # areas 100, 400, 900
    loss = torch.tensor([1.0, 2.0, 7.0])
    assert small_loss_ratio(loss, boxes, small_area=144) == pytest.approx(0.1)
    assert small_loss_ratio(loss, boxes, small_area=500) == pytest.approx(0.3)
    assert small_loss_ratio(loss, boxes, small_area=50) == 0.0  # no small objects
    assert small_loss_ratio(loss, boxes, small_area=1e6) == pytest.approx(1.0)
    assert small_loss_ratio(torch.zeros(0), torch.zeros(0, 4), small_area=144) == 0.0
    with pytest.raises(ValueError, match="target_boxes"):
        small_loss_ratio(loss, boxes[:2], 144)
    with pytest.raises(ValueError, match="small_area"):
        small_loss_ratio(loss, boxes, 0)


def test_feedback_stitches_after_a_low_ratio_and_starts_stitched():
    feedback = StitchFeedback(tau=0.1)
    decisions = []
    for ratio in [0.3, 0.05, 0.5, 0.0]:
        decisions.append(feedback.next_is_stitched())
        feedback.update(ratio)
    assert decisions == [True, False, True, False]  # the first batch is stitched (r_s starts at 0)
    assert feedback.history == [(True, 0.3), (False, 0.05), (True, 0.5), (False, 0.0)]
    assert feedback.next_is_stitched()
    for tau in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match=r"tau must lie in \(0, 1\)"):
            StitchFeedback(tau=tau)
    with pytest.raises(ValueError, match="before update"):
        StitchFeedback().update(0.2)
    with pytest.raises(ValueError, match="r_s"):
        fb = StitchFeedback()
        fb.next_is_stitched()
        fb.update(1.2)


def test_atss_loss_and_ratio_reads_the_per_positive_box_losses(scenes):
    from kit.det.atss import ATSSHead, atss_loss, atss_loss_terms
    from kit.det.boxes import box_area
    from kit.det.detector import DenseDetector
    from kit.det.stitch import atss_loss_and_ratio

    torch.manual_seed(0)
    model = DenseDetector(ATSSHead(6, 16, 16), widths=(8, 16, 16, 16), fpn_channels=16)
    images, boxes, labels = scenes.batch(range(4))
    out = model(images)
    losses, ratio = atss_loss_and_ratio(out, boxes, labels, small_area=16 ** 2)
    plain = atss_loss(out, boxes, labels)
    assert all(torch.equal(losses[k], plain[k]) for k in plain)
    terms = atss_loss_terms(out, boxes, labels)
    p = len(terms.batch)
    assert p > 0 and terms.box_losses.shape == (p,) and terms.target_boxes.shape == (p, 4)
    # the per-positive terms add up to the normalised box loss
    assert torch.allclose(2.0 * terms.box_losses.sum() / terms.centerness_targets.sum(), plain["box"])
    for b, target in zip(terms.batch.tolist(), terms.target_boxes):
        assert (boxes[b] == target).all(-1).any()  # each target is one of its image's objects
    small = box_area(terms.target_boxes) < 16 ** 2
    assert 0 < small.sum() < p  # this batch has positives of small and of larger objects
    box_losses = terms.box_losses.detach()
    assert ratio == pytest.approx(float(box_losses[small].sum() / box_losses.sum()))
    assert atss_loss_and_ratio(out, boxes, labels, small_area=1.0)[1] == 0.0
