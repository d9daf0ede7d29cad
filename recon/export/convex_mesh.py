"""Triangle meshes of many small convex hulls (3D Convex Splatting's convexes, K <= 8 points each).

A smooth convex (Held et al., "3D Convex Splatting: Radiance Field Rendering with 3D Smooth
Convexes", CVPR 2025) is drawn as the convex hull of its K points in the limit of infinite
smoothness and sharpness, so the hull is its shape as a surface. Per convex, vectorised over all
of them (numpy, float64, in chunks):

* **solid convexes**: a triple (a, b, c) of points is a hull face when every other point lies on
  one side of its plane (farther than ``rel_tol`` x the convex's radius from it); the triangle is
  wound so that its normal points out. Exact for points in general position (C(K, 3) <= 56 triples
  of K <= 8 points). A face plane holding a fourth point (a square face, say) would be accepted
  once per triangulation of that face, so such convexes, rare in a trained model, go to
  ``scipy.spatial.ConvexHull`` (Qhull, triangulated output) instead, one at a time;
* **flat convexes** (every point within ``rel_tol`` x radius of one plane; always for K = 3): the
  2D hull of the points in that plane (the rasterizer's own rule,
  :func:`recon.render.convex.projection.hull_edge_pairs`) as a triangle fan, one-sided;
* convexes whose points are collinear or coincide have no area and give no triangle.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import trimesh

from recon.render.convex.projection import hull_edge_pairs

__all__ = ["convex_hull_triangles", "convex_mesh"]

CHUNK = 16384


def _solid_faces(q: np.ndarray, radius: np.ndarray, rel_tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Hull faces of non-flat convexes q [n, K, 3] (centred, radius [n]): (convex, a, b, c) rows
    wound outwards, and [n] bool: a face plane holds a fourth point (that convex's rows are left
    out: it needs Qhull)."""
    n, K, _ = q.shape
    triples = np.array(list(itertools.combinations(range(K), 3)))  # [T, 3]
    member = np.zeros((len(triples), K), dtype=bool)
    member[np.arange(len(triples))[:, None], triples] = True
    a, b, c = (q[:, triples[:, i]] for i in range(3))  # [n, T, 3]
    normal = np.cross(b - a, c - a)
    length = np.linalg.norm(normal, axis=-1)  # twice the triangle's area
    valid = length > rel_tol**2 * radius[:, None] ** 2  # not three (nearly) collinear points
    unit = normal / np.maximum(length, 1e-300)[..., None]
    dist = unit @ q.transpose(0, 2, 1) - np.einsum("ntd,ntd->nt", unit, a)[..., None]  # [n, T, K] signed distances
    t = rel_tol * radius[:, None]
    above = np.where(member, -np.inf, dist).max(-1) > t
    below = np.where(member, np.inf, dist).min(-1) < -t
    on = np.where(member, np.inf, np.abs(dist)).min(-1) <= t
    face = valid & (above != below)
    coplanar = (face & on).any(-1) | (valid & ~above & ~below).any(-1)
    conv, tri = np.nonzero(face & ~coplanar[:, None])
    ia, ib, ic = triples[tri].T
    flip = above[conv, tri]  # the other points are on the normal's side: it points inwards
    ib, ic = np.where(flip, ic, ib), np.where(flip, ib, ic)
    return np.stack([conv, ia, ib, ic], 1), coplanar


