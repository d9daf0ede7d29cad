"""Rotations: unit quaternions, rotation matrices, slerp, and rotation of SH coefficients.

The one home of rotation arithmetic in recon. Camera paths, the Gaussian projection and its
densification, similarity transforms of splats, COLMAP I/O and pose normalisation (numpy at their
boundary, converted there) and the viewer all call these functions. The one exception is the Warp
projection kernel (``recon/render/gaussians/warp_projection.py``): its ``quat_rotmat`` is device
code, which cannot call torch, and is checked against the torch projection built on
:func:`quaternion_to_matrix` by ``tests/recon/test_gaussian_warp.py``.

Conventions: quaternions are [..., 4] in (w, x, y, z) order (scalar first, Hamilton's product), the
order of COLMAP, gsplat, 3DGS PLY files and viser; q rotates a vector v to R(q) v. Matrices are
[..., 3, 3]. Every function broadcasts over leading dimensions and returns the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.fields.spherical_harmonics import sh_encoding

__all__ = [
    "matrix_to_quaternion",
    "quaternion_multiply",
    "quaternion_slerp",
    "quaternion_to_matrix",
    "apply_sh_rotation",
    "rotate_sh",
    "rotation_between",
    "sh_rotation_matrices",
]


def quaternion_to_matrix(quats: Tensor) -> Tensor:
    """quats: [..., 4] (w, x, y, z), any norm -> [..., 3, 3] rotation matrices.

    The quaternion is normalised first, so this is differentiable in unnormalised parameters (the
    Gaussian rasterizer's quaternions); a zero quaternion gives the identity instead of NaN.
    """
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def matrix_to_quaternion(matrices: Tensor) -> Tensor:
    """matrices: [..., 3, 3] rotations -> [..., 4] unit quaternions (w, x, y, z) with w >= 0.

    Shepperd's method (Shepperd 1978, "Quaternion from Rotation Matrix", J. Guidance and Control
    1(3)): the largest of |w|, |x|, |y|, |z| is found from the trace and the diagonal and taken
    from a square root of at least 1/4, the other three from off-diagonal sums and differences, so
    no branch divides by a small number (the naive ``w = sqrt(1 + trace) / 2`` fails near 180
    degrees). Computed in float64. A 180-degree rotation has w = 0 and two equal answers; which one
    is returned is unspecified.
    """
    m = matrices.reshape(-1, 3, 3).double()
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    trace = m00 + m11 + m22
    # 4w^2 = 1 + trace and 4x^2 = 1 + 2 m00 - trace, etc.: the largest component is the argmax here.
    which = torch.stack([trace, m00, m11, m22], dim=-1).argmax(dim=-1)
    s = torch.sqrt((1.0 + trace).clamp_min(1e-12)) * 2  # 4w
    qw = torch.stack([0.25 * s, (m[:, 2, 1] - m[:, 1, 2]) / s, (m[:, 0, 2] - m[:, 2, 0]) / s, (m[:, 1, 0] - m[:, 0, 1]) / s], -1)
    s = torch.sqrt((1.0 + m00 - m11 - m22).clamp_min(1e-12)) * 2  # 4x
    qx = torch.stack([(m[:, 2, 1] - m[:, 1, 2]) / s, 0.25 * s, (m[:, 0, 1] + m[:, 1, 0]) / s, (m[:, 0, 2] + m[:, 2, 0]) / s], -1)
    s = torch.sqrt((1.0 + m11 - m00 - m22).clamp_min(1e-12)) * 2  # 4y
    qy = torch.stack([(m[:, 0, 2] - m[:, 2, 0]) / s, (m[:, 0, 1] + m[:, 1, 0]) / s, 0.25 * s, (m[:, 1, 2] + m[:, 2, 1]) / s], -1)
    s = torch.sqrt((1.0 + m22 - m00 - m11).clamp_min(1e-12)) * 2  # 4z
    qz = torch.stack([(m[:, 1, 0] - m[:, 0, 1]) / s, (m[:, 0, 2] + m[:, 2, 0]) / s, (m[:, 1, 2] + m[:, 2, 1]) / s, 0.25 * s], -1)
    branches = torch.stack([qw, qx, qy, qz], dim=1)  # [M, 4 branches, 4]
    q = F.normalize(branches[torch.arange(m.shape[0], device=m.device), which], dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.to(matrices.dtype).reshape(*matrices.shape[:-2], 4)


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b: a [..., 4], b [..., 4] (w, x, y, z), broadcast -> [..., 4].

    R(a * b) = R(a) R(b): b's rotation is applied first (Hamilton 1844, "On Quaternions").
    """
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


