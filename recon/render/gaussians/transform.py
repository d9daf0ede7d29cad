"""Similarity transforms of a set of 3D Gaussians (gsplat's parameter layout).

``x -> scale * (R x + t)`` moves every mean, multiplies every axis length by ``scale`` (log scales
shift by log(scale)), composes every orientation with R (quaternions: q_R * q) and rotates the
view-dependent colour so that a Gaussian looks the same from the correspondingly moved camera
(:func:`recon.rotations.rotate_sh`). Used to write splats in the input poses'
frame and to read them back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recon.rotations import matrix_to_quaternion, quaternion_multiply, rotate_sh


def transform_splats(params: dict[str, Tensor], rotation: Tensor, translation: Tensor, scale: float) -> dict[str, Tensor]:
    """Apply ``x -> scale * (R x + t)`` to Gaussians {means, scales (log), quats, opacities, sh0, shN}."""
    rot = proper_rotation(rotation, "transform_splats")
    out = dict(params)
    out["means"] = move_points(params["means"], rot, translation, scale)
    out["scales"] = params["scales"] + math.log(scale)
    q = matrix_to_quaternion(rot).to(params["quats"])
    out["quats"] = quaternion_multiply(q.expand_as(params["quats"]), params["quats"])
    out["sh0"], out["shN"] = rotate_colors(params["sh0"], params["shN"], rot)
    return out


def proper_rotation(rotation: Tensor, caller: str) -> Tensor:
    """``rotation`` [3, 3] as float64; a ValueError naming ``caller`` unless it is orthonormal with det +1."""
    rot = rotation.to(torch.float64)
    if not torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-5) or float(torch.det(rot)) < 0:
        raise ValueError(f"{caller} needs a proper rotation (orthonormal, det +1)")
    return rot


def move_points(points: Tensor, rotation: Tensor, translation: Tensor, scale: float) -> Tensor:
    """``scale * (R x + t)`` of points [..., 3], computed in float64, returned in their dtype."""
    moved = points.to(torch.float64) @ rotation.to(torch.float64).T + translation.to(torch.float64)
    return (scale * moved).to(points.dtype)


def rotate_colors(sh0: Tensor, shN: Tensor, rotation: Tensor) -> tuple[Tensor, Tensor]:
    """SH colours [N, 1, 3] and [N, K-1, 3] of primitives whose frame turns by ``rotation`` [3, 3]:
    a primitive seen along direction d in the new frame was seen along R^T d in the old one."""
    rotated = rotate_sh(torch.cat([sh0, shN], 1), rotation.to(torch.float64).T)
    return rotated[:, :1].contiguous(), rotated[:, 1:].contiguous()


def inverse_similarity(rotation: Tensor, translation: Tensor, scale: float) -> tuple[Tensor, Tensor, float]:
    """(R', t', s') with s'(R' y + t') = x for y = s(R x + t)."""
    rot_t = rotation.T
    return rot_t, -scale * (rot_t @ translation), 1.0 / scale
