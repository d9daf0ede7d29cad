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

Neither output is differentiated (hull membership and footprint are piecewise constant, as in the
official code): the edge functions themselves are gathered from the points in torch, so autograd
still reaches every point, delta and sigma. Kernels are compiled on first use per scalar type and
K; the CPU launch is spread over ``torch.get_num_threads()`` threads (:class:`Launcher`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from recon.render.gaussians.warp_backend import Launcher, _warp, to_warp

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
