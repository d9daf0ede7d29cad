"""The Warp convex compositor (recon.render.convex.warp_composite) against the PyTorch reference.

Images, alphas and every gradient (edges, sharp_delta, sharp_sigma, colours, opacities, backgrounds,
and through the projection points, delta, sigma, opacities and SH) must agree with the reference to
rounding: 1e-10 in float64, ~1e-5 in float32; for K = 3, 6, 8 edge slots, several tile sizes, two
cameras, empty tiles, a convex stopped by the transmittance rule and one clamped at alpha 0.99;
plus a float64 gradcheck of the hand-written backward, the multi-threaded launch (bit-identical
repeats) on a 64x64 scene of 3000 convexes, real SfM points, and the backend dispatch.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from recon.render.convex import (
    convex_alpha,
    project_convexes,
    rasterize_convexes,
    rasterize_convexes_to_pixels,
    rasterize_convexes_to_pixels_warp,
    resolve_convex_backend,
)
from recon.render.gaussians import isect_offset_encode, isect_tiles, warp_backend

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
STACK_DEPTHS = (2.0, 2.1, 2.2)


def _cameras(W=37, H=29, dtype=F64):
    """Two pinhole cameras (the second turned about y and shifted); sizes not multiples of a tile."""
    K = torch.tensor([[40.0, 0, W / 2 - 0.3], [0, 41.0, H / 2 + 0.2], [0, 0, 1]], dtype=F64)
    v1 = torch.eye(4, dtype=F64)
    ang = 0.12
    v1[:3, :3] = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]], dtype=F64)
    v1[:3, 3] = torch.tensor([0.25, -0.05, 0.1], dtype=F64)
    viewmats = torch.stack([torch.eye(4, dtype=F64), v1])
    return viewmats.to(dtype), torch.stack([K, K * torch.tensor([[1.04], [0.98], [1]], dtype=F64)]).to(dtype), W, H


def _polygon(k, radius, center):
    ang = torch.arange(k, dtype=F64) * (2 * math.pi / k) + 0.3
    return torch.stack([center[0] + radius * torch.cos(ang), center[1] + radius * torch.sin(ang), torch.full((k,), center[2])], -1)


def _scene(K, n=30, seed=0, dtype=F64):
    """n random convexes of K points over the left of camera 0's image (its right columns stay
    empty), then: a faint convex (alpha below 1/255 at most pixels), an opaque sharp stack of three
    K-gons in front of the image centre (opacity 0.98: the third, smaller, would take T to
    8e-6 < 1e-4, so the compositing stops before it) and one convex clamped at alpha 0.99."""
    g = torch.Generator().manual_seed(seed)
    z = 2.6 + 1.4 * torch.rand(n, generator=g, dtype=F64)
    xy = torch.stack([-0.45 + 0.45 * torch.rand(n, generator=g, dtype=F64), (torch.rand(n, generator=g, dtype=F64) - 0.5) * 0.9], -1) * z[:, None] / 2
    centers = torch.cat([xy, z[:, None]], 1)
    # Jittered regular K-gons turned at random: hulls without near-straight corners, whose mitred
    # footprints would cover the whole image (the test needs empty tiles).
    rot = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=F64))[0]
    flat = _polygon(K, 1.0, (0.0, 0.0, 0.0)) + 0.1 * torch.randn(n, K, 3, generator=g, dtype=F64)
    radius = 0.1 + 0.12 * torch.rand(n, 1, 1, generator=g, dtype=F64)
    points = centers[:, None] + radius * torch.einsum("nij,nkj->nki", rot, flat)
    delta = 0.5 + torch.rand(n, generator=g, dtype=F64)
    sigma = 0.3 + torch.rand(n, generator=g, dtype=F64)
    opac = 0.2 + 0.75 * torch.rand(n, generator=g, dtype=F64)
    extra = [
        (_polygon(K, 0.15, (-0.3, 0.2, 1.8)), 0.2, 0.2, 0.006),  # faint
        (_polygon(K, 0.3, (0.02, 0.0, STACK_DEPTHS[0])), 1.0, 1.0, 0.98),
        (_polygon(K, 0.3, (0.02, 0.0, STACK_DEPTHS[1])), 1.0, 1.0, 0.98),
        (_polygon(K, 0.08, (0.02, 0.0, STACK_DEPTHS[2])), 1.0, 1.0, 0.98),  # hidden by the stop
        (_polygon(K, 0.2, (-0.5, -0.35, 2.4)), 1.0, 1.0, 0.995),  # clamped at 0.99
    ]
    points = torch.cat([points, torch.stack([e[0] for e in extra])])
    delta = torch.cat([delta, torch.tensor([e[1] for e in extra], dtype=F64)])
    sigma = torch.cat([sigma, torch.tensor([e[2] for e in extra], dtype=F64)])
    opac = torch.cat([opac, torch.tensor([e[3] for e in extra], dtype=F64)])
    colors = torch.rand(points.shape[0], 3, generator=g, dtype=F64)
    return tuple(t.to(dtype) for t in (points, delta, sigma, opac, colors))


def _binned(K, dtype, tile, seed=0):
    """The composite's inputs for :func:`_scene` in :func:`_cameras`: projection, depth appended as
    a fourth channel (RGB+D), binning."""
    points, delta, sigma, opac, colors = _scene(K, seed=seed, dtype=dtype)
    viewmats, Ks, W, H = _cameras(dtype=dtype)
    C, N = viewmats.shape[0], points.shape[0]
    proj = project_convexes(points, delta, sigma, viewmats, Ks, W, H, opacities=opac)
    tw, th = math.ceil(W / tile), math.ceil(H / tile)
    _, isect_ids, flatten_ids = isect_tiles(proj.box_centers, proj.radii, proj.depths, tile, tw, th)
    offsets = isect_offset_encode(isect_ids, C, tw, th)
    channels = torch.cat([colors[None].expand(C, N, 3), proj.depths[..., None]], -1)
    bg = torch.tensor([[0.2, 0.5, 0.9, 0.0], [0.7, 0.1, 0.3, 0.0]], dtype=dtype)
    leaves = (proj.edges, proj.sharp_delta, proj.sharp_sigma, channels, opac[None].expand(C, N), bg)
    return leaves, proj.edge_mask, (W, H, tile, offsets, flatten_ids)


def _composite_with_grads(fn, leaves, edge_mask, layout, seed=7):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    edges, sd, ss, colors, opac, bg = leaves
    W, H, tile, offsets, flatten_ids = layout
    img, alpha = fn(edges, edge_mask, sd, ss, colors, opac, W, H, tile, offsets, flatten_ids, backgrounds=bg)
    g = torch.Generator().manual_seed(seed)
    loss = (img * torch.rand(img.shape, generator=g, dtype=F64).to(img)).sum()
    (loss + (alpha * torch.rand(alpha.shape, generator=g, dtype=F64).to(img)).sum()).backward()
    return img.detach(), alpha.detach(), {k: t.grad for k, t in zip(("edges", "sharp_delta", "sharp_sigma", "colors", "opacities", "bg"), leaves, strict=True)}


def _assert_close(a, b, tol):
    scale = max(1.0, float(b.detach().abs().max()))
    assert float((a - b).detach().abs().max()) <= tol * scale, float((a - b).abs().max()) / scale


# float32: measured <= 1e-6 relative to each gradient's largest entry (the kernels sum per pixel in
# sequence, the reference in vectorised cumulative products).
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (F64, 1e-10)])
@pytest.mark.parametrize("K", [3, 6, 8])
@pytest.mark.parametrize("tile", [8, 16])
def test_composite_warp_matches_torch(dtype, tol, K, tile):
    leaves, edge_mask, layout = _binned(K, dtype, tile)
    ref = _composite_with_grads(rasterize_convexes_to_pixels, leaves, edge_mask, layout)
    out = _composite_with_grads(rasterize_convexes_to_pixels_warp, leaves, edge_mask, layout)
    W, H, _, offsets, flatten_ids = layout
    alpha = ref[1]
    # The scene: empty tiles (and pixels), the stack stops before its third convex (1 - 0.02^2 at
    # its centre, pixel (18, 14), not 1 - 0.02^3), a convex whose raw alpha exceeds the 0.99 clamp.
    counts = torch.diff(offsets.reshape(-1), append=offsets.new_tensor([flatten_ids.numel()]))
    assert bool((counts == 0).any()) and float(alpha.min()) == 0.0
    assert float(alpha[0, 14, 18]) == pytest.approx(1 - 0.02**2, abs=2e-5)
    n = leaves[1].shape[1]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dtype) + 0.5, torch.arange(W, dtype=dtype) + 0.5, indexing="ij")
    last = slice(n - 1, n)
    raw = convex_alpha(xs.reshape(-1, 1), ys.reshape(-1, 1), leaves[0][0, last][None], edge_mask[0, last][None],
                       leaves[1][0, last][None], leaves[2][0, last][None], leaves[4][0, last][None])
    assert float(raw.max()) > 0.99
    for a, b in ((out[0], ref[0]), (out[1], ref[1])):
        assert a.dtype == dtype
        _assert_close(a, b, tol)
    for name, g_ref in ref[2].items():
        g = out[2][name]
        assert g is not None and g.dtype == dtype and float(g_ref.abs().max()) > 0, name
        _assert_close(g, g_ref, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (F64, 1e-10)])
def test_rasterize_convexes_warp_matches_torch_through_projection(dtype, tol):
    """The whole render with SH colours in RGB+ED: gradients reach points, delta, sigma, opacities
    and the SH coefficients the same way through either compositor."""
    points, delta, sigma, opac, _ = _scene(6, seed=3, dtype=dtype)
    viewmats, Ks, W, H = _cameras(dtype=dtype)
    sh = torch.randn(points.shape[0], 4, 3, generator=torch.Generator().manual_seed(2), dtype=F64).to(dtype) * 0.3
    results = []
    for backend in ("torch", "warp"):
        leaves = [t.clone().requires_grad_() for t in (points, delta, sigma, opac, sh)]
        img, alpha, meta = rasterize_convexes(*leaves, viewmats, Ks, W, H, sh_degree=1, render_mode="RGB+ED", tile_size=8, backend=backend)
        assert meta["backend"] == backend and img.shape == (2, H, W, 4)
        w = torch.linspace(-1, 1, img.numel(), dtype=dtype).reshape(img.shape)
        ((img * w).sum() + alpha.square().sum()).backward()
        results.append([img.detach(), alpha.detach(), *(t.grad for t in leaves)])
    for a, b in zip(results[1], results[0], strict=True):
        assert torch.isfinite(a).all() and float(b.abs().max()) > 0
        _assert_close(a, b, tol)


def _projection_cases(dtype):
    """Random convexes in front of, across and behind the near plane of two cameras, and hand-made
    degenerate ones: collinear points on a hull side, a coincident corner, all points collinear,
    all coincident, a very soft convex (large footprint) and a K = 3 sliver."""
    g = torch.Generator().manual_seed(11)
    n, K = 200, 6
    centers = torch.cat([(torch.rand(n, 2, generator=g) - 0.5) * 2.5, 0.5 + 4 * torch.rand(n, 1, generator=g)], 1)
    centers[:10, 2] = torch.linspace(-0.3, 0.2, 10)  # across / behind the near plane
    points = centers[:, None, :] + 0.05 * torch.randn(n, K, 3, generator=g)
    z = torch.tensor([2.0])
    square = torch.tensor([[0, 0], [0.4, 0], [0.4, 0.4], [0, 0.4], [0.2, 0], [0, 0]])  # a mid-side point, a copy of corner 0
    line = torch.stack([torch.linspace(0, 0.5, K), torch.linspace(0, 0.25, K)], 1)
    special = [torch.cat([square, z.expand(K, 1)], 1), torch.cat([line, z.expand(K, 1)], 1), torch.full((K, 3), 1.0)]
    points = torch.cat([points, torch.stack(special)])
    N = points.shape[0]
    delta = 10 ** (2 * torch.rand(N, generator=g) - 1) * 20
    sigma = 10 ** (2 * torch.rand(N, generator=g) - 1) * 0.01
    sigma[-4] = 1e-5  # very soft: the footprint is much larger than the hull
    opac = 0.02 + 0.97 * torch.rand(N, generator=g)
    tri = points[:50, :3].clone()
    return [(points.to(dtype), delta.to(dtype), sigma.to(dtype), opac.to(dtype)),
            (tri.to(dtype), delta[:50].to(dtype), sigma[:50].to(dtype), opac[:50].to(dtype))]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (F64, 1e-11)])
def test_warp_projection_matches_torch(dtype, tol):
    """The Warp projection (points to pixels, hull, edge functions, footprint; hand-written
    backward) gives the reference's edges, masks and boxes, and the same gradients reach the
    points, delta and sigma through the edges, the scaled smoothness/sharpness, the depths and the
    projected centres."""
    viewmats, Ks, W, H = _cameras(W=64, H=48, dtype=dtype)
    for points, delta, sigma, opac in _projection_cases(dtype):
        outs = []
        for backend in ("torch", "warp"):
            leaves = [t.clone().requires_grad_() for t in (points, delta, sigma)]
            proj = project_convexes(*leaves, viewmats, Ks, W, H, opacities=opac, backend=backend)
            g = torch.Generator().manual_seed(5)
            w = torch.randn(proj.edges.shape, generator=g, dtype=F64).to(dtype)
            wc = torch.randn(proj.centers2d.shape, generator=g, dtype=F64).to(dtype)
            loss = (proj.edges * w).sum() + proj.sharp_delta.sum() + proj.sharp_sigma.square().sum()
            loss = loss + (proj.centers2d * wc).sum() + (proj.depths * proj.radii[..., 0].gt(0)).sum()
            loss.backward()
            outs.append((proj, [t.grad for t in leaves]))
        (ref, ref_grads), (got, got_grads) = outs
        assert torch.equal(got.edge_mask, ref.edge_mask)
        assert int(ref.edge_mask.any(-1).sum()) > 10  # the comparison covers visible convexes
        assert torch.equal(got.radii, ref.radii)
        _assert_close(got.edges, ref.edges, tol)
        _assert_close(got.depths, ref.depths, tol)
        _assert_close(got.centers2d, ref.centers2d, tol)
        # float32: the edges differ by rounding, which a very soft convex's box (1e5 px) multiplies.
        assert torch.allclose(got.box_centers, ref.box_centers, rtol=0 if dtype == F64 else 1e-5, atol=1e-9 if dtype == F64 else 1e-3)
        for a, b in zip(got_grads, ref_grads, strict=True):
            assert float(b.abs().max()) > 0
            _assert_close(a, b, tol)


def test_warp_projection_gradcheck_float64():
    """The hand-written backward of the fused Warp projection against finite differences, through
    the edges, depths and centres of convexes in front of the camera."""
    from recon.render.convex.warp_projection import project_convex_points_warp

    viewmats, Ks, W, H = _cameras(W=64, H=48)
    points = _projection_cases(F64)[0][0][20:32].clone().requires_grad_()

    def fn(p):
        edges, _, _, _, depth, center2d, _ = project_convex_points_warp(p, viewmats, Ks, 0.01, 1e10)
        return edges, depth, center2d

    assert int(fn(points)[1].gt(0.01).sum()) > 5
    assert torch.autograd.gradcheck(fn, (points,), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_warp_projection_leaves_camera_gradients_to_torch():
    """Cameras that need a gradient (pose refinement) take the torch edge functions: the Warp
    backward gives none to the cameras, and the gradient must still reach them."""
    viewmats, Ks, W, H = _cameras(W=64, H=48)
    points, delta, sigma, opac = _projection_cases(F64)[0]
    grads = []
    for backend in ("torch", "warp"):
        v = viewmats.clone().requires_grad_()
        proj = project_convexes(points, delta, sigma, v, Ks, W, H, opacities=opac, backend=backend)
        (proj.edges.square().sum() + proj.depths.sum()).backward()
        grads.append(v.grad)
    assert float(grads[0].abs().max()) > 0
    _assert_close(grads[1], grads[0], 1e-11)


def _random_2d(seed, C=2, N=25, E=7, D=5, W=23, H=19, tile=5, dtype=F64):
    """Edges that form no particular hull (the compositor does not need one), valid slots anywhere
    among the E (some convexes with none), any channel count; boxes from the edges' region."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(C, N, E, generator=g, dtype=F64) * 2 * math.pi
    length = 2 + 6 * torch.rand(C, N, E, generator=g, dtype=F64)
    centre = torch.rand(C, N, 2, generator=g, dtype=F64) * torch.tensor([W, H], dtype=F64)
    offset = 1 + 4 * torch.rand(C, N, E, generator=g, dtype=F64)
    normal = torch.stack([torch.cos(angle), torch.sin(angle)], -1) * length[..., None]
    h = -(normal * centre[:, :, None]).sum(-1) - offset * length  # L = -offset * length at the centre
    edges = torch.cat([normal, h[..., None]], -1)
    edge_mask = torch.rand(C, N, E, generator=g) < 0.6
    edge_mask[:, 0] = False
    sd = 0.02 + 0.2 * torch.rand(C, N, generator=g, dtype=F64)
    ss = 0.05 + 0.5 * torch.rand(C, N, generator=g, dtype=F64)
    opac = 0.1 + 0.85 * torch.rand(C, N, generator=g, dtype=F64)
    colors = torch.randn(C, N, D, generator=g, dtype=F64)
    depths = 1 + torch.rand(C, N, generator=g, dtype=F64)
    radii = torch.full((C, N, 2), 12, dtype=torch.int32)
    tw, th = math.ceil(W / tile), math.ceil(H / tile)
    _, isect_ids, flatten_ids = isect_tiles(centre, radii, depths, tile, tw, th)
    offsets = isect_offset_encode(isect_ids, C, tw, th)
    bg = torch.rand(C, D, generator=g, dtype=F64)
    leaves = tuple(t.to(dtype) for t in (edges, sd, ss, colors, opac, bg))
    return leaves, edge_mask, (W, H, tile, offsets, flatten_ids)


