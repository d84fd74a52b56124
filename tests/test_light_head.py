"""Light-Head R-CNN's and R-FCN's heads (kit.det.light_head).

Invariants from the catalog entry: the large separable conv keeps the map's size and each of its
branches sees exactly a k x k window; the thin map has alpha p^2 channels; the heads' outputs are
PSRoIAlign of their maps as the kit's pure-torch op computes it (R-FCN: the mean of each class's
bins); the per-RoI cost grows with the number of classes only through the predictors (Light-Head)
while R-FCN's maps grow by p^2 channels per class; each head trains in the two-stage detector.
"""
import pytest
import torch

from kit.data.shapes import ShapeSceneConfig, generate
from kit.det.light_head import LargeSeparableConv, LightHeadHead, RFCNHead
from kit.det.roi_heads import FasterRCNNHead, head_flops
from kit.det.two_stage import two_stage_detector
from kit.ops.ps_roi_align import ps_roi_align as kit_ps_roi_align

IMAGE = 96
PROPOSALS = [torch.tensor([[4.0, 6.0, 60.0, 50.0], [30.0, 20.0, 90.0, 94.0]]), torch.tensor([[0.0, 0.0, 96.0, 96.0]])]


def test_large_separable_conv_keeps_the_size_and_each_branch_sees_a_k_by_k_window():
    conv = LargeSeparableConv(2, 3, mid_channels=4, kernel_size=5)
    for branch in (conv.vertical_first, conv.horizontal_first):
        for layer in branch:
            torch.nn.init.constant_(layer.weight, 1.0)
            torch.nn.init.zeros_(layer.bias)
    features = torch.zeros(1, 2, 13, 11, requires_grad=True)
    assert conv(features).shape == (1, 3, 13, 11)
    for branch in (conv.vertical_first, conv.horizontal_first):
        grad, = torch.autograd.grad(branch(features)[0, 0, 6, 5], features)
        reached = grad[0].abs().sum(0) > 0  # (13, 11) the input cells the centre output depends on
        assert reached.sum() == 25 and reached[4:9, 3:8].all(), "a branch must see exactly its 5 x 5 window"


def test_the_branches_are_summed_before_one_relu():
    conv = LargeSeparableConv(1, 1, mid_channels=1, kernel_size=3)
    features = torch.randn(1, 1, 6, 6)
    expected = torch.relu(conv.vertical_first(features) + conv.horizontal_first(features))
    assert torch.equal(conv(features), expected)


