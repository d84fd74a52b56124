"""kit.det.adj_nms: soft-NMS against a brute-force reference; adj-NMS and voting invariants."""
import math

import torch
from torchvision.ops import batched_nms, box_iou

from kit.det.adj_nms import adj_nms, nms_outcome, soft_nms, vote


def random_detections(n=60, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g) * 80
    boxes = torch.cat([corner, corner + 8 + torch.rand(n, 2, generator=g) * 40], 1)
    return boxes, torch.rand(n, generator=g) * 0.98 + 0.01, torch.randint(0, classes, (n,), generator=g)


def brute_soft_nms(boxes, scores, labels, sigma, threshold):
    """Soft-NMS as the paper writes it: pick the max, decay the rest of its class, repeat (no matrix)."""
    remaining = {i: float(s) for i, s in enumerate(scores) if s >= threshold}
    kept = []
    while remaining:
        best = max(remaining, key=lambda i: remaining[i])
        kept.append((best, remaining.pop(best)))
        for i in list(remaining):
            if labels[i] == labels[best]:
                iou = float(box_iou(boxes[best:best + 1], boxes[i:i + 1]))
                remaining[i] *= math.exp(-iou * iou / sigma)
                if remaining[i] < threshold:
                    del remaining[i]
    return kept


def test_soft_nms_matches_the_brute_force_reference():
    boxes, scores, labels = random_detections()
    for sigma, threshold in ((0.5, 0.001), (0.1, 0.05), (2.0, 0.0)):
        keep, new = soft_nms(boxes, scores, labels, sigma, threshold)
        reference = brute_soft_nms(boxes, scores, labels, sigma, threshold)
        assert keep.tolist() == [i for i, _ in reference]
        assert torch.allclose(new, torch.tensor([s for _, s in reference]), atol=1e-6)


def test_adj_nms_invariants():
    boxes, scores, labels = random_detections(n=120, seed=1)
    survivors = batched_nms(boxes, scores, labels, 0.5)
    keep, new = adj_nms(boxes, scores, labels, 0.5, 0.5)
    assert set(keep.tolist()) <= set(survivors.tolist())  # a subset of NMS's survivors
    assert (new <= scores[keep] + 1e-7).all()  # scores never increase
    assert keep[0] == scores.argmax() and new[0] == scores.max()  # the top box is unchanged
    assert (new[:-1] >= new[1:]).all()  # best first
    keep_inf, new_inf = adj_nms(boxes, scores, labels, 0.5, math.inf)  # sigma -> inf: plain NMS
    assert keep_inf.tolist() == survivors.tolist() and torch.equal(new_inf, scores[survivors])
    keep_big, _ = adj_nms(boxes, scores, labels, 0.5, 1e9)
    assert keep_big.tolist() == survivors.tolist()


def test_soft_nms_keeps_classes_apart_and_handles_empty_input():
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    boxes, scores = box.repeat(2, 1), torch.tensor([0.9, 0.8])
    _, new = soft_nms(boxes, scores, torch.tensor([0, 1]))
    assert torch.equal(new, scores)  # same box, other class: untouched
    _, new = soft_nms(boxes, scores, torch.tensor([0, 0]), sigma=0.5)
    assert torch.allclose(new, torch.tensor([0.9, 0.8 * math.exp(-2.0)]))
    keep, new = adj_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert keep.numel() == 0 and new.numel() == 0


def test_nms_outcome_states():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [2.0, 0.0, 42.0, 40.0], [20.0, 0.0, 60.0, 40.0], [80.0, 80.0, 99.0, 99.0]])
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.zeros(4, dtype=torch.long)
    state, final = nms_outcome(boxes, scores, labels, 0.5, 0.5)
    assert state.tolist() == [1, 0, 2, 1]  # kept, removed by NMS, decayed, kept (no overlap)
    assert final[1] == 0 and 0 < final[2] < scores[2]


def test_vote_identity_and_fusion():
    boxes, scores, labels = random_detections(n=40, seed=2)
    fused = vote([{"boxes": boxes, "scores": scores, "labels": labels}], iou_threshold=1.0)
    order = scores.argsort(descending=True)
    assert torch.allclose(fused["boxes"], boxes[order]) and torch.allclose(fused["scores"], scores[order])
    assert torch.equal(fused["labels"], labels[order])
    a = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}
    b = {"boxes": torch.tensor([[12.0, 10.0, 52.0, 50.0]]), "scores": torch.tensor([0.3]), "labels": torch.tensor([2])}
    fused = vote([a, b], 0.5)
    assert torch.allclose(fused["boxes"], torch.tensor([[10.5, 10.0, 50.5, 50.0]]))  # score-weighted mean
    assert torch.allclose(fused["scores"], torch.tensor([0.6]))  # mean over the two models
    alone = vote([a, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}])
    assert torch.allclose(alone["scores"], torch.tensor([0.45]))  # one model of two found it