@pytest.mark.parametrize("D", [1, 5])
def test_any_edge_slots_and_channels(D):
    """Valid slots not compacted to the front, convexes without edges, 1 or 5 channels, tiles of 5."""
    leaves, edge_mask, layout = _random_2d(1, D=D)
    ref = _composite_with_grads(rasterize_convexes_to_pixels, leaves, edge_mask, layout)
    out = _composite_with_grads(rasterize_convexes_to_pixels_warp, leaves, edge_mask, layout)
    assert float(ref[1].max()) > 0.9
    for a, b in zip((out[0], out[1], *out[2].values()), (ref[0], ref[1], *ref[2].values()), strict=True):
        _assert_close(a, b, 1e-10)
    assert float(out[2]["edges"][:, 0].abs().max()) == 0.0  # no edges, no gradient
    assert float(out[2]["edges"][~edge_mask].abs().max()) == 0.0


def test_warp_composite_gradcheck_float64():
    """The hand-written backward against finite differences, on soft convexes with moderate opacity
    (no pixel near alpha 1/255, the 0.99 clamp or T = 1e-4; the lists are fixed by the binning)."""
    leaves, edge_mask, (W, H, tile, offsets, flatten_ids) = _random_2d(4, N=6, E=5, D=2, W=11, H=9, tile=4)
    edges, sd, ss, colors, opac, bg = leaves
    sd, ss, opac = sd * 0 + 0.03, ss * 0 + 0.08, opac * 0 + 0.5

    def render(*x):
        return rasterize_convexes_to_pixels_warp(x[0], edge_mask, *x[1:5], W, H, tile, offsets, flatten_ids, backgrounds=x[5])

    img, alpha = render(edges, sd, ss, colors, opac, bg)
    assert float(alpha.max()) > 0.3
    inputs = tuple(t.clone().requires_grad_() for t in (edges, sd, ss, colors, opac, bg))
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def _big_scene(n=3000, size=64):
    """n random convexes of 6 points in front of a size x size camera, float32."""
    g = torch.Generator().manual_seed(5)
    z = 2 + 3 * torch.rand(n, generator=g)
    xy = (torch.rand(n, 2, generator=g) - 0.5) * 0.9 * z[:, None]
    points = torch.cat([xy, z[:, None]], 1)[:, None] + torch.randn(n, 6, 3, generator=g) * 0.05
    K = torch.tensor([[[1.0 * size, 0, size / 2], [0, 1.0 * size, size / 2], [0, 0, 1]]])
    params = (points, 0.3 + torch.rand(n, generator=g), 0.3 + torch.rand(n, generator=g), 0.2 + 0.75 * torch.rand(n, generator=g), torch.rand(n, 3, generator=g))
    return params, torch.eye(4)[None], K, size, size


