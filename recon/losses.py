"""Losses for neural SDF reconstruction (eikonal, curvature, monocular cues), S3IM, and PSNR.

Formulations: eikonal (Gropp et al. 2020, IGR), curvature (Li et al. 2023, Neuralangelo, eq. 9),
monocular depth and normal cues (Yu et al. 2022, MonoSDF, eq. 12-14), stochastic structural
similarity (Xie et al. 2023, "S3IM: Stochastic Structural SIMilarity and Its Unreasonable
Effectiveness for Neural Fields", ICCV), multi-scale L1 and total variation (Paliwal et al. 2024,
CoherentGS).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import ConfigError
from recon.image_metrics import _gaussian_kernel_1d

__all__ = [
    "S3IMConfig",
    "curvature_loss",
    "eikonal_loss",
    "multiscale_l1",
    "normal_cue_loss",
    "psnr_from_mse",
    "s3im",
    "scale_shift_invariant_depth_loss",
    "total_variation",
]


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


def scale_shift_invariant_depth_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None, groups: Tensor | None = None) -> Tensor:
    """MonoSDF's scale- and shift-invariant depth loss. pred, target, mask, groups: [R] -> scalar.

    Solves ``(w, q) = argmin sum_r m_r (w pred_r + q - target_r)^2`` in closed form (2x2 normal
    equations) and returns ``sum m (w pred + q - target)^2 / (2 sum m)``: MonoSDF's reduction (half a
    masked MSE), kept so that its loss weight (0.1) means the same here. With ``groups`` (each ray's
    image index) every group gets its own (w, q): a monocular depth map's scale and shift are its
    own image's, and a batch of random rays mixes images (MonoSDF draws its rays from one image).
    MonoSDF's extra gradient-matching term is not included (on random rays it has no spatial
    meaning). w and q keep their graph; at the optimum their own contribution to the gradient
    vanishes (envelope theorem). A degenerate group (fewer than two distinct masked predictions)
    falls back to w = 1, q = mean offset. Returns 0 when the mask is empty.
    """
    m = torch.ones_like(pred) if mask is None else mask.to(pred.dtype)
    if groups is None:
        g, n = torch.zeros_like(pred, dtype=torch.long), 1
    else:
        _, g = torch.unique(groups, return_inverse=True)
        n = int(g.max()) + 1 if g.numel() else 1

    def total(x: Tensor) -> Tensor:
        return x.new_zeros(n).index_add(0, g, x)

    a00, a01, a11 = total(m * pred * pred), total(m * pred), total(m)
    b0, b1 = total(m * pred * target), total(m * target)
    det = a00 * a11 - a01 * a01
    ok = det > 1e-12 * (a00 * a11).clamp_min(1e-30)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    w = torch.where(ok, (a11 * b0 - a01 * b1) / safe_det, torch.ones_like(det))
    q = torch.where(ok, (a00 * b1 - a01 * b0) / safe_det, (b1 - a01) / a11.clamp_min(1.0))
    residual = w[g] * pred + q[g] - target
    return (m * residual * residual).sum() / (2.0 * m.sum()).clamp_min(1.0)


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


# ---------------------------------------------------------------------------------------------
# S3IM
# ---------------------------------------------------------------------------------------------
@dataclass
class S3IMConfig:
    """S3IM loss (Xie et al. 2023) on the rendered colours of a ray batch; defaults are the release's."""

    weight: float = 0.0
    """Weight of the loss ``1 - S3IM`` added to the method's losses; 0 turns S3IM off."""
    kernel_size: int = 4
    """Side K of the Gaussian SSIM window (sigma 1.5)."""
    stride: int = 4
    """Stride of the SSIM window over the virtual image."""
    repeats: int = 10
    """Orderings of the batch tiled into the virtual image: batch order, then random permutations."""
    patch_height: int = 64
    """Height of the virtual image; its width is repeats * rays / patch_height, which must be whole."""

    def check_batch(self, num_rays: int) -> None:
        """Raise :class:`ConfigError` unless a batch of ``num_rays`` rays can form the virtual image."""
        for name in ("kernel_size", "stride", "repeats", "patch_height"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.s3im: {name} must be at least 1, got {getattr(self, name)} (--model.s3im.{name.replace('_', '-')})")
        m, h, total = self.repeats, self.patch_height, self.repeats * num_rays
        if total % h:
            step = h // math.gcd(m, h)
            rays = -(-num_rays // step) * step
            divisor = max(d for d in range(1, h + 1) if total % d == 0)
            raise ConfigError(
                f"model.s3im: patch_height {h} must divide repeats*rays = {m}*{num_rays} = {total}; "
                f"set --datamanager.train-num-rays-per-batch to a multiple of {step} (e.g. {rays}) "
                f"or --model.s3im.patch-height to a divisor of {total} (e.g. {divisor})"
            )
        pad2 = 2 * ((self.kernel_size - 1) // 2)
        if min(h, total // h) + pad2 < self.kernel_size:
            raise ConfigError(
                f"model.s3im: the virtual image ({h} x {total // h} for {num_rays} rays) is smaller than the "
                f"{self.kernel_size}x{self.kernel_size} window; lower --model.s3im.kernel-size or change --model.s3im.patch-height"
            )


def _s3im_index(num_rays: int, repeats: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """[repeats * R] ray indices: batch order, then ``repeats - 1`` uniform random permutations."""
    draw_on = device if generator is None else generator.device
    orders = [torch.arange(num_rays, device=draw_on)]
    orders += [torch.randperm(num_rays, generator=generator, device=draw_on) for _ in range(repeats - 1)]
    return torch.cat(orders).to(device)


def s3im(
    pred: Tensor,
    target: Tensor,
    kernel_size: int = 4,
    stride: int = 4,
    repeats: int = 10,
    patch_height: int = 64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Stochastic structural similarity of a ray batch (Xie et al. 2023, ICCV); the loss is ``1 - s3im``.

    pred, target: [R, C] colours of R rays (C = 3 for RGB), any float dtype, any device.
    Returns a 0-d tensor (1 for identical inputs), differentiable w.r.t. both.

    Semantics of the official release (``model_components/s3im.py`` and ``ssim.py``):

    1. ``repeats`` orderings of the batch: the identity (batch order), then independent uniform
       random permutations (drawn from ``generator``, or from the global RNG of the inputs' device).
    2. The re-ordered batches are concatenated into one sequence of ``repeats * R`` colours and,
       channels first, reshaped row by row into one virtual image [1, C, H, W] with
       H = ``patch_height`` and W = ``repeats * R / H`` (so each image row is a contiguous chunk of
       the sequence; an ordering does not form a block of its own).
    3. SSIM on that image pair: a K x K Gaussian window (sigma 1.5) whose 1-D weights are
       ``exp(-(x - K // 2)^2 / (2 sigma^2))``, x = 0..K-1, normalised (off-centre for even K, as
       released), applied per channel with stride ``stride`` and zero padding ``(K - 1) // 2``;
       population statistics ``var = E[x^2] - mu^2`` (not clamped), C1 = 0.01^2, C2 = 0.03^2; the
       mean of the SSIM map over all window positions and channels.

    The release requires R = 64 x 64 = 4096; here only ``repeats * R`` must be a multiple of
    ``patch_height`` (as in the authors' sdfstudio port), else ValueError.
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"s3im expects pred and target of the same shape [R, C], got {tuple(pred.shape)} and {tuple(target.shape)}")
    num_rays, channels = pred.shape
    total = repeats * num_rays
    if total % patch_height:
        raise ValueError(f"s3im: patch_height {patch_height} does not divide repeats * rays = {repeats} * {num_rays}")
    width = total // patch_height
    index = _s3im_index(num_rays, repeats, generator, pred.device)

    def virtual_image(colours: Tensor) -> Tensor:
        return colours[index].T.reshape(1, channels, patch_height, width)

    x, y = virtual_image(pred), virtual_image(target.to(pred.dtype))
    g = _gaussian_kernel_1d(kernel_size, 1.5, pred.dtype, pred.device, center=float(kernel_size // 2))
    window = torch.outer(g, g).expand(channels, 1, kernel_size, kernel_size)
    # The five local moments in one grouped convolution (each is a batch entry).
    moments = torch.cat([x, y, x * x, y * y, x * y])
    stats = F.conv2d(moments, window, stride=stride, padding=(kernel_size - 1) // 2, groups=channels)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.unbind(0)
    var_x, var_y, cov = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return ssim_map.mean()


def multiscale_l1(pred: Tensor, gt: Tensor, weights: tuple[float, ...] = (1.0, 1 / 4, 1 / 8, 1 / 16, 1 / 32)) -> Tensor:
    """Multi-scale L1 of images [H, W, C] (or [B, H, W, C]): sum_k weights[k] mean|P^k(pred) - P^k(gt)|
    with P = 2x2 average pooling (finest first; CoherentGS, Paliwal et al. 2024). Levels stop once an
    image side would fall below 1 pixel."""
    a = (pred if pred.dim() == 4 else pred[None]).permute(0, 3, 1, 2)
    b = (gt if gt.dim() == 4 else gt[None]).permute(0, 3, 1, 2)
    total = pred.new_zeros(())
    for k, w in enumerate(weights):
        if k > 0:
            if min(a.shape[-2:]) < 2:
                break
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        total = total + w * (a - b).abs().mean()
    return total


def total_variation(x: Tensor) -> Tensor:
    """First-order anisotropic total variation of maps [..., H, W]: mean|d/dx| + mean|d/dy| (forward
    differences, means over every map and pixel pair)."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
