"""mip-NeRF pieces: frustum moments and the integrated positional encoding against Monte-Carlo
estimates over the frustum, the resampling blur, the annealing window at its published points."""

from __future__ import annotations

import math

import pytest
import torch

from recon.cameras import Cameras, RayBundle, look_at
from recon.fields.mip_field import MipNeRFField, render_mip_levels
from recon.render.mip import annealing_alpha, annealing_window, blurred_weights, conical_frustum_gaussians, integrated_pos_enc

N_MC = 400_000


def _ray() -> tuple[torch.Tensor, torch.Tensor]:
    origin = torch.tensor([[0.2, -0.1, 0.3]], dtype=torch.float64)
    d = torch.tensor([[0.3, 0.5, 0.8]], dtype=torch.float64)
    return origin, d / d.norm()


def _frame(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors orthogonal to d [3] and to each other."""
    a = torch.linalg.cross(d, torch.tensor([1.0, 0.0, 0.0], dtype=d.dtype))
    a = a / a.norm()
    return a, torch.linalg.cross(d, a)


def _frustum_samples(t0: float, t1: float, radius: float, cylinder: bool, seed: int = 0) -> torch.Tensor:
    """Uniform samples [N_MC, 3] inside the frustum of the test ray between distances t0 and t1."""
    g = torch.Generator().manual_seed(seed)
    o, d = _ray()
    u = torch.rand(N_MC, generator=g, dtype=torch.float64)
    # Cone: the cross-section grows as t^2, so t has density ~ t^2 (inverse CDF of t^3).
    t = t0 + (t1 - t0) * u if cylinder else (t0**3 + (t1**3 - t0**3) * u) ** (1 / 3)
    r = radius * (1.0 if cylinder else t) * torch.sqrt(torch.rand(N_MC, generator=g, dtype=torch.float64))
    phi = 2 * math.pi * torch.rand(N_MC, generator=g, dtype=torch.float64)
    a, b = _frame(d[0])
    return o + t[:, None] * d + (r * torch.cos(phi))[:, None] * a + (r * torch.sin(phi))[:, None] * b


@pytest.mark.parametrize("cylinder", [False, True])
def test_frustum_gaussian_has_the_frustums_moments(cylinder):
    o, d = _ray()
    t0, t1, radius = 1.0, 1.6, 0.08
    means, covs = conical_frustum_gaussians(o, d, torch.tensor([radius], dtype=torch.float64), torch.tensor([[t0]], dtype=torch.float64), torch.tensor([[t1]], dtype=torch.float64), cylinder)
    x = _frustum_samples(t0, t1, radius, cylinder)
    mc_mean = x.mean(0)
    mc_var = x.var(0)
    # Monte-Carlo standard errors: about 1e-3 of the spread for the mean, 3e-3 relative for the variance.
    assert torch.allclose(means[0, 0], mc_mean, atol=3 * x.std(0).max() / math.sqrt(N_MC) * 3)
    assert torch.allclose(covs[0, 0], mc_var, rtol=1e-2)
    # The cone's extra mass at the far end pulls the mean beyond the middle; the cylinder's does not.
    t_mean = float((means[0, 0] - o[0]) @ d[0])
    assert (t_mean > 1.3 + 1e-3) if not cylinder else t_mean == pytest.approx(1.3)


def test_integrated_encoding_is_the_expected_encoding_over_the_frustum():
    o, d = _ray()
    t0, t1, radius = 1.0, 1.4, 0.05
    means, covs = conical_frustum_gaussians(o, d, torch.tensor([radius], dtype=torch.float64), torch.tensor([[t0]], dtype=torch.float64), torch.tensor([[t1]], dtype=torch.float64))
    ipe = integrated_pos_enc(means, covs, 0, 6)[0, 0]
    # Exact for Gaussian samples with the same moments (per coordinate, as the diagonal IPE assumes).
    g = torch.Generator().manual_seed(1)
    z = means[0, 0] + torch.randn(N_MC, 3, generator=g, dtype=torch.float64) * covs[0, 0].sqrt()
    # Over the frustum itself: the Gaussian is an approximation, close while the bands are wider than the frustum.
    x = _frustum_samples(t0, t1, radius, False, seed=2)
    for samples, tol, bands in ((z, 5e-3, 6), (x, 2e-2, 4)):
        scaled = (samples[:, None, :] * (2.0 ** torch.arange(6, dtype=torch.float64))[:, None]).flatten(1)
        mc = torch.cat([torch.sin(scaled).mean(0), torch.cos(scaled).mean(0)])
        keep = torch.cat([torch.arange(3 * bands), 18 + torch.arange(3 * bands)])
        assert torch.allclose(ipe[keep], mc[keep], atol=tol), (ipe[keep] - mc[keep]).abs().max()
    # A band far finer than the frustum averages out; a plain positional encoding would not.
    fine = integrated_pos_enc(means, covs, 10, 11)[0, 0]
    assert fine.abs().max() < 1e-3


def test_annealing_window_at_gecoNeRFs_published_points():
    # alpha(t) = 1 + 15 t / N_w over 16 bands, N_w = 15000 in the released scripts.
    assert annealing_alpha(0, 16, 15000) == 1.0
    assert annealing_alpha(7500, 16, 15000) == 8.5
    assert annealing_alpha(15000, 16, 15000) == annealing_alpha(85000, 16, 15000) == 16.0
    w0 = annealing_window(1.0, 16)
    assert w0[0] == 1.0 and (w0[1:] == 0).all()
    mid = annealing_window(8.5, 16)
    assert (mid[:8] == 1).all() and mid[8] == pytest.approx(0.5) and (mid[9:] == 0).all()
    assert (annealing_window(16.0, 16) == 1).all()
    assert annealing_window(3.25, 16)[3] == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.25)))
    # Weighted bands vanish from the encoding.
    means, covs = torch.rand(4, 3), torch.full((4, 3), 1e-4)
    enc = integrated_pos_enc(means, covs, 0, 16, annealing_window(1.0, 16)).reshape(4, 2, 16, 3)
    assert (enc[:, :, 1:] == 0).all() and (enc[:, :, 0].abs() > 0).any()


def test_resampling_blur_widens_a_peak_by_one_interval():
    w = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    assert torch.allclose(blurred_weights(w, 0.01), torch.tensor([[0.01, 0.51, 1.01, 0.51, 0.01]]))


def test_two_levels_concentrate_samples_on_the_surface():
    """A field that is opaque beyond distance 2.5 from the camera: level 2 samples cluster there
    and both levels render the wall's colour."""
    torch.manual_seed(0)
    field = MipNeRFField(hidden_dim=16, num_layers=2, skips=(), color_hidden_dim=8, max_deg=4)

    class Wall(torch.nn.Module):
        min_deg, max_deg = 0, 4

        def forward(self, means, covs, directions, density_noise=0.0):
            density = torch.where(means.norm(dim=-1) > 2.5, 100.0, 0.0)
            return density, torch.full((*means.shape[:-1], 3), 0.3)

    cam = Cameras(look_at(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])), fx=8.0, fy=8.0, cx=4.0, cy=4.0, width=8, height=8)
    rays: RayBundle = cam.generate_rays(0)
    near, far = torch.full((64,), 0.5), torch.full((64,), 4.0)
    levels = render_mip_levels(Wall(), rays, near, far, 32, 2, torch.zeros(3), perturb=False)
    assert len(levels) == 2
    for lv in levels:
        assert torch.allclose(lv["rgb"], torch.full((64, 3), 0.3), atol=1e-3)
        assert torch.allclose(lv["distance"], torch.full((64, 1), 2.5), atol=0.15)
    near_wall = lambda lv: ((0.5 * (lv["t_starts"] + lv["t_ends"]) - 2.5).abs() < 0.3).float().mean()  # noqa: E731
    assert near_wall(levels[1]) > 3 * near_wall(levels[0])
    out = render_mip_levels(field, rays, near, far, 8, 2, torch.zeros(3), perturb=True)
    assert out[1]["rgb"].shape == (64, 3) and torch.isfinite(out[1]["rgb"]).all()