def _render_grads(params, view, K, W, H, backend):
    leaves = [t.clone().requires_grad_() for t in params]
    img, alpha, meta = rasterize_convexes(*leaves, view, K, W, H, backend=backend)
    w = torch.linspace(0, 1, img.numel()).reshape(img.shape)
    ((img * w).sum() + alpha.sum()).backward()
    return [img.detach(), alpha.detach(), *(t.grad for t in leaves)], meta


def test_threads_give_reproducible_bits_on_thousands_of_convexes():
    """64x64, 3000 convexes (float32): 2 threads (row blocks, per-worker gradient buffers summed in
    a fixed order) repeat bit for bit, match one thread up to summation order, and the reference."""
    params, view, K, W, H = _big_scene()
    results = []
    for backend, threads in (("torch", 1), ("warp", 1), ("warp", 2), ("warp", 2)):
        torch.set_num_threads(threads)
        out, meta = _render_grads(params, view, K, W, H, backend)
        results.append(out)
    ref, one, two, again = results
    assert meta["flatten_ids"].numel() > 4000 and float(ref[1].mean()) > 0.5
    assert all(torch.equal(a, b) for a, b in zip(two, again, strict=True))
    for a, b, r in zip(two, one, ref, strict=True):
        scale = max(1.0, float(r.abs().max()))
        assert float((a - b).abs().max()) <= 1e-5 * scale
        err = (a - r).abs()
        # a rare pixel may flip a cut-off (alpha 1/255 or T 1e-4) between the two summation orders
        assert float(err.median()) <= 1e-6 * scale and float((err > 1e-4 * scale).float().mean()) < 1e-3


