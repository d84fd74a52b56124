"""BorderAlign against a slow loop that follows mmcv's CUDA kernel line by line."""
import math

import pytest
import torch

from kit.ops.border_align import BorderAlign, border_align, border_sample_points


def _bilinear(plane, y, x):
    """mmcv's ``bilinear_interpolate``: (value, [(row, col, weight)]) at (y, x) of an (H, W) plane."""
    height, width = plane.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0, []
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    taps = [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx), (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]
    return sum(w * float(plane[r, c]) for r, c, w in taps), taps


def reference_border_align(input, boxes, pool_size):
    """Loop reference of mmcv's forward and backward: output (B, C, K, 4), argmax, d output / d input."""
    b, four_c, h, w = input.shape
    c, k = four_c // 4, boxes.shape[1]
    output = torch.zeros(b, c, k, 4, dtype=torch.float64)
    argmax = torch.zeros(b, c, k, 4, dtype=torch.long)
    taps_of = {}
    for n in range(b):
        for ch in range(c):
            for j in range(k):
                x1, y1, x2, y2 = boxes[n, j].double().tolist()
                width, height = x2 - x1, y2 - y1
                for side in range(4):
                    x, y = (x1, y1) if side < 2 else (x2, y2)
                    step = {0: (width / pool_size, 0.0), 1: (0.0, height / pool_size),
                            2: (-width / pool_size, 0.0), 3: (0.0, -height / pool_size)}[side]
                    plane = input[n, side * c + ch].double()
                    (best, best_taps), best_i = _bilinear(plane, y, x), 0
                    for i in range(1, pool_size + 1):
                        x, y = x + step[0], y + step[1]
                        value, taps = _bilinear(plane, y, x)
                        if value > best:  # strict: the first maximum wins
                            best, best_i, best_taps = value, i, taps
                    output[n, ch, j, side], argmax[n, ch, j, side] = best, best_i
                    taps_of[n, ch, j, side] = best_taps
    return output, argmax, taps_of


def _random_case(seed, b=2, c=3, h=5, w=7, spread=2.5):
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(b, 4 * c, h, w, generator=generator)
    k = h * w
    corner = torch.rand(b, k, 2, generator=generator) * torch.tensor([w + 2 * spread, h + 2 * spread]) - spread
    size = torch.rand(b, k, 2, generator=generator) * torch.tensor([w, h])
    boxes = torch.cat([corner, corner + size], -1)  # some boxes leave the map on purpose
    boxes[0, 0] = torch.tensor([1.0, 2.0, 1.0, 2.0])  # a degenerate (point) box
    boxes[0, 1] = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0])  # exactly the map
    return input, boxes


@pytest.mark.parametrize("seed,pool_size", [(0, 10), (1, 3), (2, 1)])
def test_border_align_equals_the_loop_reference(seed, pool_size):
    input, boxes = _random_case(seed)
    out, argmax = border_align(input, boxes, pool_size, return_argmax=True, outside="zero")  # mmcv's padding
    expected, expected_argmax, _ = reference_border_align(input, boxes, pool_size)
    assert out.shape == (2, 3, 35, 4)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert torch.equal(argmax, expected_argmax)


def test_border_align_gradient_goes_to_the_argmax_sample_only():
    input, boxes = _random_case(5, b=1, c=2, h=4, w=6)
    input.requires_grad_(True)
    grad_out = torch.randn(1, 2, 24, 4, generator=torch.Generator().manual_seed(9))
    (border_align(input, boxes, 10, outside="zero") * grad_out).sum().backward()
    _, _, taps_of = reference_border_align(input.detach(), boxes, 10)
    expected = torch.zeros_like(input, dtype=torch.float64)
    for (n, ch, j, side), taps in taps_of.items():
        for row, col, weight in taps:
            expected[n, side * 2 + ch, row, col] += weight * float(grad_out[n, ch, j, side])
    assert torch.allclose(input.grad.double(), expected, atol=1e-5)


