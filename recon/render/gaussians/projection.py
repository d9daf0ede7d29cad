"""3D Gaussians to screen-space 2D Gaussians (EWA splatting), pure PyTorch.

The 3D covariance is Sigma = R S S^T R^T from a rotation quaternion and per-axis scales (Kerbl et al.
2023, "3D Gaussian Splatting for Real-Time Radiance Field Rendering", eq. 6). Its screen-space image
is the EWA approximation Sigma' = J W Sigma W^T J^T with W the camera rotation and J the Jacobian of
the perspective projection at the Gaussian's centre (Zwicker et al. 2001, "EWA Volume Splatting",
eq. 31; Kerbl et al. eq. 5). The details follow gsplat 1.5.3 (Ye et al. 2024, "gsplat: An
Open-Source Library for Gaussian Splatting"): the Jacobian's x/z, y/z are clamped to 1.3x the field of
view (``persp_proj`` in ``gsplat/cuda/include/Utils.cuh``), a 0.3 px isotropic blur is added
(``add_blur``), and the screen radius is per axis and opacity-aware
(``ProjectionEWA3DGSFused.cu``, from Radl et al. 2024 "StopThePop", sec. B.2).

Everything is differentiable by autograd and keeps the input dtype; the integer radii are not.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from recon.rotations import quaternion_to_matrix

from ._constants import ALPHA_THRESHOLD, FOV_MARGIN, GAUSSIAN_EXTEND


class Projection(NamedTuple):
    """Result of :func:`project_gaussians`, in gsplat's ``fully_fused_projection`` order."""

    radii: Tensor  # [C, N, 2] int32; 0 = culled (then the rows below are 0)
    means2d: Tensor  # [C, N, 2] pixel coordinates (pixel centres at +0.5)
    depths: Tensor  # [C, N] camera-space z (for every Gaussian, culled or not)
    conics: Tensor  # [C, N, 3] (a, b, c): upper triangle of the inverse blurred 2D covariance
    compensations: Tensor | None  # [C, N] sqrt(det(cov2d) / det(cov2d + eps2d I)), or None


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariances [..., 3, 3] = R S S^T R^T (Kerbl et al. 2023, eq. 6).

    quats: [..., 4] (w, x, y, z), any norm; scales: [..., 3] activated (positive) standard deviations."""
    m = quaternion_to_matrix(quats) * scales[..., None, :]  # R S
    return m @ m.transpose(-1, -2)


def project_gaussians(
    means: Tensor,
    quats: Tensor | None,
    scales: Tensor | None,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    covars: Tensor | None = None,
    opacities: Tensor | None = None,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
) -> Projection:
    """Project N 3D Gaussians into C pinhole cameras (gsplat's ``fully_fused_projection``, non-packed).

    means [N, 3]; quats [N, 4] (w, x, y, z) and scales [N, 3], or covars [N, 3, 3] instead of both;
    viewmats [C, 4, 4] world-to-camera (OpenCV: x right, y down, z forward); Ks [C, 3, 3] (fx, fy,
    cx, cy are read, skew is ignored as in gsplat); width, height: image size in pixels.

    opacities [N] (optional) switch on gsplat's opacity-aware radius: a Gaussian whose opacity
    (times the compensation when ``calc_compensations``) is below 1/255 is culled, and the radius uses
    extend = min(3.33, sqrt(2 ln(255 opacity))) standard deviations instead of 3.33.

    A Gaussian is culled (radii 0, means2d / conics / compensations 0) when its camera z is outside
    [near_plane, far_plane], the blurred 2D covariance is not positive definite, the opacity rule
    above culls it, both radii are <= radius_clip, or its box mean +- radius misses the image.
    Culled Gaussians get zero gradients (as gsplat's backward kernel, which skips radii <= 0).
    """
    if covars is None:
        if quats is None or scales is None:
            raise ValueError("project_gaussians needs quats and scales, or covars")
        cov3d = quat_scale_to_covar(quats, scales)
    else:
        if covars.shape[-2:] != (3, 3):
            raise ValueError(f"covars must be [N, 3, 3], got {tuple(covars.shape)}")
        cov3d = covars
    if means.dim() != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[-2:] != (4, 4):
        raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    if Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"Ks must be [C, 3, 3] with C = {viewmats.shape[0]}, got {tuple(Ks.shape)}")

    rot = viewmats[:, :3, :3]  # [C, 3, 3]
    trans = viewmats[:, :3, 3]  # [C, 3]
    mean_c = torch.einsum("cij,nj->cni", rot, means) + trans[:, None, :]  # [C, N, 3]
    cov_c = rot[:, None] @ cov3d[None] @ rot.transpose(-1, -2)[:, None]  # [C, N, 3, 3]

    x, y, z = mean_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)  # gsplat culls z < near or z > far
    # A safe z in the culled rows keeps every branch finite (no 0 * inf in the backward pass).
    z = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]

    # EWA Jacobian at the centre with x/z, y/z clamped to 1.3x the field of view (gsplat persp_proj).
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + FOV_MARGIN * tan_fovx
    lim_x_neg = cx / fx + FOV_MARGIN * tan_fovx
    lim_y_pos = (height - cy) / fy + FOV_MARGIN * tan_fovy
    lim_y_neg = cy / fy + FOV_MARGIN * tan_fovy
    rz = 1.0 / z
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zero = torch.zeros_like(z)
    jac = torch.stack(
        [
            torch.stack([fx * rz, zero, -fx * tx * rz * rz], -1),
            torch.stack([zero, fy * rz, -fy * ty * rz * rz], -1),
        ],
        -2,
    )  # [C, N, 2, 3]
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)  # [C, N, 2, 2]
    mean2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)  # [C, N, 2]

    # Low-pass blur (gsplat add_blur) and the antialiasing compensation sqrt(det / det_blur).
    c00, c01, c10, c11 = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 0], cov2d[..., 1, 1]
    det_orig = c00 * c11 - c01 * c10
    a, b, c = c00 + eps2d, 0.5 * (c01 + c10), c11 + eps2d
    det = a * c - c01 * c10
    valid = in_depth & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    compensations = None
    if calc_compensations:
        ratio = det_orig / det_safe
        pos = valid & (ratio > 0)
        compensations = torch.where(pos, torch.sqrt(torch.where(pos, ratio, torch.ones_like(ratio))), zero)

    with torch.no_grad():
        extend = torch.full_like(z, GAUSSIAN_EXTEND)
        if opacities is not None:
            opac = opacities.detach()[None, :].to(z.dtype)
            if compensations is not None:
                opac = opac * compensations.detach()
            valid = valid & (opac >= ALPHA_THRESHOLD)
            ratio = (opac / ALPHA_THRESHOLD).clamp_min(1.0)
            extend = torch.clamp(torch.sqrt(2.0 * torch.log(ratio)), max=GAUSSIAN_EXTEND)
        radius_x = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        radius_y = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        valid = valid & ~((radius_x <= radius_clip) & (radius_y <= radius_clip))
        mx, my = mean2d.detach().unbind(-1)
        outside = (mx + radius_x <= 0) | (mx - radius_x >= width) | (my + radius_y <= 0) | (my - radius_y >= height)
        valid = valid & ~outside
        radii = torch.where(valid[..., None], torch.stack([radius_x, radius_y], -1), 0).to(torch.int32)

    means2d = torch.where(valid[..., None], mean2d, torch.zeros_like(mean2d))
    conics = torch.where(valid[..., None], conics, torch.zeros_like(conics))
    if compensations is not None:
        compensations = torch.where(valid, compensations, zero)
    depths = mean_c[..., 2]
    return Projection(radii, means2d, depths, conics, compensations)

