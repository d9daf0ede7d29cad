"""Ray-space sampling and batched volume rendering (pure PyTorch).

Shapes: R rays, S samples per ray. Samples are intervals ``[t_starts, t_ends]`` along unit-length
ray directions. These are the dense (batched) building blocks; packed layouts and accelerated
estimators build on them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def intersect_aabb(origins: Tensor, directions: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test of rays [R, 3] against a box aabb [2, 3].

    Returns ``t_near`` [R], ``t_far`` [R] (t_near clamped at 0) and ``hit`` [R] bool.
    """
    inv = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (aabb[0] - origins) * inv
    t1 = (aabb[1] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    hit = t_far > t_near
    return t_near, torch.where(hit, t_far, t_near), hit


def ray_bounds(origins: Tensor, directions: Tensor, aabb: Tensor, near: float | None, far: float | None) -> tuple[Tensor, Tensor]:
    """Bounds [R] of rays (origins, directions [R, 3]): the dataset's near/far when it gives both,
    else the ray's span inside the box aabb [2, 3]."""
    if near is not None and far is not None:
        return torch.full_like(origins[:, 0], near), torch.full_like(origins[:, 0], far)
    t_near, t_far, _ = intersect_aabb(origins, directions, aabb)
    return t_near, t_far


def stratified_samples(
    near: Tensor, far: Tensor, num_samples: int, perturb: bool, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Split [near, far] of each ray into S equal bins, one sample interval per bin.

    With ``perturb`` the bin edges are jittered (NeRF's stratified sampling): each interior edge
    moves uniformly within its neighbourhood, so intervals still tile [near, far].
    near, far: [R]. Returns t_starts, t_ends: [R, S].
    """
    u = torch.linspace(0.0, 1.0, num_samples + 1, device=near.device)
    edges = near[:, None] + (far - near)[:, None] * u
    if perturb and num_samples > 1:
        # Interior edges move within the half-bins around them; the end points stay at near/far.
        mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
        r = torch.rand(edges[:, 1:-1].shape, device=near.device, generator=generator)
        interior = mids[:, :-1] + (mids[:, 1:] - mids[:, :-1]) * r
        edges = torch.cat([edges[:, :1], interior, edges[:, -1:]], -1)
    return edges[:, :-1], edges[:, 1:]


def pdf_samples(
    bins: Tensor, weights: Tensor, num_samples: int, perturb: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Inverse-transform sample positions from the piecewise-constant PDF given by ``weights``.

    bins: [R, S + 1] bin edges; weights: [R, S] non-negative. Returns sorted t [R, num_samples].
    Hierarchical sampling of NeRF (Mildenhall et al. 2020, sec. 5.2).
    """
    weights = weights + 1e-5  # keep the PDF defined where all weights vanish
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1).clamp_max(1.0)
    if perturb:
        # Sorted quantiles give sorted samples (the CDF inverse is monotone).
        u = torch.rand(*cdf.shape[:-1], num_samples, device=bins.device, generator=generator).sort(-1).values
    else:
        u = torch.linspace(0.0, 1.0, num_samples, device=bins.device).expand(*cdf.shape[:-1], num_samples)
    u = u.contiguous()
    idx = torch.searchsorted(cdf.detach(), u, right=True)
    below = (idx - 1).clamp(0, cdf.shape[-1] - 1)
    above = idx.clamp(0, cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    bin_lo, bin_hi = bins.gather(-1, below), bins.gather(-1, above)
    denom = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_hi), cdf_hi - cdf_lo)
    t = bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)
    return t.detach()


def intervals_from_points(t: Tensor, near: Tensor, far: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted sample positions t [R, S] to intervals [R, S] whose edges are the midpoints."""
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    starts = torch.cat([near[:, None], mids], -1)
    ends = torch.cat([mids, far[:, None]], -1)
    return starts, ends


def render_weights(densities: Tensor, t_starts: Tensor, t_ends: Tensor) -> tuple[Tensor, Tensor]:
    """Volume-rendering weights from densities.

    densities: [R, S] non-negative; t_starts, t_ends: [R, S]. Returns ``weights`` [R, S] and
    ``transmittance`` [R, S] (light reaching the start of each interval):
    ``alpha_i = 1 - exp(-sigma_i * delta_i)``, ``T_i = exp(-sum_{j<i} sigma_j delta_j)``.
    """
    sigma_delta = densities * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigma_delta)
    acc = torch.cumsum(sigma_delta, -1)
    transmittance = torch.exp(-torch.cat([torch.zeros_like(acc[:, :1]), acc[:, :-1]], -1))
    return alphas * transmittance, transmittance


def accumulate(weights: Tensor, values: Tensor | None = None) -> Tensor:
    """Sum over samples: values [R, S, C] weighted by weights [R, S] -> [R, C]; opacity if values is None."""
    if values is None:
        return weights.sum(-1, keepdim=True)
    return (weights[..., None] * values).sum(-2)


def expected_depth(weights: Tensor, t_starts: Tensor, t_ends: Tensor) -> Tensor:
    """Expected ray distance [R, 1] given the ray terminates inside the volume."""
    mids = 0.5 * (t_starts + t_ends)
    acc = weights.sum(-1, keepdim=True)
    return (weights * mids).sum(-1, keepdim=True) / acc.clamp_min(1e-10)
