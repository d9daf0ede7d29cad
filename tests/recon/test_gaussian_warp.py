"""The Warp backend (recon.render.gaussians.warp_projection / warp_backend) against the PyTorch reference.

Projections (radii exactly; means2d, depths, conics, compensations and the gradients to means, quats
and scales), images, alphas and every gradient (means2d, conics, colors, opacities, backgrounds, and
through the projection the 3D parameters) must agree with the reference to rounding: ~1e-5 in
float32, 1e-9 in float64; plus float64 gradchecks of both Warp autograd Functions on scenes kept away
from the cut-offs (the hand-written backward kernels are the things under test), and the
multi-threaded CPU launch (row blocks, per-worker gradient buffers) against the single-threaded one.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from recon.render.gaussians import (
    composite,
    project_gaussians,
    isect_offset_encode,
    isect_tiles,
    rasterization,
    rasterize_to_pixels,
    rasterize_to_pixels_warp,
    warp_available,
)
from recon.render.gaussians import warp_backend
from recon.render.gaussians.warp_projection import project_gaussians_warp

# No skip when warp-lang is missing: it is a dependency, so a missing Warp is a broken installation
# and every test here fails (test_warp_is_installed says how to fix it).
pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


# Small helpers copied from test_gaussian_raster.py (pytest uses --import-mode=importlib).
def _cameras(W=37, H=21, dtype=F64):
    """Two non-square pinhole cameras (the second rotated about y and shifted); sizes not multiples
    of the tile size."""
    K = torch.tensor([[40.0, 0, W / 2 - 0.7], [0, 38.0, H / 2 + 0.4], [0, 0, 1]], dtype=dtype)
    v0 = torch.eye(4, dtype=dtype)
    ang = 0.15
    v1 = torch.eye(4, dtype=dtype)
    v1[:3, :3] = torch.tensor(
        [[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]], dtype=dtype
    )
    v1[:3, 3] = torch.tensor([0.3, -0.1, 0.2], dtype=dtype)
    return torch.stack([v0, v1]), torch.stack([K, K * torch.tensor([[1.05], [0.97], [1]], dtype=dtype)]), W, H


def _scene(seed=0, n=40, dtype=F64):
    """n random Gaussians, a faint one, and an opaque stack of three in front of camera 0's centre
    (the first clamps to alpha 0.999, the second would take T below 1e-4: early stop)."""
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=g, dtype=F64) - 0.5) * 1.4
    means = torch.cat([xy, 2 + 3 * torch.rand(n, 1, generator=g, dtype=F64)], 1)
    stack = torch.tensor([[0.0, 0.0, z] for z in (2.0, 2.1, 2.2)], dtype=F64)
    means = torch.cat([means, torch.tensor([[-0.2, 0.15, 2.2]], dtype=F64), stack])
    N = means.shape[0]
    quats = torch.randn(N, 4, generator=g, dtype=F64)
    scales = 0.03 + 0.12 * torch.rand(N, 3, generator=g, dtype=F64)
    opac = 0.2 + 0.75 * torch.rand(N, generator=g, dtype=F64)
    colors = torch.rand(N, 3, generator=g, dtype=F64)
    opac[n] = 0.006  # faint: alpha below 1/255 at most of its pixels
    scales[n] = 0.02
    opac[n + 1 :] = 0.995
    opac[n + 1] = 0.9995  # clamped to 0.999 near the centre
    scales[n + 1 :] = torch.tensor([0.25, 0.2, 0.1], dtype=F64)
    return tuple(t.to(dtype) for t in (means, quats, scales, opac, colors))


def _render_with_grads(backend, dtype, tile=8, render_mode="RGB", seed=0):
    means, quats, scales, opac, colors = _scene(seed, dtype=dtype)
    viewmats, Ks, W, H = _cameras(dtype=dtype)
    D = 3
    bg = torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.1, 0.3]], dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors, bg)]
    img, alpha, meta = rasterization(
        *leaves[:5], viewmats, Ks, W, H, tile_size=tile, backgrounds=leaves[5], render_mode=render_mode,
        backend=backend,
    )
    for k in ("means2d", "conics", "opacities"):
        meta[k].retain_grad()
    g = torch.Generator().manual_seed(7)
    loss = (img * torch.rand(img.shape, generator=g, dtype=F64).to(dtype)).sum()
    loss = loss + (alpha * torch.rand(alpha.shape, generator=g, dtype=F64).to(dtype)).sum()
    loss.backward()
    assert meta["backend"] == backend and img.shape[-1] == D + (render_mode != "RGB")
    grads = {k: meta[k].grad for k in ("means2d", "conics", "opacities")}
    grads.update(zip(("means", "quats", "scales", "opac3d", "colors", "bg"), (t.grad for t in leaves), strict=True))
    return img.detach(), alpha.detach(), grads, meta


def _assert_close(a, b, tol):
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max())


# float32: the projections differ in rounding (fused Warp kernel vs torch ops), and ED = D / alpha
# magnifies that where alpha is small (measured 1.0e-5 relative there, <= 3.4e-6 elsewhere).
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 3e-5), (F64, 1e-9)])
@pytest.mark.parametrize("tile,render_mode", [(8, "RGB"), (16, "RGB+ED")])
def test_rasterization_warp_matches_torch(dtype, tol, tile, render_mode):
    ref = _render_with_grads("torch", dtype, tile, render_mode)
    out = _render_with_grads("warp", dtype, tile, render_mode)
    alpha = ref[1]
    # the scene has early-stopped pixels (alpha > 1 - 1e-4 only through the stop) and empty ones
    assert float(alpha.max()) > 0.999 and float(alpha.min()) == 0.0
    for a, b in ((out[0], ref[0]), (out[1], ref[1])):
        assert a.dtype == dtype
        _assert_close(a, b, tol)
    for name, g_ref in ref[2].items():
        g = out[2][name]
        assert g is not None and g.dtype == dtype, name
        assert float(g_ref.abs().max()) > 0, name
        _assert_close(g, g_ref, tol)
    assert torch.equal(out[3]["flatten_ids"], ref[3]["flatten_ids"])


def _random_2d(seed, C=2, N=60, W=45, H=27, D=5, dtype=F64, tile=16):
    """Random screen-space Gaussians in [C, N, *] with an opaque stack per camera (early stop)."""
    g = torch.Generator().manual_seed(seed)
    means2d = torch.rand(C, N, 2, generator=g, dtype=F64) * torch.tensor([W, H], dtype=F64)
    L = torch.randn(C, N, 2, 2, generator=g, dtype=F64) * 0.4
    cov = L @ L.transpose(-1, -2) + 3 * torch.eye(2, dtype=F64)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[..., 0, 0], inv[..., 0, 1], inv[..., 1, 1]], -1)
    colors = torch.rand(C, N, D, generator=g, dtype=F64)
    opac = 0.1 + 0.85 * torch.rand(C, N, generator=g, dtype=F64)
    depths = torch.rand(C, N, generator=g, dtype=F64) + 1
    # Opaque stack, front to back, on a pixel centre: the first layer's alpha clamps to 0.999 there
    # (no opacity / sigma gradient), the second would take T below 1e-4 (the pixel stops).
    means2d[:, :3] = torch.tensor([W // 3 + 0.5, H // 2 + 0.5], dtype=F64)
    opac[:, :3] = torch.tensor([0.9999, 0.995, 0.995], dtype=F64)
    depths[:, :3] = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    radii = torch.full((C, N, 2), 10, dtype=torch.int32)
    tw, th = -(-W // tile), -(-H // tile)
    _, ids, fids = isect_tiles(means2d, radii, depths, tile, tw, th)
    offsets = isect_offset_encode(ids, C, tw, th)
    bg = torch.rand(C, D, generator=g, dtype=F64)
    cast = lambda t: t.to(dtype)
    return (cast(means2d), cast(conics), cast(colors), cast(opac)), (W, H, tile, offsets, fids), cast(bg)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (F64, 1e-9)])
def test_rasterize_to_pixels_warp_matches_reference_any_channels(dtype, tol):
    inputs, geo, bg = _random_2d(1, dtype=dtype)
    results = []
    for fn in (composite.rasterize_to_pixels, rasterize_to_pixels_warp):
        leaves = [t.clone().requires_grad_() for t in (*inputs, bg)]
        img, alpha = fn(*leaves[:4], *geo, backgrounds=leaves[4])
        w = torch.linspace(-1, 1, img.numel(), dtype=dtype).reshape(img.shape)
        ((img * w).sum() + (alpha**2).sum()).backward()
        results.append([img.detach(), alpha.detach(), *(t.grad for t in leaves)])
    assert results[0][0].shape == (2, 27, 45, 5) and results[0][1].shape == (2, 27, 45, 1)
    assert float(results[0][1].max()) > 0.999  # the stack: the second layer stops the pixel
    for a, b in zip(results[1], results[0], strict=True):
        _assert_close(a, b, tol)
    # No backgrounds, and no gradient flowing into the alpha output.
    a0, _ = composite.rasterize_to_pixels(*inputs, *geo)
    a1, _ = rasterize_to_pixels_warp(*inputs, *geo)
    _assert_close(a1, a0, tol)


def test_opaque_stack_terminates_early_in_warp():
    """Same rule as the reference: the pixel stops before a Gaussian that would take T to <= 1e-4."""
    viewmats, Ks, W, H = _cameras()
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.5], [0.0, 0.0, 3.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=F64)
    scales = torch.full((3, 3), 0.3, dtype=F64)
    opac = torch.full((3,), 0.995, dtype=F64)
    img, alpha, meta = rasterization(means, quats, scales, opac, torch.eye(3, dtype=F64), viewmats[:1], Ks[:1], W, H, backend="warp")
    u, v = int(Ks[0, 0, 2]), int(Ks[0, 1, 2])
    centre = img[0, v, u]
    assert meta["backend"] == "warp"
    assert centre[1] == 0 and centre[2] == 0
    assert centre[0] == pytest.approx(float(alpha[0, v, u, 0])) and 0.99 < centre[0] < 0.999 + 1e-12


def test_warp_composite_gradcheck_float64():
    """Full-Jacobian gradcheck of the Warp path (hand-written backward kernel) incl. background, on
    a scene checked to stay away from the 1/255 alpha cut-off and the 1e-4 transmittance stop."""
    C, W, H, ts = 2, 7, 6, 4
    means2d = torch.tensor([[[2.0, 2.5], [3.5, 2.0], [3.0, 3.0], [5.5, 4.0]]] * C, dtype=F64)
    means2d[1] += 0.3
    conics = torch.tensor([[[0.15, 0.02, 0.2], [0.1, -0.03, 0.12], [0.2, 0.0, 0.1], [0.3, 0.05, 0.25]]] * C, dtype=F64)
    colors = torch.rand(C, 4, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    opac = torch.tensor([[0.5, 0.7, 0.4, 0.8]] * C, dtype=F64)
    depths = torch.tensor([[1.0, 2.0, 1.5, 0.5]] * C, dtype=F64)
    radii = torch.full((C, 4, 2), 8, dtype=torch.int32)
    _, ids, fids = isect_tiles(means2d, radii, depths, ts, 2, 2)
    offsets = isect_offset_encode(ids, C, 2, 2)
    bg = torch.tensor([[0.3, 0.6, 0.1], [0.9, 0.2, 0.4]], dtype=F64)
    # Threshold guard: every pixel-Gaussian alpha well above 1/255 or far below it, T far above 1e-4.
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64) + 0.5, torch.arange(W, dtype=F64) + 0.5, indexing="ij")
    dx = means2d[..., 0, None, None] - xs
    dy = means2d[..., 1, None, None] - ys
    sig = 0.5 * (conics[..., 0, None, None] * dx**2 + conics[..., 2, None, None] * dy**2) + conics[..., 1, None, None] * dx * dy
    a = opac[..., None, None] * torch.exp(-sig)
    assert float(((a - 1 / 255).abs() / (1 / 255)).min()) > 1e-3
    _, alpha = rasterize_to_pixels_warp(means2d, conics, colors, opac, W, H, ts, offsets, fids)
    assert float(1 - alpha.max()) > 1e-2

    def f(m, con, col, o, b):
        return rasterize_to_pixels_warp(m, con, col, o, W, H, ts, offsets, fids, backgrounds=b)

    inputs = tuple(t.clone().requires_grad_() for t in (means2d, conics, colors, opac, bg))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def _projection_scene(dtype, N=400, seed=0):
    """Gaussians around two cameras: some behind the near plane or the far plane, some off-image,
    many beyond the Jacobian's field-of-view clamp, faint ones culled by the opacity-aware radius."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(N, 3, generator=g, dtype=F64) * torch.tensor([1.6, 1.2, 1.2], dtype=F64)
    means[:, 2] += 2.5
    quats = torch.randn(N, 4, generator=g, dtype=F64)
    scales = 0.02 + 0.3 * torch.rand(N, 3, generator=g, dtype=F64)
    opac = torch.rand(N, generator=g, dtype=F64)
    opac[:20] = 0.002  # below 1/255: culled
    viewmats, Ks, W, H = _cameras(dtype=F64)
    return [t.to(dtype) for t in (means, quats, scales, opac, viewmats, Ks)], W, H


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (F64, 1e-10)])
@pytest.mark.parametrize("antialiased", [False, True])
def test_warp_projection_matches_reference(dtype, tol, antialiased):
    (means, quats, scales, opac, viewmats, Ks), W, H = _projection_scene(dtype)
    results = []
    for fn in (project_gaussians, project_gaussians_warp):
        leaves = [t.clone().requires_grad_() for t in (means, quats, scales)]
        out = fn(*leaves, viewmats, Ks, W, H, opacities=opac, near_plane=0.3, far_plane=4.5,
                 calc_compensations=antialiased)
        g = torch.Generator().manual_seed(1)
        loss = sum((x * torch.randn(x.shape, generator=g, dtype=F64).to(dtype)).sum() for x in out[1:] if x is not None)
        loss.backward()
        results.append((out, [t.grad for t in leaves]))
    (ref, ref_grads), (out, grads) = results
    visible = (ref.radii > 0).all(-1)
    depth = ref.depths
    # the scene covers every culling rule and the clamp
    assert 0.3 < float(visible.float().mean()) < 0.9
    assert bool((depth < 0.3).any()) and bool((depth > 4.5).any())
    x_over_z = (torch.einsum("cij,nj->cni", viewmats[:, :3, :3], means) + viewmats[:, None, :3, 3])
    assert bool(((x_over_z[..., 0] / x_over_z[..., 2]).abs() > 1.3 * 0.5 * W / 40.0).logical_and(visible).any())
    assert torch.equal(out.radii, ref.radii)
    assert (ref.compensations is None) == (out.compensations is None) == (not antialiased)
    for a, b in zip(out[1:], ref[1:], strict=True):
        if b is not None:
            assert a.dtype == dtype
            _assert_close(a, b, tol)
    for a, b in zip(grads, ref_grads, strict=True):
        assert float(b.abs().max()) > 0
        _assert_close(a, b, tol)


