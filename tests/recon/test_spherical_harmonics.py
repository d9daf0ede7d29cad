"""Real spherical harmonics: orthonormality, constants and sign convention, eval_sh."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.fields.spherical_harmonics import SHEncoding, eval_sh, sh_encoding


pytestmark = pytest.mark.usefixtures("one_thread")


def _sphere_quadrature(n_theta: int = 12, n_phi: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre in cos(theta) x uniform in phi: exact for polynomials of degree < min(2 n_theta, n_phi)
    on the sphere. Returns directions [M, 3] and weights [M] (summing to 4 pi)."""
    cos_t, w_t = np.polynomial.legendre.leggauss(n_theta)
    phi = np.arange(n_phi) * 2 * np.pi / n_phi
    ct, ph = np.meshgrid(cos_t, phi, indexing="ij")
    st = np.sqrt(1 - ct**2)
    dirs = np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3)
    weights = (w_t[:, None] * np.full(n_phi, 2 * np.pi / n_phi)).reshape(-1)
    return torch.from_numpy(dirs), torch.from_numpy(weights)


def test_orthonormal_on_the_sphere_degree_4():
    dirs, w = _sphere_quadrature()
    assert float(w.sum()) == pytest.approx(4 * math.pi)
    basis = sh_encoding(dirs, 4)  # [M, 16]; products have degree <= 6: the quadrature is exact
    gram = basis.t() @ (basis * w[:, None])
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-12)


def test_orthonormal_monte_carlo():
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(200_000, 3, generator=g, dtype=torch.float64), dim=-1)
    basis = sh_encoding(dirs, 4)
    gram = 4 * math.pi * basis.t() @ basis / len(dirs)
    assert (gram - torch.eye(16, dtype=torch.float64)).abs().max() < 0.03


def test_constants_and_signs():
    x, y, z = torch.eye(3, dtype=torch.float64)
    c0, c1 = 0.28209479177387814, 0.4886025119029199
    assert float(sh_encoding(x, 1)[0]) == pytest.approx(0.28209479, abs=1e-8)
    # Condon-Shortley signs as tcnn / 3DGS: Y_1 = (-c1 y, c1 z, -c1 x).
    torch.testing.assert_close(sh_encoding(x, 2), torch.tensor([c0, 0, 0, -c1], dtype=torch.float64))
    torch.testing.assert_close(sh_encoding(y, 2), torch.tensor([c0, -c1, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(sh_encoding(z, 2), torch.tensor([c0, 0, c1, 0], dtype=torch.float64))
    # A generic direction against the constants written out (3DGS's table).
    d = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64), dim=0)
    a, b, c = d.tolist()
    expected = [
        c0, -c1 * b, c1 * c, -c1 * a,
        1.0925484305920792 * a * b, -1.0925484305920792 * b * c, 0.31539156525252005 * (2 * c * c - a * a - b * b),
        -1.0925484305920792 * a * c, 0.5462742152960396 * (a * a - b * b),
        -0.5900435899266435 * b * (3 * a * a - b * b), 2.890611442640554 * a * b * c,
        -0.4570457994644658 * b * (4 * c * c - a * a - b * b), 0.3731763325901154 * c * (2 * c * c - 3 * a * a - 3 * b * b),
        -0.4570457994644658 * a * (4 * c * c - a * a - b * b), 1.445305721320277 * c * (a * a - b * b),
        -0.5900435899266435 * a * (a * a - 3 * b * b),
    ]  # fmt: skip
    torch.testing.assert_close(sh_encoding(d, 4), torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=1e-15)


def test_addition_theorem_band_energy():
    """sum_m Y_lm(d)^2 = (2l + 1) / (4 pi) for every unit d: normalisation independent of direction."""
    dirs = torch.nn.functional.normalize(torch.randn(100, 3, dtype=torch.float64), dim=-1)
    basis = sh_encoding(dirs, 4)
    for band in range(4):
        energy = basis[:, band**2 : (band + 1) ** 2].square().sum(-1)
        torch.testing.assert_close(energy, torch.full_like(energy, (2 * band + 1) / (4 * math.pi)))


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_prefix_property_and_module(degree: int):
    dirs = torch.nn.functional.normalize(torch.randn(2, 7, 3), dim=-1)
    enc = SHEncoding(degree)
    assert enc.out_dim == degree**2
    out = enc(dirs)
    assert out.shape == (2, 7, degree**2) and out.dtype == torch.float32
    torch.testing.assert_close(out, sh_encoding(dirs, 4)[..., : degree**2])


def test_eval_sh_matches_explicit_sum():
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(5, 16, 3, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    for degree in (1, 2, 3, 4):
        basis = sh_encoding(dirs, degree)
        expected = torch.stack([sum(coeffs[i, k] * basis[i, k] for k in range(degree**2)) for i in range(5)])
        torch.testing.assert_close(eval_sh(coeffs, dirs, degree), expected)
    torch.testing.assert_close(eval_sh(coeffs, dirs), eval_sh(coeffs, dirs, 4))
    # Degree 1 is the constant term, without the 3DGS +0.5 offset.
    torch.testing.assert_close(eval_sh(coeffs, dirs, 1), 0.28209479177387814 * coeffs[:, 0])
    # Broadcasting: one set of coefficients seen from many directions.
    many = torch.nn.functional.normalize(torch.randn(4, 1, 3, dtype=torch.float64), dim=-1)
    assert eval_sh(coeffs, many).shape == (4, 5, 3)
    # Gradients reach both coefficients and directions (3DGS trains coefficients, and directions
    # depend on the Gaussian means).
    c, d = coeffs.clone().requires_grad_(True), dirs.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, d: eval_sh(c, d, 4), (c, d))


def test_invalid_arguments():
    d = torch.tensor([[0.0, 0.0, 1.0]])
    for degree in (0, 5):
        with pytest.raises(ValueError):
            sh_encoding(d, degree)
        with pytest.raises(ValueError):
            SHEncoding(degree)
    with pytest.raises(ValueError):
        eval_sh(torch.zeros(1, 8, 3), d)  # 8 coefficients is no whole number of bands
    with pytest.raises(ValueError):
        eval_sh(torch.zeros(1, 9, 3), d, 4)  # needs 16
    with pytest.raises(ValueError):
        sh_encoding(torch.zeros(4, 2), 2)
