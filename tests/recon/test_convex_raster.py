"""Smooth-convex rasterizer: hulls, footprints, and the tiled reference against a dense oracle."""

from __future__ import annotations

import math

import pytest
import torch

from recon.render.convex import hull_edge_pairs, project_convexes, rasterize_convexes
from recon.render.convex.composite import MAX_ALPHA
from recon.render.gaussians import ALPHA_THRESHOLD, TRANSMITTANCE_THRESHOLD, spherical_harmonics


def hull_set(q: torch.Tensor) -> set[tuple[int, int]]:
    pair = hull_edge_pairs(q)
    return {(int(a), int(b)) for a, b in torch.nonzero(pair).tolist()}


def cycle(edges: set[tuple[int, int]]) -> list[int]:
    nxt = dict(edges)
    start = min(nxt)
    out, v = [start], nxt[start]
    while v != start:
        out.append(v)
        v = nxt[v]
    return out


@pytest.mark.parametrize("K", [3, 4, 5, 6, 7, 8])
def test_hull_matches_scipy_on_random_points(K):
    from scipy.spatial import ConvexHull

    g = torch.Generator().manual_seed(K)
    for _ in range(50):
        q = torch.rand(K, 2, generator=g, dtype=torch.float64) * 100
        edges = hull_set(q)
        ref = ConvexHull(q.numpy()).vertices.tolist()  # counter-clockwise in a y-up frame
        assert sorted(cycle(edges)) == sorted(ref)
        assert len(edges) == len(ref)  # a closed cycle: one edge leaves each hull vertex
        # Every point lies on the inner side of every edge: L_e(q_k) <= 0.
        for a, b in edges:
            n = torch.tensor([q[b, 1] - q[a, 1], -(q[b, 0] - q[a, 0])], dtype=torch.float64)
            assert float(((q - q[a]) @ n).max()) <= 1e-9


def test_hull_with_collinear_and_coincident_points():
    square = torch.tensor([[0, 0], [4, 0], [4, 4], [0, 4]], dtype=torch.float64)
    # Midpoints of two sides (collinear with their side) and a copy of a corner.
    q = torch.cat([square, torch.tensor([[2.0, 0.0], [4.0, 2.0], [0.0, 0.0]], dtype=torch.float64)])
    edges = hull_set(q)
    assert len(edges) == 4 and set(cycle(edges)) == {0, 1, 2, 3}  # only the corners, the lower index
    # All collinear: a degenerate two-edge "hull" (there and back), which projection culls.
    line = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3]], dtype=torch.float64)
    assert hull_set(line) == {(0, 3), (3, 0)}
    # All coincident.
    assert len(hull_set(torch.ones(5, 2, dtype=torch.float64))) == 0


def camera(width=48, height=40, f=40.0, dtype=torch.float64):
    viewmat = torch.eye(4, dtype=dtype)[None]
    K = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]], dtype=dtype)
    return viewmat, K, width, height


def random_convexes(n, K, seed, dtype=torch.float64, spread=0.6, size=0.25, depth=3.0):
    g = torch.Generator().manual_seed(seed)
    centers = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * spread * torch.tensor([1.6, 1.2, 0.5], dtype=dtype)
    centers[:, 2] += depth
    offsets = torch.randn(n, K, 3, generator=g, dtype=dtype) * size * (0.3 + torch.rand(n, 1, 1, generator=g, dtype=dtype))
    points = centers[:, None] + offsets
    delta = 0.05 + 0.3 * torch.rand(n, generator=g, dtype=dtype)
    sigma = 0.02 + 0.2 * torch.rand(n, generator=g, dtype=dtype)
    opacities = 0.3 + 0.6 * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return points, delta, sigma, opacities, colors


def dense_oracle(points, delta, sigma, opacities, colors, viewmat, K, width, height, background, scaling_exponent=1.0):
    """Every pixel against every convex, no tiles, no footprint: the equations of the module docstrings."""
    proj = project_convexes(points, delta, sigma, viewmat, K, width, height, scaling_exponent=scaling_exponent)
    alive = proj.edge_mask[0].any(-1) & (opacities >= ALPHA_THRESHOLD)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=points.dtype) + 0.5, torch.arange(width, dtype=points.dtype) + 0.5, indexing="ij")
    px, py = xs.reshape(-1, 1, 1), ys.reshape(-1, 1, 1)
    e = proj.edges[0]  # [N, E, 3]
    values = e[None, ..., 0] * px + e[None, ..., 1] * py + e[None, ..., 2]  # [P, N, E]
    scaled = torch.where(proj.edge_mask[0][None], proj.sharp_delta[0][None, :, None] * values, torch.full_like(values, -math.inf))
    phi = torch.logsumexp(scaled, -1)
    alpha = opacities[None] * torch.sigmoid(-proj.sharp_sigma[0][None] * phi)
    alpha = torch.where(alive[None], alpha, torch.zeros_like(alpha))
    order = torch.argsort(proj.depths[0], stable=True)
    color = torch.zeros(px.shape[0], colors.shape[-1], dtype=points.dtype)
    T = torch.ones(px.shape[0], dtype=points.dtype)
    done = torch.zeros(px.shape[0], dtype=torch.bool)
    for i in order.tolist():
        a = alpha[:, i].clamp_max(MAX_ALPHA)
        use = ~done & (a >= ALPHA_THRESHOLD)
        T_next = T * (1 - a)
        stop = use & (T_next <= TRANSMITTANCE_THRESHOLD)
        done = done | stop
        use = use & ~stop
        color = color + torch.where(use[:, None], a[:, None] * T[:, None] * colors[i], torch.zeros_like(color))
        T = torch.where(use, T_next, T)
    color = color + T[:, None] * background
    return color.reshape(height, width, -1), (1 - T).reshape(height, width, 1)