def test_warp_projection_gradcheck_float64():
    """Full-Jacobian gradcheck of the Warp projection (hand-written backward) with the antialiasing
    compensation, on Gaussians well inside the image and depth range (no culling flips), one of
    them beyond the field-of-view clamp."""
    g = torch.Generator().manual_seed(5)
    N = 5
    means = torch.cat([(torch.rand(N, 2, generator=g, dtype=F64) - 0.5) * 0.6, 2 + torch.rand(N, 1, generator=g, dtype=F64)], 1)
    means[0] = torch.tensor([1.45, 0.1, 1.5], dtype=F64)  # x / z ~ 0.97 > the clamp ~0.74 (still in the image by radius)
    quats = torch.randn(N, 4, generator=g, dtype=F64)
    scales = 0.1 + 0.2 * torch.rand(N, 3, generator=g, dtype=F64)
    scales[0] = 0.4
    viewmats, Ks, W, H = _cameras(dtype=F64)
    opac = torch.full((N,), 0.8, dtype=F64)
    out = project_gaussians_warp(means, quats, scales, viewmats, Ks, W, H, opacities=opac, calc_compensations=True)
    assert bool((out.radii > 0).all())

    def f(m, q, s):
        o = project_gaussians_warp(m, q, s, viewmats, Ks, W, H, opacities=opac, calc_compensations=True)
        return o.means2d, o.depths, o.conics, o.compensations

    inputs = tuple(t.clone().requires_grad_() for t in (means, quats, scales))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 3])
