"""Real spherical harmonics: a direction encoding and SH-coefficient colour evaluation.

Basis: the real spherical harmonics with the Condon-Shortley phase (-1)^m, orthonormal on the unit
sphere (integral of Y_i Y_j dOmega = delta_ij), ordered by band l = 0, 1, 2, 3 and within a band by
m = -l .. l (coefficient k = l^2 + l + m). Written as polynomials in the unit direction (x, y, z),
e.g. Y_1,-1 = -sqrt(3 / 4pi) y, Y_1,0 = sqrt(3 / 4pi) z, Y_1,1 = -sqrt(3 / 4pi) x. This is the
basis, with the same signs, that tiny-cuda-nn's "SphericalHarmonics" encoding (used by instant-ngp,
Müller et al. 2022) and 3D Gaussian Splatting (Kerbl et al. 2023, ``eval_sh``) use, so coefficients
are interchangeable with theirs. Tables of real SH without the Condon-Shortley phase (e.g.
Wikipedia's) differ from this basis by the sign of every odd-m function.

``degree`` counts bands here, as in tiny-cuda-nn: degree d uses d^2 coefficients (1, 4, 9, 16 for
d = 1..4). 3DGS counts from zero: its ``sh_degree = 3`` is ``degree = 4`` here.

Inputs are unit vectors in [-1, 1]^3, NOT tcnn's [0, 1]-mapped directions ((d + 1) / 2).

Rotating a signal in this basis (its coefficients) is :func:`recon.rotations.rotate_sh`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MAX_DEGREE = 4

# Normalisation constants of the bands, from their closed forms.
C0 = 0.5 * math.sqrt(1.0 / math.pi)  # 0.28209479177387814
C1 = math.sqrt(3.0 / (4.0 * math.pi))  # 0.4886025119029199
C2 = (
    0.5 * math.sqrt(15.0 / math.pi),  # xy
    -0.5 * math.sqrt(15.0 / math.pi),  # yz
    0.25 * math.sqrt(5.0 / math.pi),  # 2zz - xx - yy  (= 3zz - 1 on the sphere)
    -0.5 * math.sqrt(15.0 / math.pi),  # xz
    0.25 * math.sqrt(15.0 / math.pi),  # xx - yy
)
C3 = (
    -0.25 * math.sqrt(35.0 / (2.0 * math.pi)),  # y (3xx - yy)
    0.5 * math.sqrt(105.0 / math.pi),  # xyz
    -0.25 * math.sqrt(21.0 / (2.0 * math.pi)),  # y (4zz - xx - yy)
    0.25 * math.sqrt(7.0 / math.pi),  # z (2zz - 3xx - 3yy)
    -0.25 * math.sqrt(21.0 / (2.0 * math.pi)),  # x (4zz - xx - yy)
    0.25 * math.sqrt(105.0 / math.pi),  # z (xx - yy)
    -0.25 * math.sqrt(35.0 / (2.0 * math.pi)),  # x (xx - 3yy)
)


def _check_degree(degree: int) -> None:
    if not isinstance(degree, int) or not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree (number of SH bands) must be an int in 1..{MAX_DEGREE}, got {degree!r}")


def sh_encoding(directions: Tensor, degree: int) -> Tensor:
    """Real SH basis values of unit directions.

    directions: [..., 3] unit vectors; degree: bands 1..4 -> [..., degree**2] (see module docstring
    for order and signs). Directions are not renormalised: the polynomials are homogeneous harmonic
    ones, so a non-unit input gives the basis scaled by |d|^l, not an error.
    """
    _check_degree(degree)
    if directions.shape[-1] != 3:
        raise ValueError(f"directions must be [..., 3], got {tuple(directions.shape)}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree > 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            C2[0] * x * y,
            C2[1] * y * z,
            C2[2] * (2.0 * zz - xx - yy),
            C2[3] * x * z,
            C2[4] * (xx - yy),
        ]
        if degree > 3:
            out += [
                C3[0] * y * (3.0 * xx - yy),
                C3[1] * x * y * z,
                C3[2] * y * (4.0 * zz - xx - yy),
                C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                C3[4] * x * (4.0 * zz - xx - yy),
                C3[5] * z * (xx - yy),
                C3[6] * x * (xx - 3.0 * yy),
            ]
    return torch.stack(out, -1)


def eval_sh(coeffs: Tensor, directions: Tensor, degree: int | None = None) -> Tensor:
    """Colour (or any C-channel signal) from SH coefficients, as 3DGS's ``eval_sh`` but without offset.

    coeffs: [..., K, C] with K >= degree**2 (coefficient k in the basis order above);
    directions: [..., 3] unit vectors (leading dims broadcast with coeffs'); degree: bands used,
    1..4, default all of them (K must then be a square) -> [..., C] = sum_k coeffs[..., k, :] * Y_k.

    Using fewer bands than stored is 3DGS's progressive SH schedule. 3DGS then returns
    ``max(eval_sh + 0.5, 0)`` as the colour; the +0.5 (so that zero coefficients give grey) and the
    clamp are left to the caller.
    """
    k = coeffs.shape[-2]
    if degree is None:
        degree = math.isqrt(k)
        if degree * degree != k:
            raise ValueError(f"{k} SH coefficients is not a square number; pass degree explicitly")
    _check_degree(degree)
    if degree * degree > k:
        raise ValueError(f"degree {degree} needs {degree * degree} coefficients, got {k}")
    basis = sh_encoding(directions, degree)  # [..., degree^2]
    return (basis[..., None] * coeffs[..., : degree * degree, :]).sum(-2)


class SHEncoding(nn.Module):
    """Spherical-harmonics direction encoding (the instant-ngp / nerfacto view-direction input).

    directions: [..., 3] unit vectors -> [..., degree**2]; degree counts bands (1..4, default 4).
    """

    def __init__(self, degree: int = 4):
        super().__init__()
        _check_degree(degree)
        self.degree = degree

    @property
    def out_dim(self) -> int:
        return self.degree**2

    def extra_repr(self) -> str:
        return f"degree={self.degree}"

    def forward(self, directions: Tensor) -> Tensor:
        return sh_encoding(directions, self.degree)
