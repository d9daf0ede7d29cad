"""Signed-distance field MLP with geometric initialisation, and an IDR-style colour network.

The SDF network follows the IDR / NeuS / VolSDF / MonoSDF family:

* geometric initialisation of Atzmon & Lipman 2020 ("SAL: Sign Agnostic Learning of Shapes from Raw
  Data", sec. 4): hidden layers ``W ~ N(0, sqrt(2 / n_out))``, ``b = 0``; last layer
  ``W ~ N(sqrt(pi / n_in), 1e-4)``, ``b = -r``, so that a softplus MLP starts out approximately as
  the SDF of a sphere of radius ``r`` (``|x| - r``). With ``inside_outside`` both signs flip
  (``r - |x|``), which suits rooms seen from inside (MonoSDF's indoor setting).
* the encoded-input columns of the first layer and of the skip layer start at zero (the IDR/NeuS
  trick), so the network initially sees only raw xyz and the sphere init is not disturbed by high
  frequencies; they are learned from there.
* softplus(beta=100) activations (smooth, so the SDF gradient used by the eikonal loss and by the
  normals is continuous), optional weight normalisation (Salimans & Kingma 2016), and a skip
  connection that concatenates the network input to the middle layer's input, scaled by 1/sqrt(2).

Position encodings: ``"frequency"`` is ``[x, sin(2^k x), cos(2^k x)]`` for k < L **without a pi
factor** (as in IDR, NeuS, MonoSDF; :class:`recon.fields.encodings.FrequencyEncoding` multiplies by
pi, which would change the effective bands of the official defaults, so it is not used here);
``"hash"`` is ``[x, HashGrid((x - aabb_min) / (aabb_max - aabb_min))]`` (Müller et al. 2022), the
hash grid taking inputs in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from recon.fields.hash_grid import HashGridEncoding

__all__ = ["ColorNetwork", "SDFField", "SDFFieldConfig", "sinusoid_encoding"]


def sinusoid_encoding(x: Tensor, num_frequencies: int) -> Tensor:
    """[..., D] -> [..., D * (1 + 2L)]: ``[x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(...)]``.

    No pi factor (IDR/NeuS convention). Ordered per frequency: sin and cos of all D coordinates.
    """
    if num_frequencies <= 0:
        return x
    parts = [x]
    for k in range(num_frequencies):
        scaled = x * (2.0**k)
        parts += [torch.sin(scaled), torch.cos(scaled)]
    return torch.cat(parts, -1)


@dataclass
class SDFFieldConfig:
    """Hyper-parameters of :class:`SDFField` (defaults: the 8x256 MLP of IDR/NeuS/MonoSDF)."""

    num_layers: int = 8
    """Number of linear layers, output layer included."""
    hidden_dim: int = 256
    """Width of the hidden layers."""
    skips: tuple[int, ...] = (4,)
    """Indices of layers whose input is ``cat([h, encoded_input]) / sqrt(2)``."""
    bias: float = 0.5
    """Radius of the initial sphere (geometric init)."""
    geometric_init: bool = True
    """Use the SAL/IDR sphere initialisation; otherwise PyTorch's default Linear init."""
    weight_norm: bool = True
    """Weight-normalise every linear layer (torch.nn.utils.parametrizations.weight_norm)."""
    frequencies: int = 6
    """Number of frequency bands of the ``"frequency"`` encoding (0: raw xyz only)."""
    encoding: Literal["frequency", "hash"] = "frequency"
    """Position encoding: sinusoids without pi, or the multi-resolution hash grid."""
    inside_outside: bool = False
    """Flip the init sign (SDF ~ bias - |x|): for indoor scenes where the cameras sit inside."""
    feature_dim: int = 256
    """Size of the geometry feature returned next to the SDF (fed to the colour network)."""
    num_sdf: int = 1
    """SDF channels (ObjectSDF++: one per object); with more than one, ``forward`` returns [N, num_sdf]."""
    channel_init: tuple[tuple[float, bool], ...] = ()
    """Per-channel geometric init (radius, inside_outside); empty: every channel uses ``bias`` and ``inside_outside``."""
    init_fit: bool = True
    """Refine the geometric init by a ridge least-squares fit of the SDF output row (see SDFField)."""
    init_fit_radius: float = 1.0
    """Radius of the ball whose uniformly drawn points the init fit uses."""
    softplus_beta: float = 100.0
    """Sharpness of the softplus activations."""
    aabb: tuple[tuple[float, float, float], tuple[float, float, float]] = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    """Scene box mapped to [0, 1]^3 for the hash grid (points outside are clamped by the grid)."""
    hash_num_levels: int = 16
    hash_features_per_level: int = 2
    hash_log2_size: int = 19
    hash_min_res: int = 16
    hash_max_res: int = 2048


