"""SDF rendering building blocks: NeuS / VolSDF opacity, SDF field init, SDF losses."""

from __future__ import annotations

import pytest
import torch

from recon.fields.sdf_field import ColorNetwork, SDFField, SDFFieldConfig
from recon.losses import (
    curvature_loss,
    eikonal_loss,
    normal_cue_loss,
    psnr_from_mse,
    scale_shift_invariant_depth_loss,
)
from recon.render.rays import expected_depth, render_weights
from recon.render.sdf import (
    LearnedBeta,
    LearnedVariance,
    cosine_anneal,
    neus_alpha,
    neus_alpha_from_gradients,
    volsdf_density,
    weights_from_alpha,
)

RADIUS = 0.5


def sphere_sdf(p):
    return p.norm(dim=-1) - RADIUS


def parallel_rays(num_rays=81, num_samples=1024):
    """Rays along +z from z = -2 at lateral offsets r in [0, 0.8]; intervals tiling t in [0.5, 3.5]."""
    r = torch.linspace(0.0, 0.8, num_rays, dtype=torch.float64)
    origins = torch.stack([r, torch.zeros_like(r), torch.full_like(r, -2.0)], -1)
    direction = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    edges = torch.linspace(0.5, 3.5, num_samples + 1, dtype=torch.float64).expand(num_rays, -1)
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    return r, origins, direction, t_starts, t_ends


def points_at(origins, direction, t):
    return origins[:, None, :] + t[..., None] * direction


def check_disk(r, opacity, inner, outer):
    assert (opacity[r < inner] > 0.95).all(), opacity[r < inner].min()
    assert (opacity[r > outer] < 0.05).all(), opacity[r > outer].max()


def test_neus_sphere_renders_disk_and_depth():
    r, o, d, ts, te = parallel_rays()
    alpha = neus_alpha(sphere_sdf(points_at(o, d, ts)), sphere_sdf(points_at(o, d, te)), 200.0)
    weights, _trans = weights_from_alpha(alpha)
    opacity = weights.sum(-1)
    check_disk(r, opacity, 0.48, 0.52)
    depth = expected_depth(weights, ts, te)[:, 0]
    assert abs(depth[0].item() - (2.0 - RADIUS)) < 0.01

    # Midpoint variant with the exact directional derivative (fully annealed).
    mids = 0.5 * (ts + te)
    pm = points_at(o, d, mids)
    cos = (pm / pm.norm(dim=-1, keepdim=True)) @ d
    alpha_mid = neus_alpha_from_gradients(sphere_sdf(pm), cos, te - ts, 200.0, cos_anneal_ratio=1.0)
    w_mid, _ = weights_from_alpha(alpha_mid)
    check_disk(r, w_mid.sum(-1), 0.47, 0.53)
    assert abs(expected_depth(w_mid, ts, te)[0, 0].item() - 1.5) < 0.01


def test_volsdf_sphere_renders_disk_and_depth():
    r, o, d, ts, te = parallel_rays()
    sigma = volsdf_density(sphere_sdf(points_at(o, d, 0.5 * (ts + te))), 0.005)
    weights, _ = render_weights(sigma, ts, te)
    # The Laplace tail outside the surface gives grazing rays some opacity (at r = 0.52 about 0.2
    # for beta = 0.005), so the outer bound is a little wider than NeuS's.
    check_disk(r, weights.sum(-1), 0.48, 0.535)
    assert abs(expected_depth(weights, ts, te)[0, 0].item() - 1.5) < 0.01


def test_neus_alpha_range_and_weights_sum():
    g = torch.Generator().manual_seed(0)
    sdf = torch.randn(64, 33, generator=g).cumsum(-1) * 0.1
    for s in (1.0, 20.0, 1e3, 1e6):
        alpha = neus_alpha(sdf[:, :-1], sdf[:, 1:], s)
        assert alpha.min() >= 0 and alpha.max() <= 1
        weights, trans = weights_from_alpha(alpha)
        assert (weights >= 0).all() and (weights.sum(-1) <= 1 + 1e-5).all()
        assert (trans[:, 0] == 1).all() and (trans[:, 1:] <= trans[:, :-1] + 1e-6).all()
    # Leaving a surface (SDF increasing) gives zero opacity.
    assert neus_alpha(torch.tensor([[-0.1]]), torch.tensor([[0.1]]), 50.0).item() < 1e-3


