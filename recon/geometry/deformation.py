"""Mesh-driven deformation: per-face deformation gradients, their polar decomposition, and what a
deformed copy of a mesh must satisfy.

Gao et al. 2024 ("Mesh-based Gaussian Splatting for Real-time Large-scale Deformation", TOG 43(6),
sec. 4) move Gaussians bound to a proxy mesh with the mesh. Their released code takes per-vertex
deformation gradients from a closed library; this module computes the weight-free per-face
version instead: for a rest triangle (v1, v2, v3) with unit normal n and area A, and its deformed
copy, E = [v2 - v1, v3 - v1, sqrt(A) n] and F = E' E^-1. F maps the rest triangle's edges onto the
deformed ones exactly, and its normal column makes it a similarity (F = s R) whenever the triangle
moved rigidly and was scaled uniformly by s. ``F = R S`` (R a rotation, S symmetric positive
semi-definite) by :func:`polar_decomposition`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import ReconError

__all__ = ["face_deformation_gradients", "face_frames", "polar_decomposition", "read_deformed_vertices", "same_connectivity"]


def _edges(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    tri = vertices[faces]  # [F, 3, 3]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    return e1, e2, torch.linalg.cross(e1, e2)


def face_frames(vertices: Tensor, faces: Tensor) -> Tensor:
    """An orthonormal frame [F, 3, 3] per triangle (columns: the first edge's direction, the
    in-plane direction perpendicular to it, the unit normal), det +1. vertices: [V, 3]; faces: [F, 3]."""
    e1, _, cross = _edges(vertices, faces)
    x = F.normalize(e1, dim=-1)
    z = F.normalize(cross, dim=-1)
    return torch.stack([x, torch.linalg.cross(z, x), z], -1)


def face_deformation_gradients(rest: Tensor, deformed: Tensor, faces: Tensor) -> Tensor:
    """F = E' E^-1 [F, 3, 3] per triangle (module docstring). rest, deformed: [V, 3] vertices of the
    same connectivity ``faces`` [F, 3]. Computed in float64; degenerate rest triangles (zero area)
    get the identity."""
    def basis(v: Tensor) -> Tensor:
        e1, e2, cross = _edges(v.double(), faces)
        norm = torch.linalg.vector_norm(cross, dim=-1, keepdim=True)
        normal = cross / norm.clamp_min(1e-300) * torch.sqrt(0.5 * norm)
        return torch.stack([e1, e2, normal], -1)

    E, E_def = basis(rest), basis(deformed)
    ok = torch.linalg.det(E).abs() > 1e-30
    eye = torch.eye(3, dtype=E.dtype, device=E.device).expand_as(E)
    grads = E_def @ torch.linalg.inv(torch.where(ok[:, None, None], E, eye))
    return torch.where(ok[:, None, None], grads, eye).to(rest.dtype)


def polar_decomposition(matrices: Tensor) -> tuple[Tensor, Tensor]:
    """``M = R S`` for matrices [..., 3, 3]: R [..., 3, 3] the closest rotation (det +1), S = R^T M
    [..., 3, 3] symmetric (positive semi-definite unless det M < 0, a reflected triangle). By SVD
    M = U diag(s) V^T, R = U D V^T with D = diag(1, 1, det(U V^T)). Computed in float64."""
    m = matrices.double()
    U, _, Vh = torch.linalg.svd(m)
    d = torch.linalg.det(U @ Vh)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = U @ D @ Vh
    S = R.transpose(-1, -2) @ m
    return R.to(matrices.dtype), (0.5 * (S + S.transpose(-1, -2))).to(matrices.dtype)


def same_connectivity(rest_faces: Tensor, faces: Tensor, num_vertices: int, path: str | Path, num_rest_vertices: int) -> None:
    """Raise :class:`ReconError` naming ``path`` unless a deformed mesh (``num_vertices``, ``faces``
    [F, 3]) has exactly the rest mesh's vertex count and faces (the deformation is read per vertex)."""
    if num_vertices != num_rest_vertices or faces.shape != rest_faces.shape:
        raise ReconError(
            f"the deformed mesh must have the proxy mesh's connectivity: {num_vertices} vertices and {len(faces)} faces, "
            f"the proxy has {num_rest_vertices} and {len(rest_faces)}", path,
        )
    if not torch.equal(faces.to(rest_faces), rest_faces):
        bad = int((faces.to(rest_faces) != rest_faces).any(-1).nonzero()[0])
        raise ReconError(f"the deformed mesh must have the proxy mesh's connectivity: face {bad} differs", path)


def read_deformed_vertices(path: str | Path, rest_vertices: Tensor, rest_faces: Tensor, to_normalised: Callable[[Tensor], Tensor]) -> Tensor:
    """The vertices [V, 3] (normalised frame, ``rest_vertices``' dtype and device) of a deformed
    copy of a rest mesh stored at ``path`` (PLY, OBJ or GLB in the input poses' frame, read in file
    order; ``to_normalised`` maps input-frame points [V, 3] float64 to the normalised frame).
    :class:`ReconError` naming the file when it cannot be read or its connectivity differs."""
    from recon.export.mesh_io import read_mesh

    vertices, faces = read_mesh(path)
    same_connectivity(rest_faces.cpu(), torch.from_numpy(faces), len(vertices), path, len(rest_vertices))
    return to_normalised(torch.from_numpy(vertices)).to(rest_vertices)
