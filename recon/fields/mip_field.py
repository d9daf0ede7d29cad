"""mip-NeRF's field and its two-level renderer (Barron et al., "Mip-NeRF: A Multiscale
Representation for Anti-Aliasing Neural Radiance Fields", ICCV 2021).

:class:`MipNeRFField`: integrated positional encoding of a frustum Gaussian (bands
``min_deg..max_deg``, optionally annealed coarse-to-fine), an 8 x 256 ReLU trunk with the encoding
concatenated again after layer 4, a density head, a 256-wide bottleneck that meets the encoded
view direction (degree 4 plus the direction itself) in one 128-wide layer, and the paper's
activations: density ``softplus(raw - 1)``, colour ``sigmoid * (1 + 2 p) - p`` with p = 0.001.

:func:`render_mip_levels`: one network evaluated at two levels, the first on stratified
intervals, the second on intervals resampled from the first level's blurred weights.

Shapes: R rays, S samples per ray.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.cameras import RayBundle
from recon.fields.encodings import FrequencyEncoding
from recon.fields.mlp import MLP
from recon.render.mip import annealing_window, conical_frustum_gaussians, integrated_pos_enc, resample_intervals
from recon.render.rays import accumulate, expected_depth, render_weights, stratified_samples


class MipNeRFField(nn.Module):
    """positions as Gaussians (means, diagonal covs [R, S, 3]) and unit directions [R, 3] ->
    density [R, S] and rgb [R, S, 3].

    The buffer ``anneal_alpha`` (saved in checkpoints) is the coarse-to-fine window's position:
    band k of the encoding is weighted by :func:`recon.render.mip.annealing_window`; its default
    (the number of bands) shows every band.
    """

    def __init__(
        self,
        min_deg: int = 0,
        max_deg: int = 16,
        direction_deg: int = 4,
        hidden_dim: int = 256,
        num_layers: int = 8,
        skips: tuple[int, ...] = (5,),
        color_hidden_dim: int = 128,
        density_bias: float = -1.0,
        rgb_padding: float = 0.001,
    ):
        super().__init__()
        self.min_deg, self.max_deg = min_deg, max_deg
        self.density_bias, self.rgb_padding = density_bias, rgb_padding
        enc_dim = 6 * (max_deg - min_deg)
        self.dir_enc = FrequencyEncoding(3, direction_deg)
        self.trunk = MLP(enc_dim, hidden_dim, num_layers, hidden_dim, skips=skips)
        self.density_head = nn.Linear(hidden_dim, 1)
        self.bottleneck = nn.Linear(hidden_dim, hidden_dim)
        self.color = MLP(hidden_dim + self.dir_enc.out_dim, color_hidden_dim, 2, 3)
        self.register_buffer("anneal_alpha", torch.tensor(float(max_deg - min_deg)))

    @property
    def num_bands(self) -> int:
        return self.max_deg - self.min_deg

    def forward(self, means: Tensor, covs: Tensor, directions: Tensor, density_noise: float = 0.0) -> tuple[Tensor, Tensor]:
        weights = annealing_window(self.anneal_alpha, self.num_bands).to(means)
        h = torch.relu(self.trunk(integrated_pos_enc(means, covs, self.min_deg, self.max_deg, weights)))
        raw = self.density_head(h)[..., 0]
        if density_noise > 0:
            raw = raw + torch.randn_like(raw) * density_noise
        density = F.softplus(raw + self.density_bias)
        d = self.dir_enc(directions)[:, None].expand(*means.shape[:-1], -1)
        rgb = torch.sigmoid(self.color(torch.cat([self.bottleneck(h), d], -1)))
        return density, rgb * (1 + 2 * self.rgb_padding) - self.rgb_padding


def render_mip_levels(
    field: MipNeRFField,
    rays: RayBundle,
    near: Tensor,
    far: Tensor,
    num_samples: int,
    num_levels: int,
    background: Tensor,
    perturb: bool,
    cylinder: bool = False,
    density_noise: float = 0.0,
    resample_padding: float = 0.01,
) -> list[dict[str, Tensor]]:
    """mip-NeRF's rendering of rays [R] with bounds near, far [R]: ``num_levels`` passes of the
    same field, each on ``num_samples`` intervals (the first stratified, the next resampled from
    the previous weights without gradient). Returns one dict per level: rgb [R, 3], accumulation
    [R, 1], distance [R, 1] (expected distance along the ray, clipped to the sampled range),
    weights, t_starts, t_ends [R, S]."""
    t0, t1 = stratified_samples(near, far, num_samples, perturb)
    levels = []
    for level in range(num_levels):
        if level > 0:
            t0, t1 = resample_intervals(t0, t1, levels[-1]["weights"], num_samples, perturb, resample_padding)
        means, covs = conical_frustum_gaussians(rays.origins, rays.directions, rays.pixel_radius, t0, t1, cylinder)
        density, rgb = field(means, covs, rays.directions, density_noise)
        weights, _ = render_weights(density, t0, t1)
        acc = accumulate(weights)
        distance = expected_depth(weights, t0, t1)
        distance = torch.maximum(torch.minimum(distance, t1[:, -1:]), t0[:, :1])
        levels.append({
            "rgb": accumulate(weights, rgb) + (1.0 - acc) * background,
            "accumulation": acc, "distance": distance, "weights": weights, "t_starts": t0, "t_ends": t1,
        })
    return levels