def test_warp_binning_matches_torch(garden_view, threads):
    """Same intersection list (ids and order) from the Warp key kernel as from the torch expansion,
    over two cameras, with duplicated Gaussians (equal depths: ties keep the Gaussian order)."""
    pts, _, view, K, W, H = garden_view(96, 16)
    pts = torch.cat([pts, pts[:50]])  # exact depth ties
    N = pts.shape[0]
    view2 = view.clone()
    view2[0, :3, 3] += torch.tensor([0.2, 0.0, 0.1])
    proj = project_gaussians(pts, torch.tensor([1.0, 0, 0, 0]).repeat(N, 1), torch.full((N, 3), 0.03),
                             torch.cat([view, view2]), K.repeat(2, 1, 1), W, H)
    tw, th = math.ceil(W / 16), math.ceil(H / 16)
    torch.set_num_threads(threads)
    ref = isect_tiles(proj.means2d, proj.radii, proj.depths, 16, tw, th)
    out = isect_tiles(proj.means2d, proj.radii, proj.depths, 16, tw, th, backend="warp")
    torch.set_num_threads(1)
    assert ref[1].numel() > 2 * N and bool((ref[0] > 1).any())
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_warp_threads_match_one_thread(garden_view):
    """The CPU launch cut into row / Gaussian blocks over 3 threads (per-worker gradient buffers,
    summed) gives the single-threaded results, both match the reference, and a repeat gives the
    same bits (fixed shares per worker: training is reproducible)."""
    pts, rgb, view, K, W, H = garden_view(64, 32)
    N = pts.shape[0]
    quats = torch.randn(N, 4, generator=torch.Generator().manual_seed(0))
    results = []
    for backend, threads in (("torch", 1), ("warp", 1), ("warp", 3), ("warp", 3)):
        torch.set_num_threads(threads)
        leaves = [t.clone().requires_grad_() for t in (pts, quats, torch.full((N, 3), 0.02), torch.full((N,), 0.9), rgb)]
        img, alpha, _ = rasterization(*leaves, view, K, W, H, backend=backend)
        w = torch.linspace(0, 1, img.numel()).reshape(img.shape)
        ((img * w).sum() + alpha.sum()).backward()
        results.append([img.detach(), alpha.detach(), *(t.grad for t in leaves)])
    torch.set_num_threads(1)
    ref, one, three, again = results
    assert all(torch.equal(a, b) for a, b in zip(three, again, strict=True))
    for a, b, r in zip(three, one, ref, strict=True):
        scale = max(1.0, float(r.abs().max()))
        assert float((a - b).abs().max()) <= 1e-5 * scale  # only the summation order differs
        assert float((a - r).abs().median()) <= 1e-6 * scale


