"""Dynamic routing for semantic segmentation (P23): a routing space of cells with soft conditional gates.

Li et al., *Learning Dynamic Routing for Semantic Segmentation* (CVPR 2020, arXiv 2003.10401;
official code ``yanwei-li/DynamicRouting``). Instead of one fixed network, the paper builds a
*routing space* of ``L`` layers x ``S`` scales (1/4 ... 1/32) and lets every image choose its own
path through it:

- cell ``(l, s)`` takes ``Y = sum of what layer l-1 routed to scale s``: up from ``(l-1, s+1)``,
  keep from ``(l-1, s)``, down from ``(l-1, s-1)``;
- it computes ``H = SepConv3x3(Y) + Y`` (the official ``CELL_TYPE ['sep_conv_3x3', 'skip_connect']``);
- a **soft conditional gate** ``alpha = delta(F(Y))``, ``delta(x) = max(0, tanh x)``, one value per
  route and per *image* (not per pixel), says how much of ``H`` goes on along each route:

      keep:  alpha_keep * ReLU(H) (+ Y itself when every gate of the cell is 0),
      up:    alpha_up   * bilinear_x2(ReLU(BN(conv1x1_{C -> C/2}(ReLU H)))),
      down:  alpha_down * ReLU(BN(conv1x1_{stride 2, C -> 2C}(ReLU H)));

- a cell whose gates are all 0 for an image is **dropped** for that image: ``H`` is not computed,
  the input passes on through keep, up and down are 0, and it costs nothing;
- the **expected cost** ``C = sum_cells [max_j alpha_j * C_cell + sum_j alpha_j * C_trans_j]`` is
  differentiable in the gates, and the **budget loss** ``L_C = lambda * r * (C / C_max - mu)^2``
  pulls it to the fraction ``mu`` of the full space's cost ``C_max``.

The paper's static networks are special cases: fixed 0/1 gates in the same space
(:func:`special_case_gates`: ``raw`` = every gate 1, ``fcn`` down then stay, ``unet`` down then up
with skips, ``hrnet`` every scale kept in parallel) and :func:`matched_hrnet_gates` (the HRNet-like
pattern cut short to a FLOP budget).

Choices taken from the official code (as ``papers/catalog-2`` reads it): gate ``F`` = conv1x1
``C -> C/2`` + BN + ReLU, global average pool, conv1x1 ``C/2 -> n_paths`` with bias 1.5 (every path
open at the start, ``tanh 1.5 = 0.905``); gate channels in the order ``[keep, up, down]`` (the
missing ones left out); the small gate (computed on the input bilinearly resized to 1/4); the drop
threshold ``sum alpha < 1e-4``; the cell cost weighted by ``max_j alpha_j``; up and down as above;
the budget active after 40 % of training with a warm-up. Deviations, for a small CPU study: a
dropped cell is skipped **per image** in training and evaluation alike (the official code drops a
cell for the whole batch at evaluation; per image is what its bs-1 evaluation measures); a cell that
received nothing for an image (every incoming route closed) is inactive for it (its gate is not
computed, its gates count as 0); the small gate's map is at least 2 x 2; the last layer's cells only
keep (their up/down outputs would go nowhere); no drop-path. FLOPs count what
:class:`torch.utils.flop_counter.FlopCounterMode` counts (convolutions, 2 per multiply-add; BN, ReLU
and interpolation free); the gates' own convolutions are reported apart (``gate_flops``), since they
run whether the cell does or not.

Long because the cell, its FLOP model, the routing space and its fixed-gate special cases are one
mechanism that a reader checks against each other (expected == real FLOPs for 0/1 gates).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kit.nn.backbone import conv_bn_relu

__all__ = ["soft_gate", "SepConv", "RoutingGate", "RoutingCell", "CellOutput", "RoutingSpace", "RoutingOutput",
           "DynamicRoutingNet", "special_case_gates", "matched_hrnet_gates", "SPECIAL_CASES", "budget_loss",
           "budget_rate", "DROP_THRESHOLD"]

DROP_THRESHOLD = 1e-4  # official: a cell whose gates sum below this is dropped
SPECIAL_CASES = ("raw", "fcn", "unet", "hrnet")
ROUTES = ("keep", "up", "down")  # the official gate channel order (missing routes left out)


def soft_gate(logits: torch.Tensor) -> torch.Tensor:
    """delta(x) = max(0, tanh x): in [0, 1), exactly 0 (with zero gradient) for x <= 0."""
    return F.relu(torch.tanh(logits))


def conv_flops(in_channels: int, out_channels: int, kernel: int, out_h: int, out_w: int, groups: int = 1) -> int:
    """FLOPs of one convolution as FlopCounterMode counts them: 2 per multiply-add, bias not counted."""
    return 2 * out_channels * out_h * out_w * (in_channels // groups) * kernel * kernel


class SepConv(nn.Module):
    """Official ``SepConv``: dw3x3 -> 1x1 + BN + ReLU -> dw3x3 -> 1x1 + BN, all bias-free; (B, C, h, w) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.op = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    def flops(self, h: int, w: int) -> int:
        c = self.channels
        return 2 * (conv_flops(c, c, 3, h, w, groups=c) + conv_flops(c, c, 1, h, w))


