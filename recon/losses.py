"""Losses for neural SDF reconstruction (eikonal, curvature, monocular cues) and PSNR.

Formulations: eikonal (Gropp et al. 2020, IGR), curvature (Li et al. 2023, Neuralangelo, eq. 9),
monocular depth and normal cues (Yu et al. 2022, MonoSDF, eq. 12-14).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["curvature_loss", "eikonal_loss", "normal_cue_loss", "psnr_from_mse", "scale_shift_invariant_depth_loss"]


def eikonal_loss(gradients: Tensor) -> Tensor:
    """Eikonal regulariser ``mean (|grad f| - 1)^2`` (IGR). gradients: [N, 3] -> scalar."""
    return ((gradients.norm(dim=-1) - 1.0) ** 2).mean()


def curvature_loss(sdf_fn: Callable[[Tensor], Tensor], points: Tensor, eps: float = 1e-3) -> Tensor:
    """Neuralangelo's curvature loss: ``mean |laplacian f|`` by central finite differences.

    sdf_fn: [M, 3] -> [M] (or [M, 1]); points: [N, 3]; eps: step along each axis.
    ``lap f(x) ~ sum_k (f(x + eps e_k) + f(x - eps e_k) - 2 f(x)) / eps^2``. All 7N evaluations
    go through one call of ``sdf_fn``. Neuralangelo reuses the taps of its numerical gradient and
    anneals eps with the hash-grid resolution; here eps is the caller's choice.
    """
    n = points.shape[0]
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps  # [3, 3]
    taps = torch.cat([points, (points[:, None] + offsets).reshape(-1, 3), (points[:, None] - offsets).reshape(-1, 3)])
    values = sdf_fn(taps).reshape(-1)
    center, plus, minus = values[:n], values[n : 4 * n].view(n, 3), values[4 * n :].view(n, 3)
    laplacian = (plus + minus - 2.0 * center[:, None]).sum(-1) / (eps * eps)
    return laplacian.abs().mean()


def scale_shift_invariant_depth_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """MonoSDF's scale- and shift-invariant depth loss. pred, target, mask: [R] -> scalar.

    Solves ``(w, q) = argmin sum_r m_r (w pred_r + q - target_r)^2`` in closed form (2x2 normal
    equations) and returns ``sum m (w pred + q - target)^2 / (2 sum m)``: MonoSDF's reduction (half a
    masked MSE), kept so that its loss weight (0.1) means the same here. MonoSDF's extra
    gradient-matching term is not included (on random rays it has no spatial meaning). w and q keep
    their graph; at the optimum their own contribution to the gradient vanishes (envelope theorem).
    A degenerate batch (fewer than two distinct masked predictions) falls back to w = 1, q = mean
    offset. Returns 0 when the mask is empty.
    """
    m = torch.ones_like(pred) if mask is None else mask.to(pred.dtype)
    a00, a01, a11 = (m * pred * pred).sum(), (m * pred).sum(), m.sum()
    b0, b1 = (m * pred * target).sum(), (m * target).sum()
    det = a00 * a11 - a01 * a01
    ok = det > 1e-12 * (a00 * a11).clamp_min(1e-30)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    w = torch.where(ok, (a11 * b0 - a01 * b1) / safe_det, torch.ones_like(det))
    q = torch.where(ok, (a00 * b1 - a01 * b0) / safe_det, (b1 - a01) / a11.clamp_min(1.0))
    residual = w * pred + q - target
    return (m * residual * residual).sum() / (2.0 * a11).clamp_min(1.0)


def normal_cue_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """MonoSDF's monocular normal loss ``mean |n - n*|_1 + mean (1 - n . n*)``. pred, target: [R, 3].

    Both are normalised first; the L1 norm sums over xyz. MonoSDF weights the two terms equally
    (0.05 each), so the sum here takes one weight. mask: optional [R] bool/float.
    """
    p = torch.nn.functional.normalize(pred, dim=-1)
    t = torch.nn.functional.normalize(target, dim=-1)
    per_ray = (p - t).abs().sum(-1) + (1.0 - (p * t).sum(-1))
    if mask is None:
        return per_ray.mean()
    m = mask.to(per_ray.dtype)
    return (m * per_ray).sum() / m.sum().clamp_min(1.0)


def psnr_from_mse(mse: Tensor | float, max_value: float = 1.0) -> Tensor:
    """PSNR in dB: ``10 log10(max^2 / mse)``."""
    mse = torch.as_tensor(mse)
    return 10.0 * torch.log10(max_value**2 / mse)
