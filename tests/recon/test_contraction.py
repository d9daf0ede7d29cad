"""Scene contraction (mip-NeRF 360)."""

import math

import pytest
import torch

from recon.render.contraction import contract, uncontract


@pytest.mark.parametrize("order", [2, math.inf])
def test_identity_inside_and_bounded_outside(order):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 3, generator=g, dtype=torch.float64)
    radius = 0.999 * torch.rand(1000, 1, generator=g, dtype=torch.float64)
    inside = x / torch.linalg.vector_norm(x, ord=order, dim=-1, keepdim=True) * radius
    assert torch.equal(contract(inside, order), inside)
    far = x * 10 ** torch.linspace(0, 8, 1000, dtype=torch.float64)[:, None]
    y = contract(far, order)
    n = torch.linalg.vector_norm(y, ord=order, dim=-1)
    assert (n < 2.0).all() and (n > 0).all()
    assert torch.allclose(uncontract(y[:500], order), far[:500], rtol=1e-6)


@pytest.mark.parametrize("order", [2, math.inf])
def test_continuous_at_boundary(order):
    g = torch.Generator().manual_seed(1)
    d = torch.randn(200, 3, generator=g, dtype=torch.float64)
    d = d / torch.linalg.vector_norm(d, ord=order, dim=-1, keepdim=True)
    eps = 1e-7
    a, b = contract(d * (1 - eps), order), contract(d * (1 + eps), order)
    assert (a - b).abs().max() < 1e-6
    # Gradients are finite everywhere, including at the origin.
    x = torch.cat([d * (1 + eps), d * (1 - eps), torch.zeros(1, 3, dtype=torch.float64)]).requires_grad_()
    contract(x, order).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_far_points_approach_radius_two():
    x = torch.tensor([[1e6, 0.0, 0.0], [0.0, -3.0, 4.0]], dtype=torch.float64)
    y = contract(x, 2)
    assert torch.allclose(y[0], torch.tensor([2.0 - 1e-6, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(y[1].norm(), torch.tensor(2.0 - 1 / 5.0, dtype=torch.float64))