def _qhull_faces(q: np.ndarray) -> np.ndarray:
    """Hull triangles [F, 3] (outward) of one convex's points q [K, 3] by Qhull; empty when it fails."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        hull = ConvexHull(q)
    except (QhullError, ValueError):
        return np.zeros((0, 3), dtype=np.int64)
    tri = hull.simplices.astype(np.int64)
    normal = np.cross(q[tri[:, 1]] - q[tri[:, 0]], q[tri[:, 2]] - q[tri[:, 0]])
    flip = np.einsum("fd,fd->f", normal, hull.equations[:, :3]) < 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    return tri


def _triangles(q: np.ndarray, radius: np.ndarray, rel_tol: float) -> np.ndarray:
    """K = 3: each convex is its triangle (0, 1, 2), unless its points are (nearly) collinear."""
    area = np.linalg.norm(np.cross(q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]), axis=-1)
    conv = np.nonzero(area > rel_tol**2 * radius**2)[0]
    return np.stack([conv, np.zeros_like(conv), np.ones_like(conv), np.full_like(conv, 2)], 1)


def _flat_faces(q: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Triangle fans of flat convexes: q [m, K, 3] centred, basis [m, 2, 3] two in-plane axes ->
    (convex, a, b, c) rows, counter-clockwise about basis[0] x basis[1]."""
    uv = torch.from_numpy(np.einsum("mkd,mjd->mkj", q, basis))  # [m, K, 2]
    edges = hull_edge_pairs(uv).numpy()  # [m, K, K]: a -> b is a counter-clockwise hull edge
    is_vertex = edges.any(-1)
    first = np.argmax(is_vertex, axis=-1)  # the fan's apex: the lowest-index hull vertex
    enough = edges.sum((-1, -2)) >= 3
    conv, ia, ib = np.nonzero(edges & enough[:, None, None])
    keep = (ia != first[conv]) & (ib != first[conv])
    conv, ia, ib = conv[keep], ia[keep], ib[keep]
    return np.stack([conv, first[conv], ia, ib], 1)


def convex_hull_triangles(points, rel_tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """The hull triangles of N convexes (module docstring).

    points: [N, K, 3] (numpy or torch), 3 <= K. Returns faces [F, 3] int64, indices into
    ``points.reshape(-1, 3)``, wound outwards (flat convexes: one side), and owner [F] (the convex
    of each face). ``rel_tol``: distances below this x the convex's radius (largest distance of a
    point from the mean) count as zero.
    """
    pts = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[-1] != 3 or pts.shape[1] < 3:
        raise ValueError(f"points must be [N, K, 3] with K >= 3, got {list(pts.shape)}")
    N, K, _ = pts.shape
    rows = []
    for start in range(0, N, CHUNK):
        p = pts[start : start + CHUNK]
        q = p - p.mean(1, keepdims=True)
        radius = np.maximum(np.linalg.norm(q, axis=-1).max(-1), 1e-300)
        if K == 3:
            flat, vt = np.ones(len(q), dtype=bool), None
        else:
            _, _, vt = np.linalg.svd(q, full_matrices=False)  # vt[:, 2]: the normal of the best-fitting plane
            flat = np.abs(np.einsum("nkd,nd->nk", q, vt[:, 2])).max(-1) <= rel_tol * radius
        solid = np.nonzero(~flat)[0]
        faces, coplanar = _solid_faces(q[solid], radius[solid], rel_tol)
        faces[:, 0] = solid[faces[:, 0]]
        rows.append(faces + np.array([start, 0, 0, 0]))
        for i in solid[coplanar]:
            tri = _qhull_faces(q[i])
            rows.append(np.concatenate([np.full((len(tri), 1), start + i), tri], 1))
        planar = np.nonzero(flat)[0]
        faces = _triangles(q[planar], radius[planar], rel_tol) if K == 3 else _flat_faces(q[planar], vt[planar, :2])
        faces[:, 0] = planar[faces[:, 0]]
        rows.append(faces + np.array([start, 0, 0, 0]))
    table = np.concatenate(rows, 0) if rows else np.zeros((0, 4), dtype=np.int64)
    table = table[np.lexsort((table[:, 1], table[:, 0]))] if len(table) else table  # grouped by convex
    owner = table[:, 0].astype(np.int64)
    return owner[:, None] * K + table[:, 1:].astype(np.int64), owner


def convex_mesh(points, colors) -> trimesh.Trimesh:
    """One mesh of the hulls of N convexes (points [N, K, 3]) with per-convex vertex colours
    (colors [N, 3] float in [0, 1] or uint8); points of no face (inside their hull) are dropped."""
    from recon.export.mesh_io import to_uint8_colors

    pts = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    faces, _ = convex_hull_triangles(pts)
    K = pts.shape[1]
    rgb = np.repeat(to_uint8_colors(colors).reshape(-1, 3), K, axis=0)
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    mesh = trimesh.Trimesh(vertices=pts.reshape(-1, 3), faces=faces, vertex_colors=rgba, process=False)
    mesh.remove_unreferenced_vertices()
    return mesh
