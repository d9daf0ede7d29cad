"""Scene contraction for unbounded scenes (mip-NeRF 360, Barron et al. 2022, eq. 10).

``contract(x) = x`` for ``|x| <= 1`` and ``(2 - 1/|x|) x/|x|`` otherwise, which maps all of R^3
into the ball of radius 2 (in the chosen norm) continuously, with far-away content squeezed
proportionally to disparity. The paper uses the L2 norm; nerfstudio's nerfacto uses the L-inf norm,
so the inner region is the unit cube and the image is the cube [-2, 2]^3 — that keeps axis-aligned
hash grids fully used.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["contract", "uncontract"]


def _norm(x: Tensor, order: float) -> Tensor:
    if order == math.inf:
        return x.abs().amax(-1, keepdim=True)
    if order == 2:
        return torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    raise ValueError(f"order must be 2 or inf, got {order}")


def contract(x: Tensor, order: float = math.inf) -> Tensor:
    """Contract points x [..., 3] -> [..., 3] with ``norm(out, order) < 2``.

    Differentiable. Value and Jacobian are continuous across ``|x| = 1`` for both norms: the outer
    branch's Jacobian is the identity there (radial slope ``1/|x|^2 = 1``, tangential scale
    ``(2 - 1/|x|)/|x| = 1``).
    """
    mag = _norm(x, order)
    # Clamp inside the outer branch only, so the identity branch never divides and gradients of the
    # unused branch stay finite (torch.where back-propagates NaNs from the other branch otherwise).
    safe = mag.clamp_min(1.0)
    outer = (2.0 - 1.0 / safe) * (x / safe)
    return torch.where(mag <= 1.0, x, outer)


def uncontract(y: Tensor, order: float = math.inf) -> Tensor:
    """Inverse of :func:`contract` for y [..., 3] with ``norm(y) < 2``: ``x = y / (|y| (2 - |y|))``
    outside the unit region (since ``|y| = 2 - 1/|x|`` and x, y are parallel)."""
    mag = _norm(y, order)
    safe = mag.clamp(1.0, 2.0 - 1e-6)
    outer = y / (safe * (2.0 - safe))
    return torch.where(mag <= 1.0, y, outer)