def test_light_head_pools_a_thin_map_of_alpha_p_squared_channels_with_psroialign():
    torch.manual_seed(0)
    head = LightHeadHead(num_classes=4, in_channels=8, alpha=2, pooled_size=3, mid_channels=4, kernel_size=5,
                         fc_channels=16).double()
    features = torch.randn(2, 8, 6, 6, dtype=torch.float64)  # stride 16 for 96 px
    thin = head.thin_map(features)
    assert thin.shape == (2, 2 * 9, 6, 6)
    boxes = [p.double() for p in PROPOSALS]
    pooled = kit_ps_roi_align(thin, boxes, 3, spatial_scale=1 / 16, sampling_ratio=2)  # (R, alpha, p, p)
    hidden = head.fc(pooled)
    logits, deltas = head(features, boxes, (IMAGE, IMAGE))
    assert logits.shape == (3, 5) and deltas.shape == (3, 16)
    torch.testing.assert_close(logits, head.classifier(hidden), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(deltas, head.regressor(hidden), rtol=1e-10, atol=1e-12)


def test_rfcn_votes_each_class_by_the_mean_of_its_bins():
    torch.manual_seed(1)
    head = RFCNHead(num_classes=3, in_channels=8, pooled_size=3, hidden_channels=6).double()
    features = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    boxes = [p.double() for p in PROPOSALS]
    hidden = head.reduce(features)
    scores = kit_ps_roi_align(head.score_maps(hidden), boxes, 3, spatial_scale=1 / 16, sampling_ratio=2)
    box_bins = kit_ps_roi_align(head.box_maps(hidden), boxes, 3, spatial_scale=1 / 16, sampling_ratio=2)
    logits, deltas = head(features, boxes, (IMAGE, IMAGE))
    assert scores.shape == (3, 4, 3, 3) and logits.shape == (3, 4) and deltas.shape == (3, 4)
    torch.testing.assert_close(logits, scores.mean(dim=(2, 3)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(deltas, box_bins.mean(dim=(2, 3)), rtol=1e-10, atol=1e-12)
    assert head.class_agnostic and head.num_box_slots == 1


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_light_head_cost_grows_with_classes_only_through_its_predictors_rfcn_through_its_maps():
    few, many = (LightHeadHead(num_classes=c, in_channels=32, fc_channels=64) for c in (5, 50))
    assert parameters(few.thin_map) == parameters(many.thin_map) and parameters(few.fc) == parameters(many.fc)
    assert parameters(many) - parameters(few) == 45 * (64 + 1) + 4 * 45 * (64 + 1)  # the two predictors only
    few, many = (RFCNHead(num_classes=c, in_channels=32) for c in (5, 50))
    assert parameters(many) - parameters(few) == 45 * 49 * (32 + 1)  # p^2 score maps per class


@pytest.mark.parametrize("head_class, options", [(LightHeadHead, dict(alpha=2, mid_channels=8, kernel_size=5, fc_channels=32)),
                                                 (RFCNHead, dict())])
def test_each_head_trains_in_the_two_stage_detector(head_class, options):
    scenes = generate(ShapeSceneConfig(num_images=2, image_size=IMAGE, num_classes=3, seed=1), use_cache=False)
    images, boxes, labels = scenes.batch(range(2))
    model = two_stage_detector(head_class, 3, seed=0, widths=(8, 16, 32, 64), **options)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    totals = []
    for step in range(15):
        torch.manual_seed(step)
        total = sum(model.loss(images, boxes, labels).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-3:]) / 3 < 0.8 * totals[0], totals
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and set(detections[0]) >= {"boxes", "scores", "labels"}


def test_head_flops_split_per_map_and_per_roi_as_the_layers_say():
    features = torch.randn(2, 32, 6, 6)
    heavy = FasterRCNNHead(num_classes=5, in_channels=32, fc_channels=64).eval()
    fc_macs = 32 * 49 * 64 + 64 * 64 + 64 * 6 + 64 * 20  # two fcs, classifier, regressor (4 per class)
    # on meta tensors (how P28 counts) RoIAlign is torchvision's op, which the counter does not count
    on_meta = FasterRCNNHead(num_classes=5, in_channels=32, fc_channels=64).eval().to("meta")
    cost = head_flops(on_meta, features.to("meta"), 10, (96, 96))
    assert cost["per_map"] == 0 and cost["per_roi"] == 2 * fc_macs and cost["total"] == 2 * 10 * 2 * fc_macs
    # on the CPU the kit's separable RoIAlign pools, and its two products are counted too:
    # p H C W (rows) + C p W p (columns) multiply-adds per RoI on this 6 x 6 map
    cpu = head_flops(heavy, features, 10, (96, 96))
    pooling_macs = 7 * 6 * 32 * 6 + 32 * 7 * 6 * 7
    assert cpu["per_map"] == 0 and cpu["per_roi"] == 2 * (fc_macs + pooling_macs)
    voting = head_flops(RFCNHead(num_classes=5, in_channels=32).eval(), features, 10, (96, 96))
    assert voting["per_roi"] == 0 and voting["per_map"] == 2 * 36 * 32 * (6 + 4) * 49 * 2  # two 1x1 convs
    few, many = (head_flops(LightHeadHead(num_classes=c, in_channels=32, fc_channels=64).eval(), features, 10, (96, 96))
                 for c in (5, 50))
    assert few["per_map"] == many["per_map"]  # the thin map does not know the classes
    assert many["per_roi"] - few["per_roi"] == 2 * 64 * (45 + 4 * 45)  # only the predictors grow