class SDFField(nn.Module):
    """SDF MLP. ``forward(points [N, 3]) -> (sdf [N], feature [N, F])``; see the module docstring.

    :meth:`gradient` also returns ``d sdf / d points`` [N, 3] via autograd (normals / eikonal loss).
    """

    def __init__(self, config: SDFFieldConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else SDFFieldConfig()
        if cfg.encoding not in ("frequency", "hash"):
            raise ValueError(f"encoding must be 'frequency' or 'hash', got {cfg.encoding!r}")
        if cfg.num_layers < 2:
            raise ValueError("num_layers must be >= 2")
        self.hash_grid: HashGridEncoding | None = None
        if cfg.encoding == "hash":
            self.hash_grid = HashGridEncoding(
                num_levels=cfg.hash_num_levels,
                features_per_level=cfg.hash_features_per_level,
                log2_hashmap_size=cfg.hash_log2_size,
                min_res=cfg.hash_min_res,
                max_res=cfg.hash_max_res,
            )
            self.in_dim = 3 + self.hash_grid.out_dim
        else:
            self.in_dim = 3 * (1 + 2 * max(cfg.frequencies, 0))
        self.register_buffer("aabb", torch.tensor(cfg.aabb, dtype=torch.float32), persistent=False)
        self.skips = {s for s in cfg.skips if 0 < s < cfg.num_layers}

        if cfg.num_sdf < 1 or (cfg.channel_init and len(cfg.channel_init) != cfg.num_sdf):
            raise ValueError(f"num_sdf must be >= 1 and channel_init empty or of that length, got {cfg.num_sdf}, {len(cfg.channel_init)}")
        out_dim = cfg.num_sdf + cfg.feature_dim
        layers = []
        for i in range(cfg.num_layers):
            d_in = self.in_dim if i == 0 else cfg.hidden_dim
            if i in self.skips:
                d_in += self.in_dim
            d_out = out_dim if i == cfg.num_layers - 1 else cfg.hidden_dim
            lin = nn.Linear(d_in, d_out)
            if cfg.geometric_init:
                self._geometric_init(lin, i)
            layers.append(lin)
        self.layers = nn.ModuleList(layers)
        self.activation = nn.Softplus(beta=cfg.softplus_beta)
        if cfg.geometric_init and cfg.init_fit:
            self._fit_output_row()
        if cfg.weight_norm:
            # Applied after the init: weight_norm splits the current weight into g = |w| and v = w.
            self.layers = nn.ModuleList([_weight_norm(lin) for lin in self.layers])

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def _geometric_init(self, lin: nn.Linear, index: int) -> None:
        cfg = self.config
        d_out, d_in = lin.weight.shape
        if index == cfg.num_layers - 1:
            # Last layer: the mean weight sqrt(pi / n_in) makes the output ~ |x| (SAL, sec. 4).
            sign = -1.0 if cfg.inside_outside else 1.0
            nn.init.normal_(lin.weight, mean=sign * math.sqrt(math.pi) / math.sqrt(d_in), std=1e-4)
            nn.init.constant_(lin.bias, -sign * cfg.bias)
            for c, (radius, inside_outside) in enumerate(cfg.channel_init):
                sign = -1.0 if inside_outside else 1.0
                nn.init.normal_(lin.weight[c], mean=sign * math.sqrt(math.pi) / math.sqrt(d_in), std=1e-4)
                lin.bias[c] = -sign * radius
            return
        nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0) / math.sqrt(d_out))
        nn.init.constant_(lin.bias, 0.0)
        if index == 0:
            lin.weight[:, 3:] = 0.0  # only raw xyz contributes at init
        elif index in self.skips:
            lin.weight[:, d_in - self.in_dim + 3 :] = 0.0  # encoded columns of the re-fed input

    @torch.no_grad()
    def _fit_output_row(self, num_points: int = 4096, ridge: float = 1e-6) -> None:
        """Ridge-regress the SDF row of the last layer onto the target sphere SDF.

        Our addition to SAL's init: with finite width the random hidden layers make the SAL output
        only roughly ``|x| - r`` (softplus(beta=100) adds ~log(2)/100 per unit and per layer, which
        shifts the zero level set, and the per-direction slope fluctuates by ~10-20 % at width 256).
        Solving ``min_w |H w - y|^2 + ridge * N * |w - w_sal|^2`` over points drawn uniformly in a
        ball (H: last hidden activations with a bias column, y: the signed sphere SDF) keeps the
        weights close to SAL's while making the initial SDF accurate to ~0.03 for 0.2 <= |x| <= 1
        (at width 256; the cone of |x| at the origin cannot be fitted exactly: ~0.07 there).
        """
        cfg = self.config
        gen = torch.Generator().manual_seed(0)
        dirs = torch.randn(num_points, 3, generator=gen)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        radii = cfg.init_fit_radius * torch.rand(num_points, 1, generator=gen) ** (1.0 / 3.0)
        pts = (dirs * radii).to(self.layers[0].weight)
        hidden = self._hidden(self.encode(pts))
        a = torch.cat([hidden, torch.ones_like(hidden[:, :1])], -1).double()
        last = self.layers[-1]
        lam = ridge * num_points
        lhs = a.t() @ a + lam * torch.eye(a.shape[1], dtype=a.dtype)
        inits = cfg.channel_init or ((cfg.bias, cfg.inside_outside),) * cfg.num_sdf
        for c, (radius, inside_outside) in enumerate(inits):
            sign = -1.0 if inside_outside else 1.0
            y = (sign * (pts.norm(dim=-1) - radius)).double()
            w0 = torch.cat([last.weight[c], last.bias[c : c + 1]]).double()
            w = torch.linalg.solve(lhs, a.t() @ y + lam * w0)
            last.weight[c] = w[:-1].to(last.weight)
            last.bias[c] = w[-1].to(last.bias)

    def _hidden(self, x: Tensor) -> Tensor:
        """Encoded input [N, in_dim] -> activations fed to the last layer [N, hidden_dim]."""
        h = x
        inv_sqrt2 = 1.0 / math.sqrt(2.0)
        for i, layer in enumerate(self.layers[:-1]):
            if i in self.skips:
                h = torch.cat([h, x], -1) * inv_sqrt2
            h = self.activation(layer(h))
        return h

    # ------------------------------------------------------------------ forward
    def encode(self, points: Tensor) -> Tensor:
        """points [N, 3] -> network input [N, in_dim] (raw xyz first)."""
        if self.hash_grid is not None:
            lo, hi = self.aabb[0].to(points), self.aabb[1].to(points)
            unit = (points - lo) / (hi - lo)
            return torch.cat([points, self.hash_grid(unit).to(points.dtype)], -1)
        return sinusoid_encoding(points, self.config.frequencies)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points [N, 3] -> (sdf [N] (or [N, num_sdf] with several channels), feature [N, feature_dim])."""
        x = self.encode(points)
        h = self.layers[-1](self._hidden(x))
        n = self.config.num_sdf
        return (h[..., 0] if n == 1 else h[..., :n]), h[..., n:]

    def sdf(self, points: Tensor) -> Tensor:
        """points [N, 3] -> sdf [N] (e.g. for marching cubes or finite-difference losses)."""
        return self.forward(points)[0]

    def gradient(self, points: Tensor, create_graph: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """points [N, 3] -> (sdf [N], feature [N, F], grad [N, 3]) with grad = d sdf / d points.

        ``create_graph`` defaults to ``self.training``: the eikonal loss needs the gradient to be
        differentiable w.r.t. the parameters. Works under ``torch.no_grad()`` too (gradients are
        enabled locally); if ``points`` does not require grad a leaf copy is used, so the returned
        sdf/feature then carry no graph back to the caller's points.
        """
        if create_graph is None:
            create_graph = self.training
        with torch.enable_grad():
            x = points if points.requires_grad else points.detach().requires_grad_(True)
            sdf, feature = self.forward(x)
            (grad,) = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=create_graph, retain_graph=True)
        return sdf, feature, grad


class ColorNetwork(nn.Module):
    """IDR-style radiance network (Yariv et al. 2020, "idr" mode; also NeuS/MonoSDF).

    ``forward(points [N, 3], normals [N, 3], view_dirs [N, 3], feature [N, F]) -> rgb [N, 3]``: an
    MLP with ReLU on ``[points, normals, gamma(view_dirs), feature]`` and a sigmoid output.
    ``normals`` are passed as given (IDR/NeuS feed the raw SDF gradient). ``dir_frequencies`` bands
    of the no-pi sinusoid encoding are applied to the view directions (NeuS: 4; 0 = raw).
    ``appearance_dim`` > 0 adds a per-image appearance code [N, A] to the input (MonoSDF /
    ObjectSDF++'s ``e_img``, after NeRF-W's appearance embeddings, Martin-Brualla et al. 2021).
    """

    def __init__(self, feature_dim: int = 256, hidden_dim: int = 256, num_layers: int = 4, dir_frequencies: int = 4, weight_norm: bool = True,
                 appearance_dim: int = 0):
        super().__init__()
        self.dir_frequencies = dir_frequencies
        self.appearance_dim = appearance_dim
        in_dim = 3 + 3 + 3 * (1 + 2 * max(dir_frequencies, 0)) + feature_dim + appearance_dim
        layers = []
        for i in range(num_layers):
            lin = nn.Linear(in_dim if i == 0 else hidden_dim, 3 if i == num_layers - 1 else hidden_dim)
            layers.append(_weight_norm(lin) if weight_norm else lin)
        self.layers = nn.ModuleList(layers)

    def forward(self, points: Tensor, normals: Tensor, view_dirs: Tensor, feature: Tensor, appearance: Tensor | None = None) -> Tensor:
        parts = [points, normals, sinusoid_encoding(view_dirs, self.dir_frequencies), feature]
        if self.appearance_dim:
            parts.append(appearance.expand(points.shape[0], -1) if appearance is not None else points.new_zeros(points.shape[0], self.appearance_dim))
        h = torch.cat(parts, -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return torch.sigmoid(h)