def test_garden_points_as_convexes(garden_view):
    """Real SfM points (every 40th of garden, about 3500) as small tetrahedra-like convexes."""
    pts, rgb, view, K, W, H = garden_view(64, 40)
    n = pts.shape[0]
    offsets = torch.randn(n, 4, 3, generator=torch.Generator().manual_seed(0)) * 0.03
    params = (pts[:, None] + offsets, torch.full((n,), 2.0), torch.full((n,), 2.0), torch.full((n,), 0.8), rgb)
    ref, _ = _render_grads(params, view, K, W, H, "torch")
    out, meta = _render_grads(params, view, K, W, H, "warp")
    assert meta["backend"] == "warp" and float(ref[1].mean()) > 0.3
    for a, b in zip(out, ref, strict=True):
        assert torch.isfinite(a).all()
        err = (a - b).abs()
        scale = max(1.0, float(b.abs().max()))
        assert float(err.median()) <= 1e-6 * scale and float((err > 1e-4 * scale).float().mean()) < 1e-3


def test_backend_dispatch(monkeypatch):
    points, delta, sigma, opac, colors = _scene(4, n=5)
    viewmats, Ks, W, H = _cameras()
    args = (points, delta, sigma, opac, colors, viewmats, Ks, W, H)
    monkeypatch.delenv("RECON_BACKEND", raising=False)
    assert rasterize_convexes(*args)[2]["backend"] == "warp"  # auto: Warp on CPU
    assert rasterize_convexes(*args, backend="torch")[2]["backend"] == "torch"
    monkeypatch.setenv("RECON_BACKEND", "torch")
    assert rasterize_convexes(*args)[2]["backend"] == "torch"
    assert rasterize_convexes(*args, backend="warp")[2]["backend"] == "warp"  # the argument wins
    monkeypatch.setenv("RECON_BACKEND", "nerfacc")  # concerns the volume scans: auto here
    assert rasterize_convexes(*args)[2]["backend"] == "warp"
    assert resolve_convex_backend("auto", torch.device("cuda")) == "torch"  # Warp CUDA only when asked for
    monkeypatch.setenv("RECON_BACKEND", "gsplat")
    with pytest.raises(ValueError, match="RECON_BACKEND=gsplat: gsplat has no smooth-convex rasterizer"):
        rasterize_convexes(*args)
    with pytest.raises(ValueError, match="backend='gsplat'"):
        rasterize_convexes(*args, backend="gsplat")
    with pytest.raises(ValueError, match="'auto', 'torch' or 'warp'"):
        resolve_convex_backend("nerfacc")