def test_garden_points_warp_matches_torch(garden_view):
    pts, rgb, view, K, W, H = garden_view(64, 32)
    N = pts.shape[0]
    quats = torch.tensor([1.0, 0, 0, 0]).repeat(N, 1)
    results = []
    for backend in ("torch", "warp"):
        leaves = [t.clone().requires_grad_() for t in (pts, torch.full((N, 3), 0.02), torch.full((N,), 0.9), rgb)]
        img, alpha, _ = rasterization(leaves[0], quats, leaves[1], leaves[2], leaves[3], view, K, W, H, backend=backend)
        w = torch.linspace(0, 1, img.numel()).reshape(img.shape)
        ((img * w).sum() + alpha.sum()).backward()
        results.append([img.detach(), alpha.detach(), *(t.grad for t in leaves)])
    assert float(results[0][1].mean()) > 0.3
    for a, b in zip(results[1], results[0], strict=True):
        assert torch.isfinite(a).all()
        # float32, sums over up to a few hundred Gaussians per pixel; a rare pixel may flip a cut-off
        # (rounding differs between the chunked and the sequential product), hence the median check
        err = (a - b).abs()
        scale = max(1.0, float(b.abs().max()))
        assert float(err.median()) <= 1e-6 * scale
        assert float((err > 1e-4 * scale).float().mean()) < 1e-3


