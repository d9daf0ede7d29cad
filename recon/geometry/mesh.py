"""Small mesh helpers shared by the exporters."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import trimesh

__all__ = ["sample_points_on_mesh", "transform_mesh"]


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
