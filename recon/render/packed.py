"""Packed (ragged) volume rendering in pure PyTorch.

Layout (the one nerfacc uses): the samples of all R rays are flattened into one axis of length N.
``ray_indices`` [N] (int64, non-decreasing) names the ray of each sample, and the samples of one
ray are contiguous and ordered front to back. ``packed_info`` [R, 2] holds ``(start, count)`` of
every ray's run of samples. Rays with zero samples are allowed everywhere.

Per-ray (segmented) prefix sums are computed as one global ``cumsum`` minus the value of the
global exclusive sum at each ray's first sample. The global sum grows with N, so it is carried
out in float64 (a float32 prefix sum over ~1e5 samples loses several digits of the per-ray
difference) and cast back. This matches the dense helpers of :mod:`recon.render.rays` exactly when
masked samples are dropped (tests/recon/test_packed.py).

The rendering equations are those of NeRF (Mildenhall et al. 2020, eq. 3):
``alpha_i = 1 - exp(-sigma_i delta_i)``, ``T_i = prod_{j<i} (1 - alpha_j)``, ``w_i = T_i alpha_i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.render.backend import nerfacc_for

__all__ = [
    "accumulate_packed",
    "exclusive_sum_packed",
    "expected_depth_packed",
    "median_depth_packed",
    "pack",
    "packed_info_from_ray_indices",
    "render_weights_from_alpha_packed",
    "render_weights_packed",
]


def _acc_dtype(x: Tensor) -> torch.dtype:
    # float64 for the global prefix sums; MPS has no float64, fall back to the input dtype there.
    return x.dtype if x.device.type == "mps" else torch.float64


def packed_info_from_ray_indices(ray_indices: Tensor, num_rays: int) -> Tensor:
    """ray_indices [N] (sorted) -> packed_info [R, 2] int64 of (start, count) per ray."""
    counts = torch.bincount(ray_indices.long(), minlength=num_rays)[:num_rays]
    starts = torch.cumsum(counts, 0) - counts
    return torch.stack([starts, counts], -1)


def pack(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Dense boolean mask [R, S] -> (ray_indices [N], packed_info [R, 2]).

    The kept samples are ordered row-major, i.e. by ray and then by sample index, so dense tensors
    are packed with ``x[mask]`` in the same order.
    """
    ray_indices = torch.nonzero(mask, as_tuple=False)[:, 0]
    return ray_indices, packed_info_from_ray_indices(ray_indices, mask.shape[0])


def exclusive_sum_packed(values: Tensor, ray_indices: Tensor, num_rays: int) -> Tensor:
    """Per-ray exclusive prefix sum of values [N] -> [N] (0 at each ray's first sample).

    Differentiable; computed in float64 and returned in the dtype of ``values``. On CUDA, nerfacc's
    segmented scan runs instead when nerfacc imports (recon.render.backend), in the input dtype.
    """
    if values.numel() == 0:
        return values.clone()
    nerfacc = nerfacc_for(values)
    if nerfacc is not None:
        info = packed_info_from_ray_indices(ray_indices, num_rays)
        return nerfacc.exclusive_sum(values, packed_info=info)
    v = values.to(_acc_dtype(values))
    excl = torch.cumsum(v, 0) - v  # global exclusive sum
    starts = packed_info_from_ray_indices(ray_indices, num_rays)[:, 0]
    # Sum over all previous rays = global exclusive sum at this ray's first sample. Gather through
    # ray_indices, so rays without samples (whose start points past them) are never read.
    offsets = excl[starts.clamp_max(values.shape[0] - 1)][ray_indices]
    return (excl - offsets).to(values.dtype)


def render_weights_packed(
    densities: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, num_rays: int
) -> tuple[Tensor, Tensor]:
    """Packed twin of :func:`recon.render.rays.render_weights`.

    densities, t_starts, t_ends, ray_indices: [N]. Returns ``weights`` [N] and ``transmittance`` [N]
    (light reaching the start of each interval): ``T_i = exp(-sum_{j<i, same ray} sigma_j delta_j)``.
    The scan dispatches like :func:`exclusive_sum_packed`.
    """
    sigma_delta = densities * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigma_delta)
    transmittance = torch.exp(-exclusive_sum_packed(sigma_delta, ray_indices, num_rays))
    return alphas * transmittance, transmittance


def render_weights_from_alpha_packed(alphas: Tensor, ray_indices: Tensor, num_rays: int) -> tuple[Tensor, Tensor]:
    """Weights from per-sample opacities alphas [N] -> (weights [N], transmittance [N]).

    Log space: ``T_i = exp(sum_{j<i} log(1 - alpha_j))``. alpha is clamped to ``1 - 1e-7`` so that a
    fully opaque sample gives a finite log (transmittance ~1e-7 behind it instead of -inf / NaN
    gradients).
    """
    log1m = torch.log1p(-alphas.to(_acc_dtype(alphas)).clamp(0.0, 1.0 - 1e-7))
    transmittance = torch.exp(exclusive_sum_packed(log1m, ray_indices, num_rays)).to(alphas.dtype)
    return alphas * transmittance, transmittance


def accumulate_packed(weights: Tensor, values: Tensor | None, ray_indices: Tensor, num_rays: int) -> Tensor:
    """Per-ray weighted sum: weights [N], values [N, C] (or None -> opacity) -> [R, C] ([R, 1])."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(num_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    # Out-of-place index_add keeps autograd happy (gradient is a gather by ray_indices).
    return out.index_add(0, ray_indices.long(), src)


def expected_depth_packed(
    weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, num_rays: int
) -> Tensor:
    """Expected termination distance [R, 1], normalised by the ray's opacity (0 for empty rays).

    Same convention as :func:`recon.render.rays.expected_depth` (interval midpoints).
    """
    mids = 0.5 * (t_starts + t_ends)
    depth = accumulate_packed(weights, mids[:, None], ray_indices, num_rays)
    acc = accumulate_packed(weights, None, ray_indices, num_rays)
    return depth / acc.clamp_min(1e-10)


def median_depth_packed(
    weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, num_rays: int
) -> Tensor:
    """Median termination distance [R, 1]: midpoint of the first sample whose inclusive cumulative
    weight reaches 0.5.

    Rays whose total weight stays below 0.5 use their last sample (as nerfstudio's median depth does
    in effect for the background); rays without samples get 0. Not differentiable w.r.t. weights
    (the choice of sample is discrete), only w.r.t. t.
    """
    n = weights.shape[0]
    out = torch.zeros(num_rays, 1, dtype=t_starts.dtype, device=t_starts.device)
    if n == 0:
        return out
    info = packed_info_from_ray_indices(ray_indices, num_rays)
    cum = exclusive_sum_packed(weights.detach(), ray_indices, num_rays) + weights.detach()
    idx = torch.arange(n, device=weights.device)
    big = torch.full((num_rays,), n, dtype=torch.long, device=weights.device)
    first = big.scatter_reduce(0, ray_indices.long(), torch.where(cum >= 0.5, idx, n), "amin")
    last = info[:, 0] + info[:, 1] - 1
    chosen = torch.where(first < n, first, last)
    has = info[:, 1] > 0
    mids = 0.5 * (t_starts + t_ends)
    out[has, 0] = mids[chosen[has]]
    return out