def test_volsdf_density_continuity_and_formula():
    beta = 0.1
    tiny = torch.tensor([-1e-9, 0.0, 1e-9], dtype=torch.float64)
    sig = volsdf_density(tiny, beta)
    assert torch.allclose(sig, torch.full_like(sig, 0.5 / beta), atol=1e-6)
    x = torch.linspace(-2, 2, 401, dtype=torch.float64)  # the SDF
    s = -x
    direct = torch.where(s <= 0, 0.5 * torch.exp(s / beta), 1 - 0.5 * torch.exp(-s / beta)) / beta
    assert torch.allclose(volsdf_density(x, beta), direct, rtol=1e-12, atol=1e-14)
    assert torch.allclose(volsdf_density(x, beta, alpha=2.0), direct * beta * 2.0)
    assert torch.isfinite(volsdf_density(torch.tensor([-1e4, 1e4]), 1e-4)).all()


def test_gradchecks_float64():
    g = torch.Generator().manual_seed(1)
    sdf = (torch.rand(4, 6, generator=g, dtype=torch.float64) - 0.5).requires_grad_(True)
    beta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: volsdf_density(x, b), (sdf, beta))
    starts = torch.tensor([[0.30, 0.10, -0.02]], dtype=torch.float64, requires_grad=True)
    ends = torch.tensor([[0.20, -0.05, -0.10]], dtype=torch.float64, requires_grad=True)
    inv_s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(neus_alpha, (starts, ends, inv_s))
    cos = torch.tensor([[-0.7, -0.3, -0.9]], dtype=torch.float64, requires_grad=True)
    deltas = torch.full((1, 3), 0.05, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s_, c: neus_alpha_from_gradients(s_, c, deltas, 5.0, 0.5), (starts, cos))


def test_learned_params_and_anneal():
    assert LearnedVariance()().item() == pytest.approx(torch.exp(torch.tensor(3.0)).item(), rel=1e-6)
    lb = LearnedBeta()
    assert lb().item() == pytest.approx(0.1001)
    assert lb.density(torch.zeros(2)).shape == (2,)
    assert [cosine_anneal(s, 100) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    assert cosine_anneal(3, 0) == 1.0


def _ball(n, gen):
    p = torch.randn(n, 3, generator=gen)
    return p / p.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=gen) ** (1 / 3)


@pytest.mark.parametrize("encoding", ["frequency", "hash"])
def test_sdf_field_geometric_init(encoding):
    torch.manual_seed(0)
    cfg = SDFFieldConfig(encoding=encoding, hash_log2_size=12, hash_max_res=64, hash_num_levels=4)
    field = SDFField(cfg).eval()
    gen = torch.Generator().manual_seed(2)
    p = _ball(2000, gen)
    n = p.norm(dim=-1)
    with torch.no_grad():
        sdf, feat = field(p)
    assert sdf.shape == (2000,) and feat.shape == (2000, cfg.feature_dim)
    err = (sdf - (n - 0.5)).abs()
    assert err[n > 0.2].max() < 0.05 and err.mean() < 0.02
    q = torch.nn.functional.normalize(torch.randn(300, 3, generator=gen), dim=-1) * 0.5
    _, _, grad = field.gradient(q)
    assert ((grad.norm(dim=-1) - 1).abs() < 0.15).all()
    # The normal points outwards at init.
    assert (torch.nn.functional.cosine_similarity(grad, q, dim=-1) > 0.9).all()

    torch.manual_seed(0)
    flipped = SDFField(SDFFieldConfig(encoding=encoding, inside_outside=True, hash_log2_size=12, hash_max_res=64, hash_num_levels=4))
    with torch.no_grad():
        sdf_in = flipped(p)[0]
    assert ((sdf_in - (0.5 - n)).abs()[n > 0.2] < 0.05).all()


