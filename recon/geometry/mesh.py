"""Small mesh helpers shared by the exporters and mesh-bound primitives."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import trimesh
from torch import Tensor
import torch

__all__ = ["cluster_decimate", "first_ray_hit", "midpoint_subdivide", "sample_points_on_mesh", "transform_mesh"]


def sample_points_on_mesh(mesh: trimesh.Trimesh, num_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform random points on the surface.

    Returns points [P, 3] float64 and their face normals [P, 3]; P = num_points (0 for an empty
    mesh). Deterministic for a given seed.
    """
    if len(mesh.faces) == 0 or num_points <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    points, face_idx = trimesh.sample.sample_surface(mesh, int(num_points), seed=seed)
    return np.asarray(points), np.asarray(mesh.face_normals[face_idx])


def transform_mesh(mesh: trimesh.Trimesh, fn: Callable[[np.ndarray], np.ndarray]) -> trimesh.Trimesh:
    """A copy of ``mesh`` with vertices mapped by ``fn`` ([V, 3] -> [V, 3]), e.g. from recon's
    normalised scene coordinates back to the dataset's. Faces and vertex colours are kept; if
    ``fn`` mirrors space (negative determinant) the winding is flipped so normals stay outward.
    """
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    new = np.asarray(fn(verts), dtype=np.float64)
    if new.shape != verts.shape:
        raise ValueError(f"fn must map [V, 3] to [V, 3], got {new.shape}")
    faces = np.asarray(mesh.faces)
    if len(verts) >= 4:
        # Local orientation check on the bounding-box axes (exact for affine maps).
        c = verts.mean(0)
        scale = max(float(np.ptp(verts, axis=0).max()), 1e-9)
        probe = c + np.vstack([np.zeros(3), np.eye(3) * scale])
        q = np.asarray(fn(probe), dtype=np.float64)
        if np.linalg.det((q[1:] - q[0]).T) < 0:
            faces = faces[:, ::-1]
    colors = None
    if mesh.visual.kind == "vertex":
        colors = np.asarray(mesh.visual.vertex_colors)
    return trimesh.Trimesh(vertices=new, faces=faces.copy(), vertex_colors=colors, process=False)


def midpoint_subdivide(corners: Tensor) -> Tensor:
    """Split each triangle [M, 3, D] (its three corners in any coordinates: positions, or barycentric
    coordinates in a parent triangle) into four by its edge midpoints -> [4, M, 3, D]: the three
    corner triangles, then the middle one, each with the parent's winding. The children tile the
    parent: their areas sum to its area."""
    a, b, c = corners.unbind(-2)
    ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
    return torch.stack([torch.stack(t, -2) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])


def cluster_decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_faces`` triangles by vertex clustering (Rossignac & Borrel 1993, "Multi-resolution
    3D approximations for rendering complex scenes"): vertices [V, 3] in one cell of a uniform grid
    merge into their mean, triangles that collapse are dropped, duplicates kept once. The cell is the
    smallest (by bisection) that meets the budget. Returns (vertices [V', 3], faces [F', 3]); the
    input unchanged when it already fits."""
    if len(faces) <= max_faces:
        return vertices, faces
    origin = vertices.min(0)
    extent = float(np.ptp(vertices, axis=0).max()) or 1.0

    def cluster(cell: float) -> tuple[np.ndarray, np.ndarray]:
        keys = np.floor((vertices - origin) / cell).astype(np.int64)
        _, label, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        label = label.reshape(-1)
        merged = np.zeros((len(counts), 3))
        np.add.at(merged, label, vertices)
        merged /= counts[:, None]
        f = label[faces]
        f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
        f = f[np.sort(np.unique(np.sort(f, 1), axis=0, return_index=True)[1])]
        used, f = np.unique(f, return_inverse=True)
        return merged[used], f.reshape(-1, 3)

    lo, hi = 0.0, extent
    best = cluster(hi)
    for _ in range(20):
        cell = (lo + hi) / 2
        candidate = cluster(cell)
        if len(candidate[1]) <= max_faces:
            best, hi = candidate, cell
        else:
            lo = cell
    return best


def first_ray_hit(vertices: np.ndarray, faces: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> tuple[int, np.ndarray] | None:
    """The first triangle a ray meets and the point where it meets it, or None (Moller & Trumbore
    1997, "Fast, Minimum Storage Ray/Triangle Intersection", vectorised over all faces; both sides of a
    face count). vertices [V, 3], faces [F, 3], origin and direction [3] (any length)."""
    v = np.asarray(vertices, dtype=np.float64)
    o, d = np.asarray(origin, dtype=np.float64), np.asarray(direction, dtype=np.float64)
    d = d / max(float(np.linalg.norm(d)), 1e-30)
    a, b, c = (v[np.asarray(faces)[:, k]] for k in range(3))
    e1, e2 = b - a, c - a
    p = np.cross(d, e2)
    det = (e1 * p).sum(-1)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = o - a
    u = (s * p).sum(-1) * inv
    q = np.cross(s, e1)
    w = (q @ d) * inv
    t = (e2 * q).sum(-1) * inv
    ok &= (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)
    if not ok.any():
        return None
    face = int(np.argmin(np.where(ok, t, np.inf)))
    return face, o + t[face] * d
