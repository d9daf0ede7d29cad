"""The pure-PyTorch 3DGS rasterizer (recon.render.gaussians) against independent oracles.

The oracle below re-derives every rule of the gsplat 1.5.3 semantics on its own (rotation from the
quaternion by the Rodrigues form, EWA Jacobian, opacity-aware radius, tile boxes, per-pixel front to
back compositing with a Python loop over depth-sorted Gaussians) in float64 with plain autograd.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from recon.render.gaussians import (
    composite,
    isect_offset_encode,
    isect_tiles,
    project_gaussians,
    rasterization,
    rasterize_to_pixels,
    spherical_harmonics,
)

pytestmark = pytest.mark.usefixtures("one_thread", "torch_backend")


@pytest.fixture
def torch_backend(monkeypatch):
    """These tests check the PyTorch reference: force it (``auto`` would pick Warp on CPU);
    tests/recon/test_gaussian_warp.py checks the Warp backend against it."""
    monkeypatch.setenv("RECON_BACKEND", "torch")

F64 = torch.float64
THR = 1.0 / 255.0


# --------------------------------------------------------------------------------------------
# Independent oracle
# --------------------------------------------------------------------------------------------


def _skew(v):
    z = v.new_zeros(())
    return torch.stack([torch.stack([z, -v[2], v[1]]), torch.stack([v[2], z, -v[0]]), torch.stack([-v[1], v[0], z])])


def _f(t) -> float:
    return float(t.detach()) if torch.is_tensor(t) else float(t)


def _oracle_project(mean, quat, scale, opacity, viewmat, K, W, H, *, eps2d=0.3, near=0.01, far=1e10, aa=False):
    """One Gaussian into one camera; None when culled."""
    q = quat / quat.norm()
    vx = _skew(q[1:])
    rot = torch.eye(3, dtype=F64) + 2 * q[0] * vx + 2 * vx @ vx  # Rodrigues form of a unit quaternion
    sigma3 = rot @ torch.diag(scale**2) @ rot.T
    Rc, t = viewmat[:3, :3], viewmat[:3, 3]
    pc = Rc @ mean + t
    x, y, z = pc
    if not near <= _f(z) <= far:
        return None
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    u = (x / z).clamp(-(cx / fx + 0.3 * 0.5 * W / fx), (W - cx) / fx + 0.3 * 0.5 * W / fx)
    v = (y / z).clamp(-(cy / fy + 0.3 * 0.5 * H / fy), (H - cy) / fy + 0.3 * 0.5 * H / fy)
    zero = z.new_zeros(())
    J = torch.stack([torch.stack([fx / z, zero, -fx * u / z]), torch.stack([zero, fy / z, -fy * v / z])])
    cov = J @ Rc @ sigma3 @ Rc.T @ J.T
    m2 = torch.stack([fx * x / z + cx, fy * y / z + cy])
    covb = cov + eps2d * torch.eye(2, dtype=F64)
    det = torch.linalg.det(covb)
    if _f(det) <= 0:
        return None
    comp = torch.sqrt(torch.linalg.det(cov).clamp_min(0) / det)
    o = opacity * comp if aa else opacity
    if _f(o) < THR:
        return None
    ext = min(3.33, math.sqrt(2 * math.log(_f(o) * 255.0)))
    rx, ry = math.ceil(ext * math.sqrt(_f(covb[0, 0]))), math.ceil(ext * math.sqrt(_f(covb[1, 1])))
    if rx <= 0 and ry <= 0:
        return None
    mx, my = _f(m2[0]), _f(m2[1])
    if mx + rx <= 0 or mx - rx >= W or my + ry <= 0 or my - ry >= H:
        return None
    inv = torch.linalg.inv(covb)
    conic = torch.stack([inv[0, 0], inv[0, 1], inv[1, 1]])
    return {"mean2d": m2, "conic": conic, "depth": z, "opacity": o, "radii": (rx, ry)}


def _oracle_render(means, quats, scales, opacities, colors, viewmats, Ks, W, H, tile, *, aa=False, bg=None):
    """Images [C, H, W, D + 1] (colour, then accumulated depth), alphas [C, H, W] and projections."""
    C, N = viewmats.shape[0], means.shape[0]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    tile_x, tile_y = (xs // tile).long(), (ys // tile).long()
    imgs, alphas, projs = [], [], []
    for c in range(C):
        proj = [
            _oracle_project(means[i], quats[i], scales[i], opacities[i], viewmats[c], Ks[c], W, H, aa=aa)
            for i in range(N)
        ]
        projs.append(proj)
        order = sorted((i for i in range(N) if proj[i] is not None), key=lambda i: (_f(proj[i]["depth"]), i))
        T = torch.ones(H, W, dtype=F64)
        img = torch.zeros(H, W, colors.shape[-1] + 1, dtype=F64)
        done = torch.zeros(H, W, dtype=torch.bool)
        for i in order:
            p = proj[i]
            (mx, my), (rx, ry) = p["mean2d"], p["radii"]
            x0 = min(max(math.floor((_f(mx) - rx) / tile), 0), math.ceil(W / tile))
            x1 = min(max(math.ceil((_f(mx) + rx) / tile), 0), math.ceil(W / tile))
            y0 = min(max(math.floor((_f(my) - ry) / tile), 0), math.ceil(H / tile))
            y1 = min(max(math.ceil((_f(my) + ry) / tile), 0), math.ceil(H / tile))
            in_box = (tile_x >= x0) & (tile_x < x1) & (tile_y >= y0) & (tile_y < y1)
            a, b, cc = p["conic"]
            dx, dy = mx - (xs + 0.5), my - (ys + 0.5)
            sig = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            alpha = torch.clamp(p["opacity"] * torch.exp(-sig.clamp_min(0)), max=0.999)
            use = in_box & ~done & (sig >= 0) & (alpha >= THR)
            next_T = T * (1 - alpha)
            stop = use & (next_T <= 1e-4)
            done = done | stop
            use = use & ~stop
            feat = torch.cat([colors[i], p["depth"][None]])
            img = img + torch.where(use, alpha * T, 0)[..., None] * feat
            T = torch.where(use, next_T, T)
        if bg is not None:
            img = img + T[..., None] * torch.cat([bg[c], bg.new_zeros(1)])
        imgs.append(img)
        alphas.append(1 - T)
    return torch.stack(imgs), torch.stack(alphas), projs


def _cameras(W=24, H=20):
    """Two non-square pinhole cameras (the second rotated about y and shifted)."""
    K = torch.tensor([[28.0, 0, 11.3], [0, 26.0, 10.6], [0, 0, 1]], dtype=F64)
    v0 = torch.eye(4, dtype=F64)
    ang = 0.15
    v1 = torch.eye(4, dtype=F64)
    v1[:3, :3] = torch.tensor(
        [[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]], dtype=F64
    )
    v1[:3, 3] = torch.tensor([0.3, -0.1, 0.2], dtype=F64)
    return torch.stack([v0, v1]), torch.stack([K, K * torch.tensor([[1.05], [0.97], [1]], dtype=F64)]), W, H


def _scene(seed=0):
    """21 Gaussians: 12 ordinary ones, two behind the cameras, two outside the frustum, a faint one
    culled by the opacity rule, a faint one whose alpha is below 1/255 at most pixels of its tiles,
    and an opaque stack of three projecting onto the centre of pixel (12, 9) of camera 0 (there the
    first layer's alpha is clamped to 0.999 and the second would take T to 0.001 * 0.005 <= 1e-4, so
    only the first one shows)."""
    g = torch.Generator().manual_seed(seed)
    n = 12
    xy = (torch.rand(n, 2, generator=g, dtype=F64) - 0.5) * 1.2
    means = torch.cat([xy, 2 + 3 * torch.rand(n, 1, generator=g, dtype=F64)], 1)
    stack = [[z * 1.2 / 28.0, -z * 1.1 / 26.0, z] for z in (2.0, 2.1, 2.2)]
    extra = torch.tensor(
        [
            [0.1, 0.0, -2.0],  # behind
            [0.0, 0.2, -0.5],  # behind
            [9.0, 0.0, 3.0],  # far right, outside
            [0.0, -8.0, 2.5],  # far up, outside
            [0.1, 0.1, 3.0],  # opacity below 1/255: culled
            [-0.2, 0.15, 2.2],  # faint: alpha below 1/255 at most pixels of its tiles
            *stack,
        ],
        dtype=F64,
    )
    means = torch.cat([means, extra])
    N = means.shape[0]
    quats = torch.randn(N, 4, generator=g, dtype=F64)
    scales = 0.03 + 0.12 * torch.rand(N, 3, generator=g, dtype=F64)
    opac = 0.2 + 0.7 * torch.rand(N, generator=g, dtype=F64)
    colors = torch.rand(N, 3, generator=g, dtype=F64)
    names = ["behind0", "behind1", "out0", "out1", "culled", "faint", "s0", "s1", "s2"]
    idx = {name: n + k for k, name in enumerate(names)}
    opac[idx["culled"]] = 0.003
    opac[idx["faint"]] = 0.006
    scales[idx["faint"]] = 0.02
    for k in ("s0", "s1", "s2"):
        opac[idx[k]] = 0.995
        scales[idx[k]] = torch.tensor([0.25, 0.2, 0.1], dtype=F64)
    opac[idx["s0"]] = 0.9995  # alpha clamped to 0.999 at the pixel centre (no opacity gradient there)
    colors[idx["s1"]] = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    colors[idx["s2"]] = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    return means, quats, scales, opac, colors, idx


# --------------------------------------------------------------------------------------------
# Against the oracle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tile,aa,k_chunk",
    [(16, False, 64), (8, False, 3), (8, True, 64), (16, True, 2)],
)
def test_matches_oracle_forward_and_gradients(monkeypatch, tile, aa, k_chunk):
    # Small K-chunks and tile chunks exercise the transmittance carry between chunks.
    monkeypatch.setattr(composite, "K_CHUNK", k_chunk)
    if k_chunk < 8:
        monkeypatch.setattr(composite, "CHUNK_ELEMENTS", tile * tile * k_chunk * 2)
    means, quats, scales, opac, colors, idx = _scene()
    viewmats, Ks, W, H = _cameras()
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 0.3]], dtype=F64)
    leaves = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors, bg)]
    out, alpha, meta = rasterization(
        *leaves[:5], viewmats, Ks, W, H, tile_size=tile, backgrounds=leaves[5], render_mode="RGB+D",
        rasterize_mode="antialiased" if aa else "classic",
    )
    ref_leaves = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors, bg)]
    ref_img, ref_alpha, projs = _oracle_render(*ref_leaves[:5], viewmats, Ks, W, H, tile, aa=aa, bg=ref_leaves[5])
    assert out.shape == (2, H, W, 4) and alpha.shape == (2, H, W, 1)
    torch.testing.assert_close(out, ref_img, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(alpha[..., 0], ref_alpha, rtol=1e-10, atol=1e-10)

    # Projection outputs, culling included.
    for c in range(2):
        for i, p in enumerate(projs[c]):
            if p is None:
                assert meta["radii"][c, i].tolist() == [0, 0]
                assert meta["means2d"][c, i].abs().sum() == 0
                continue
            assert meta["radii"][c, i].tolist() == list(p["radii"])
            torch.testing.assert_close(meta["means2d"][c, i], p["mean2d"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(meta["conics"][c, i], p["conic"], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(meta["depths"][c, i], p["depth"])
            torch.testing.assert_close(meta["opacities"][c, i], p["opacity"], rtol=1e-12, atol=1e-14)
    for name in ("behind0", "behind1", "out0", "out1", "culled"):
        assert (meta["radii"][:, idx[name]] == 0).all(), name
    # The scene really has the special cases: the faint Gaussian is visible but skipped at most
    # pixels of its tiles, and the opaque stack stops pixel (12, 9) before its second layer
    # (antialiasing's compensation takes the faint one below 1/255: culled there).
    assert ((meta["radii"][:, idx["faint"]] > 0).all(-1) != aa).all()
    torch.testing.assert_close(meta["means2d"][0, idx["s1"]], torch.tensor([12.5, 9.5], dtype=F64))
    if not aa:  # (with antialiasing the compensated opacities let the second layer through)
        a0 = 0.999  # sigma = 0 at the pixel centre: min(0.999, 0.9995)
        torch.testing.assert_close(alpha[0, 9, 12, 0], torch.tensor(a0, dtype=F64))
        expected = torch.cat([colors[idx["s0"]] * a0 + (1 - a0) * bg[0], means[idx["s0"], 2:] * a0])
        torch.testing.assert_close(out[0, 9, 12], expected)

    # Gradients against the oracle's plain autograd.
    g = torch.Generator().manual_seed(1)
    w_img, w_alpha = torch.randn(out.shape, generator=g, dtype=F64), torch.randn(alpha.shape[:-1], generator=g, dtype=F64)
    ((out * w_img).sum() + (alpha[..., 0] * w_alpha).sum()).backward()
    ((ref_img * w_img).sum() + (ref_alpha * w_alpha).sum()).backward()
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors", "backgrounds"), leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_opaque_stack_terminates_early():
    """Three opaque layers: the pixel stops before the second (0.005 * (1 - a) <= 1e-4)."""
    viewmats, Ks, W, H = _cameras()
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.5], [0.0, 0.0, 3.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=F64)
    scales = torch.full((3, 3), 0.3, dtype=F64)
    opac = torch.full((3,), 0.995, dtype=F64)
    colors = torch.eye(3, dtype=F64)
    img, alpha, _ = rasterization(means, quats, scales, opac, colors, viewmats[:1], Ks[:1], W, H)
    centre = img[0, 10, 11]
    assert centre[1] == 0 and centre[2] == 0  # nothing of the hidden layers
    a0 = float(alpha[0, 10, 11, 0])
    assert centre[0] == pytest.approx(a0) and 0.99 < a0 < 0.999 + 1e-12


# --------------------------------------------------------------------------------------------
# Analytic projection
# --------------------------------------------------------------------------------------------


def test_isotropic_gaussian_projects_to_expected_circle():
    f, s, z, W, H = 50.0, 0.2, 4.0, 40, 30
    K = torch.tensor([[[f, 0, 20.0], [0, f, 15.0], [0, 0, 1]]], dtype=F64)
    # A camera rotated 90 degrees about y and moved: world point p sits on its optical axis.
    rot = torch.tensor([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]], dtype=F64)
    cam_centre = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    view = torch.eye(4, dtype=F64)
    view[:3, :3], view[:3, 3] = rot, -rot @ cam_centre
    p = cam_centre + rot.T @ torch.tensor([0.0, 0, z], dtype=F64)
    off = cam_centre + rot.T @ torch.tensor([0.3, -0.2, z], dtype=F64)
    means = torch.stack([p, off])
    quats = torch.randn(2, 4, dtype=F64)  # irrelevant for an isotropic Gaussian
    scales = torch.full((2, 3), s, dtype=F64)
    o = torch.tensor([0.8, 0.8], dtype=F64)
    proj = project_gaussians(means, quats, scales, view[None], K, W, H, opacities=o, calc_compensations=True)
    var = f * f * s * s / (z * z)
    torch.testing.assert_close(proj.conics[0, 0], torch.tensor([1 / (var + 0.3), 0, 1 / (var + 0.3)], dtype=F64))
    torch.testing.assert_close(proj.means2d[0, 0], torch.tensor([20.0, 15.0], dtype=F64))
    kx = (K[0] @ torch.tensor([0.3, -0.2, z], dtype=F64)) / z
    torch.testing.assert_close(proj.means2d[0, 1], kx[:2])
    torch.testing.assert_close(proj.depths[0], torch.tensor([z, z], dtype=F64))
    torch.testing.assert_close(proj.compensations[0, 0], torch.tensor(var / (var + 0.3), dtype=F64))
    extend = min(3.33, math.sqrt(2 * math.log(255 * 0.8 * var / (var + 0.3))))
    r = math.ceil(extend * math.sqrt(var + 0.3))
    assert proj.radii[0, 0].tolist() == [r, r]
    # Without opacities the radius uses 3.33 standard deviations.
    proj2 = project_gaussians(means, quats, scales, view[None], K, W, H)
    assert proj2.radii[0, 0].tolist() == [math.ceil(3.33 * math.sqrt(var + 0.3))] * 2
    assert proj2.compensations is None


def test_jacobian_clamps_to_the_field_of_view():
    """Far off-axis, the EWA Jacobian uses x/z clamped to 1.3x the half-width (gsplat persp_proj)."""
    f, W, H, z, s = 20.0, 32, 32, 2.0, 0.5
    K = torch.tensor([[[f, 0, 16.0], [0, f, 16.0], [0, 0, 1]]], dtype=F64)
    x = 3.0  # x / z = 1.5 > lim = (32 - 16) / 20 + 0.3 * 0.8 = 1.04
    means = torch.tensor([[x, 0.0, z]], dtype=F64)
    proj = project_gaussians(
        means, torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.full((1, 3), s, dtype=F64), torch.eye(4, dtype=F64)[None], K, W, H
    )
    u = min(1.5, 16 / f + 0.3 * 0.5 * W / f)
    J = torch.tensor([[f / z, 0, -f * u / z], [0, f / z, 0]], dtype=F64)
    cov = s * s * J @ J.T + 0.3 * torch.eye(2, dtype=F64)
    inv = torch.linalg.inv(cov)
    torch.testing.assert_close(proj.conics[0, 0], torch.stack([inv[0, 0], inv[0, 1], inv[1, 1]]))
    torch.testing.assert_close(proj.means2d[0, 0], torch.tensor([f * x / z + 16, 16.0], dtype=F64))


def test_near_far_and_radius_clip():
    K = torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]], dtype=F64)
    means = torch.tensor([[0, 0, 0.005], [0, 0, 1.0], [0, 0, 50.0], [0, 0, 5.0]], dtype=F64)
    q = torch.tensor([[1.0, 0, 0, 0]] * 4, dtype=F64)
    sc = torch.full((4, 3), 0.05, dtype=F64)
    v = torch.eye(4, dtype=F64)[None]
    r = project_gaussians(means, q, sc, v, K, 16, 16, far_plane=20.0).radii[0]
    assert r[0].tolist() == [0, 0] and r[2].tolist() == [0, 0] and (r[1] > 0).all() and (r[3] > 0).all()
    r = project_gaussians(means, q, sc, v, K, 16, 16, radius_clip=2.0).radii[0]
    assert (r[3] == 0).all() and (r[1] > 0).all()  # radius 2 at z = 5 is clipped, not at z = 1


def test_tile_binning_layout():
    means2d = torch.tensor([[[5.0, 5.0], [20.0, 3.0], [0.0, 0.0]], [[30.0, 20.0], [8.0, 8.0], [1.0, 1.0]]], dtype=F64)
    radii = torch.tensor([[[2, 2], [5, 2], [0, 0]], [[3, 3], [9, 1], [1, 1]]], dtype=torch.int32)
    depths = torch.tensor([[2.0, 1.0, 0.5], [3.0, 1.0, 4.0]], dtype=F64)
    tpg, ids, fids = isect_tiles(means2d, radii, depths, 16, 2, 2)
    # cam 0: g0 -> tile 0; g1 -> x in [0.9375, 1.5625] -> tiles 0,1 ; g2 culled.
    # cam 1: g0 -> x [1.6875, 2.06] -> tiles 1, y [1.06, 1.44] -> row 1 -> tile 3 ; g1 -> tiles 0,1 (y [0.44,0.56])
    # g2 -> tile 0.
    assert tpg.tolist() == [[1, 2, 0], [1, 2, 1]]
    offsets = isect_offset_encode(ids, 2, 2, 2)
    assert offsets.reshape(-1).tolist() == [0, 2, 3, 3, 3, 5, 6, 6]
    # tile 0 of cam 0: g1 (depth 1) before g0 (depth 2); cam 1 tile 0: g1 (1) before g2 (4).
    assert fids.tolist() == [1, 0, 1, 4, 5, 4, 3]
    assert ((ids >> 32) & 0b111).tolist() == [0, 0, 1, 0, 0, 1, 3]  # tile bits: floor(log2 4) + 1
    assert (ids >> 35).tolist() == [0, 0, 0, 1, 1, 1, 1]


# --------------------------------------------------------------------------------------------
# Gradients by finite differences
# --------------------------------------------------------------------------------------------


def test_gradcheck_away_from_cutoffs():
    """Four large semi-transparent Gaussians well inside the image; checked that no evaluated alpha
    is near 1/255 and no radius near an integer, so finite differences see a smooth function."""
    viewmats, Ks, _, _ = _cameras()
    W, H = 20, 14
    means = torch.tensor([[-0.1, 0.0, 3.0], [0.15, 0.05, 3.5], [0.0, -0.1, 4.0], [0.05, 0.1, 3.2]], dtype=F64)
    quats = torch.tensor([[1.0, 0.1, 0.2, 0.0], [0.9, -0.2, 0.1, 0.3], [1.0, 0.0, 0.0, 0.4], [0.8, 0.3, -0.1, 0.1]], dtype=F64)
    scales = torch.tensor([[1.2, 1.0, 0.5], [1.0, 1.3, 0.6], [1.5, 1.1, 0.8], [1.1, 1.4, 0.5]], dtype=F64)
    opac = torch.tensor([0.5, 0.4, 0.6, 0.3], dtype=F64)
    colors = torch.tensor([[0.9, 0.1, 0.2], [0.2, 0.8, 0.3], [0.1, 0.3, 0.9], [0.6, 0.6, 0.1]], dtype=F64)
    bg = torch.tensor([[0.2, 0.3, 0.4], [0.0, 0.1, 0.0]], dtype=F64)
    kw = {"tile_size": 8, "render_mode": "RGB+D"}

    # The scene is threshold-safe: extends far beyond the image (every pixel evaluated) with the
    # radius not at an integer boundary, and all alphas well above 1/255.
    _, alpha, meta = rasterization(means, quats, scales, opac, colors, viewmats, Ks, W, H, **kw)
    assert (meta["radii"] > 0).all() and (meta["tiles_per_gauss"] == 6).all()
    assert float(alpha.max()) < 0.99
    _, _, projs = _oracle_render(means, quats, scales, opac, colors, viewmats, Ks, W, H, 8)
    for proj in projs:
        for p in proj:
            ys, xs = torch.meshgrid(torch.arange(H, dtype=F64) + 0.5, torch.arange(W, dtype=F64) + 0.5, indexing="ij")
            a, b, c = p["conic"]
            dx, dy = p["mean2d"][0] - xs, p["mean2d"][1] - ys
            al = p["opacity"] * torch.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
            assert float(al.min()) > 2 * THR

    def f(m, q, s, o, col, b, view, k):  # camera poses and intrinsics are differentiable too
        img, a, _ = rasterization(m, q, s, o, col, view, k, W, H, backgrounds=b, **kw)
        return img, a

    inputs = tuple(t.clone().requires_grad_() for t in (means, quats, scales, opac, colors, bg, viewmats, Ks))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    inputs_aa = inputs[:5]

    def f_aa(m, q, s, o, col):
        img, a, _ = rasterization(m, q, s, o, col, viewmats, Ks, W, H, rasterize_mode="antialiased", **kw)
        return img, a

    assert torch.autograd.gradcheck(f_aa, inputs_aa, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_rasterize_to_pixels_full_gradcheck():
    """The compositing Function alone, full (not fast-mode) Jacobian, including the background."""
    g = torch.Generator().manual_seed(3)
    C, N, W, H, ts = 1, 3, 6, 5, 4
    means2d = torch.tensor([[[2.0, 2.5], [3.5, 2.0], [3.0, 3.0]]], dtype=F64)
    conics = torch.tensor([[[0.15, 0.02, 0.2], [0.1, -0.03, 0.12], [0.2, 0.0, 0.1]]], dtype=F64)
    colors = torch.rand(C, N, 2, generator=g, dtype=F64)
    opac = torch.tensor([[0.5, 0.7, 0.4]], dtype=F64)
    depths = torch.tensor([[1.0, 2.0, 1.5]], dtype=F64)
    radii = torch.full((C, N, 2), 8, dtype=torch.int32)
    _, ids, fids = isect_tiles(means2d, radii, depths, ts, 2, 2)
    offsets = isect_offset_encode(ids, C, 2, 2)
    bg = torch.tensor([[0.3, 0.6]], dtype=F64)

    def f(m, con, col, o, b):
        return rasterize_to_pixels(m, con, col, o, W, H, ts, offsets, fids, backgrounds=b)

    inputs = tuple(t.clone().requires_grad_() for t in (means2d, conics, colors, opac, bg))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Real SfM points
# --------------------------------------------------------------------------------------------


def test_garden_points_render(garden_view):
    pts, rgb, view, K, W, H = garden_view(80, 16)
    N = pts.shape[0]
    means = pts.clone().requires_grad_()
    quats = torch.tensor([1.0, 0, 0, 0]).repeat(N, 1)
    scales = torch.full((N, 3), 0.02).requires_grad_()
    opac = torch.full((N,), 0.9).requires_grad_()
    colors = rgb.clone().requires_grad_()
    img, alpha, meta = rasterization(means, quats, scales, opac, colors, view, K, W, H)
    meta["means2d"].retain_grad()
    assert img.shape == (1, H, W, 3) and torch.isfinite(img).all() and torch.isfinite(alpha).all()

    # Independent culling check: camera z and projected centres.
    pc = pts @ view[0, :3, :3].T + view[0, :3, 3]
    z = pc[:, 2]
    u = K[0, 0, 0] * pc[:, 0] / z + K[0, 0, 2]
    v = K[0, 1, 1] * pc[:, 1] / z + K[0, 1, 2]
    radii = meta["radii"][0]
    behind = z < 0.01
    inside = ~behind & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    assert behind.sum() > 100 and inside.sum() > 1000
    assert (radii[behind] == 0).all()
    assert (radii[inside] > 0).all()
    far_out = ~behind & ((u < -radii[:, 0].max() - 1) | (u > W + radii[:, 0].max() + 1) | (v < -radii[:, 1].max() - 1) | (v > H + radii[:, 1].max() + 1))
    assert far_out.sum() > 100 and (radii[far_out] == 0).all()

    # High alpha where points project.
    hit = torch.zeros(H, W, dtype=torch.bool)
    hit[v[inside].long(), u[inside].long()] = True
    assert hit.sum() > 0.3 * H * W
    assert float(alpha.detach()[0, ..., 0][hit].mean()) > 0.9

    (img.mean() + alpha.mean()).backward()
    g2d = meta["means2d"].grad
    assert g2d is not None and g2d.shape == (1, N, 2) and torch.isfinite(g2d).all()
    visible = (radii > 0).all(-1)
    assert (g2d[0, ~visible] == 0).all()
    assert (g2d[0, visible].abs().sum(-1) > 0).float().mean() > 0.5
    for t in (means, scales, opac, colors):
        assert torch.isfinite(t.grad).all()
    assert (means.grad[behind] == 0).all()


# --------------------------------------------------------------------------------------------
# Spherical harmonics, render modes, backend
# --------------------------------------------------------------------------------------------


def _real_sh_scipy(l_max: int, dirs: np.ndarray) -> np.ndarray:
    """Real SH with the Condon-Shortley phase from scipy's complex SH: m > 0 -> sqrt2 Re Y_l^m,
    m < 0 -> sqrt2 Im Y_l^|m|, m = 0 -> Y_l^0; order l = 0.., m = -l..l."""
    from scipy import special

    d = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    polar = np.arccos(np.clip(d[:, 2], -1, 1))
    azim = np.arctan2(d[:, 1], d[:, 0])
    out = []
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            if hasattr(special, "sph_harm_y"):
                y = special.sph_harm_y(l, abs(m), polar, azim)
            else:  # scipy < 1.15
                y = special.sph_harm(abs(m), l, azim, polar)
            out.append(math.sqrt(2) * y.imag if m < 0 else (y.real if m == 0 else math.sqrt(2) * y.real))
    return np.stack(out, -1)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spherical_harmonics_basis(degree):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(50, 3, generator=g, dtype=F64) * 3  # not unit: normalised inside
    K = (degree + 1) ** 2
    coeffs = torch.randn(50, 16, 3, generator=g, dtype=F64)  # more coefficients than used
    basis = torch.from_numpy(_real_sh_scipy(degree, dirs.numpy()))
    expected = torch.einsum("nk,nkd->nd", basis, coeffs[:, :K])
    torch.testing.assert_close(spherical_harmonics(degree, dirs, coeffs), expected, rtol=1e-10, atol=1e-12)


def test_sh_degree0_is_view_independent_and_used_by_rasterization():
    viewmats, Ks, W, H = _cameras()
    means = torch.tensor([[0.0, 0.0, 3.0], [0.3, 0.1, 4.0]], dtype=F64)
    q = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=F64)
    s = torch.full((2, 3), 0.3, dtype=F64)
    o = torch.tensor([0.7, 0.6], dtype=F64)
    dc = torch.tensor([[0.4, -0.2, -3.0], [1.0, 0.0, 0.5]], dtype=F64)
    sh = torch.zeros(2, 16, 3, dtype=F64)
    sh[:, 0] = dc
    expected_rgb = (dc * 0.28209479177387814 + 0.5).clamp_min(0)
    dirs = torch.randn(7, 3, dtype=F64)
    out = spherical_harmonics(0, dirs, sh[0].expand(7, 16, 3))
    torch.testing.assert_close(out + 0.5, (dc[0] * 0.28209479177387814 + 0.5).expand(7, 3))
    # sh_degree = 0 with extra (ignored) bands renders like the fixed colours max(c C0 + 0.5, 0).
    sh[:, 1:] = torch.randn(2, 15, 3, dtype=F64)
    a = rasterization(means, q, s, o, sh, viewmats, Ks, W, H, sh_degree=0)[0]
    b = rasterization(means, q, s, o, expected_rgb, viewmats, Ks, W, H)[0]
    torch.testing.assert_close(a, b)
    # sh_degree = 3: view direction is mean - camera centre, per camera.
    a = rasterization(means, q, s, o, sh, viewmats, Ks, W, H, sh_degree=3)[0]
    centres = torch.linalg.inv(viewmats)[:, :3, 3]
    for c in range(2):
        basis = torch.from_numpy(_real_sh_scipy(3, (means - centres[c]).numpy()))
        rgb = (torch.einsum("nk,nkd->nd", basis, sh) + 0.5).clamp_min(0)
        b = rasterization(means, q, s, o, rgb, viewmats[c : c + 1], Ks[c : c + 1], W, H)[0]
        torch.testing.assert_close(a[c : c + 1], b, rtol=1e-10, atol=1e-12)


def test_render_mode_rgb_ed_depth_of_single_gaussian():
    K = torch.tensor([[[30.0, 0, 12.0], [0, 30.0, 10.0], [0, 0, 1]]], dtype=F64)
    z = 2.7
    means = torch.tensor([[0.0, 0.0, z]], dtype=F64)
    q = torch.tensor([[1.0, 0, 0, 0]], dtype=F64)
    s = torch.full((1, 3), 0.2, dtype=F64)
    o = torch.tensor([0.99], dtype=F64)
    col = torch.tensor([[0.2, 0.4, 0.6]], dtype=F64)
    v = torch.eye(4, dtype=F64)[None]
    img, alpha, _ = rasterization(means, q, s, o, col, v, K, 24, 20, render_mode="RGB+ED")
    assert img.shape == (1, 20, 24, 4)
    # The mean projects to (12, 10): the corner of pixels 11 and 12; take pixel (11, 9).
    assert float(alpha[0, 9, 11, 0]) > 0.9
    assert float(img[0, 9, 11, 3]) == pytest.approx(z, rel=1e-12)
    hit = alpha[0, ..., 0] > 0
    torch.testing.assert_close(img[0, ..., 3][hit], torch.full_like(img[0, ..., 3][hit], z))
    assert (img[0, ..., 3][~hit] == 0).all()  # ED = 0 where nothing was hit (D / 1e-10)
    d_img, d_alpha, _ = rasterization(means, q, s, o, col, v, K, 24, 20, render_mode="D")
    torch.testing.assert_close(d_img[..., 0], z * d_alpha[..., 0])
    ed_only = rasterization(means, q, s, o, col, v, K, 24, 20, render_mode="ED")[0]
    torch.testing.assert_close(ed_only[..., 0], img[..., 3])
    rgbd = rasterization(means, q, s, o, col, v, K, 24, 20, render_mode="RGB+D", backgrounds=torch.ones(1, 3, dtype=F64))[0]
    torch.testing.assert_close(rgbd[..., 3], d_img[..., 0])  # depth background is 0


def test_float32_matches_float64_and_chunks_do_not_change_results(monkeypatch):
    means, quats, scales, opac, colors, _ = _scene(2)
    viewmats, Ks, W, H = _cameras()
    args64 = (means, quats, scales, opac, colors, viewmats, Ks, W, H)
    args32 = tuple(a.float() if torch.is_tensor(a) else a for a in args64)
    img64, a64, _ = rasterization(*args64)
    img32, _, _ = rasterization(*args32)
    assert img32.dtype == torch.float32
    torch.testing.assert_close(img32.double(), img64, rtol=0, atol=1e-4)
    monkeypatch.setattr(composite, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(composite, "K_CHUNK", 1)
    img1, a1, _ = rasterization(*args64)
    torch.testing.assert_close(img1, img64, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a1, a64, rtol=1e-12, atol=1e-14)


def test_covars_input_equals_quats_scales():
    means, quats, scales, opac, colors, _ = _scene(4)
    viewmats, Ks, W, H = _cameras()
    from recon.render.gaussians import quat_scale_to_covar

    a = rasterization(means, quats, scales, opac, colors, viewmats, Ks, W, H)[0]
    b = rasterization(means, None, None, opac, colors, viewmats, Ks, W, H, covars=quat_scale_to_covar(quats, scales))[0]
    torch.testing.assert_close(a, b)


def test_backend_selection(monkeypatch):
    means, quats, scales, opac, colors, _ = _scene(5)
    viewmats, Ks, W, H = _cameras()
    args = (means, quats, scales, opac, colors, viewmats, Ks, W, H)
    monkeypatch.delenv("RECON_BACKEND", raising=False)
    assert rasterization(*args)[2]["backend"] == "warp"  # auto: Warp on CPU (warp-lang is a dependency)
    assert rasterization(*args, backend="torch")[2]["backend"] == "torch"
    # gsplat is CUDA-only: a clear error for CPU tensors, and gsplat is never imported for them
    gsplat_loaded = "gsplat" in sys.modules
    with pytest.raises(ValueError, match="gsplat.*CUDA-only"):
        rasterization(*args, backend="gsplat")
    monkeypatch.setenv("RECON_BACKEND", "gsplat")
    with pytest.raises(ValueError, match="RECON_BACKEND=gsplat"):
        rasterization(*args)
    assert ("gsplat" in sys.modules) == gsplat_loaded
    monkeypatch.setenv("RECON_BACKEND", "torch")
    assert rasterization(*args)[2]["backend"] == "torch"
    with pytest.raises(ValueError):
        rasterization(*args, backend="cuda")
    with pytest.raises(ValueError):
        rasterization(*args, render_mode="RGBD")


def test_per_camera_colors_and_empty_scenes():
    means, quats, scales, opac, colors, _ = _scene(6)
    viewmats, Ks, W, H = _cameras()
    g = torch.Generator().manual_seed(6)
    per_cam = torch.rand(2, means.shape[0], 3, generator=g, dtype=F64)
    both = rasterization(means, quats, scales, opac, per_cam, viewmats, Ks, W, H)[0]
    for c in range(2):
        one = rasterization(means, quats, scales, opac, per_cam[c], viewmats[c : c + 1], Ks[c : c + 1], W, H)[0]
        torch.testing.assert_close(both[c : c + 1], one)
    # Nothing visible (all behind the cameras), and no Gaussians at all: background, zero gradients.
    behind = means.clone()
    behind[:, 2] = -behind[:, 2].abs()
    leaves = [t.clone().requires_grad_() for t in (behind, quats, scales, opac, colors)]
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=F64)
    img, alpha, meta = rasterization(*leaves, viewmats, Ks, W, H, backgrounds=bg)
    assert meta["flatten_ids"].numel() == 0 and (alpha == 0).all()
    torch.testing.assert_close(img, bg[:, None, None, :].expand(2, H, W, 3))
    (img.sum() + alpha.sum()).backward()
    assert all(t.grad is None or (t.grad == 0).all() for t in leaves)
    empty = [t[:0] for t in (means, quats, scales, opac, colors)]
    img, alpha, meta = rasterization(*empty, viewmats, Ks, W, H, render_mode="RGB+ED")
    assert img.shape == (2, H, W, 4) and (img == 0).all() and (alpha == 0).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("render_mode", ["RGB", "RGB+ED"])
def test_gsplat_matches_reference_on_cuda(render_mode):
    """gsplat's kernels (``backend="gsplat"``, the CUDA fast path) against the reference on CUDA:
    images, alphas and the gradients of every 3D input, float32."""
    pytest.importorskip("gsplat")
    means, quats, scales, opac, colors, _ = _scene(6)
    viewmats, Ks, W, H = _cameras()
    inputs = [t.float().cuda() for t in (means, quats, scales, opac, colors)]
    results = []
    for backend in ("torch", "gsplat"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        img, alpha, meta = rasterization(*leaves, viewmats.float().cuda(), Ks.float().cuda(), W, H,
                                         render_mode=render_mode, backend=backend)
        assert meta["backend"] == backend
        w = torch.linspace(0, 1, img.numel(), device="cuda").reshape(img.shape)
        ((img * w).sum() + alpha.sum()).backward()
        results.append([img.detach(), alpha.detach(), *(t.grad for t in leaves)])
    for a, b in zip(results[1], results[0], strict=True):
        scale = max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= 1e-3 * scale
