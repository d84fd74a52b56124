"""kit.ops.delta_roi_align: Δ = 0 is torchvision's RoIAlign; one shift per RoI is RoIAlign of the shifted box."""
import torch
from torchvision.ops import roi_align

from kit.ops.delta_roi_align import delta_roi_align, roi_format


def awkward_inputs():
    torch.manual_seed(0)
    features = torch.randn(2, 5, 8, 9, dtype=torch.float64)
    boxes = [torch.tensor([[-20.0, -10.0, 60.0, 50.0], [3.0, 4.0, 130.0, 140.0], [-40.0, -40.0, -20.0, -15.0]],
                          dtype=torch.float64),  # partly off the map, wholly off it
             torch.tensor([[10.0, 20.0, 30.0, 25.0], [100.0, 100.0, 200.0, 180.0], [50.0, 60.0, 50.5, 61.0]],
                          dtype=torch.float64)]
    return features, boxes


def test_zero_offsets_equal_torchvision_roi_align():
    features, boxes = awkward_inputs()
    for sampling_ratio in (1, 2, 3):
        expected = roi_align(features, boxes, 7, 1 / 16, sampling_ratio, aligned=True)
        assert torch.allclose(delta_roi_align(features, boxes, None, 7, 1 / 16, sampling_ratio), expected, atol=1e-12)
        zeros = torch.zeros(6, 2, 7, 7, dtype=torch.float64)
        assert torch.allclose(delta_roi_align(features, boxes, zeros, 7, 1 / 16, sampling_ratio), expected, atol=1e-12)


def test_one_shift_per_roi_is_roi_align_of_the_translated_box():
    features, boxes = awkward_inputs()
    delta_r = torch.randn(6, 2, dtype=torch.float64)
    shifted = []
    for b, d in zip(boxes, delta_r.split(3)):
        move = 0.1 * d * (b[:, 2:] - b[:, :2])
        shifted.append(b + torch.cat([move, move], 1))
    expected = roi_align(features, shifted, 5, 1 / 16, 2, aligned=True)
    assert torch.allclose(delta_roi_align(features, boxes, delta_r, 5, 1 / 16, 2, gamma=0.1), expected, atol=1e-12)
    per_bin = delta_r[:, :, None, None].expand(6, 2, 5, 5)  # the same shift in every bin
    assert torch.allclose(delta_roi_align(features, boxes, per_bin, 5, 1 / 16, 2, gamma=0.1), expected, atol=1e-12)


def test_a_bin_offset_moves_only_that_bin():
    features, boxes = awkward_inputs()
    offsets = torch.zeros(6, 2, 7, 7, dtype=torch.float64)
    offsets[:, 0, 2, 3] = 1.5
    plain = delta_roi_align(features, boxes, None)
    moved = delta_roi_align(features, boxes, offsets)
    changed = (moved - plain).abs().amax((0, 1)) > 1e-12  # (7, 7)
    assert changed[2, 3] and changed.sum() == 1


def test_gradients_reach_the_map_and_the_offsets():
    features, boxes = awkward_inputs()
    features.requires_grad_(True)
    offsets = (0.3 * torch.randn(6, 2, 7, 7, dtype=torch.float64)).requires_grad_(True)
    delta_roi_align(features, boxes, offsets).pow(2).sum().backward()
    assert features.grad.abs().sum() > 0 and offsets.grad[:5].abs().sum() > 0  # roi 2 lies off the map
    inside = [b[:2] for b in boxes[:1]]
    small = torch.randn(1, 2, 8, 9, dtype=torch.float64)
    off = (0.2 * torch.randn(2, 2, 3, 3, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda o: delta_roi_align(small, inside, o, 3, 1 / 16, 2), (off,))


def test_roi_format_and_empty_input():
    features, boxes = awkward_inputs()
    rois = roi_format(boxes)
    assert rois.shape == (6, 5) and rois[:3, 0].eq(0).all() and rois[3:, 0].eq(1).all()
    assert torch.equal(delta_roi_align(features, rois), delta_roi_align(features, boxes))
    empty = delta_roi_align(features, [torch.zeros(0, 4, dtype=torch.float64)] * 2)
    assert empty.shape == (0, 5, 7, 7)