def test_border_align_invariants():
    # A constant map gives that constant for boxes inside the map, on every side.
    boxes = torch.tensor([[[0.5, 1.0, 4.0, 3.5], [2.0, 2.0, 2.0, 2.0]]])
    assert torch.allclose(border_align(torch.full((1, 8, 5, 6), 0.7), boxes), torch.full((1, 2, 2, 4), 0.7))
    # A point box reads the bilinear sample at that point on every side.
    ramp = torch.arange(30.0).view(1, 1, 5, 6).repeat(1, 4, 1, 1)  # value = 6 y + x
    point = border_align(ramp, torch.tensor([[[2.5, 1.25, 2.5, 1.25]]]))
    assert torch.allclose(point, torch.full((1, 1, 1, 4), 6 * 1.25 + 2.5))
    # The max is >= the value at either end of every side.
    input, boxes = _random_case(3)
    out = border_align(input, boxes, 10, outside="zero")
    ends = border_align(input, boxes, 1, outside="zero")  # pool_size 1: just the two end points
    assert (out >= ends - 1e-6).all()
    # Side order: the top block only sees y1, the bottom block only y2, left x1, right x2.
    rows = torch.arange(5.0).view(1, 1, 5, 1).expand(1, 1, 5, 6)
    cols = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 5, 6)
    sides = torch.cat([-rows, -cols, rows, cols], 1)  # each block depends on one coordinate only
    box = torch.tensor([[[1.0, 0.5, 4.0, 3.0]]])
    assert border_align(sides, box).flatten().tolist() == pytest.approx([-0.5, -1.0, 3.0, 4.0])
    # With outside="zero", boxes far outside the map read zeros (mmcv: zero padding beyond one pixel).
    far = torch.tensor([[[20.0, 20.0, 30.0, 30.0], [-9.0, -9.0, -3.0, -2.0]]])
    assert torch.equal(border_align(torch.randn(1, 8, 5, 6), far, outside="zero"), torch.zeros(1, 2, 2, 4))


def test_border_sample_points_walk_each_side_with_both_ends():
    points = border_sample_points(torch.tensor([[0.0, 0.0, 10.0, 5.0]]), pool_size=10)  # (1, 4, 11, 2)
    top, left, bottom, right = points[0]
    assert top[0].tolist() == [0, 0] and top[-1].tolist() == [10, 0]
    assert left[0].tolist() == [0, 0] and left[-1].tolist() == [0, 5]
    assert bottom[0].tolist() == [10, 5] and bottom[-1].tolist() == [0, 5]  # walks back from (x2, y2)
    assert right[0].tolist() == [10, 5] and right[-1].tolist() == [10, 0]
    assert torch.allclose(top[1] - top[0], torch.tensor([1.0, 0.0]))


def test_border_align_module_and_bad_inputs():
    input, boxes = torch.randn(2, 8, 4, 5), torch.rand(2, 20, 4) * 2
    boxes[..., 2:] += boxes[..., :2]  # xyxy; clamp them onto the 4x5 map (x <= 4, y <= 3)
    boxes = torch.minimum(boxes, torch.tensor([4.0, 3.0, 4.0, 3.0]))
    assert torch.equal(BorderAlign(10)(input, boxes), border_align(input, boxes, 10))
    assert "pool_size=10" in repr(BorderAlign(10))
    # The map itself, exactly, is allowed; a box in image pixels (off the map) is not, by default.
    border_align(input, torch.tensor([[[0.0, 0.0, 4.0, 3.0]]]).expand(2, 1, 4))
    for off_map in ([0.0, 0.0, 4.5, 3.0], [0.0, -0.5, 4.0, 3.0], [0.0, 0.0, 4.0, 3.2]):
        box = torch.tensor([[off_map]]).expand(2, 1, 4)
        with pytest.raises(ValueError, match="must lie on the 4x5 feature map"):
            border_align(input, box)
        with pytest.raises(ValueError, match="must lie on the 4x5 feature map"):
            BorderAlign(10)(input, box)
        assert border_align(input, box, outside="zero").shape == (2, 2, 1, 4)
    with pytest.raises(ValueError, match="outside must be one of"):
        border_align(input, boxes, outside="clamp")
    with pytest.raises(ValueError, match="outside must be one of"):
        BorderAlign(10, outside="pad")
    cases = [
        (torch.randn(2, 6, 4, 5), boxes, 10, "multiple of 4"),
        (torch.randn(8, 4, 5), boxes, 10, "multiple of 4"),
        (input, boxes[..., :3], 10, r"\(B, K, 4\)"),
        (input, boxes[0], 10, r"\(B, K, 4\)"),
        (input, boxes[:1], 10, "batch size"),
        (input, boxes, 0, "pool_size"),
        (input, boxes, 2.5, "pool_size"),
        (input, boxes.flip(-1), 10, "x2 >= x1"),
        (input, torch.full_like(boxes, math.nan), 10, "NaN"),
        (input.long(), boxes, 10, "floating point"),
    ]
    for bad_input, bad_boxes, pool_size, message in cases:
        with pytest.raises(ValueError, match=message):
            border_align(bad_input, bad_boxes, pool_size)
    with pytest.raises(ValueError, match="pool_size"):
        BorderAlign(0)
