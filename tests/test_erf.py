"""Effective/theoretical receptive fields, sampling-point traces and their figures."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from kit.analysis.erf import centred_mean, effective_receptive_field, erf_mass_inside, erf_radius
from kit.analysis.sampling_points import record_deformable, stacked_sampling_points
from kit.nn.backbone import BasicBlock
from kit.nn.receptive_field import ReceptiveField, receptive_field
from kit.ops.deform_conv import DeformConv2d
from kit.ops.deformable_kernels import DeformableKernel2d
from kit.viz.erf import draw_kernel_space, erf_figure


def positive_linear_stack():
    """Rigid convs with per-axis stride/padding/dilation and positive weights (no cancellation)."""
    torch.manual_seed(0)
    stack = nn.Sequential(
        nn.Conv2d(2, 3, (3, 5), stride=(1, 2), padding=(1, 2)),
        nn.BatchNorm2d(3), nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, padding=(2, 1), dilation=(2, 1)),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 2, (2, 3), padding=(0, 1)),
    )
    for m in stack.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
    return stack.double()


def test_gradient_support_is_the_theoretical_receptive_field():
    stack = positive_linear_stack()
    rf = receptive_field(stack)
    images = torch.rand(1, 2, 61, 67, dtype=torch.float64) + 1  # positive: every ReLU passes
    features = stack(images)
    last = (features.shape[2] - 1, features.shape[3] - 1)
    for row, col in ((0, 0), (1, 2), last):
        erf = effective_receptive_field(stack, images, torch.tensor([[row, col]]))
        rows = torch.nonzero(erf.sum(1) > 0).flatten()
        cols = torch.nonzero(erf.sum(0) > 0).flatten()
        x0, y0, x1, y1 = rf.box(row, col)  # continuous, not clipped to the image
        assert rows.min() >= max(0, int(y0)) and rows.max() + 1 <= min(61, int(y1))
        assert cols.min() >= max(0, int(x0)) and cols.max() + 1 <= min(67, int(x1))
        if (row, col) != last:
            # away from the far border the support is the whole box (at the far border, parts of
            # the box are only reachable through units that the finite maps cut off)
            assert rows.min() == max(0, int(y0)) and rows.max() + 1 == min(61, int(y1))
            assert cols.min() == max(0, int(x0)) and cols.max() + 1 == min(67, int(x1))
    assert rf.jump == (4, 8)


def test_fractional_positions_interpolate_units_and_batch_mode_is_restored():
    stack = positive_linear_stack().train()
    images = torch.rand(3, 2, 40, 40, dtype=torch.float64) + 1
    a = effective_receptive_field(stack, images[2:], torch.tensor([[1.0, 1.0]]))
    b = effective_receptive_field(stack, images[2:], torch.tensor([[1.0, 2.0]]))
    c = effective_receptive_field(stack, images[2:], torch.tensor([[1.0, 1.5]]))
    torch.testing.assert_close(c, 0.5 * (a + b))  # positive gradients: |.| is linear here
    assert stack.training  # eval mode only while computing
    bound = torch.nn.Sequential(stack).forward  # a bound method of a module: eval mode
    running_mean = stack[1].running_mean.clone()
    effective_receptive_field(bound, images)
    assert torch.equal(stack[1].running_mean, running_mean) and stack.training
    mean = effective_receptive_field(stack, images, torch.tensor([[1.0, 1.0]] * 3))
    singles = [effective_receptive_field(stack, images[i:i + 1], torch.tensor([[1.0, 1.0]])) for i in range(3)]
    torch.testing.assert_close(mean, sum(singles) / 3)  # eval mode: images do not interact


def test_default_position_is_the_centre_unit():
    stack = positive_linear_stack()
    images = torch.rand(2, 2, 33, 33, dtype=torch.float64)
    h, w = stack(images).shape[2:]
    torch.testing.assert_close(effective_receptive_field(stack, images),
                               effective_receptive_field(stack, images, torch.tensor([[h // 2, w // 2]] * 2)))


def test_erf_radius_and_mass_inside():
    erf = torch.zeros(2, 21, 21)
    erf[0, 10, 10] = 1.0  # a delta: radius 0
    yy, xx = torch.meshgrid(torch.arange(21.0), torch.arange(21.0), indexing="ij")
    erf[1] = (((yy - 10) ** 2 + (xx - 10) ** 2) <= 8 ** 2).float()  # a uniform disc of radius 8
    radius = erf_radius(erf, torch.tensor([[10.0, 10.0], [10.0, 10.0]]), mass=0.5)
    assert radius[0] == 0 and 5.0 <= radius[1] <= 6.2  # half a disc's area: 8 / sqrt(2) = 5.66
    masks = torch.zeros(2, 21, 21, dtype=torch.bool)
    masks[:, :, :10] = True
    inside = erf_mass_inside(erf, masks)
    assert inside[0] == 0 and 0.4 < inside[1] < 0.5
    with pytest.raises(ValueError, match="mass"):
        erf_radius(erf, torch.zeros(2, 2), mass=0)


def test_centred_mean_aligns_each_erf_on_its_centre():
    erfs = torch.zeros(2, 10, 12)
    erfs[0, 2, 3], erfs[0, 2, 4] = 1.0, 0.5  # peak at (2, 3), right neighbour
    erfs[1, 8, 11] = 3.0  # peak in the corner: its window runs off the image
    mean = centred_mean(erfs, torch.tensor([[2.0, 3.0], [8.2, 10.9]]), size=5)
    assert mean.shape == (5, 5) and mean[2, 2] == 2.0 and mean[2, 3] == 0.25 and mean.sum() == 2.25
    with pytest.raises(ValueError, match="centres"):
        centred_mean(erfs, torch.zeros(3, 2), 5)


def test_receptive_field_rules_and_errors():
    rf = receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3, 2, 1), nn.MaxPool2d(3, 2, 1), nn.Conv2d(1, 1, 3, padding=1)))
    assert rf.size == (15, 15) and rf.jump == (4, 4) and rf.start == (0.0, 0.0)
    assert rf.box(1, 2) == (8 + 0.5 - 7.5, 4 + 0.5 - 7.5, 8 + 0.5 + 7.5, 4 + 0.5 + 7.5)
    assert rf.to_feature(8.5, 4.5) == (1.0, 2.0)  # the point (x, y) -> (row, col)
    # DK keeps the rigid RF; DCN has none unless counted at zero offset
    assert receptive_field([DeformableKernel2d(4, 3, 4, padding=1)]).size == (3, 3)
    assert receptive_field([DeformConv2d(4, 4, 3, dilation=2)], deformable="rigid").size == (5, 5)
    with pytest.raises(ValueError, match="no fixed theoretical receptive field"):
        receptive_field([DeformConv2d(4, 4, 3)])
    with pytest.raises(ValueError, match="longest path"):
        receptive_field([BasicBlock(4, 4)])
    with pytest.raises(ValueError, match="does not know"):
        receptive_field([nn.AdaptiveAvgPool2d(1)])


def two_deformable_layers():
    torch.manual_seed(0)
    first = DeformConv2d(1, 2, 3, stride=2, padding=1, modulated=True, mask_activation="2sigmoid")
    second = DeformConv2d(2, 2, 3, padding=1, modulated=True, mask_activation="2sigmoid")
    model = nn.Sequential(first, nn.ReLU(), second)
    grids = {first: ReceptiveField(), second: ReceptiveField().then((3, 3), (2, 2), (1, 1), (1, 1))}
    return model, first, second, grids


def test_sampling_points_at_zero_offset_are_the_rigid_grid():
    model, first, second, grids = two_deformable_layers()
    traces = record_deformable(model, torch.rand(1, 1, 16, 16), grids)[0]
    assert len(traces) == 2 and traces[1].input_grid.jump == (2, 2)
    points, weights = stacked_sampling_points(traces, 3, 4)  # unit (3, 4) of the second layer
    assert points.shape == (81, 2) and torch.allclose(weights, torch.ones(81))
    xs, ys = set(points[:, 0].tolist()), set(points[:, 1].tolist())  # points are (x, y)
    # second layer: units (2..4, 3..5) of the first's output = image (4..8, 6..10) at stride 2;
    # first layer: +-1 pixel around each: rows (y) 3..9, cols (x) 5..11
    assert ys == set(range(3, 10)) and xs == set(range(5, 12))
    # the same region as the rigid theoretical RF of unit (3, 4)
    assert receptive_field(model, deformable="rigid").box(3, 4) == (5.0, 3.0, 12.0, 10.0)


def test_sampling_points_follow_offsets_and_multiply_masks():
    model, first, second, grids = two_deformable_layers()
    with torch.no_grad():
        second.offset_conv.bias[:18] = torch.tensor([1.0, -1.0] * 9)  # every tap: one unit down, one left
        second.offset_conv.bias[18:] = torch.log(torch.tensor(3.0))  # 2 * sigmoid(log 3) = 1.5
    traces = record_deformable(model, torch.rand(1, 1, 16, 16), grids)[0]
    points, weights = stacked_sampling_points(traces, 3, 4)
    # torchvision's offsets are (dy, dx): one unit down (y + 2 px), one left (x - 2 px); points are (x, y)
    assert set(points[:, 0].tolist()) == set(range(3, 10)) and set(points[:, 1].tolist()) == set(range(5, 12))
    torch.testing.assert_close(weights, torch.full((81,), 1.5))


def test_record_deformable_needs_every_grid():
    model, first, second, grids = two_deformable_layers()
    with pytest.raises(ValueError, match="lacks 1"):
        record_deformable(model, torch.rand(1, 1, 8, 8), {first: grids[first]})


def test_erf_figure_draws_points_as_x_y_at_pixel_centres():
    erf = torch.rand(32, 24)
    points = torch.tensor([[20.0, 3.0], [1.0, 30.0]])  # (x, y) pixel indices: x < 24 <= y is possible only so
    fig = erf_figure({"rigid": dict(erf=erf, rf_box=(4, 4, 20, 28)),
                      "dcn": dict(erf=erf, points=points, point_weights=torch.tensor([1.0, 0.5]))},
                     image=torch.rand(3, 32, 24), centre=(12, 16), suptitle="ERF")
    assert len(fig.axes) == 2
    dcn = fig.axes[1]
    np.testing.assert_allclose(dcn.collections[0].get_offsets(), points.numpy() + 0.5)
    assert dcn.get_xlim() == (0, 24) and dcn.get_ylim() == (32, 0)  # the image, y down
    x0, y0, x1, y1 = 4, 4, 20, 28
    box = fig.axes[0].patches[0]
    assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (x0, y0, x1 - x0, y1 - y0)
    plt.close(fig)


def test_kernel_space_draws_taps_at_their_row_col():
    kernel = torch.tensor([[1.0, -3.0, 0.0], [0.5, 2.0, 0.0], [0.0, 0.0, -1.0]])
    sampled = torch.tensor([[0.0, 2.0], [1.5, 0.5]])  # (row, col) in the scope
    rigid = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    fig, ax = plt.subplots()
    draw_kernel_space(ax, kernel, sampled, rigid=rigid, title="DK")
    rings, dots = ax.collections
    np.testing.assert_allclose(rings.get_offsets(), rigid.flip(-1).numpy())  # drawn at (x = col, y = row)
    np.testing.assert_allclose(dots.get_offsets(), sampled.flip(-1).numpy())
    assert len(ax.texts) == 2  # one arrow per tap, rigid -> sampled
    np.testing.assert_allclose(ax.texts[1].xy, (0.5, 1.5))
    (image,) = ax.images
    np.testing.assert_allclose(image.get_array(), kernel.numpy())
    assert image.get_clim() == (-3.0, 3.0)  # a symmetric scale: the sign of a weight is its colour
    plt.close(fig)
