"""VolSDF's error-bounded sampler: the distance bound d*, the opacity error bound (it bounds the
actual error), and samples that find the surface."""

from __future__ import annotations

import math

import torch

from recon.render.sdf import volsdf_density
from recon.render.volsdf_sampler import ErrorBoundConfig, error_bounded_samples, min_abs_sdf, opacity_error_bound


def test_min_abs_sdf_closed_forms():
    d = torch.tensor([[1.0, 1.0], [1.0, 3.0], [0.5, -0.2], [0.3, 0.4]], dtype=torch.float64)
    delta = torch.tensor([[1.0], [2.5], [1.0], [1.0]], dtype=torch.float64)
    out = min_abs_sdf(d.reshape(-1, 2), delta)[:, 0]
    assert math.isclose(out[0], math.sqrt(3) / 2, rel_tol=1e-12)  # equilateral triangle: its height
    assert math.isclose(out[1], 1.0)  # obtuse at the nearer end: that end is the closest point
    assert out[2] == 0.0  # the SDF changes sign
    assert out[3] == 0.0  # both ends closer to the surface than the interval is long


def _sphere_rays(n: int):
    gen = torch.Generator().manual_seed(0)
    origins = torch.tensor([[0.0, 0.0, -3.0]], dtype=torch.float64).repeat(n, 1)
    target = torch.cat([(torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5) * 0.6, torch.zeros(n, 1, dtype=torch.float64)], -1)
    dirs = torch.nn.functional.normalize(target - origins, dim=-1)
    return origins, dirs, torch.full((n,), 1.0, dtype=torch.float64), torch.full((n,), 5.0, dtype=torch.float64)


def _sdf(p):
    return p.norm(dim=-1) - 0.5


def _opacity(t, origins, dirs, beta):
    """Opacity at each sample by the left rectangle rule (what the bound is about)."""
    d = _sdf(origins[:, None] + dirs[:, None] * t[..., None])
    free = torch.cumsum(volsdf_density(d[:, :-1], beta) * (t[:, 1:] - t[:, :-1]), -1)
    return 1.0 - torch.exp(-torch.cat([torch.zeros_like(free[:, :1]), free], -1))


def test_error_bound_bounds_the_actual_opacity_error():
    origins, dirs, near, far = _sphere_rays(64)
    for beta in (0.2, 0.05, 0.01):
        t = near[:, None] + (far - near)[:, None] * torch.linspace(0, 1, 64, dtype=torch.float64)
        d = _sdf(origins[:, None] + dirs[:, None] * t[..., None])
        bound, _ = opacity_error_bound(d, t, torch.full((64,), beta, dtype=torch.float64))
        fine = torch.linspace(0, 1, 63 * 640 + 1, dtype=torch.float64)
        tf = near[:, None] + (far - near)[:, None] * fine
        exact = _opacity(tf, origins, dirs, beta)[:, ::640]  # the coarse samples are every 640th fine one
        error = (_opacity(t, origins, dirs, beta) - exact).abs().max(-1).values
        assert (error <= bound + 1e-4).all(), (beta, (error - bound).max())
        assert bound.max() > 0.1 or beta == 0.2  # sharp densities are not met by 64 uniform samples


def test_samples_find_the_surface():
    origins, dirs, near, far = _sphere_rays(32)
    beta = 0.005
    cfg = ErrorBoundConfig(num_init=64, num_add=64, max_iters=5, num_final=48, num_extra=16)
    t = error_bounded_samples(_sdf, origins, dirs, near, far, beta, cfg)
    assert t.shape == (32, 48 + 16 + 2) and (t[:, 1:] >= t[:, :-1]).all()
    # the first hit of each ray, analytically
    b = (origins * dirs).sum(-1)
    hit = -b - (b * b - (origins.pow(2).sum(-1) - 0.25)).sqrt()
    closest = (t - hit[:, None]).abs().min(-1).values
    assert closest.max() < 0.01, closest.max()
    # the depth rendered from these samples is the hit within a few beta
    d = _sdf(origins[:, None] + dirs[:, None] * t[..., None])
    alpha = 1.0 - torch.exp(-volsdf_density(d[:, :-1], beta) * (t[:, 1:] - t[:, :-1]))
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], -1), -1)
    w = alpha * trans
    depth = (w * 0.5 * (t[:, 1:] + t[:, :-1])).sum(-1) / w.sum(-1)
    assert (depth - hit).abs().max() < 5 * beta, (depth - hit).abs().max()
    # uniform samples of the same count miss it
    tu = near[:, None] + (far - near)[:, None] * torch.linspace(0, 1, 66, dtype=torch.float64)
    assert (tu - hit[:, None]).abs().min(-1).values.max() > 0.02


def test_without_perturb_the_samples_are_deterministic():
    origins, dirs, near, far = _sphere_rays(8)
    cfg = ErrorBoundConfig(num_init=32, num_add=16, max_iters=3, num_final=16, num_extra=8)
    a = error_bounded_samples(_sdf, origins, dirs, near, far, 0.01, cfg)
    torch.manual_seed(123)
    assert torch.equal(a, error_bounded_samples(_sdf, origins, dirs, near, far, 0.01, cfg))
    b = error_bounded_samples(_sdf, origins, dirs, near, far, 0.01, cfg, perturb=True)
    assert b.shape == a.shape and not torch.equal(a, b)
