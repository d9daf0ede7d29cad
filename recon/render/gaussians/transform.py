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
    dtype = params["means"].dtype
    rot = rotation.to(torch.float64)
    if not torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-5) or float(torch.det(rot)) < 0:
        raise ValueError("transform_splats needs a proper rotation (orthonormal, det +1)")
    out = dict(params)
    means = params["means"].to(torch.float64)
    out["means"] = (scale * (means @ rot.T + translation.to(torch.float64))).to(dtype)
    out["scales"] = params["scales"] + math.log(scale)
    q = matrix_to_quaternion(rot).to(params["quats"])
    out["quats"] = quaternion_multiply(q.expand_as(params["quats"]), params["quats"])
    sh = torch.cat([params["sh0"], params["shN"]], 1)
    # A Gaussian seen along direction d in the new frame was seen along R^T d in the old one.
    rotated = rotate_sh(sh, rot.T)
    out["sh0"], out["shN"] = rotated[:, :1].contiguous(), rotated[:, 1:].contiguous()
    return out


def inverse_similarity(rotation: Tensor, translation: Tensor, scale: float) -> tuple[Tensor, Tensor, float]:
    """(R', t', s') with s'(R' y + t') = x for y = s(R x + t)."""
    rot_t = rotation.T
    return rot_t, -scale * (rot_t @ translation), 1.0 / scale
