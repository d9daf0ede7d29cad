"""mip-NeRF's sample geometry: conical frustums as Gaussians, their integrated positional encoding,
the resampling of the second level, and coarse-to-fine frequency annealing.

Barron, Mildenhall, Tancik, Hedman, Martin-Brualla, Srinivasan, "Mip-NeRF: A Multiscale
Representation for Anti-Aliasing Neural Radiance Fields", ICCV 2021: sec. 3.1 (frustum moments,
eq. 7-8 in the stable form of their appendix), eq. 14 (integrated positional encoding), sec. 3.2
(one network queried twice, resampling from blurred weights). The annealing window is Nerfies'
(Park et al., "Nerfies: Deformable Neural Radiance Fields", ICCV 2021, eq. 7-8), which GeCoNeRF
applies to the encoding bands.

Shapes: R rays, S samples (intervals) per ray, L frequency bands.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recon.render.rays import pdf_samples


def conical_frustum_gaussians(
    origins: Tensor, directions: Tensor, radii: Tensor, t_starts: Tensor, t_ends: Tensor, cylinder: bool = False
) -> tuple[Tensor, Tensor]:
    """Mean and diagonal covariance of each interval's frustum of the cone (or cylinder) of a ray.

    origins, directions: [R, 3] (unit directions); radii: [R] cone radius at unit distance (for a
    cylinder: its radius); t_starts, t_ends: [R, S]. Returns means [R, S, 3] and the diagonal of
    the covariances [R, S, 3] in world axes. The cone's moments are those of a uniform density
    over the frustum (exact first and second moments along and across the ray); the cylinder's
    are a uniform segment times a disc.
    """
    mid = 0.5 * (t_starts + t_ends)
    half = 0.5 * (t_ends - t_starts)
    r2 = (radii**2)[:, None]
    if cylinder:
        t_mean = mid
        t_var = (2 * half) ** 2 / 12.0
        r_var = r2 / 4.0
    else:
        m2, h2 = mid**2, half**2
        denom = 3 * m2 + h2
        t_mean = mid + 2 * mid * h2 / denom
        t_var = h2 / 3 - (4.0 / 15.0) * (h2**2 * (12 * m2 - h2)) / denom**2
        r_var = r2 * (m2 / 4 + (5.0 / 12.0) * h2 - (4.0 / 15.0) * h2**2 / denom)
    d = directions[:, None]
    means = origins[:, None] + t_mean[..., None] * d
    d2 = d**2
    # Along the (unit) ray: t_var d d^T; across it: r_var (I - d d^T); keep the diagonal.
    covs = t_var[..., None] * d2 + r_var[..., None] * (1.0 - d2)
    return means, covs


def integrated_pos_enc(means: Tensor, covs: Tensor, min_deg: int, max_deg: int, band_weights: Tensor | None = None) -> Tensor:
    """mip-NeRF's integrated positional encoding (eq. 14): the expected ``sin`` / ``cos`` of
    ``2^l x`` under the Gaussian (means, diagonal covs [..., 3]) for l in [min_deg, max_deg).

    ``E[sin(a x)] = sin(a mu) exp(-a^2 var / 2)`` per coordinate. ``band_weights`` [L] (optional)
    scales band l's sin and cos (coarse-to-fine annealing). Returns [..., 6 L]: all sines, then
    all cosines, each ordered band-major (band l covers 3 consecutive entries).
    """
    scales = 2.0 ** torch.arange(min_deg, max_deg, device=means.device, dtype=means.dtype)
    y = (means[..., None, :] * scales[:, None]).flatten(-2)
    y_var = (covs[..., None, :] * (scales**2)[:, None]).flatten(-2)
    damp = torch.exp(-0.5 * y_var)
    sin, cos = torch.sin(y) * damp, torch.cos(y) * damp
    if band_weights is not None:
        w = band_weights.to(means).repeat_interleave(3)
        sin, cos = sin * w, cos * w
    return torch.cat([sin, cos], -1)


def annealing_window(alpha: float | Tensor, num_bands: int) -> Tensor:
    """Nerfies' coarse-to-fine window: band k's weight ``(1 - cos(pi clip(alpha - k, 0, 1))) / 2``, [L].

    alpha = 0 hides every band, alpha = k + 1 shows bands 0..k fully, alpha >= L shows all.
    """
    k = torch.arange(num_bands, dtype=torch.float32)
    x = (torch.as_tensor(alpha, dtype=torch.float32) - k).clamp(0.0, 1.0)
    return 0.5 * (1.0 - torch.cos(math.pi * x))


def annealing_alpha(step: int, num_bands: int, window_steps: int, start: float = 1.0) -> float:
    """The window's position at ``step``: ``start + (L - start) step / window_steps``, at most L
    (GeCoNeRF: 1 + 15 t / N_w over 16 bands, so band 0 is visible from the start)."""
    if window_steps <= 0:
        return float(num_bands)
    return min(start + (num_bands - start) * step / window_steps, float(num_bands))


def blurred_weights(weights: Tensor, padding: float) -> Tensor:
    """mip-NeRF's resampling PDF: a 2-tap max filter then a 2-tap average of weights [R, S]
    (a "blurpool" that widens every peak by one interval), plus ``padding``. Returns [R, S]."""
    padded = torch.cat([weights[:, :1], weights, weights[:, -1:]], -1)
    maxed = torch.maximum(padded[:, :-1], padded[:, 1:])
    return 0.5 * (maxed[:, :-1] + maxed[:, 1:]) + padding


def resample_intervals(
    t_starts: Tensor, t_ends: Tensor, weights: Tensor, num_samples: int, perturb: bool, padding: float = 0.01
) -> tuple[Tensor, Tensor]:
    """New intervals [R, num_samples] for the next level, drawn from the blurred weights of the
    intervals [R, S] (no gradient: mip-NeRF stops it across levels)."""
    bins = torch.cat([t_starts, t_ends[:, -1:]], -1).detach()
    edges = pdf_samples(bins, blurred_weights(weights.detach(), padding), num_samples + 1, perturb)
    return edges[:, :-1], edges[:, 1:]