def test_backend_dispatch(monkeypatch):
    means, quats, scales, opac, colors = _scene(2)
    viewmats, Ks, W, H = _cameras()
    args = (means, quats, scales, opac, colors, viewmats, Ks, W, H)
    monkeypatch.delenv("RECON_BACKEND", raising=False)
    assert rasterization(*args)[2]["backend"] == "warp"  # auto: Warp on CPU
    assert rasterization(*args, backend="auto")[2]["backend"] == "warp"
    assert rasterization(*args, backend="torch")[2]["backend"] == "torch"
    monkeypatch.setenv("RECON_BACKEND", "torch")
    assert rasterization(*args)[2]["backend"] == "torch"
    assert rasterization(*args, backend="warp")[2]["backend"] == "warp"  # the argument wins
    monkeypatch.setenv("RECON_BACKEND", "warp")
    assert rasterization(*args)[2]["backend"] == "warp"
    # rasterize_to_pixels dispatches the same way.
    inputs, geo, _ = _random_2d(4, D=2)
    ref = composite.rasterize_to_pixels(*inputs, *geo)[0]
    for backend in (None, "warp", "torch", "auto"):
        _assert_close(rasterize_to_pixels(*inputs, *geo, backend=backend)[0], ref, 1e-9)
    with pytest.raises(ValueError, match="CUDA-only"):
        rasterize_to_pixels(*inputs, *geo, backend="gsplat")