def test_cpu_without_warp_raises_instead_of_falling_back(monkeypatch):
    """A broken warp-lang is an ImportError naming the cause and the fix for "auto" and "warp" on
    CPU tensors; the reference stays reachable on purpose."""
    points, delta, sigma, opac, colors = _scene(3, n=5)
    viewmats, Ks, W, H = _cameras()
    args = (points, delta, sigma, opac, colors, viewmats, Ks, W, H)
    monkeypatch.delenv("RECON_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "warp", None)  # import warp raises ImportError
    caches = (warp_backend._warp, warp_backend.warp_import_error)
    for cache in caches:
        cache.cache_clear()
    try:
        for backend in (None, "auto", "warp"):
            with pytest.raises(ImportError, match="warp-lang does not import .*RECON_BACKEND=torch"):
                rasterize_convexes(*args, backend=backend)
        assert rasterize_convexes(*args, backend="torch")[2]["backend"] == "torch"
    finally:
        monkeypatch.undo()
        for cache in caches:
            cache.cache_clear()
    assert warp_backend.warp_available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (F64, 1e-10)])
def test_warp_cuda_matches_torch_cpu(dtype, tol):
    """The same kernel source on CUDA (atomics in any order: tolerance, not bits)."""
    leaves, edge_mask, (W, H, tile, offsets, fids) = _binned(6, dtype, 8)
    ref = _composite_with_grads(rasterize_convexes_to_pixels, leaves, edge_mask, (W, H, tile, offsets, fids))
    cuda = [t.cuda() for t in leaves]
    out = _composite_with_grads(rasterize_convexes_to_pixels_warp, cuda, edge_mask.cuda(), (W, H, tile, offsets.cuda(), fids.cuda()))
    for a, b in zip((out[0], out[1], *out[2].values()), (ref[0], ref[1], *ref[2].values()), strict=True):
        assert a.is_cuda
        _assert_close(a.cpu(), b, tol)
