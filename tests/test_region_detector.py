"""The long-tail chapter's detector (kit.det.region_detector): proposals, the two scorings,
the loss and the detections' format."""
import math

import torch
from torchvision.ops import box_iou

from kit.det.equalization_loss import sigmoid_cross_entropy, softmax_cross_entropy
from kit.det.region_detector import RegionDetector, region_proposals

GT = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 60.0, 30.0]]), torch.zeros(0, 4)]
LABELS = [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.long)]


def test_proposals_count_lie_inside_and_overlap_their_objects():
    proposals = region_proposals(GT, 64, per_object=8, num_random=5, generator=torch.Generator().manual_seed(0))
    assert [len(p) for p in proposals] == [2 * 8 + 5, 5]
    for p in proposals:
        assert p.min() >= 0 and p.max() <= 64 and torch.all(p[:, 2:] > p[:, :2])
    iou = box_iou(proposals[0][:16], GT[0])  # (16, 2)
    best = torch.stack([iou[:8, 0], iou[8:, 1]])
    assert best.min() > 0.05 and best.max() > 0.5  # around their object, of varied overlap


def test_proposals_are_a_function_of_the_generator():
    a = region_proposals(GT, 64, generator=torch.Generator().manual_seed(3))
    b = region_proposals(GT, 64, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_shapes_and_the_sigmoid_prior():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    proposals = region_proposals(GT, 64, generator=torch.Generator().manual_seed(0))
    soft = RegionDetector(3, softmax_cross_entropy, "softmax")
    sig = RegionDetector(3, sigmoid_cross_entropy, "sigmoid", prior=0.001)
    R = sum(len(p) for p in proposals)
    logits, deltas = soft(images, proposals)
    assert logits.shape == (R, 4) and deltas.shape == (R, 4)
    logits, _ = sig(images, proposals)
    assert logits.shape == (R, 3)
    # the classifier's weights start at N(0, 0.01): every score near the prior
    assert torch.allclose(sig.scores(logits), torch.full_like(logits, 0.001), rtol=0.2)
    assert math.isclose(float(sig.head.classifier.bias[1]), -math.log(0.999 / 0.001), rel_tol=1e-6)


def test_loss_trains_and_detections_have_the_kits_format():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    g = torch.Generator().manual_seed(1)
    for scoring, loss in (("softmax", softmax_cross_entropy), ("sigmoid", sigmoid_cross_entropy)):
        model = RegionDetector(3, loss, scoring, max_per_image=7)
        losses = model.loss(images, GT, LABELS, region_proposals(GT, 64, generator=g))
        assert set(losses) == {"cls", "box"} and all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert model.head.classifier.weight.grad.abs().sum() > 0
        detections = model.detect(images, region_proposals(GT, 64, generator=g), score_threshold=0.0)
        assert len(detections) == 2 and model.training  # detect restores the mode
        for d in detections:
            assert len(d["boxes"]) <= 7 and d["labels"].max() < 3 and torch.all(d["scores"][:-1] >= d["scores"][1:])