@pytest.mark.parametrize("K", [3, 6, 8])
def test_reference_matches_dense_oracle_images_and_gradients(K):
    viewmat, Kmat, W, H = camera()
    points, delta, sigma, opacities, colors = random_convexes(14, K, seed=K)
    background = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    inputs = [t.clone().requires_grad_(True) for t in (points, delta, sigma, opacities, colors)]
    img, alpha, _ = rasterize_convexes(*inputs[:4], inputs[4], viewmat, Kmat, W, H, backgrounds=background[None], tile_size=8)
    ref_inputs = [t.clone().requires_grad_(True) for t in (points, delta, sigma, opacities, colors)]
    ref_img, ref_alpha = dense_oracle(*ref_inputs, viewmat, Kmat, W, H, background)
    assert float((alpha[0] > 0.05).float().mean()) > 0.2  # the scene covers the image
    assert torch.allclose(img[0], ref_img, atol=1e-10) and torch.allclose(alpha[0], ref_alpha, atol=1e-10)
    weights = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (img[0] * weights).sum().add(alpha.sum()).backward()
    (ref_img * weights).sum().add(ref_alpha.sum()).backward()
    for name, a, b in zip(("points", "delta", "sigma", "opacities", "colors"), inputs, ref_inputs, strict=True):
        assert a.grad is not None and torch.isfinite(a.grad).all(), name
        assert torch.allclose(a.grad, b.grad, atol=1e-8, rtol=1e-6), (name, float((a.grad - b.grad).abs().max()))
        assert float(a.grad.abs().max()) > 0, name


def test_gradcheck_away_from_cutoffs():
    viewmat, Kmat, W, H = camera(width=16, height=12, f=14.0)
    points, delta, sigma, opacities, colors = random_convexes(3, 5, seed=3, size=0.35)
    # Soft convexes with moderate opacity: no alpha near 1/255 or the 0.99 clamp at a pixel centre.
    delta, sigma, opacities = delta * 0 + 0.08, sigma * 0 + 0.05, opacities * 0 + 0.5

    def render(p, d, s, o, c):
        img, alpha, _ = rasterize_convexes(p, d, s, o, c, viewmat, Kmat, W, H, tile_size=8)
        return img, alpha

    img, _ = render(points, delta, sigma, opacities, colors)
    assert float(img.max()) > 0.05
    inputs = tuple(t.clone().requires_grad_(True) for t in (points, delta, sigma, opacities, colors))
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_footprint_contains_every_visible_pixel(seed):
    viewmat, Kmat, W, H = camera(width=96, height=80, f=60.0)
    points, delta, sigma, opacities, _ = random_convexes(40, 6, seed=seed, size=0.3)
    sigma = sigma * (0.05 + torch.rand(40, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))  # some very soft
    proj = project_convexes(points, delta, sigma, viewmat, Kmat, W, H, opacities=opacities)
    ys, xs = torch.meshgrid(torch.arange(-100, H + 100, dtype=torch.float64) + 0.5, torch.arange(-100, W + 100, dtype=torch.float64) + 0.5, indexing="ij")
    checked = 0
    for i in range(40):
        if not proj.edge_mask[0, i].any():
            continue
        e = proj.edges[0, i][proj.edge_mask[0, i]]
        vals = proj.sharp_delta[0, i] * (e[:, 0] * xs[..., None] + e[:, 1] * ys[..., None] + e[:, 2])
        alpha = opacities[i] * torch.sigmoid(-proj.sharp_sigma[0, i] * torch.logsumexp(vals, -1))
        seen = alpha >= ALPHA_THRESHOLD
        inside_image = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
        if not (seen & inside_image).any():
            continue
        assert (proj.radii[0, i] > 0).all(), i
        c, r = proj.box_centers[0, i], proj.radii[0, i].double()
        in_box = ((xs - c[0]).abs() <= r[0]) & ((ys - c[1]).abs() <= r[1])
        assert bool((in_box | ~seen).all()), i
        checked += 1
    assert checked > 10