def test_sdf_field_training_gradient_and_color():
    cfg = SDFFieldConfig(num_layers=4, hidden_dim=64, skips=(2,), feature_dim=16, frequencies=4)
    field = SDFField(cfg).train()
    p = torch.rand(32, 3) - 0.5
    _sdf, feat, grad = field.gradient(p)
    eikonal_loss(grad).backward()  # needs create_graph=True in training mode
    # Every parameter but the output bias (which does not affect d sdf / dx) gets a gradient.
    missing = [name for name, prm in field.named_parameters() if prm.grad is None]
    assert missing == ["layers.3.bias"], missing
    color = ColorNetwork(feature_dim=16, hidden_dim=32, num_layers=3)
    rgb = color(p, grad.detach(), torch.nn.functional.normalize(torch.randn(32, 3), dim=-1), feat.detach())
    assert rgb.shape == (32, 3) and (rgb > 0).all() and (rgb < 1).all()
    # Without geometric init / weight norm the field still builds and runs.
    plain = SDFField(SDFFieldConfig(num_layers=3, hidden_dim=16, feature_dim=4, geometric_init=False, weight_norm=False))
    assert plain(p)[0].shape == (32,)


def test_losses():
    p = torch.randn(100, 3, dtype=torch.float64)
    assert eikonal_loss(p / p.norm(dim=-1, keepdim=True)).item() == pytest.approx(0.0, abs=1e-12)
    assert eikonal_loss(2 * p / p.norm(dim=-1, keepdim=True)).item() == pytest.approx(1.0)

    pred = torch.rand(64, dtype=torch.float64)
    mask = torch.rand(64) > 0.2
    assert scale_shift_invariant_depth_loss(pred, 2 * pred + 3, mask).item() == pytest.approx(0.0, abs=1e-12)
    noisy = 2 * pred + 3 + 0.1 * torch.randn(64, dtype=torch.float64)
    assert scale_shift_invariant_depth_loss(pred, noisy, mask).item() > 0
    assert scale_shift_invariant_depth_loss(pred, noisy, torch.zeros(64, dtype=torch.bool)).item() == 0.0
    # per image: two images' depths with different scales and shifts are each exact, jointly not
    groups = torch.arange(64) % 2 + 5
    mixed = torch.where(groups == 5, 2 * pred + 3, -0.5 * pred + 1)
    assert scale_shift_invariant_depth_loss(pred, mixed, mask, groups).item() == pytest.approx(0.0, abs=1e-12)
    assert scale_shift_invariant_depth_loss(pred, mixed, mask).item() > 0.01
    # the per-group loss of one group equals the ungrouped loss of that group's rays (same reduction)
    one = groups == 5
    both = scale_shift_invariant_depth_loss(pred, noisy, mask & one, groups)
    assert both.item() == pytest.approx(scale_shift_invariant_depth_loss(pred[one], noisy[one], mask[one]).item(), rel=1e-9)

    # Curvature: |laplacian| of the sphere SDF |x| - r is 2 / |x|; of a plane it is 0.
    pts = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1) * 0.5
    assert curvature_loss(sphere_sdf, pts, eps=1e-4).item() == pytest.approx(4.0, rel=1e-3)
    assert curvature_loss(lambda x: x[:, 0] - 0.1, pts).item() == pytest.approx(0.0, abs=1e-9)

    n = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    assert normal_cue_loss(n, 3 * n).item() == pytest.approx(0.0, abs=1e-6)
    assert normal_cue_loss(n, -n).item() == pytest.approx(2 * n.abs().sum(-1).mean().item() + 2.0, rel=1e-5)
    assert psnr_from_mse(torch.tensor(0.01)).item() == pytest.approx(20.0)
