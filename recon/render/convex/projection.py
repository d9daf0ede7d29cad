"""3D smooth convexes to screen-space hulls, edge functions and conservative footprints (pure PyTorch).

A convex is K points p_1..p_K in world space (3 <= K <= 8), a smoothness delta and a sharpness
sigma (Held et al. 2025, "3D Convex Splatting: Radiance Field Rendering with 3D Smooth Convexes",
CVPR, sec. 3). Per camera (our formulation of the paper's sec. 3.2; the official CUDA code's
numerical choices are noted where they differ):

1. The centre c = mean of the points gives the depth d = z_cam(c) used for sorting and the
   perspective-aware scaling s = d^p (p = ``scaling_exponent``; the official code and the default:
   p = 1). A convex is culled when any of its points is closer than ``near_plane`` (the official
   code tests only the centre and then divides by a near-zero w) or its centre is beyond ``far_plane``.
2. The points project to pixels q_k (pixel centres at +0.5, as the Gaussian backend).
3. The 2D convex hull: an ordered pair (a, b) is a hull edge when every other point lies strictly
   to its left (cross(q_b - q_a, q_k - q_a) > 0) or on the segment between them. This O(K^3) rule
   is exact for K <= 8, orders nothing, and handles collinear points (only the outer pair forms an
   edge) and coincident points (only the lowest index of a group can be an endpoint). Fewer than
   three edges (all points collinear) culls the convex.
4. Edge functions L_e(x) = n_e . x + h_e with n_e = (b_y - a_y, -(b_x - a_x)) (not normalised:
   |n_e| is the edge length in pixels, as in the paper) and h_e = -n_e . q_a; every point has
   L_e <= 0, so the hull's inside is where all L_e are negative.
5. The pixel indicator (evaluated by the compositor) is
   I(x) = sigmoid(-s sigma phi(x)),  phi(x) = logsumexp_e(s delta L_e(x)),
   and alpha = min(0.99, opacity I(x)).
6. Footprint. phi >= s delta max_e L_e, so alpha >= 1/255 needs
   max_e L_e <= ln(255 opacity - 1) / (s^2 delta sigma) =: t. That region is the hull with every
   edge line moved outward to L_e = t, a convex polygon; its vertices are the intersections of
   two moved lines that satisfy every other edge's inequality, and their bounding box is the
   footprint (the official code's "1.1 x the farthest point" heuristic is not conservative for soft
   convexes). A short edge moves by t / |n_e|, far more than its neighbours, and its line can drop
   out of the polygon: intersecting only consecutive moved lines (the mitred hull) then gives
   corners tens to thousands of pixels outside the region. ``radii`` are per-axis integers around
   ``box_centers``, in the layout :func:`recon.render.gaussians.isect_tiles` bins.

Everything is differentiable by autograd w.r.t. points, delta and sigma (the hull's membership and
the footprint are piecewise constant and not differentiated, as in the official code) and keeps
the input dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from recon.render.gaussians import ALPHA_THRESHOLD

MAX_POINTS = 8
"""The most points per convex (the official CUDA kernel's shared-memory layout; kept for parity)."""


class ConvexProjection(NamedTuple):
    """Result of :func:`project_convexes`; E = K edge slots per convex (hulls have at most K edges)."""

    radii: Tensor  # [C, N, 2] int32 half extents of the footprint box; 0 = culled
    box_centers: Tensor  # [C, N, 2] centre of the footprint box (binning only, no gradient)
    depths: Tensor  # [C, N] camera z of the centre (sorting, depth render, the scaling s)
    edges: Tensor  # [C, N, E, 3] (n_x, n_y, h) of each hull edge; zeros in unused slots
    edge_mask: Tensor  # [C, N, E] bool, the slots that hold an edge
    sharp_delta: Tensor  # [C, N] s * delta (multiplies L_e inside the logsumexp)
    sharp_sigma: Tensor  # [C, N] s * sigma (multiplies phi inside the sigmoid)
    centers2d: Tensor  # [C, N, 2] the projected centre


def hull_edge_pairs(q: Tensor, rel_eps: float = 1e-6) -> Tensor:
    """Which ordered pairs of 2D points are counter-clockwise hull edges (see the module docstring).

    q: [..., K, 2] -> [..., K, K] bool, True at (a, b) when a -> b is a hull edge with every other
    point on its left (cross >= 0) and no point beyond its ends on its line. ``rel_eps`` (times the
    points' extent) is the distance under which two points coincide and a point lies on a line."""
    q = q.detach()
    K = q.shape[-2]
    extent = (q.amax(-2) - q.amin(-2)).amax(-1).clamp_min(1e-30)  # [...]
    eps = rel_eps * extent[..., None, None]
    diff = q[..., None, :, :] - q[..., :, None, :]  # [..., a, b, 2] = q_b - q_a
    dist = diff.norm(dim=-1)  # [..., a, b]
    same = dist <= eps
    # A point that coincides with a lower-indexed one is never an endpoint.
    lower = torch.ones(K, K, dtype=torch.bool, device=q.device).tril(-1)  # [a, b]: b < a
    shadowed = (same & lower).any(-1)  # [..., a]
    ab = diff[..., :, :, None, :]  # q_b - q_a         [..., a, b, 1, 2]
    ak = diff[..., :, None, :, :]  # q_k - q_a         [..., a, 1, k, 2]
    cross = ab[..., 0] * ak[..., 1] - ab[..., 1] * ak[..., 0]  # [..., a, b, k]
    length = dist[..., :, :, None].clamp_min(1e-30)
    t = (ab * ak).sum(-1) / (length * length)  # position of k along a -> b
    on_line = cross.abs() <= eps[..., None] * length
    ignored = same[..., :, None, :] | same.transpose(-1, -2)[..., None, :, :]  # k coincides with a or b
    ok = (cross > 0) | (on_line & (t > 0) & (t < 1)) | ignored
    edge = ok.all(-1) & ~same & ~shadowed[..., :, None] & ~shadowed[..., None, :]
    return edge


def project_convexes(
    points: Tensor,
    delta: Tensor,
    sigma: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    opacities: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    scaling_exponent: float = 1.0,
    backend: str = "torch",
) -> ConvexProjection:
    """Project N convexes into C pinhole cameras (module docstring).

    points [N, K, 3] world space (3 <= K <= 8); delta, sigma [N] activated (> 0); viewmats [C, 4, 4]
    world-to-camera (OpenCV axes); Ks [C, 3, 3]; opacities [N] activated (optional): convexes below
    1/255 are culled and the footprint uses them (without, the bound assumes opacity 1).
    ``backend`` "torch" (the reference) or "warp": the Warp kernels of ``warp_projection.py`` (same
    results): for float32/float64 points and cameras that need no gradient, everything, the edge
    functions with a hand-written backward pass; otherwise the hull and the footprint box, with the
    edge functions in torch so that autograd also reaches the cameras.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be [N, K, 3], got {tuple(points.shape)}")
    N, K = points.shape[:2]
    if not 3 <= K <= MAX_POINTS:
        raise ValueError(f"a convex needs 3 to {MAX_POINTS} points, got K = {K}")
    if delta.shape != (N,) or sigma.shape != (N,):
        raise ValueError(f"delta and sigma must be [N={N}], got {tuple(delta.shape)} and {tuple(sigma.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[-2:] != (4, 4) or Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"viewmats must be [C, 4, 4] and Ks [C, 3, 3], got {tuple(viewmats.shape)} and {tuple(Ks.shape)}")
    C = viewmats.shape[0]
    fused = (backend == "warp" and points.dtype in (torch.float32, torch.float64)
             and not (viewmats.requires_grad or Ks.requires_grad))
    if fused:
        from .warp_projection import project_convex_points_warp

        edges, order, n_edges, in_depth, depth, center2d, q = project_convex_points_warp(points, viewmats, Ks, near_plane, far_plane)
        valid = in_depth & (n_edges >= 3)
        edge_mask = (torch.arange(K, device=points.device) < n_edges[..., None]) & valid[..., None]
        safe_depth = torch.where(in_depth, depth, torch.ones_like(depth))
    else:
        edges, edge_mask, valid, depth, safe_depth, center2d = _project_torch(points, viewmats, Ks, near_plane, far_plane, backend)
    return _finish(edges, edge_mask, valid, depth, safe_depth, center2d, delta, sigma, opacities, width, height, scaling_exponent, backend)


def _project_torch(
    points: Tensor, viewmats: Tensor, Ks: Tensor, near_plane: float, far_plane: float, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Items 1-4 of the module docstring by torch autograd (the hull by Warp when ``backend`` is "warp")."""
    C, (N, K) = viewmats.shape[0], points.shape[:2]
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    cam = torch.einsum("cij,nkj->cnki", rot, points) + trans[:, None, None, :]  # [C, N, K, 3]
    center_cam = cam.mean(2)  # [C, N, 3]
    depth = center_cam[..., 2]
    z = cam[..., 2]
    in_depth = (z.amin(-1) >= near_plane) & (depth <= far_plane)
    safe_z = torch.where(in_depth[..., None], z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None, None], Ks[:, 1, 1, None, None]
    cx, cy = Ks[:, 0, 2, None, None], Ks[:, 1, 2, None, None]
    q = torch.stack([fx * cam[..., 0] / safe_z + cx, fy * cam[..., 1] / safe_z + cy], -1)  # [C, N, K, 2]
    safe_depth = torch.where(in_depth, depth, torch.ones_like(depth))
    center2d = torch.stack([fx[..., 0] * center_cam[..., 0] / safe_depth + cx[..., 0], fy[..., 0] * center_cam[..., 1] / safe_depth + cy[..., 0]], -1)

    if backend == "warp":
        from .warp_projection import hull_slots_warp

        order, n_edges = hull_slots_warp(q, in_depth)
        edge_mask = torch.arange(K, device=q.device) < n_edges[..., None]
    else:
        pair = (hull_edge_pairs(q) & in_depth[..., None, None]).reshape(C, N, K * K)
        n_edges = pair.sum(-1)
        # Stable sort puts the hull's pairs first (in (a, b) order); a hull has at most K edges.
        order = torch.argsort((~pair).to(torch.int8), dim=-1, stable=True)[..., :K]
        edge_mask = torch.gather(pair, -1, order)
    valid = in_depth & (n_edges >= 3)
    edge_mask = edge_mask & valid[..., None]

    # Edge functions of the hull's pairs (slot -> a * K + b).
    qa = torch.gather(q, 2, (order // K)[..., None].expand(C, N, K, 2))
    qb = torch.gather(q, 2, (order % K)[..., None].expand(C, N, K, 2))
    nx = qb[..., 1] - qa[..., 1]
    ny = -(qb[..., 0] - qa[..., 0])
    h = -(nx * qa[..., 0] + ny * qa[..., 1])
    edges = torch.stack([nx, ny, h], -1)
    edges = torch.where(edge_mask[..., None], edges, torch.zeros_like(edges))
    return edges, edge_mask, valid, depth, safe_depth, center2d


def _finish(
    edges: Tensor, edge_mask: Tensor, valid: Tensor, depth: Tensor, safe_depth: Tensor, center2d: Tensor, delta: Tensor,
    sigma: Tensor, opacities: Tensor | None, width: int, height: int, scaling_exponent: float, backend: str,
) -> ConvexProjection:
    """Items 5-6 of the module docstring: the scaled smoothness / sharpness and the footprint."""
    C, N = valid.shape
    scale = safe_depth.abs() ** scaling_exponent
    sharp_delta = scale * delta[None, :].to(edges.dtype)
    sharp_sigma = scale * sigma[None, :].to(edges.dtype)

    with torch.no_grad():
        opac = torch.ones(C, N, dtype=edges.dtype, device=edges.device) if opacities is None else opacities.detach()[None, :].expand(C, N).to(edges.dtype)
        valid = valid & (opac >= ALPHA_THRESHOLD)
        # Move every edge outward to L = t (opacity 2/255 or less: t = 0, the hull itself).
        t = torch.log((255.0 * opac - 1.0).clamp_min(1.0)) / (sharp_delta.detach() * sharp_sigma.detach()).clamp_min(1e-30)
        if backend == "warp":
            from .warp_projection import region_box_warp

            box_lo, box_hi = region_box_warp(edges.detach(), edge_mask, t)
        else:
            box_lo, box_hi = _region_box(edges.detach(), edge_mask, t)
        finite = torch.isfinite(box_lo).all(-1) & torch.isfinite(box_hi).all(-1)
        valid = valid & finite
        box_lo = torch.where(valid[..., None], box_lo, torch.zeros_like(box_lo))
        box_hi = torch.where(valid[..., None], box_hi, torch.zeros_like(box_hi))
        box_center = 0.5 * (box_lo + box_hi)
        half = 0.5 * (box_hi - box_lo)
        # +1: a pixel centre exactly on the box edge still lands in a binned tile.
        radius = torch.floor(half.clamp(max=2.0**30)) + 1
        outside = (box_hi[..., 0] <= 0) | (box_lo[..., 0] >= width) | (box_hi[..., 1] <= 0) | (box_lo[..., 1] >= height)
        valid = valid & ~outside
        radii = torch.where(valid[..., None], radius, 0).to(torch.int32)
        box_center = torch.where(valid[..., None], box_center, torch.zeros_like(box_center))

    edges = torch.where(valid[..., None, None], edges, torch.zeros_like(edges))
    edge_mask = edge_mask & valid[..., None]
    return ConvexProjection(radii, box_center, depth, edges, edge_mask, sharp_delta, sharp_sigma, center2d)


def _region_box(edges: Tensor, edge_mask: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Bounding box [C, N, 2] x 2 of the polygon max_e L_e(x) <= t (module docstring, item 6).

    edges [C, N, E, 3] (n_x, n_y, h), edge_mask [C, N, E], t [C, N] >= 0. Every pair of valid slots
    gives the meeting point of its two moved lines; those within rounding of every other edge's
    inequality are the polygon's vertices. Computed in float64 (a near-straight corner's point is
    ill-conditioned), with a tolerance that keeps such corners: a looser test only widens the box.
    Convexes without a vertex get an infinite box (the caller culls them)."""
    e = edges.to(torch.float64)
    t = t.to(torch.float64)[..., None]
    E = e.shape[-2]
    length = e[..., :2].norm(dim=-1)  # [C, N, E]
    lo = torch.full((*e.shape[:-2], 2), math.inf, dtype=torch.float64, device=e.device)
    hi = -lo
    for i in range(E):
        for j in range(i + 1, E):
            a, b = e[..., i, :], e[..., j, :]
            det = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
            ok = edge_mask[..., i] & edge_mask[..., j] & (det.abs() > 1e-12 * length[..., i] * length[..., j])
            det = torch.where(ok, det, torch.ones_like(det))
            ra, rb = t[..., 0] - a[..., 2], t[..., 0] - b[..., 2]
            point = torch.stack([(ra * b[..., 1] - a[..., 1] * rb) / det, (a[..., 0] * rb - ra * b[..., 0]) / det], -1)
            values = (e[..., :2] * point[..., None, :]).sum(-1) + e[..., 2]  # [C, N, E]
            tol = 1e-9 * (length * point.norm(dim=-1, keepdim=True) + e[..., 2].abs() + t)
            ok = ok & ((values <= t + tol) | ~edge_mask).all(-1)
            lo = torch.where(ok[..., None], torch.minimum(lo, point), lo)
            hi = torch.where(ok[..., None], torch.maximum(hi, point), hi)
    return lo.to(edges.dtype), hi.to(edges.dtype)