def quaternion_slerp(q0: Tensor, q1: Tensor, t: Tensor) -> Tensor:
    """Spherical linear interpolation (Shoemake 1985, "Animating Rotation with Quaternion Curves").

    q0, q1: [..., 4] unit quaternions; t: [...] in [0, 1] -> [..., 4] unit quaternions. Takes the
    shorter arc (q and -q are the same rotation) and falls back to normalised lerp when the
    quaternions nearly coincide, where sin(theta) in the denominator vanishes.
    """
    dot = (q0 * q1).sum(-1)
    q1 = torch.where(dot[..., None] < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    small = sin_theta < 1e-6
    safe = torch.where(small, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(small, 1 - t, torch.sin((1 - t) * theta) / safe)
    w1 = torch.where(small, t, torch.sin(t * theta) / safe)
    return F.normalize(w0[..., None] * q0 + w1[..., None] * q1, dim=-1)


def rotation_between(a: Tensor, b: Tensor) -> Tensor:
    """a, b: [..., 3] directions (any length) -> [..., 3, 3] the rotation by the smallest angle that
    takes a onto b.

    Rodrigues' formula (Rodrigues 1840) with the sine and cosine taken from the cross and dot
    products, ``I + [v]x + [v]x^2 / (1 + cos)`` for ``v = a x b``. Opposite directions have no unique
    smallest rotation: they get the half turn about an axis perpendicular to a.
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    v = torch.linalg.cross(a, b)
    c = (a * b).sum(-1)[..., None, None]
    zero = torch.zeros_like(v[..., 0])
    vx = torch.stack(
        [
            torch.stack([zero, -v[..., 2], v[..., 1]], -1),
            torch.stack([v[..., 2], zero, -v[..., 0]], -1),
            torch.stack([-v[..., 1], v[..., 0], zero], -1),
        ],
        -2,
    )
    eye = torch.eye(3, dtype=a.dtype, device=a.device)
    opposite = c < -1.0 + 1e-10
    smallest = eye + vx + vx @ vx / torch.where(opposite, torch.ones_like(c), 1.0 + c)
    # Any axis perpendicular to a: a x e_x, or a x e_y when a is (nearly) along e_x.
    axis = torch.linalg.cross(a, eye[0].expand_as(a))
    along_x = torch.linalg.vector_norm(axis, dim=-1, keepdim=True) < 1e-6
    axis = F.normalize(torch.where(along_x, torch.linalg.cross(a, eye[1].expand_as(a)), axis), dim=-1)
    half_turn = 2.0 * axis[..., :, None] * axis[..., None, :] - eye
    return torch.where(opposite, half_turn, smallest)


def sh_rotation_matrices(rotation: Tensor, degree: int) -> list[Tensor]:
    """The real Wigner D-matrices of a rotation, bands 1 .. degree - 1: ``A[l - 1]`` [..., 2l+1, 2l+1]
    (float64, on the CPU) with ``c'(band l) = A c(band l)`` the coefficients of the rotated signal,
    ``eval_sh(c', d) == eval_sh(c, R d)``. rotation: [..., 3, 3] orthonormal (one or many).

    Each band is an invariant subspace of rotations (Ivanic & Ruedenberg 1996, "Rotation Matrices
    for Real Spherical Harmonics. Direct Determination by Recursion"), so its matrix is recovered
    exactly by least squares from the basis at a fixed set of directions, which avoids closed-form
    Wigner matrices and their sign conventions."""
    g = torch.Generator().manual_seed(0)
    dirs = F.normalize(torch.randn(12, 3, generator=g, dtype=torch.float64), dim=-1)  # band 3 needs 7 (2l + 1)
    rot = rotation.detach().to(torch.float64).cpu()
    lead = rot.shape[:-2]
    rot = rot.reshape(-1, 3, 3)
    y = sh_encoding(dirs, degree)
    out = [torch.empty(len(rot), 2 * band + 1, 2 * band + 1, dtype=torch.float64) for band in range(1, degree)]
    for rows in torch.arange(len(rot)).split(4096):  # bounded memory: [rows, 12, K] basis values
        y_rot = sh_encoding((dirs @ rot[rows].transpose(-1, -2)).reshape(-1, 3), degree).reshape(len(rows), len(dirs), -1)
        for band in range(1, degree):
            sl = slice(band * band, (band + 1) * (band + 1))
            # y_rot[:, sl] = y[:, sl] @ A per rotation, so c'(band) = A @ c(band).
            out[band - 1][rows] = torch.linalg.pinv(y[:, sl]) @ y_rot[:, :, sl]
    return [a.reshape(*lead, *a.shape[-2:]) for a in out]


def rotate_sh(coeffs: Tensor, rotation: Tensor) -> Tensor:
    """Coefficients of the rotated signal: returns c' with ``eval_sh(c', d) == eval_sh(c, R d)`` for
    every unit d (i.e. the signal re-expressed in a frame whose directions are ``R^T`` of the old).

    coeffs: [..., K, C] with K a square (1, 4, 9, 16), in the basis of
    :mod:`recon.fields.spherical_harmonics`; rotation: [3, 3] orthonormal, or one per leading row of
    ``coeffs`` ([N, 3, 3] for coeffs [N, K, C]: mesh-bound Gaussians turning with their faces)
    -> [..., K, C]. The band matrices are :func:`sh_rotation_matrices`; :func:`apply_sh_rotation`
    applies ones computed before (e.g. once per face, gathered per primitive)."""
    k = coeffs.shape[-2]
    degree = math.isqrt(k)
    if degree * degree != k:
        raise ValueError(f"{k} SH coefficients is not a square number")
    if degree <= 1:
        return coeffs.clone()
    return apply_sh_rotation(coeffs, sh_rotation_matrices(rotation, degree))


def apply_sh_rotation(coeffs: Tensor, matrices: list[Tensor]) -> Tensor:
    """``coeffs`` [..., K, C] with band l multiplied by ``matrices[l - 1]`` ([2l+1, 2l+1], or one per
    leading row, :func:`sh_rotation_matrices`); bands past the matrices' are copied."""
    out = coeffs.clone()
    for band, a in enumerate(matrices[: math.isqrt(coeffs.shape[-2]) - 1], start=1):
        sl = slice(band * band, (band + 1) * (band + 1))
        out[..., sl, :] = a.to(coeffs) @ coeffs[..., sl, :]
    return out
