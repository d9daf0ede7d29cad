"""Similarity transforms of a set of 3D Gaussians (gsplat's parameter layout).

``x -> scale * (R x + t)`` moves every mean, multiplies every axis length by ``scale`` (log scales
shift by log(scale)), composes every orientation with R (quaternions: q_R * q) and rotates the
view-dependent colour so that a Gaussian looks the same from the correspondingly moved camera
(:func:`recon.fields.spherical_harmonics.rotate_sh`). Used to write splats in the input poses'
frame and to read them back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recon.fields.spherical_harmonics import rotate_sh


def matrix_to_quat(rot: Tensor) -> Tensor:
    """Rotation matrix [3, 3] -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m = rot.to(torch.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + float(trace))
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(torch.argmax(torch.diagonal(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + float(m[i, i] - m[j, j] - m[k, k]), 1e-300))
        q = [0.0] * 4
        q[0] = float(m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = float(m[j, i] + m[i, j]) / s
        q[1 + k] = float(m[k, i] + m[i, k]) / s
    out = torch.tensor([float(v) for v in q], dtype=torch.float64)
    out = out / out.norm()
    return out if out[0] >= 0 else -out


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of wxyz quaternions (broadcasting over leading dims)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


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
    q = matrix_to_quat(rot).to(params["quats"])
    out["quats"] = quat_multiply(q.expand_as(params["quats"]), params["quats"])
    sh = torch.cat([params["sh0"], params["shN"]], 1)
    # A Gaussian seen along direction d in the new frame was seen along R^T d in the old one.
    rotated = rotate_sh(sh, rot.T)
    out["sh0"], out["shN"] = rotated[:, :1].contiguous(), rotated[:, 1:].contiguous()
    return out


def inverse_similarity(rotation: Tensor, translation: Tensor, scale: float) -> tuple[Tensor, Tensor, float]:
    """(R', t', s') with s'(R' y + t') = x for y = s(R x + t)."""
    rot_t = rotation.T
    return rot_t, -scale * (rot_t @ translation), 1.0 / scale
