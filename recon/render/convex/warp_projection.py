"""Warp kernels for the combinatorial half of the convex projection: the 2D hull of each projected
convex and its conservative footprint box (the ``"warp"`` backend of
:func:`recon.render.convex.project_convexes`).

Held et al. 2025, "3D Convex Splatting: Radiance Field Rendering with 3D Smooth Convexes" (CVPR),
sec. 3.2; the rules are those of the PyTorch reference in ``projection.py`` (its module docstring,
items 3 and 6), evaluated per (camera, convex) by one Warp thread instead of as [C, N, K, K, K]
and [C, N, E, E, E] tensors:

- ``hull_slots_warp``: which ordered pairs (a, b) of the K projected points are counter-clockwise
  hull edges (every other point on the left, or on the segment; coincident points: the lowest
  index; the same relative tolerance as ``hull_edge_pairs``), compacted into K slots in (a, b)
  order, exactly the reference's stable sort.
- ``region_box_warp``: the bounding box of the polygon max_e L_e <= t from the pairwise meeting
  points of the moved edge lines that satisfy every other edge (float64, the reference's tolerance).
- ``project_convex_points_warp``: the differentiable half (the reference's items 1, 2 and 4): each
  point to the camera and to pixels, the centre's depth and pixel, the hull, and the edge functions
  (n_e, h_e) of the hull's pairs, as one ``torch.autograd.Function`` whose backward is a
  hand-written kernel (gradients to the points; none to the cameras, so callers use it only when
  the cameras need no gradient, as the Gaussian backend's Warp projection).

Hull membership and the footprint are not differentiated (piecewise constant, as in the official
code). Kernels are compiled on first use per scalar type and K; the CPU launch is spread over
``torch.get_num_threads()`` threads (:class:`Launcher`).
"""

# No "from __future__ import annotations": Warp reads the kernels' annotations, which name types
# local to the kernel factories.

import functools
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from recon.render.gaussians.warp_backend import Launcher, _warp, to_warp
from recon.render.gaussians.warp_projection import _types

HULL_REL_EPS = 1e-6
"""Distance (times the points' extent) under which two points coincide or a point lies on a line."""


@functools.cache
def _hull_kernel(scalar: str, K: int) -> Any:
    wp = _warp()
    float_t = wp.float32 if scalar == "float32" else wp.float64
    vec2 = wp.types.vector(length=2, dtype=float_t)
    rel_eps = HULL_REL_EPS

    @wp.kernel(enable_backward=False, module="unique")
    def hull(
        q: wp.array(dtype=vec2),  # [M*K] projected points
        usable: wp.array(dtype=wp.int32),  # [M] 0: culled before the hull (behind the near plane)
        item0: int,
        order: wp.array(dtype=wp.int32),  # [M*K] out: slot -> a * K + b, 0 in unused slots
        count: wp.array(dtype=wp.int32),  # [M] out: number of hull edges
    ):
        m = item0 + wp.tid()
        base = m * K
        lo = vec2()  # (names the closure's vector type for Warp's annotation lookup)
        for s in range(K):
            order[base + s] = 0
        if usable[m] == 0:
            count[m] = 0
            return
        lo = q[base]
        hi = q[base]
        for k in range(1, K):
            lo = wp.min(lo, q[base + k])
            hi = wp.max(hi, q[base + k])
        eps = float_t(rel_eps) * wp.max(wp.max(hi[0] - lo[0], hi[1] - lo[1]), float_t(1e-30))
        n = int(0)  # noqa: UP018, RUF046  (Warp: a dynamic variable, mutated in the loop)
        for a in range(K):
            qa = q[base + a]
            shadowed_a = int(0)  # noqa: UP018, RUF046
            for j in range(a):
                if wp.length(q[base + j] - qa) <= eps:
                    shadowed_a = 1
            if shadowed_a == 1:
                continue
            for b in range(K):
                ab = q[base + b] - qa
                dist = wp.length(ab)
                if dist <= eps:
                    continue
                shadowed_b = int(0)  # noqa: UP018, RUF046
                for j in range(b):
                    if wp.length(q[base + j] - q[base + b]) <= eps:
                        shadowed_b = 1
                if shadowed_b == 1:
                    continue
                length = wp.max(dist, float_t(1e-30))
                ok = int(1)  # noqa: UP018, RUF046
                for k in range(K):
                    ak = q[base + k] - qa
                    ignored = wp.length(ak) <= eps or wp.length(q[base + k] - q[base + b]) <= eps
                    if not ignored:
                        cross = ab[0] * ak[1] - ab[1] * ak[0]
                        t = (ab[0] * ak[0] + ab[1] * ak[1]) / (length * length)
                        on_segment = wp.abs(cross) <= eps * length and t > float_t(0.0) and t < float_t(1.0)
                        if not (cross > float_t(0.0) or on_segment):
                            ok = 0
                if ok == 1 and n < K:
                    order[base + n] = a * K + b
                    n = n + 1
        count[m] = n

    return hull