class RoutingGate(nn.Module):
    """F(Y): conv1x1 C -> C/2 + BN + ReLU, global avg pool, conv1x1 C/2 -> n (bias 1.5); (B, C, h, w) -> logits (B, n)."""

    def __init__(self, channels: int, num_routes: int, small_gate: bool = True, gate_bias: float = 1.5):
        super().__init__()
        hidden = max(1, channels // 2)
        self.reduce = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        self.to_routes = nn.Conv2d(hidden, num_routes, 1)
        nn.init.constant_(self.to_routes.bias, gate_bias)
        self.small_gate, self.channels, self.hidden, self.num_routes = small_gate, channels, hidden, num_routes

    def gate_size(self, h: int, w: int) -> tuple[int, int]:
        """The map the gate reads: 1/4 of the input (small gate), at least 2 x 2 (ours), never larger than it."""
        if not self.small_gate:
            return h, w
        return min(h, max(2, h // 4)), min(w, max(2, w // 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.gate_size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (B, C, h/4, w/4)
        pooled = self.reduce(x).mean(dim=(2, 3), keepdim=True)  # (B, C/2, 1, 1)
        return self.to_routes(pooled).flatten(1)  # (B, n)

    def flops(self, h: int, w: int) -> int:
        gh, gw = self.gate_size(h, w)
        return conv_flops(self.channels, self.hidden, 1, gh, gw) + conv_flops(self.hidden, self.num_routes, 1, 1, 1)


@dataclass
class CellOutput:
    """What a cell sends on, per image: keep (B, C, h, w); up (B, C/2, 2h, 2w) or None; down (B, 2C, h/2, w/2) or
    None; gates (B, n) in the cell's route order; expected / real / gate FLOPs (B,); runs (B,) bool: H computed."""

    keep: torch.Tensor
    up: torch.Tensor | None
    down: torch.Tensor | None
    gates: torch.Tensor
    expected_flops: torch.Tensor
    real_flops: torch.Tensor
    gate_flops: torch.Tensor
    runs: torch.Tensor


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index], without a copy when index is every row in order."""
    return x if len(index) == len(x) else x[index]


def _scatter(base: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """base with rows ``index`` replaced by ``values`` (out of place); values itself when index is every row."""
    return values if len(index) == len(base) else base.index_put((index,), values)


class RoutingCell(nn.Module):
    """One cell of the routing space: H = SepConv(Y) + Y, a gate per image, routes keep / up / down."""

    def __init__(self, channels: int, allow_up: bool, allow_down: bool, small_gate: bool = True,
                 gate_bias: float = 1.5):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2 or channels % 2:
            raise ValueError(f"channels must be an even int >= 2 (up halves it), got {channels!r}")
        self.channels = channels
        self.routes = [r for r, allowed in zip(ROUTES, (True, allow_up, allow_down)) if allowed]
        self.op = SepConv(channels)
        self.gate = RoutingGate(channels, len(self.routes), small_gate, gate_bias)
        self.up_route = nn.Sequential(nn.Conv2d(channels, channels // 2, 1, bias=False), nn.BatchNorm2d(channels // 2),
                                      nn.ReLU()) if allow_up else None
        self.down_route = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, stride=2, bias=False),
                                        nn.BatchNorm2d(2 * channels), nn.ReLU()) if allow_down else None

    def cell_flops(self, h: int, w: int) -> int:
        """C_cell: the SepConv (the identity is free)."""
        return self.op.flops(h, w)

    def transition_flops(self, h: int, w: int) -> dict[str, int]:
        """C_trans per route: keep 0, up conv1x1 C -> C/2 at (h, w), down conv1x1 stride 2 C -> 2C."""
        c = self.channels
        costs = {"keep": 0}
        if self.up_route is not None:
            costs["up"] = conv_flops(c, c // 2, 1, h, w)
        if self.down_route is not None:
            costs["down"] = conv_flops(c, 2 * c, 1, (h + 1) // 2, (w + 1) // 2)
        return costs

    def forward(self, x: torch.Tensor, active: torch.Tensor | None = None,
                fixed_gates: torch.Tensor | None = None) -> CellOutput:
        """x (B, C, h, w): the cell's input; active (B,) bool: which images sent anything here (default all);
        fixed_gates (n,) or (B, n): gates to use instead of the learned ones (the static special cases)."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must be (B, {self.channels}, h, w), got {tuple(x.shape)}")
        batch, (h, w) = x.shape[0], x.shape[-2:]
        active = torch.ones(batch, dtype=torch.bool, device=x.device) if active is None else active
        n = len(self.routes)
        gates = x.new_zeros(batch, n)
        gate_flops = x.new_zeros(batch)
        if fixed_gates is not None:
            fixed = torch.as_tensor(fixed_gates, dtype=x.dtype, device=x.device).expand(batch, n)
            gates = torch.where(active[:, None], fixed, gates)  # (B, n)
        elif active.any():
            index = active.nonzero().flatten()
            gates = _scatter(gates, index, soft_gate(self.gate(_rows(x, index))))  # (B, n), 0 where inactive
            gate_flops = torch.where(active, float(self.gate.flops(h, w)), 0.0).to(x.dtype)
        # per image: which cells run (drop test) and which routes carry anything
        runs = active & (gates.sum(1) >= DROP_THRESHOLD)  # (B,)
        cell_cost, transitions = self.cell_flops(h, w), self.transition_flops(h, w)
        trans = x.new_tensor([float(transitions[r]) for r in self.routes])  # (n,)
        expected = gates.max(1).values * cell_cost + (gates * trans).sum(1)  # (B,) differentiable
        real = runs.to(x.dtype) * cell_cost + ((gates > 0) & runs[:, None]).to(x.dtype) @ trans  # (B,)
        # keep: the input itself where the cell is dropped, alpha_keep * ReLU(H) where it runs (below)
        keep = torch.where(active[:, None, None, None] & ~runs[:, None, None, None], x, torch.zeros_like(x))
        up = down = None
        index = runs.nonzero().flatten()  # (b,) the images this cell runs for
        hidden = F.relu(self.op(_rows(x, index)) + _rows(x, index)) if len(index) else None  # ReLU(H), (b, C, h, w)
        g = gates[index][:, :, None, None, None]  # (b, n, 1, 1, 1): g[:, k] scales route k's maps
        if len(index):
            keep = _scatter(keep, index, g[:, 0] * hidden)
        if self.up_route is not None:
            up = self._route(hidden, index, g, "up", x.new_zeros(batch, self.channels // 2, 2 * h, 2 * w))
        if self.down_route is not None:
            down = self._route(hidden, index, g, "down", x.new_zeros(batch, 2 * self.channels, (h + 1) // 2, (w + 1) // 2))
        return CellOutput(keep, up, down, gates, expected, real, gate_flops, runs)

    def _route(self, hidden, index, g, route, zeros):
        """alpha_route * transition(ReLU H), computed only for the images whose gate opens the route; zeros elsewhere."""
        if hidden is None:
            return zeros
        k = self.routes.index(route)
        open_ = (g[:, k].flatten() > 0).nonzero().flatten()  # (b',) positions in index
        if len(open_) == 0:
            return zeros
        if route == "up":  # (b', C/2, 2h, 2w)
            moved = F.interpolate(self.up_route(_rows(hidden, open_)), scale_factor=2, mode="bilinear",
                                  align_corners=False)
        else:  # (b', 2C, h/2, w/2)
            moved = self.down_route(_rows(hidden, open_))
        return _scatter(zeros, index[open_], _rows(g[:, k], open_) * moved)


class RoutingSpace:
    """The cells of ``num_layers`` x ``num_scales``: layer l (1..L) has scales 0..min(l-1, S-1) (scale s is
    1/(4 * 2^s), C0 * 2^s channels); the stem feeds (1, 0); the last layer only keeps."""

    def __init__(self, num_layers: int, num_scales: int):
        for name, value, low in (("num_layers", num_layers, 1), ("num_scales", num_scales, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if num_scales > 4:
            raise ValueError(f"num_scales must be in 1..4 (scales 1/4 .. 1/32), got {num_scales}")
        self.num_layers, self.num_scales = num_layers, num_scales

    def cells(self) -> list[tuple[int, int]]:
        return [(l, s) for l in range(1, self.num_layers + 1) for s in range(min(l, self.num_scales))]

    def routes(self, layer: int, scale: int) -> list[str]:
        """The routes of cell (layer, scale), in gate order: keep, then up unless finest, down unless coarsest."""
        if (layer, scale) not in self.cells():
            raise ValueError(f"no cell ({layer}, {scale}) in a {self.num_layers} x {self.num_scales} space; "
                             f"cells are {self.cells()}")
        if layer == self.num_layers:
            return ["keep"]
        return ["keep"] + (["up"] if scale > 0 else []) + (["down"] if scale < self.num_scales - 1 else [])


def _gates(space: RoutingSpace, open_routes: dict) -> dict[tuple[int, int], torch.Tensor]:
    """{cell: set of open routes} -> {cell: (n,) 0/1 gates in the cell's order} (cells not named: all 0)."""
    return {cell: torch.tensor([float(r in open_routes.get(cell, ())) for r in space.routes(*cell)])
            for cell in space.cells()}


def special_case_gates(space: RoutingSpace, name: str) -> dict[tuple[int, int], torch.Tensor]:
    """Fixed 0/1 gates of a static network in ``space``: ``raw`` (every gate 1), ``fcn`` (down at every layer
    until the coarsest scale, then keep), ``unet`` (down to the coarsest, up back to 1/4, keep at every
    visited scale in between: the skips), ``hrnet`` (keep at every scale; down only where a scale is
    first reached)."""
    if name not in SPECIAL_CASES:
        raise ValueError(f"special case must be one of {SPECIAL_CASES}, got {name!r}")
    L, S = space.num_layers, space.num_scales
    cells = space.cells()
    if name == "raw":
        return _gates(space, {cell: set(space.routes(*cell)) for cell in cells})
    if name == "fcn":
        path = [min(l - 1, S - 1) for l in range(1, L + 1)]  # the scale of layer l on the path
        return _gates(space, {(l, path[l - 1]): {"down" if l < L and path[l] > path[l - 1] else "keep"}
                              for l in range(1, L + 1)})
    if name == "hrnet":
        open_routes = {cell: {"keep"} for cell in cells}
        for l in range(1, min(L, S)):
            open_routes[l, l - 1].add("down")  # the frontier cell spawns the next scale
        return _gates(space, open_routes)
    if L < 2 * S - 1:  # unet
        raise ValueError(f"a U-Net-like path down to scale {S - 1} and back needs num_layers >= {2 * S - 1}, "
                         f"got {L}")
    bottom = S  # the layer at the coarsest scale; scale of layer l: down to it, then up
    path = {l: (l - 1 if l <= bottom else max(0, bottom - 1 - (l - bottom))) for l in range(1, L + 1)}
    open_routes = {}
    for l in range(1, L + 1):
        s = path[l]
        nxt = path.get(l + 1)
        move = None if nxt is None or nxt == s else ("down" if nxt > s else "up")
        open_routes.setdefault((l, s), set()).add(move or "keep")
        if move == "down":  # the skip: this scale is kept until the path comes back up to it
            back = next((k for k in range(l + 1, L + 1) if path[k] == s), None)
            for k in range(l, (back or l + 1)):
                open_routes.setdefault((k, s), set()).add("keep")
    return _gates(space, open_routes)


def matched_hrnet_gates(model: "DynamicRoutingNet", image_size: int, fraction: float) -> dict:
    """The HRNet-like gates cut short to a FLOP budget: close its cells (a closed cell passes its input on at no
    cost) from the last layer back, coarsest scale first, until its real FLOPs are at most ``fraction`` of the
    full space's (``model.max_flops``); the cells that spawn a scale stay open."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1] (of the full space's FLOPs), got {fraction!r}")
    space = model.space
    gates = special_case_gates(space, "hrnet")
    budget = fraction * model.max_flops(image_size)
    spawners = {(l, l - 1) for l in range(1, min(space.num_layers, space.num_scales))}
    for cell in sorted(space.cells(), key=lambda c: (-c[0], -c[1])):
        if model.static_flops(gates, image_size) <= budget:
            break
        if cell not in spawners and cell != (1, 0):
            gates[cell] = torch.zeros_like(gates[cell])
    return gates


@dataclass
class RoutingOutput:
    """logits (B, K, H, W); gates {cell: (B, n)}; expected / real / gate FLOPs of the routing space (B,)."""

    logits: torch.Tensor
    gates: dict
    expected_flops: torch.Tensor
    real_flops: torch.Tensor
    gate_flops: torch.Tensor


class DynamicRoutingNet(nn.Module):
    """Stem to 1/4 -> routing space (L x S cells) -> light decoder -> logits (B, num_classes + 1, H, W).

    fixed_gates: None (dynamic: learned gates) or {cell: (n,) gates} (a static special case). The gate
    modules exist either way, so every arm of a seed starts from the same weights.
    """

    def __init__(self, num_classes: int, num_layers: int = 4, num_scales: int = 3, base_channels: int = 16,
                 decoder_channels: int = 32, small_gate: bool = True, gate_bias: float = 1.5, fixed_gates=None):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes (object classes, background not counted) must be an int >= 1, "
                             f"got {num_classes!r}")
        self.space = RoutingSpace(num_layers, num_scales)
        self.base_channels = base_channels
        self.stem = nn.Sequential(conv_bn_relu(3, base_channels // 2, stride=2), conv_bn_relu(base_channels // 2,
                                                                                              base_channels, stride=2))
        self.cells = nn.ModuleDict()
        for l, s in self.space.cells():
            routes = self.space.routes(l, s)
            self.cells[f"{l}_{s}"] = RoutingCell(base_channels * 2 ** s, "up" in routes, "down" in routes,
                                                 small_gate, gate_bias)
        self.lateral = nn.ModuleList(nn.Conv2d(base_channels * 2 ** s, decoder_channels, 1)
                                     for s in range(min(num_layers, num_scales)))
        self.fuse = conv_bn_relu(decoder_channels, decoder_channels)
        self.classifier = nn.Conv2d(decoder_channels, num_classes + 1, 1)
        self.fixed_gates = None if fixed_gates is None else self._check_fixed(fixed_gates)

    def _check_fixed(self, fixed_gates) -> dict:
        if not isinstance(fixed_gates, dict) or set(fixed_gates) != set(self.space.cells()):
            raise ValueError(f"fixed_gates must be a dict with one entry per cell {self.space.cells()} "
                             f"(special_case_gates gives one), got keys {sorted(fixed_gates) if isinstance(fixed_gates, dict) else fixed_gates!r}")
        out = {}
        for cell, gate in fixed_gates.items():
            gate = torch.as_tensor(gate, dtype=torch.float32)
            if gate.shape != (len(self.space.routes(*cell)),) or ((gate < 0) | (gate > 1)).any():
                raise ValueError(f"fixed gates of cell {cell} must be {len(self.space.routes(*cell))} values in "
                                 f"[0, 1] for routes {self.space.routes(*cell)}, got {gate.tolist()}")
            out[cell] = gate
        return out

    def cell(self, layer: int, scale: int) -> RoutingCell:
        return self.cells[f"{layer}_{scale}"]

    def routing(self, features: torch.Tensor, fixed_gates=None):
        """features (B, C0, H/4, W/4) -> last layer's keep outputs per scale, gates, FLOPs (B,) x 3."""
        batch = features.shape[0]
        zeros = features.new_zeros(batch)
        expected, real, gate_flops, gates = zeros, zeros, zeros, {}
        inputs = {0: features}  # scale -> (B, C_s, h_s, w_s): what the previous layer routed there
        received = {0: torch.ones(batch, dtype=torch.bool, device=features.device)}  # scale -> (B,)
        for layer in range(1, self.space.num_layers + 1):
            nxt, nxt_received = {}, {}
            for scale in range(min(layer, self.space.num_scales)):
                if scale not in inputs:
                    continue
                fixed = None if fixed_gates is None else fixed_gates[layer, scale]
                out = self.cell(layer, scale)(inputs[scale], received[scale], fixed)
                gates[layer, scale] = out.gates
                expected, real, gate_flops = expected + out.expected_flops, real + out.real_flops, gate_flops + out.gate_flops
                sent = out.gates > 0  # (B, n): which routes carry anything (0 for inactive images)
                routes = self.cell(layer, scale).routes
                for route, target, value in (("keep", scale, out.keep), ("up", scale - 1, out.up),
                                             ("down", scale + 1, out.down)):
                    if value is None:
                        continue
                    carries = sent[:, routes.index(route)]  # (B,)
                    if route == "keep":  # a dropped cell passes its input on
                        carries = carries | (received[scale] & ~out.runs)
                    nxt[target] = nxt[target] + value if target in nxt else value
                    nxt_received[target] = nxt_received[target] | carries if target in nxt_received else carries
            inputs, received = nxt, nxt_received
        return inputs, gates, expected, real, gate_flops

    def forward(self, images: torch.Tensor) -> RoutingOutput:
        """images (B, 3, H, W) float in [0, 1] -> RoutingOutput (logits (B, num_classes + 1, H, W))."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got {images.dtype} (uint8 pixels: images.float() / 255)")
        non_finite = int((~torch.isfinite(images)).sum())
        if non_finite:
            raise ValueError(f"images has {non_finite} non-finite values (NaN or inf)")
        coarsest = images.shape[-1] // (4 * 2 ** (self.space.num_scales - 1))
        if min(images.shape[-2:]) % (4 * 2 ** (self.space.num_scales - 1)) or coarsest < 2:
            raise ValueError(f"image sides must be multiples of {4 * 2 ** (self.space.num_scales - 1)} with the "
                             f"coarsest map at least 2 x 2 ({self.space.num_scales} scales), got {tuple(images.shape[-2:])}")
        features = self.stem(images)  # (B, C0, H/4, W/4)
        outputs, gates, expected, real, gate_flops = self.routing(features, self.fixed_gates)
        size = features.shape[-2:]
        fused = sum(F.interpolate(self.lateral[s](x), size=size, mode="bilinear", align_corners=False) if s else
                    self.lateral[s](x) for s, x in outputs.items())  # (B, D, H/4, W/4)
        logits = self.classifier(self.fuse(fused))  # (B, K, H/4, W/4)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return RoutingOutput(logits, gates, expected, real, gate_flops)

    def static_flops(self, gates: dict, image_size: int) -> float:
        """Real routing FLOPs per image of a fixed-gate network at ``image_size`` (from the FLOP model alone)."""
        total, reached = 0.0, {0}
        for layer in range(1, self.space.num_layers + 1):
            nxt = set()
            for scale in range(min(layer, self.space.num_scales)):
                if scale not in reached:
                    continue
                cell, side = self.cell(layer, scale), image_size // (4 * 2 ** scale)
                g = gates[layer, scale]
                if float(g.sum()) < DROP_THRESHOLD:
                    nxt.add(scale)  # dropped: the input passes on through keep
                    continue
                trans = cell.transition_flops(side, side)
                total += cell.cell_flops(side, side) + sum(trans[r] for r, v in zip(cell.routes, g) if v > 0)
                nxt |= {scale + {"keep": 0, "up": -1, "down": 1}[r] for r, v in zip(cell.routes, g) if v > 0}
            reached = nxt
        return total

    def max_flops(self, image_size: int) -> float:
        """C_max: the full space's FLOPs per image (every gate 1) at ``image_size``."""
        return self.static_flops(special_case_gates(self.space, "raw"), image_size)


def budget_rate(step: int, iterations: int, start_fraction: float = 0.4, warmup_fraction: float = 0.1) -> float:
    """r of the budget loss: 0 before ``start_fraction`` of training, then a linear warm-up to 1 over
    ``warmup_fraction`` of it (official: the constraint starts after 40 % of the iterations, with warm-up)."""
    if iterations < 1 or not 0 <= step < iterations:
        raise ValueError(f"step must be in [0, iterations) with iterations >= 1, got step {step}, iterations {iterations}")
    start, ramp = start_fraction * iterations, max(1.0, warmup_fraction * iterations)
    return 0.0 if step < start else min(1.0, (step - start + 1) / ramp)


def budget_loss(expected_flops: torch.Tensor, max_flops: float, mu: float, weight: float,
                rate: float = 1.0) -> torch.Tensor:
    """L_C = weight * rate * (mean_B C / C_max - mu)^2; expected_flops (B,) from the gates, max_flops = C_max."""
    if not torch.is_tensor(expected_flops) or expected_flops.dim() != 1 or expected_flops.numel() == 0:
        raise ValueError(f"expected_flops must be a non-empty (B,) tensor (RoutingOutput.expected_flops), "
                         f"got {getattr(expected_flops, 'shape', expected_flops)!r}")
    if not max_flops > 0:
        raise ValueError(f"max_flops (C_max, the full space's FLOPs) must be > 0, got {max_flops!r}")
    if not 0 <= mu <= 1:
        raise ValueError(f"mu (the target fraction of C_max) must be in [0, 1], got {mu!r}")
    if not (weight >= 0 and 0 <= rate <= 1):
        raise ValueError(f"weight (lambda) must be >= 0 and rate (warm-up) in [0, 1], got {weight!r}, {rate!r}")
    return weight * rate * (expected_flops.mean() / max_flops - mu) ** 2