def test_warp_is_installed():
    assert warp_available(), (
        f"warp-lang does not import ({warp_backend.warp_import_error()}); it is a dependency of recon: "
        "pip install 'warp-lang>=1.9' (or make install)"
    )


@pytest.fixture
def warp_missing(monkeypatch):
    """warp-lang made unimportable (``import warp`` raises ImportError) for one test; the cached
    availability is recomputed on entry and again on exit, with the real module back in place."""
    monkeypatch.setitem(sys.modules, "warp", None)
    warp_backend._warp.cache_clear()
    warp_backend.warp_import_error.cache_clear()
    yield
    monkeypatch.undo()
    warp_backend._warp.cache_clear()
    warp_backend.warp_import_error.cache_clear()
    assert warp_available()


def test_cpu_without_warp_raises_instead_of_falling_back(warp_missing, monkeypatch):
    """A broken installation must not silently train 5-8x slower on the reference: "auto" and "warp"
    raise for CPU tensors, naming the cause and the fix; the reference stays reachable on purpose."""
    means, quats, scales, opac, colors = _scene(5)
    viewmats, Ks, W, H = _cameras()
    args = (means, quats, scales, opac, colors, viewmats, Ks, W, H)
    monkeypatch.delenv("RECON_BACKEND", raising=False)
    assert not warp_available()
    for backend, source in ((None, "RECON_BACKEND=auto"), ("auto", "backend='auto'"), ("warp", "backend='warp'")):
        with pytest.raises(ImportError, match=f"{source}: warp-lang does not import .*pip install 'warp-lang>=1.9'.*RECON_BACKEND=torch"):
            rasterization(*args, backend=backend)
    inputs, geo, _ = _random_2d(4, D=2)
    with pytest.raises(ImportError, match="warp-lang does not import"):
        rasterize_to_pixels(*inputs, *geo)
    assert rasterization(*args, backend="torch")[2]["backend"] == "torch"
    monkeypatch.setenv("RECON_BACKEND", "torch")
    assert rasterization(*args)[2]["backend"] == "torch"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (F64, 1e-9)])
def test_warp_cuda_matches_torch_cpu(dtype, tol):
    inputs, (W, H, tile, offsets, fids), bg = _random_2d(5, dtype=dtype)
    results = []
    for device in ("cpu", "cuda"):
        leaves = [t.to(device).clone().requires_grad_() for t in (*inputs, bg)]
        fn = composite.rasterize_to_pixels if device == "cpu" else rasterize_to_pixels_warp
        img, alpha = fn(*leaves[:4], W, H, tile, offsets.to(device), fids.to(device), backgrounds=leaves[4])
        assert img.device.type == device
        w = torch.linspace(-1, 1, img.numel(), dtype=dtype, device=device).reshape(img.shape)
        ((img * w).sum() + (alpha**2).sum()).backward()
        results.append([img.detach().cpu(), alpha.detach().cpu(), *(t.grad.cpu() for t in leaves)])
    for a, b in zip(results[1], results[0], strict=True):
        _assert_close(a, b, tol)
    # and through the whole rasterization, CUDA Warp vs CPU torch
    means, quats, scales, opac, colors = _scene(3, dtype=dtype)
    viewmats, Ks, W, H = _cameras(dtype=dtype)
    cpu = rasterization(means, quats, scales, opac, colors, viewmats, Ks, W, H, backend="torch")
    gpu = rasterization(*(t.cuda() for t in (means, quats, scales, opac, colors, viewmats, Ks)), W, H, backend="warp")
    assert gpu[2]["backend"] == "warp"
    _assert_close(gpu[0].cpu(), cpu[0], tol)
    _assert_close(gpu[1].cpu(), cpu[1], tol)