@functools.cache
def _box_kernel(E: int) -> Any:
    wp = _warp()
    vec3d = wp.types.vector(length=3, dtype=wp.float64)
    vec2d = wp.types.vector(length=2, dtype=wp.float64)

    @wp.kernel(enable_backward=False, module="unique")
    def box(
        edges: wp.array(dtype=vec3d),  # [M*E] (n_x, n_y, h)
        masks: wp.array(dtype=wp.int32),  # [M] bit e: slot e holds an edge
        t_arr: wp.array(dtype=wp.float64),  # [M] the moved level
        item0: int,
        lo_out: wp.array(dtype=vec2d),  # [M] out (+inf without a vertex)
        hi_out: wp.array(dtype=vec2d),  # [M] out (-inf without a vertex)
    ):
        m = item0 + wp.tid()
        base = m * E
        bits = masks[m]
        t = t_arr[m]
        a = vec3d()  # (names the closure's vector types for Warp's annotation lookup)
        lo = vec2d(wp.float64(wp.inf), wp.float64(wp.inf))
        hi = vec2d(wp.float64(-wp.inf), wp.float64(-wp.inf))
        for i in range(E):
            if ((bits >> i) & 1) == 0:
                continue
            a = edges[base + i]
            len_a = wp.sqrt(a[0] * a[0] + a[1] * a[1])
            for j in range(i + 1, E):
                if ((bits >> j) & 1) == 0:
                    continue
                b = edges[base + j]
                len_b = wp.sqrt(b[0] * b[0] + b[1] * b[1])
                det = a[0] * b[1] - a[1] * b[0]
                if not (wp.abs(det) > wp.float64(1e-12) * len_a * len_b):
                    continue
                ra = t - a[2]
                rb = t - b[2]
                px = (ra * b[1] - a[1] * rb) / det
                py = (a[0] * rb - ra * b[0]) / det
                norm_p = wp.sqrt(px * px + py * py)
                ok = int(1)  # noqa: UP018, RUF046
                for k in range(E):
                    if ((bits >> k) & 1) != 0:
                        e = edges[base + k]
                        value = (e[0] * px + e[1] * py) + e[2]
                        len_e = wp.sqrt(e[0] * e[0] + e[1] * e[1])
                        tol = wp.float64(1e-9) * (len_e * norm_p + wp.abs(e[2]) + t)
                        if not (value <= t + tol):
                            ok = 0
                if ok == 1:
                    lo = vec2d(wp.min(lo[0], px), wp.min(lo[1], py))
                    hi = vec2d(wp.max(hi[0], px), wp.max(hi[1], py))
        lo_out[m] = lo
        hi_out[m] = hi

    return box


def hull_slots_warp(q: Tensor, usable: Tensor) -> tuple[Tensor, Tensor]:
    """q [C, N, K, 2] projected points, usable [C, N] bool -> (order [C, N, K] int64: slot -> a * K +
    b of the hull's edges in (a, b) order, 0 in unused slots; count [C, N] int64 edges)."""
    C, N, K = q.shape[:3]
    M = C * N
    scalar = "float64" if q.dtype == torch.float64 else "float32"
    dtype = torch.float64 if scalar == "float64" else torch.float32
    wp = _warp()
    vec2 = wp.types.vector(length=2, dtype=wp.float32 if scalar == "float32" else wp.float64)
    q_flat = q.detach().reshape(M * K, 2).to(dtype).contiguous()
    use = usable.reshape(M).to(torch.int32).contiguous()
    order = torch.empty(M * K, dtype=torch.int32, device=q.device)
    count = torch.empty(M, dtype=torch.int32, device=q.device)
    if M:
        kernel = _hull_kernel(scalar, K)
        inputs = [to_warp(q_flat, vec2), to_warp(use)]
        outputs = [to_warp(order), to_warp(count)]
        Launcher(q.device, M)(kernel, lambda item0, worker: [*inputs, item0, *outputs])
    return order.reshape(C, N, K).long(), count.reshape(C, N).long()


