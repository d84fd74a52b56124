"""Raster maths the generators share: pixel grids, object frames, shape tests, colours, backgrounds.

Every generator draws the same way: a shape is a test on the pixel centres expressed in the
object's own frame, ``(u, v)`` in units of its half-extents (:func:`object_frame`), so a
rotated, stretched object is one elementwise test over the grid (:data:`INSIDE_TESTS`).
Pixel ``[row, col]`` has its centre at ``(x, y) = (col + 0.5, row + 0.5)``.

Everything is elementwise tensor maths, so it runs on any device, and a caller that passes
the same tensors gets the same bits. (Callers keep the exact tensor layouts they pass to the
transcendental functions: on the CPU ``torch.cos`` of a strided view and of a contiguous copy may
differ in the last bit, and one flipped pixel changes a dataset.)
"""
from __future__ import annotations

import math

import torch


def star_radius(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Radius of a five-pointed star (between 0.45 and 1) in the direction of (u, v)."""
    return 0.45 + 0.55 * (0.5 + 0.5 * torch.cos(5 * torch.atan2(v, u))) ** 2


# Inside tests in the object's unit frame: (u, v) are pixel coordinates in units of the
# object's half-extents, "up" is +v, and every shape spans [-1, 1] on both axes.
INSIDE_TESTS = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.85,
    "triangle": lambda u, v: (v <= 0.75) & (v >= 1.732 * u.abs() - 1.0),
    "ring": lambda u, v: ((u * u + v * v) <= 1.0) & ((u * u + v * v) >= 0.55**2),
    "cross": lambda u, v: ((u.abs() <= 0.33) & (v.abs() <= 1.0)) | ((v.abs() <= 0.33) & (u.abs() <= 1.0)),
    "diamond": lambda u, v: u.abs() + v.abs() <= 1.0,
    "half-disc": lambda u, v: (u * u + v * v <= 1.0) & (v >= -0.1),
    "star": lambda u, v: torch.sqrt(u * u + v * v) <= star_radius(u, v),
    # Asymmetric mass (AutoAssign's centre prior): an L with its bars at the left and bottom,
    # and a pin, a round head on a thin stem.
    "corner": lambda u, v: (u.abs() <= 1.0) & (v.abs() <= 1.0) & ((u <= -0.3) | (v <= -0.3)),
    "pin": lambda u, v: (u * u + (v - 0.45) ** 2 <= 0.55**2) | ((u.abs() <= 0.14) & (v >= -1.0) & (v <= 0.45)),
}


def uniform(generator: torch.Generator, low, high, shape, device="cpu") -> torch.Tensor:
    """Uniform samples in [low, high) of ``shape``; ``low``/``high`` may be tensors that broadcast."""
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def pixel_centres(size: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The (y, x) coordinates of the pixel centres of a size x size image: two (H, W) tensors."""
    grid = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")  # (H, W)
    return gy, gx


def object_frame(gx, gy, cx, cy, half_w, half_h, rotation) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in an object's unit frame: ``(u, v)``, each of the broadcast shape (.., H, W).

    gx, gy: (H, W) pixel centres; cx, cy, half_w, half_h, rotation: per object, shaped to
    broadcast against them (e.g. (P, 1, 1)). The object's +u axis points along
    ``(cos rotation, sin rotation)`` in image (x, y) (clockwise on screen for rotation > 0, as
    image y points down), and +v is "up" in the object: ``-y`` at rotation 0.
    """
    dx, dy = gx - cx, gy - cy  # (.., H, W)
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    u = (dx * cos + dy * sin) / half_w
    v = (dx * sin - dy * cos) / half_h
    return u, v


def masks_by_shape(names, shape_ids: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Masks (B, H, W) bool: object ``b`` drawn as ``names[shape_ids[b]]`` in its frame ``(u[b], v[b])``.

    shape_ids (B,) long; u, v (B, H, W). Each image is tested with its own shape only.
    """
    masks = torch.zeros(u.shape, dtype=torch.bool, device=u.device)
    for index, name in enumerate(names):
        chosen = shape_ids == index
        masks[chosen] = INSIDE_TESTS[name](u[chosen], v[chosen])
    return masks


def discs(centres: torch.Tensor, radius: float, size: int) -> torch.Tensor:
    """Discs (B, H, W) bool of ``radius`` pixels around (B, 2) (x, y) centres."""
    grid = torch.arange(size, dtype=torch.float32, device=centres.device) + 0.5
    dx = grid[None, None, :] - centres[:, 0, None, None]  # (B, 1, W)
    dy = grid[None, :, None] - centres[:, 1, None, None]  # (B, H, 1)
    return dx * dx + dy * dy <= radius * radius


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] (any shape, all three alike) to RGB (..., 3) in [0, 1]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    f = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v.unsqueeze(-1) * (1 - s.unsqueeze(-1) * f)


def background(generator: torch.Generator, n: int, size: int, texture: float, device="cpu") -> torch.Tensor:
    """Textured backgrounds (n, 3, H, W) in [0, 1]: a base colour, three gratings, and noise.

    ``texture`` is the gratings' amplitude (0: flat colour plus the noise).
    """
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (H, W) in (0, 1)
    base = hsv_to_rgb(
        torch.rand(n, generator=generator, device=device),
        uniform(generator, 0.1, 0.5, (n,), device),
        uniform(generator, 0.25, 0.75, (n,), device),
    )  # (n, 3)
    image = base[:, :, None, None].expand(n, 3, size, size).clone()
    for _ in range(3):
        theta = uniform(generator, 0, math.pi, (n, 1, 1), device)
        freq = uniform(generator, 2, 10, (n, 1, 1), device)
        phase = uniform(generator, 0, 2 * math.pi, (n, 1, 1), device)
        grating = torch.sin(2 * math.pi * freq * (x * torch.cos(theta) + y * torch.sin(theta)) + phase)  # (n, H, W)
        tint = uniform(generator, -1, 1, (n, 3, 1, 1), device)
        image += texture / 3 * tint * grating[:, None]
    image += 0.04 * torch.randn(image.shape, generator=generator, device=device)
    return image.clamp_(0, 1)


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight (x1, y1, x2, y2) pixel boxes (..., 4) of boolean masks (..., H, W); zeros for empty masks.

    A box covers whole pixels: x2 is one past the last column, so a one-pixel mask has width 1.
    (torchvision's ``masks_to_boxes`` takes one batch dimension, gives the last column itself
    and refuses empty masks; the generators need all three the other way.)
    """
    h, w = masks.shape[-2:]
    cols = masks.any(dim=-2)  # (..., W)
    rows = masks.any(dim=-1)  # (..., H)
    x1 = cols.float().argmax(dim=-1)
    x2 = w - cols.flip(-1).float().argmax(dim=-1)
    y1 = rows.float().argmax(dim=-1)
    y2 = h - rows.flip(-1).float().argmax(dim=-1)
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).float()
    return boxes * cols.any(dim=-1, keepdim=True)
