"""Generalized spatial attention with four selectable terms (Zhu et al. 2019, arXiv 1904.05873).

"An Empirical Study of Spatial Attention Mechanisms in Deep Networks" writes Transformer
attention over a feature map as ``y_q = sum_m W_m sum_k A_m(q, k) W'_m x_k`` with
``A_m(q, k) ∝ exp(E1 + E2 + E3 + E4)`` (only the terms switched on), where for query content
``z_q``, key content ``x_k`` and the relative position ``R_{k-q}``:

* E1 = z_q^T U^T V^C x_k       query content & key content (the usual q·k)
* E2 = z_q^T U^T V^R R_{k-q}   query content & relative position
* E3 = u^T V^C x_k             key content only (a learned saliency, the same for every query)
* E4 = v^T V^R R_{k-q}         relative position only (a learned, translation-invariant kernel)

``attention_type`` is a 4-character string of 0/1 switching E1..E4 on in that order ('1111'
all, '0010' key saliency only). Names, parameters and initialisation follow mmcv's
``GeneralizedAttention`` (mmcv/cnn/bricks/generalized_attention.py) so that its weights load
by name; as there, energies are *not* scaled by 1/sqrt(d), channels split head-major,
keys/values are subsampled by ``kv_stride`` and the output is ``x + gamma * proj(attention · V)``
with ``gamma`` starting at 0. The relative position embedding is factorised into x and y
parts (sin/cos of the coordinate difference, wavelength 1000, each projected by its own linear
layer and divided by sqrt 2). One deviation: for E2 without E4 (e.g. '0100') mmcv pairs the y
position term with the transposed query grid (exact only on square maps); here E2 is always
``q^T R`` as in the paper (what mmcv computes for '0101' and '1111').
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TERMS = ("E1", "E2", "E3", "E4")
TERM_NAMES = {
    "E1": "query & key content",
    "E2": "query content & relative position",
    "E3": "key content only",
    "E4": "relative position only",
}


def parse_attention_type(attention_type: str) -> tuple[bool, bool, bool, bool]:
    """'1010' -> (True, False, True, False): which of E1..E4 are on."""
    if not isinstance(attention_type, str) or len(attention_type) != 4 or set(attention_type) - {"0", "1"}:
        raise ValueError(f"attention_type must be 4 characters of '0'/'1' switching on E1..E4 "
                         f"(e.g. '1111', '0010'), got {attention_type!r}")
    return tuple(c == "1" for c in attention_type)


def relative_position_embedding(h: int, w: int, h_kv: int, w_kv: int, q_stride: int, kv_stride: int,
                                feat_dim: int, position_magnitude: float = 1.0, wave_length: float = 1000.0,
                                device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Sin/cos embeddings of query-minus-key coordinate differences, one per axis.

    Returns (embedding_x (w, w_kv, feat_dim/2), embedding_y (h, h_kv, feat_dim/2)). Coordinates
    are in input pixels of the feature map (grid index x stride); frequencies are
    ``wave_length ** (4 k / feat_dim)`` for k < feat_dim/4, and each embedding is
    ``[sin(delta / f_k), cos(delta / f_k)]``.
    """
    if feat_dim < 4 or feat_dim % 4:
        raise ValueError(f"the position embedding dimension must be a positive multiple of 4, got {feat_dim}")

    def differences(count_q: int, count_kv: int) -> torch.Tensor:
        positions_q = torch.arange(count_q, device=device, dtype=dtype) * q_stride  # (count_q,)
        positions_kv = torch.arange(count_kv, device=device, dtype=dtype) * kv_stride  # (count_kv,)
        return (positions_q[:, None] - positions_kv[None, :]) * position_magnitude  # (count_q, count_kv)

    frequencies = wave_length ** ((4.0 / feat_dim) * torch.arange(feat_dim // 4, device=device, dtype=dtype))

    def embed(delta: torch.Tensor) -> torch.Tensor:
        angle = delta[..., None] / frequencies  # (count_q, count_kv, feat_dim/4)
        return torch.cat([angle.sin(), angle.cos()], dim=-1)  # (count_q, count_kv, feat_dim/2)

    return embed(differences(w, w_kv)), embed(differences(h, h_kv))


class GeneralizedAttention(nn.Module):
    """The generalized attention block on a feature map (N, C, H, W) -> (N, C, H, W).

    Arguments as in mmcv: ``spatial_range`` (-1: every key; r >= 0: keys within r input pixels,
    as mmcv's local constraint), ``num_heads``, ``position_embedding_dim`` (-1: ``in_channels``),
    ``position_magnitude`` (multiplies coordinate differences), ``kv_stride`` / ``q_stride``
    (subsample keys/values and queries), ``attention_type`` (E1..E4 switches).
    """

    def __init__(self, in_channels: int, spatial_range: int = -1, num_heads: int = 9,
                 position_embedding_dim: int = -1, position_magnitude: float = 1, kv_stride: int = 2,
                 q_stride: int = 1, attention_type: str = "1111"):
        super().__init__()
        self.attention_type = parse_attention_type(attention_type)
        if num_heads < 1 or in_channels < num_heads:
            raise ValueError(f"need 1 <= num_heads <= in_channels, got num_heads={num_heads}, in_channels={in_channels}")
        for name, value in (("kv_stride", kv_stride), ("q_stride", q_stride)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(spatial_range, int) or spatial_range < -1:
            raise ValueError(f"spatial_range must be -1 (no limit) or an int >= 0, got {spatial_range!r}")
        use_e1, use_e2, use_e3, use_e4 = self.attention_type
        self.in_channels, self.num_heads = in_channels, num_heads
        self.position_embedding_dim = position_embedding_dim if position_embedding_dim > 0 else in_channels
        if (use_e2 or use_e4) and self.position_embedding_dim % 4:
            raise ValueError(f"position_embedding_dim must be a multiple of 4, got {self.position_embedding_dim}")
        self.position_magnitude, self.spatial_range = position_magnitude, spatial_range
        self.kv_stride, self.q_stride = kv_stride, q_stride
        self.qk_embed_dim = in_channels // num_heads  # as mmcv: leftover channels are dropped
        self.v_dim = in_channels // num_heads
        qk_channels = self.qk_embed_dim * num_heads

        # Only the parameters the chosen terms use exist (mmcv's layout, so state dicts match).
        if use_e1 or use_e2:
            self.query_conv = nn.Conv2d(in_channels, qk_channels, 1, bias=False)  # z_q -> U z_q
        if use_e1 or use_e3:
            self.key_conv = nn.Conv2d(in_channels, qk_channels, 1, bias=False)  # x_k -> V^C x_k
        self.value_conv = nn.Conv2d(in_channels, self.v_dim * num_heads, 1, bias=False)  # W'
        if use_e2 or use_e4:
            self.appr_geom_fc_x = nn.Linear(self.position_embedding_dim // 2, qk_channels, bias=False)  # V^R, x part
            self.appr_geom_fc_y = nn.Linear(self.position_embedding_dim // 2, qk_channels, bias=False)  # V^R, y part
        bound = 1.0 / math.sqrt(self.qk_embed_dim * 2)
        if use_e3:
            self.appr_bias = nn.Parameter(torch.empty(qk_channels).uniform_(-bound, bound))  # u
        if use_e4:
            self.geom_bias = nn.Parameter(torch.empty(qk_channels).uniform_(-bound, bound))  # v
        self.proj_conv = nn.Conv2d(self.v_dim * num_heads, in_channels, 1, bias=True)  # W
        self.gamma = nn.Parameter(torch.zeros(1))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):  # mmcv: kaiming uniform, fan_in, a=1, bias 0
                nn.init.kaiming_uniform_(module.weight, a=1, mode="fan_in", nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def attention_type_string(self) -> str:
        return "".join("1" if on else "0" for on in self.attention_type)

    # ----------------------------------------------------------------- pieces of the energy

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys/values feature maps: x subsampled by q_stride and kv_stride."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        # mmcv's AvgPool2d(kernel_size=1, stride=s) is exactly this subsampling (no averaging).
        return x[:, :, ::self.q_stride, ::self.q_stride], x[:, :, ::self.kv_stride, ::self.kv_stride]

    def _heads(self, features: torch.Tensor) -> torch.Tensor:
        """(N, heads*d, H, W) -> (N, heads, H*W, d), channels split head-major."""
        n, _, h, w = features.shape
        return features.view(n, self.num_heads, -1, h * w).transpose(2, 3)

    def _position_features(self, h, w, h_kv, w_kv, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """V^R R for each axis: (heads, w, w_kv, d) and (heads, h, h_kv, d), already divided by sqrt 2."""
        embedding_x, embedding_y = relative_position_embedding(
            h, w, h_kv, w_kv, self.q_stride, self.kv_stride, self.position_embedding_dim,
            self.position_magnitude, device=like.device, dtype=like.dtype)
        features_x = self.appr_geom_fc_x(embedding_x).view(w, w_kv, self.num_heads, -1).permute(2, 0, 1, 3)
        features_y = self.appr_geom_fc_y(embedding_y).view(h, h_kv, self.num_heads, -1).permute(2, 0, 1, 3)
        return features_x / math.sqrt(2), features_y / math.sqrt(2)

    @staticmethod
    def _position_energy(query: torch.Tensor, features_x: torch.Tensor, features_y: torch.Tensor) -> torch.Tensor:
        """query (N, heads, h, w, d) against factorised positions -> (N, heads, h*w, h_kv*w_kv)."""
        energy_x = torch.einsum("nmijd,mjbd->nmijb", query, features_x)  # (N, heads, h, w, w_kv)
        energy_y = torch.einsum("nmijd,miad->nmija", query, features_y)  # (N, heads, h, w, h_kv)
        energy = energy_y[..., :, None] + energy_x[..., None, :]  # (N, heads, h, w, h_kv, w_kv)
        return energy.flatten(4).flatten(2, 3)

    def term_energies(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each switched-on term separately, {"E1": (N, heads, h*w, h_kv*w_kv), ...}.

        E3 does not depend on the query; it is broadcast to every query here. Their sum is
        :meth:`energy` (before the spatial-range mask); this split is for looking inside.
        """
        x_q, x_kv = self._inputs(x)
        n, _, h, w = x_q.shape
        h_kv, w_kv = x_kv.shape[-2:]
        use_e1, use_e2, use_e3, use_e4 = self.attention_type
        shape = (n, self.num_heads, h * w, h_kv * w_kv)
        terms = {}
        if use_e1 or use_e2:
            query = self._heads(self.query_conv(x_q))  # (N, heads, h*w, d)
        if use_e1 or use_e3:
            key = self._heads(self.key_conv(x_kv))  # (N, heads, h_kv*w_kv, d)
        if use_e2 or use_e4:
            features_x, features_y = self._position_features(h, w, h_kv, w_kv, x)
        if use_e1:
            terms["E1"] = query @ key.transpose(-2, -1)
        if use_e2:
            terms["E2"] = self._position_energy(query.view(n, self.num_heads, h, w, -1), features_x, features_y)
        if use_e3:
            u = self.appr_bias.view(1, self.num_heads, 1, -1)
            terms["E3"] = (u @ key.transpose(-2, -1)).expand(shape)
        if use_e4:
            v = self.geom_bias.view(1, self.num_heads, 1, 1, -1).expand(1, -1, h, w, -1)
            terms["E4"] = self._position_energy(v, features_x, features_y).expand(shape)
        return terms

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """The summed energy (N, heads, h*w or 1, h_kv*w_kv); 1 query row when it is query-independent.

        Computed as mmcv does: ``(q·[E1] + u·[E3])^T k + (q·[E2] + v·[E4])^T R``, which is
        E1 + E2 + E3 + E4 with one product per key kind. With E3 alone (or no term) every query
        shares one row, so only that row is computed (mmcv's fast path for '0010').
        """
        x_q, x_kv = self._inputs(x)
        n, _, h, w = x_q.shape
        h_kv, w_kv = x_kv.shape[-2:]
        use_e1, use_e2, use_e3, use_e4 = self.attention_type
        rows = h * w if (use_e1 or use_e2 or use_e4) else 1
        energy = x.new_zeros(n, self.num_heads, rows, h_kv * w_kv)
        if use_e1 or use_e2:
            query = self._heads(self.query_conv(x_q))  # (N, heads, h*w, d)
        if use_e1 or use_e3:
            key = self._heads(self.key_conv(x_kv))  # (N, heads, h_kv*w_kv, d)
            content_query = 0
            if use_e1:
                content_query = content_query + query
            if use_e3:
                content_query = content_query + self.appr_bias.view(1, self.num_heads, 1, -1)
            energy = energy + content_query @ key.transpose(-2, -1)
        if use_e2 or use_e4:
            features_x, features_y = self._position_features(h, w, h_kv, w_kv, x)
            position_query = x.new_zeros(1, self.num_heads, h * w, self.qk_embed_dim)
            if use_e2:
                position_query = position_query + query
            if use_e4:
                position_query = position_query + self.geom_bias.view(1, self.num_heads, 1, -1)
            position_query = position_query.expand(n, -1, -1, -1).reshape(n, self.num_heads, h, w, -1)
            energy = energy + self._position_energy(position_query, features_x, features_y)
        if self.spatial_range >= 0:
            allowed = self.local_window(h, w, h_kv, w_kv, x.device)  # (h*w, h_kv*w_kv)
            energy = energy.expand(-1, -1, h * w, -1).masked_fill(~allowed, float("-inf"))
        return energy

    def local_window(self, h: int, w: int, h_kv: int, w_kv: int, device) -> torch.Tensor:
        """mmcv's spatial-range constraint: keys a query may see, (h*w, h_kv*w_kv) bool.

        For query row iy the allowed key rows are ``max((iy-r)//s, 0) <= ky < (iy+r+1)//s + 1``
        (s = kv_stride, r = spatial_range), the same for columns. As in mmcv, the query index is
        used as is (q_stride is not applied), and with s = 1 the window is iy - r .. iy + r + 1,
        one row longer after the query than before it.
        """
        r, s = self.spatial_range, self.kv_stride

        def axis(count_q: int, count_kv: int) -> torch.Tensor:  # (count_q, count_kv)
            index_q = torch.arange(count_q, device=device)[:, None]
            index_kv = torch.arange(count_kv, device=device)[None, :]
            low = torch.div(index_q - r, s, rounding_mode="floor").clamp(min=0)
            high = torch.div(index_q + r + 1, s, rounding_mode="floor") + 1
            return (index_kv >= low) & (index_kv < high)

        allowed = axis(h, h_kv)[:, None, :, None] & axis(w, w_kv)[None, :, None, :]  # (h, w, h_kv, w_kv)
        return allowed.reshape(h * w, h_kv * w_kv)

    # ----------------------------------------------------------------- forward

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights (N, heads, h*w, h_kv*w_kv): one softmax over all keys of each query."""
        x_q = x[:, :, ::self.q_stride, ::self.q_stride]
        weights = torch.softmax(self.energy(x), dim=-1)
        return weights.expand(-1, -1, x_q.shape[-2] * x_q.shape[-1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q, x_kv = self._inputs(x)
        n, _, h, w = x_q.shape
        weights = torch.softmax(self.energy(x), dim=-1)  # (N, heads, h*w or 1, h_kv*w_kv)
        value = self._heads(self.value_conv(x_kv))  # (N, heads, h_kv*w_kv, d_v)
        mixed = (weights @ value).expand(-1, -1, h * w, -1)  # (N, heads, h*w, d_v)
        out = self.proj_conv(mixed.transpose(2, 3).reshape(n, -1, h, w))  # (N, C, h, w)
        if self.q_stride > 1:  # queries were subsampled: back to the input size
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x + self.gamma * out