def region_box_warp(edges: Tensor, edge_mask: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`recon.render.convex.projection._region_box` by a Warp kernel: edges [C, N, E, 3],
    edge_mask [C, N, E], t [C, N] -> (lo, hi) [C, N, 2] in the edges' dtype."""
    C, N, E = edge_mask.shape
    M = C * N
    wp = _warp()
    vec3d = wp.types.vector(length=3, dtype=wp.float64)
    vec2d = wp.types.vector(length=2, dtype=wp.float64)
    e = edges.detach().reshape(M * E, 3).to(torch.float64).contiguous()
    bit = 1 << torch.arange(E, dtype=torch.int32, device=edge_mask.device)
    masks = (edge_mask.reshape(M, E).to(torch.int32) * bit).sum(-1, dtype=torch.int32).contiguous()
    tt = t.detach().reshape(M).to(torch.float64).contiguous()
    lo = torch.empty(M, 2, dtype=torch.float64, device=edges.device)
    hi = torch.empty(M, 2, dtype=torch.float64, device=edges.device)
    if M:
        inputs = [to_warp(e, vec3d), to_warp(masks), to_warp(tt)]
        outputs = [to_warp(lo, vec2d), to_warp(hi, vec2d)]
        Launcher(edges.device, M)(_box_kernel(E), lambda item0, worker: [*inputs, item0, *outputs])
    return lo.reshape(C, N, 2).to(edges.dtype), hi.reshape(C, N, 2).to(edges.dtype)


BLOCK = 1024
"""(camera, convex) pairs per CPU block of the projection kernels."""


@functools.cache
def _projection_kernels(scalar: str, K: int) -> tuple[Any, Any, Any]:
    """(points, edges, backward) kernels of the differentiable projection for ``scalar`` and K points."""
    wp = _warp()
    float_t = wp.float32 if scalar == "float32" else wp.float64
    types = _types(scalar)
    vec2, vec3, vec4, mat44 = types[2], types[3], types[4], types[44]
    inv_k = 1.0 / K

    @wp.func
    def to_camera(v: mat44, p: vec3):
        return vec3(
            v[0, 0] * p[0] + v[0, 1] * p[1] + v[0, 2] * p[2] + v[0, 3],
            v[1, 0] * p[0] + v[1, 1] * p[1] + v[1, 2] * p[2] + v[1, 3],
            v[2, 0] * p[0] + v[2, 1] * p[1] + v[2, 2] * p[2] + v[2, 3],
        )

    @wp.func
    def to_pixel(intr: vec4, p: vec3, z: float_t):
        return vec2(intr[0] * p[0] / z + intr[2], intr[1] * p[1] / z + intr[3])

    @wp.func
    def pixel_vjp(intr: vec4, p: vec3, z: float_t, g: vec2):
        """d(pixel)/d(camera point)^T g for pixel = (fx x / z + cx, fy y / z + cy)."""
        gx = intr[0] * g[0] / z
        gy = intr[1] * g[1] / z
        return vec3(gx, gy, -(gx * p[0] + gy * p[1]) / z)

    @wp.kernel(enable_backward=False, module="unique")
    def points_kernel(
        points: wp.array(dtype=vec3),  # [N*K] world
        viewmats: wp.array(dtype=mat44),  # [C]
        intrinsics: wp.array(dtype=vec4),  # [C] (fx, fy, cx, cy)
        n_convex: int,
        near: float_t,
        far: float_t,
        item0: int,
        q: wp.array(dtype=vec2),  # [M*K] out: pixels
        usable: wp.array(dtype=wp.int32),  # [M] out: every point beyond the near plane, centre before the far one
        depth: wp.array(dtype=float_t),  # [M] out: camera z of the centre
        center2d: wp.array(dtype=vec2),  # [M] out: pixel of the centre
    ):
        m = item0 + wp.tid()
        c = m // n_convex
        n = m - c * n_convex
        v = viewmats[c]
        intr = intrinsics[c]
        center = vec3()
        zmin = float_t(1e30)
        for k in range(K):
            p = to_camera(v, points[n * K + k])
            center = center + p
            zmin = wp.min(zmin, p[2])
        center = center * float_t(inv_k)
        ok = zmin >= near and center[2] <= far
        for k in range(K):
            p = to_camera(v, points[n * K + k])
            z = float_t(1.0)
            if ok:
                z = p[2]
            q[m * K + k] = to_pixel(intr, p, z)
        zc = float_t(1.0)
        if ok:
            zc = center[2]
            usable[m] = 1
        else:
            usable[m] = 0
        depth[m] = center[2]
        center2d[m] = to_pixel(intr, center, zc)

    @wp.kernel(enable_backward=False, module="unique")
    def edges_kernel(
        q: wp.array(dtype=vec2),  # [M*K]
        order: wp.array(dtype=wp.int32),  # [M*K] slot -> a * K + b
        count: wp.array(dtype=wp.int32),  # [M] hull edges (fewer than 3: none kept)
        item0: int,
        edges: wp.array(dtype=vec3),  # [M*K] out: (n_x, n_y, h), zeros in unused slots
    ):
        m = item0 + wp.tid()
        n_edges = count[m]
        for s in range(K):
            e = vec3()
            if n_edges >= 3 and s < n_edges:
                pair = order[m * K + s]
                qa = q[m * K + pair // K]
                qb = q[m * K + pair % K]
                nx = qb[1] - qa[1]
                ny = qa[0] - qb[0]
                e = vec3(nx, ny, -(nx * qa[0] + ny * qa[1]))
            edges[m * K + s] = e

    @wp.kernel(enable_backward=False, module="unique")
    def backward_kernel(
        points: wp.array(dtype=vec3),
        viewmats: wp.array(dtype=mat44),
        intrinsics: wp.array(dtype=vec4),
        q: wp.array(dtype=vec2),
        usable: wp.array(dtype=wp.int32),
        order: wp.array(dtype=wp.int32),
        count: wp.array(dtype=wp.int32),
        n_convex: int,
        item0: int,
        v_edges: wp.array(dtype=vec3),  # [M*K]
        v_depth: wp.array(dtype=float_t),  # [M]
        v_center2d: wp.array(dtype=vec2),  # [M]
        v_q: wp.array(dtype=vec2),  # [M*K] scratch, zeros on entry
        v_points: wp.array(dtype=vec3),  # [M*K] out: per camera, summed over cameras by the caller
    ):
        m = item0 + wp.tid()
        c = m // n_convex
        n = m - c * n_convex
        v = viewmats[c]
        intr = intrinsics[c]
        ok = usable[m] == 1
        # Edge functions -> pixels: L = n . x + h with n = (qb_y - qa_y, qa_x - qb_x), h = -n . qa.
        n_edges = count[m]
        if n_edges >= 3:
            for s in range(K):
                if s < n_edges:
                    pair = order[m * K + s]
                    a = m * K + pair // K
                    b = m * K + pair % K
                    qa = q[a]
                    qb = q[b]
                    g = v_edges[m * K + s]
                    nx = qb[1] - qa[1]
                    ny = qa[0] - qb[0]
                    gnx = g[0] - g[2] * qa[0]
                    gny = g[1] - g[2] * qa[1]
                    v_q[a] = v_q[a] + vec2(-g[2] * nx + gny, -g[2] * ny - gnx)
                    v_q[b] = v_q[b] + vec2(-gny, gnx)
        # Centre: depth and pixel.
        center = vec3()
        for k in range(K):
            center = center + to_camera(v, points[n * K + k])
        center = center * float_t(inv_k)
        zc = float_t(1.0)
        if ok:
            zc = center[2]
        v_center = pixel_vjp(intr, center, zc, v_center2d[m])
        if not ok:
            v_center = vec3(v_center[0], v_center[1], float_t(0.0))
        v_center = v_center + vec3(float_t(0.0), float_t(0.0), v_depth[m])
        v_center = v_center * float_t(inv_k)
        for k in range(K):
            p = to_camera(v, points[n * K + k])
            z = float_t(1.0)
            if ok:
                z = p[2]
            v_cam = pixel_vjp(intr, p, z, v_q[m * K + k])
            if not ok:
                v_cam = vec3(v_cam[0], v_cam[1], float_t(0.0))
            v_cam = v_cam + v_center
            # World gradient: R^T v_cam.
            v_points[m * K + k] = vec3(
                v[0, 0] * v_cam[0] + v[1, 0] * v_cam[1] + v[2, 0] * v_cam[2],
                v[0, 1] * v_cam[0] + v[1, 1] * v_cam[1] + v[2, 1] * v_cam[2],
                v[0, 2] * v_cam[0] + v[1, 2] * v_cam[1] + v[2, 2] * v_cam[2],
            )

    return points_kernel, edges_kernel, backward_kernel


class _WarpConvexProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, viewmats, intr, near, far):
        C, (N, K) = viewmats.shape[0], points.shape[:2]
        M = C * N
        scalar = "float64" if points.dtype == torch.float64 else "float32"
        fwd_points, fwd_edges, _ = _projection_kernels(scalar, K)
        t = _types(scalar)
        q = points.new_zeros(M * K, 2)
        usable = torch.zeros(M, dtype=torch.int32, device=points.device)
        depth = points.new_zeros(M)
        center2d = points.new_zeros(M, 2)
        edges = points.new_zeros(M * K, 3)
        launcher = Launcher(points.device, M, BLOCK)
        flat = points.reshape(N * K, 3)
        if M:
            args = [to_warp(flat, t[3]), to_warp(viewmats, t[44]), to_warp(intr, t[4]), N, near, far]
            out = [to_warp(q, t[2]), to_warp(usable), to_warp(depth), to_warp(center2d, t[2])]
            launcher(fwd_points, lambda i0, worker: [*args, i0, *out])
        order, count = hull_slots_warp(q.reshape(C, N, K, 2), usable.reshape(C, N).bool())
        order32 = order.reshape(M * K).to(torch.int32).contiguous()
        count32 = count.reshape(M).to(torch.int32).contiguous()
        if M:
            inputs = [to_warp(q, t[2]), to_warp(order32), to_warp(count32)]
            launcher(fwd_edges, lambda i0, worker: [*inputs, i0, to_warp(edges, t[3])])
        ctx.launcher = launcher
        ctx.save_for_backward(flat, viewmats, intr, q, usable, order32, count32)
        ctx.shape = (C, N, K)
        ctx.mark_non_differentiable(q, order, count, usable)
        return (edges.reshape(C, N, K, 3), order.reshape(C, N, K), count.reshape(C, N), usable.reshape(C, N).bool(),
                depth.reshape(C, N), center2d.reshape(C, N, 2), q.reshape(C, N, K, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, v_edges, _order, _count, _usable, v_depth, v_center2d, _q):
        flat, viewmats, intr, q, usable, order32, count32 = ctx.saved_tensors
        C, N, K = ctx.shape
        M = C * N
        scalar = "float64" if flat.dtype == torch.float64 else "float32"
        _, _, bwd = _projection_kernels(scalar, K)
        t = _types(scalar)

        def grad(v: Tensor | None, *shape: int) -> Tensor:
            return flat.new_zeros(M, *shape) if v is None else v.reshape(M, *shape).to(flat.dtype).contiguous()

        v_edges, v_depth, v_center2d = grad(v_edges, K, 3), grad(v_depth), grad(v_center2d, 2)
        v_q = flat.new_zeros(M * K, 2)
        v_points = flat.new_zeros(M * K, 3)
        if M:
            args = [to_warp(flat, t[3]), to_warp(viewmats, t[44]), to_warp(intr, t[4]), to_warp(q, t[2]), to_warp(usable),
                    to_warp(order32), to_warp(count32), N]
            rest = [to_warp(v_edges.reshape(M * K, 3), t[3]), to_warp(v_depth), to_warp(v_center2d, t[2]),
                    to_warp(v_q, t[2]), to_warp(v_points, t[3])]
            ctx.launcher(bwd, lambda i0, worker: [*args, i0, *rest])
        return v_points.reshape(C, N, K, 3).sum(0), None, None, None, None


def project_convex_points_warp(
    points: Tensor, viewmats: Tensor, Ks: Tensor, near_plane: float, far_plane: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The differentiable half of :func:`recon.render.convex.project_convexes` by Warp kernels.

    points [N, K, 3] (float32 or float64), viewmats [C, 4, 4], Ks [C, 3, 3] (no gradient to either)
    -> (edges [C, N, K, 3] of the hull's pairs in (a, b) order, zeros in unused slots and for hulls
    of fewer than 3 edges; order [C, N, K] slot -> a * K + b; count [C, N] hull edges; in_depth
    [C, N]; depth [C, N]; center2d [C, N, 2]; q [C, N, K, 2] the projected points). Gradients reach
    ``points`` from edges, depth and center2d."""
    dtype = points.dtype
    conv = lambda x: x.detach().to(dtype).contiguous()  # noqa: E731
    intr = torch.stack([Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]], -1)
    return _WarpConvexProjection.apply(points.contiguous(), conv(viewmats), conv(intr), float(near_plane), float(far_plane))
