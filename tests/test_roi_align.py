"""kit.ops.roi_align: the two-product RoIAlign against torchvision's kernel, forward and gradient."""
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from kit.ops.roi_align import MultiLevelRoIAlign, interpolation_weights, roi_align, separable_roi_align


def random_boxes(num_images, per_image, map_px, seed=0, margin=16.0):
    """Boxes [(R, 4)] xyxy px, some reaching past the map's border by up to ``margin`` px, some tiny."""
    gen = torch.Generator().manual_seed(seed)
    boxes = []
    for _ in range(num_images):
        corner = torch.rand(per_image, 2, generator=gen) * (map_px + margin) - margin
        size = torch.rand(per_image, 2, generator=gen) * map_px * 0.7
        size[:2] = torch.tensor([[0.0, 0.0], [0.3, 2.0]])  # a point box and a sliver
        boxes.append(torch.cat([corner, corner + size], 1).to(torch.float64))
    return boxes


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio,output_size,side", [(2, 7, 8), (1, 7, 8), (3, 3, 5), (2, 7, 16)])
def test_forward_and_gradient_match_torchvision(aligned, sampling_ratio, output_size, side):
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(3, 4, side, side + 3, generator=gen, dtype=torch.float64, requires_grad=True)
    boxes = random_boxes(3, 12, 16 * side)
    ours = separable_roi_align(features, boxes, output_size, 1 / 16, sampling_ratio, aligned)
    reference = tv_roi_align(features, boxes, output_size, 1 / 16, sampling_ratio, aligned)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    upstream = torch.randn(reference.shape, generator=gen, dtype=torch.float64)
    ours_grad, = torch.autograd.grad(ours, features, upstream)
    reference_grad, = torch.autograd.grad(reference, features, upstream)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=0, atol=1e-12)


def test_float32_agrees_and_images_without_boxes_are_skipped():
    features = torch.randn(3, 8, 8, 8)
    boxes = random_boxes(3, 5, 128)
    boxes = [boxes[0].float(), torch.zeros(0, 4), boxes[2].float()]
    ours = roi_align(features, boxes, 7, 1 / 16)
    torch.testing.assert_close(ours, tv_roi_align(features, boxes, 7, 1 / 16, 2, True), rtol=1e-5, atol=1e-5)
    assert roi_align(features, [torch.zeros(0, 4)] * 3, 7, 1 / 16).shape == (0, 8, 7, 7)


def test_interpolation_weights_rows_sum_to_the_inside_fraction():
    # A box well inside the map: every sample reads the map, so each bin's weights sum to 1.
    weights = interpolation_weights(torch.tensor([1.0]), torch.tensor([4.0]), 8, 7, 2)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 7))
    # Entirely more than one cell beyond the map: nothing is read.
    assert interpolation_weights(torch.tensor([10.0]), torch.tensor([2.0]), 8, 7, 2).abs().sum() == 0


def test_adaptive_sampling_and_large_maps_use_torchvision():
    features = torch.randn(1, 2, 70, 70)  # 4900 cells > MAX_DENSE_CELLS
    boxes = [torch.tensor([[3.0, 4.0, 200.0, 300.0]])]
    torch.testing.assert_close(roi_align(features, boxes, 7, 0.25, 2), tv_roi_align(features, boxes, 7, 0.25, 2, True))
    small = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(roi_align(small, boxes, 7, 1 / 16, 0), tv_roi_align(small, boxes, 7, 1 / 16, 0, True))


def test_multilevel_matches_torchvision_multiscale_roi_align():
    gen = torch.Generator().manual_seed(2)
    image = 64
    levels = [torch.randn(2, 3, image // s, image // s, generator=gen, dtype=torch.float64, requires_grad=True)
              for s in (4, 8, 16, 32)]
    boxes = [b.clamp(0, image) for b in random_boxes(2, 20, image, seed=3, margin=0)]
    boxes[1][3] = torch.tensor([0.0, 0.0, 64.0, 64.0], dtype=torch.float64)  # a whole-image box: the top level
    reference_pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=1, canonical_scale=image // 2,
                                          canonical_level=4)
    reference = reference_pooler({str(i): level for i, level in enumerate(levels)}, boxes, [(image, image)] * 2)
    ours = MultiLevelRoIAlign([4, 8, 16, 32], 7, 1, canonical_scale=image // 2, canonical_level=4)(levels, boxes)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    upstream = torch.randn(reference.shape, generator=gen, dtype=torch.float64)
    ours_grads = torch.autograd.grad(ours, levels, upstream)
    reference_grads = torch.autograd.grad(reference, levels, upstream)
    for a, b in zip(ours_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert MultiLevelRoIAlign([4, 8])([levels[0], levels[1]], [torch.zeros(0, 4)] * 2).shape == (0, 3, 7, 7)


def test_no_gradient_reaches_the_boxes_as_in_torchvision():
    features = torch.randn(1, 2, 8, 8, requires_grad=True)
    boxes = [torch.tensor([[10.0, 12.0, 60.0, 70.0]], requires_grad=True)]
    roi_align(features, boxes, 7, 1 / 16).sum().backward()
    assert boxes[0].grad is None and features.grad is not None


def test_meta_tensors_pass_for_flop_counting():
    # FLOPs are counted on meta tensors (no values): the checks read shapes only and torchvision's op runs
    features = torch.empty(2, 8, 50, 50, device="meta")
    boxes = [torch.empty(3, 4, device="meta"), torch.empty(0, 4, device="meta")]
    assert roi_align(features, boxes, 7, 1 / 16, 2).shape == (3, 8, 7, 7)
    with pytest.raises(ValueError, match="features must be a"):
        roi_align(torch.empty(8, 50, 50, device="meta"), boxes, 7)
