"""Stitcher: a feedback-driven data provider for small objects.

Chen et al., "Stitcher: Feedback-driven Data Provider for Object Detection" (arXiv
2004.12432; official code: yukang2017/Stitcher on maskrcnn-benchmark). Two parts:

* :func:`stitch4` — four images, each resized to half height and half width (nearest
  neighbour), tiled 2x2 into one image of the regular size; their boxes scaled and shifted
  with them. Objects shrink by 2 per side, so a stitched batch is full of small objects.
  As ``to_image_list_synthesize_4``: order top-left, top-right, bottom-left, bottom-right; the
  canvas is the largest height and width of the four images rounded *up* to a multiple of
  ``size_divisible`` (the padded size of a regular batch); each image is resized to half the
  canvas ignoring its own aspect ratio, with legacy ``F.interpolate(mode="nearest")``; boxes
  are not clipped.
* :class:`StitchFeedback` — the feedback rule. After every iteration, the share of the box
  regression loss that comes from small objects is
  ``r_s = sum_{positives of small objects} L_reg / sum_{positives} L_reg`` (:func:`small_loss_ratio`,
  "small" by the box area of the matched object, COCO's 32^2 px scaled to the image size);
  the *next* batch is stitched when ``r_s < tau`` (0.1). The official loop starts from
  ``r_s = 0``, so its first batch is stitched. With the chapter's ATSS detector,
  :func:`atss_loss_and_ratio` gives the loss and ``r_s`` from its per-positive box losses.

A stitched iteration consumes four times as many images as a regular one, at the same
network cost.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import box_area

from kit.det.atss import atss_loss_terms
from kit.det.detector import DenseOutput

_QUADRANTS = ((0, 0), (1, 0), (0, 1), (1, 1))  # (column, row): TL, TR, BL, BR


def stitched_size(heights, widths, size_divisible: int = 0) -> tuple[int, int]:
    """The canvas (H, W): the largest height and width, rounded up to ``size_divisible``."""
    if size_divisible < 0:
        raise ValueError(f"size_divisible must be >= 0, got {size_divisible}")
    height, width = max(heights), max(widths)
    if size_divisible > 0:
        height = int(math.ceil(height / size_divisible) * size_divisible)
        width = int(math.ceil(width / size_divisible) * size_divisible)
    if height % 2 or width % 2:
        raise ValueError(f"the stitched canvas {height}x{width} has an odd side, so two tiles cannot fill it "
                         "(the official code fails here too); use an even size_divisible")
    return height, width


def stitch4(images, boxes: list, labels: list, size_divisible: int = 0):
    """Stitch groups of four images (and their targets) into one image each.

    images: a (4B, 3, H, W) tensor or a list of 4B (3, h_i, w_i) tensors; boxes: 4B tensors
    (M_i, 4) xyxy pixels; labels: 4B tensors (M_i,). Image ``4b + q`` goes to quadrant ``q``
    of output ``b``. Returns ``(stitched (B, 3, H, W), boxes [B x (sum M, 4)], labels [B x (sum M,)])``
    with (H, W) from :func:`stitched_size`.
    """
    count = len(images)
    if count == 0 or count % 4:
        raise ValueError(f"stitch4 needs a multiple of 4 images, got {count}")
    if len(boxes) != count or len(labels) != count:
        raise ValueError(f"need one box and one label tensor per image: {count} images, "
                         f"{len(boxes)} box tensors, {len(labels)} label tensors")
    for i, image in enumerate(images):
        if image.dim() != 3:
            raise ValueError(f"image {i} must be (3, h, w), got {tuple(image.shape)}")
        if boxes[i].dim() != 2 or boxes[i].shape[-1] != 4 or labels[i].shape != boxes[i].shape[:1]:
            raise ValueError(f"image {i}: need boxes (M, 4) and labels (M,), got {tuple(boxes[i].shape)} "
                             f"and {tuple(labels[i].shape)}")
    height, width = stitched_size([im.shape[-2] for im in images], [im.shape[-1] for im in images], size_divisible)
    tile_h, tile_w = height // 2, width // 2

    # Images: each resized to the tile, then the 2x2 tiles laid out.
    if isinstance(images, torch.Tensor):  # one call for the whole batch
        tiles = F.interpolate(images, size=(tile_h, tile_w), mode="nearest")  # (4B, 3, h, w)
    else:
        tiles = torch.cat([F.interpolate(im[None], size=(tile_h, tile_w), mode="nearest") for im in images])
    groups, channels = count // 4, tiles.shape[1]
    stitched = tiles.view(groups, 2, 2, channels, tile_h, tile_w)  # (B, row, col, 3, h, w)
    stitched = stitched.permute(0, 3, 1, 4, 2, 5).reshape(groups, channels, height, width)

    # Boxes: scaled by tile / image size per axis, shifted by the quadrant's corner (all at once).
    all_boxes = torch.cat(list(boxes)).float()  # (T, 4), images in order
    device = all_boxes.device
    counts = torch.tensor([len(b) for b in boxes], device=device)  # (4B,)
    sizes = torch.tensor([tuple(im.shape[-2:]) for im in images], dtype=torch.float32, device=device)  # (4B, 2) hw
    scale = torch.stack([tile_w / sizes[:, 1], tile_h / sizes[:, 0]], 1).repeat(1, 2)  # (4B, 4)
    corner = torch.tensor(_QUADRANTS, dtype=torch.float32, device=device) * torch.tensor([tile_w, tile_h], device=device)
    shift = corner.repeat(groups, 2)  # (4B, 4): image 4b + q sits at quadrant q
    moved = all_boxes * scale.repeat_interleave(counts, 0) + shift.repeat_interleave(counts, 0)  # (T, 4)
    per_group = counts.view(groups, 4).sum(1).tolist()
    return stitched, list(moved.split(per_group)), list(torch.cat(list(labels)).split(per_group))


def small_loss_ratio(box_loss: torch.Tensor, target_boxes: torch.Tensor, small_area: float) -> float:
    """Stitcher's feedback ``r_s``: the share of the box loss from positives of small objects.

    box_loss: (P,) per-positive box loss; target_boxes: (P, 4) their objects' boxes; an
    object is small when its box area is below ``small_area`` px^2. Returns a float in
    [0, 1]; 0 when there is no box loss at all (no positives).
    """
    if box_loss.dim() != 1 or target_boxes.shape != (box_loss.shape[0], 4):
        raise ValueError(f"need box_loss (P,) and target_boxes (P, 4), got {tuple(box_loss.shape)} "
                         f"and {tuple(target_boxes.shape)}")
    if small_area <= 0:
        raise ValueError(f"small_area must be > 0 px^2, got {small_area}")
    if box_loss.numel() and box_loss.min() < 0:
        raise ValueError("box losses must be >= 0")
    total = float(box_loss.sum())
    if total == 0:
        return 0.0
    small = box_area(target_boxes) < small_area  # (P,)
    return min(1.0, float(box_loss[small].sum()) / total)  # min: float rounding only


def atss_loss_and_ratio(out: DenseOutput, gt_boxes: list, gt_labels: list,
                        small_area: float) -> tuple[dict[str, torch.Tensor], float]:
    """ATSS's loss for a batch and its feedback ``r_s`` (:func:`small_loss_ratio` of the
    per-positive, centre-ness-weighted GIoU losses, before normalisation)."""
    terms = atss_loss_terms(out, gt_boxes, gt_labels)
    return terms.losses(), small_loss_ratio(terms.box_losses.detach(), terms.target_boxes, small_area)


class StitchFeedback:
    """The rule: stitch the next batch when the last iteration's ``r_s`` was below ``tau``.

    ``ratio`` starts at ``initial_ratio`` (0, as the official loop: the first batch is
    stitched). Call :meth:`next_is_stitched` before building a batch and :meth:`update` with
    that iteration's ``r_s`` after its loss; ``history`` keeps one ``(stitched, r_s)`` per step.
    """

    def __init__(self, tau: float = 0.1, initial_ratio: float = 0.0):
        if not 0 < tau < 1:
            raise ValueError(f"tau must lie in (0, 1), got {tau}")
        if not 0 <= initial_ratio <= 1:
            raise ValueError(f"initial_ratio must lie in [0, 1], got {initial_ratio}")
        self.tau, self.ratio = float(tau), float(initial_ratio)
        self.history: list[tuple[bool, float]] = []
        self._pending: bool | None = None

    def next_is_stitched(self) -> bool:
        self._pending = self.ratio < self.tau
        return self._pending

    def update(self, ratio: float) -> None:
        if not 0 <= ratio <= 1:
            raise ValueError(f"r_s must lie in [0, 1], got {ratio}")
        if self._pending is None:
            raise ValueError("call next_is_stitched() before update(): the decision precedes the loss")
        self.history.append((self._pending, float(ratio)))
        self.ratio, self._pending = float(ratio), None