def test_footprint_is_the_box_of_the_max_edge_region():
    """The box is that of the polygon max_e L_e <= t (scipy's half-space intersection), to the +1
    pixel of rounding: no mitred corners of short edges, which put them tens to thousands of pixels
    out (over every tile); flattened convexes give slivers and short edges."""
    from scipy.spatial import HalfspaceIntersection

    viewmat, Kmat, W, H = camera(width=96, height=80, f=60.0)
    points, delta, sigma, opacities, _ = random_convexes(60, 6, seed=9, size=0.3)
    points = points * torch.tensor([1.0, 0.15, 1.0], dtype=torch.float64)
    proj = project_convexes(points, delta, sigma, viewmat, Kmat, W, H, opacities=opacities)
    checked = 0
    for i in range(60):
        if not (proj.radii[0, i] > 0).all():
            continue
        e = proj.edges[0, i][proj.edge_mask[0, i]]
        t = math.log(max(255 * float(opacities[i]) - 1, 1.0)) / float(proj.sharp_delta[0, i] * proj.sharp_sigma[0, i])
        halfspaces = torch.cat([e[:, :2], e[:, 2:] - t], 1).numpy()  # n . x + h - t <= 0
        corners = torch.as_tensor(HalfspaceIntersection(halfspaces, proj.centers2d[0, i].numpy()).intersections)
        lo, hi = corners.amin(0), corners.amax(0)
        c, r = proj.box_centers[0, i], proj.radii[0, i].double()
        assert bool(((c - r) <= lo).all() and ((c + r) >= hi).all()), i
        assert bool(((c - r) >= lo - 1.01).all() and ((c + r) <= hi + 1.01).all()), (i, c - r, lo, c + r, hi)
        checked += 1
    assert checked > 30


def test_convex_behind_or_crossing_the_near_plane_is_culled():
    viewmat, Kmat, W, H = camera()
    cube = torch.tensor([[x, y, z] for x in (-0.3, 0.3) for y in (-0.3, 0.3) for z in (-0.3, 0.3)], dtype=torch.float64)
    points = torch.stack([cube + torch.tensor([0, 0, 2.0], dtype=torch.float64), cube + torch.tensor([0, 0, -2.0], dtype=torch.float64), cube + torch.tensor([0, 0, 0.2], dtype=torch.float64)])
    ones = torch.ones(3, dtype=torch.float64)
    proj = project_convexes(points, ones * 0.2, ones * 0.2, viewmat, Kmat, W, H, near_plane=0.05)
    assert (proj.radii[0, 0] > 0).all() and not proj.edge_mask[0, 1:].any() and (proj.radii[0, 1:] == 0).all()
    img, alpha, _ = rasterize_convexes(points, ones * 0.2, ones * 0.2, ones * 0.9, torch.ones(3, 3, dtype=torch.float64), viewmat, Kmat, W, H, near_plane=0.05)
    assert torch.isfinite(img).all() and float(alpha.max()) == pytest.approx(0.9, abs=1e-5)


def test_sharp_square_is_an_indicator_and_sh_colours_follow_the_centre():
    viewmat, Kmat, W, H = camera(width=40, height=40, f=40.0)
    # A square facing the camera at z = 2 covering pixels 10..30 (the K = 4 corners, a flat convex).
    s = 0.5
    points = torch.tensor([[[-s, -s, 2.0], [s, -s, 2.0], [s, s, 2.0], [-s, s, 2.0]]], dtype=torch.float64)
    coeffs = torch.zeros(1, 4, 3, dtype=torch.float64)
    coeffs[0, 0] = torch.tensor([0.3, -0.2, 0.1])
    one = torch.ones(1, dtype=torch.float64)
    img, alpha, _ = rasterize_convexes(points, one * 5.0, one * 5.0, one * 0.98, coeffs, viewmat, Kmat, W, H, sh_degree=1)
    assert float(alpha[0, 20, 20]) == pytest.approx(0.98, abs=1e-6)  # deep inside: I = 1
    assert float(alpha[0, 20, 31]) < 1e-6 and float(alpha[0, 8, 20]) < 1e-6  # outside: I = 0
    expected = torch.clamp_min(spherical_harmonics(1, torch.tensor([[0, 0, 2.0]], dtype=torch.float64), coeffs) + 0.5, 0)[0]
    assert torch.allclose(img[0, 20, 20], 0.98 * expected, atol=1e-6)


def test_hull_winding_and_point_order_do_not_change_the_image():
    viewmat, Kmat, W, H = camera()
    points, delta, sigma, opacities, colors = random_convexes(8, 6, seed=11)
    a, _, _ = rasterize_convexes(points, delta, sigma, opacities, colors, viewmat, Kmat, W, H)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    b, _, _ = rasterize_convexes(points[:, perm], delta, sigma, opacities, colors, viewmat, Kmat, W, H)
    assert torch.allclose(a, b, atol=1e-12)


def test_invalid_point_counts_are_refused():
    viewmat, Kmat, W, H = camera()
    for K in (2, 9):
        with pytest.raises(ValueError, match="3 to 8 points"):
            project_convexes(torch.zeros(1, K, 3), torch.ones(1), torch.ones(1), viewmat.float(), Kmat.float(), W, H)
