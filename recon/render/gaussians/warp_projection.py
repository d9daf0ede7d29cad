"""EWA projection of 3D Gaussians with NVIDIA Warp kernels: the ``"warp"`` backend of the projection.

The same computation, culling rules and outputs as the PyTorch reference ``project_gaussians`` in
``projection.py`` (gsplat 1.5.3's ``fully_fused_projection``, Ye et al. 2024; Kerbl et al. 2023,
eqs. 5-6; Zwicker et al. 2001), for quaternions and scales (not full covariances), fused into one
kernel per (camera, Gaussian) pair, with a hand-written backward kernel that recomputes the forward
quantities instead of storing them: autograd through the reference keeps about 400 bytes per pair
alive; this keeps the inputs and the outputs only.

Backward, per pair (V denotes dL/d of the quantity; 2x2 and 3x3 matrices are symmetric):

- conic = Sigma2^-1 (blurred 2D covariance): V_Sigma2 = -Sigma2^-1 G Sigma2^-1, G the symmetric
  matrix of the conic gradient (the off-diagonal gradient shared by both entries);
- compensation sqrt(det / det_blur): its derivative w.r.t. the unblurred 2D covariance;
- Sigma2 = J Sigma_c J^T: V_Sigma_c = J^T V_Sigma2 J, V_J = 2 V_Sigma2 J Sigma_c, then J's entries
  to the camera-space mean (through the field-of-view clamp: a clamped x/z passes its gradient to z);
- Sigma_c = R Sigma R^T: V_Sigma = R^T V_Sigma_c R; Sigma = M M^T with M = R_q diag(s):
  V_M = 2 V_Sigma M, V_s = columns of V_M . R_q, V_Rq = V_M diag(s), then the quaternion
  (rotation-matrix derivative, then the normalisation q / |q|);
- mean_c = R mean + t: V_mean = R^T V_mean_c (with the depth and mean2d gradients).

Gradients reach ``means``, ``quats`` and ``scales``; the opacities only shape the radius (no
gradient, as in the reference), and ``viewmats`` / ``Ks`` get none: with a camera that needs
gradients, or full covariances, ``rasterization`` keeps the reference projection.
"""

# No "from __future__ import annotations": Warp reads the kernels' annotations, which name types
# local to the kernel factory.

import functools
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._constants import ALPHA_THRESHOLD, FOV_MARGIN, GAUSSIAN_EXTEND
from .projection import Projection
from .warp_backend import Launcher, _warp, to_warp

BLOCK = 1024  # camera-Gaussian pairs per CPU block


@functools.cache
def _kernels(scalar: str) -> tuple[Any, Any]:
    """(forward, backward) projection kernels for ``scalar`` in ("float32", "float64")."""
    wp = _warp()
    float_t = wp.float32 if scalar == "float32" else wp.float64
    vec2 = wp.types.vector(length=2, dtype=float_t)
    vec3 = wp.types.vector(length=3, dtype=float_t)
    vec4 = wp.types.vector(length=4, dtype=float_t)
    mat22 = wp.types.matrix(shape=(2, 2), dtype=float_t)
    mat23 = wp.types.matrix(shape=(2, 3), dtype=float_t)
    mat33 = wp.types.matrix(shape=(3, 3), dtype=float_t)
    mat44 = wp.types.matrix(shape=(4, 4), dtype=float_t)
    alpha_thr = ALPHA_THRESHOLD
    extend_max = GAUSSIAN_EXTEND
    fov_margin = FOV_MARGIN

    @wp.func
    def quat_rotmat(q: vec4):  # (w, x, y, z), unit
        w = q[0]
        x = q[1]
        y = q[2]
        z = q[3]
        one = float_t(1.0)
        two = float_t(2.0)
        return mat33(
            one - two * (y * y + z * z), two * (x * y - w * z), two * (x * z + w * y),
            two * (x * y + w * z), one - two * (x * x + z * z), two * (y * z - w * x),
            two * (x * z - w * y), two * (y * z + w * x), one - two * (x * x + y * y),
        )

    @wp.func
    def to_camera(v: mat44, mean: vec3):
        """(rotation of the world-to-camera matrix, the mean in camera space)."""
        rot = mat33(v[0, 0], v[0, 1], v[0, 2], v[1, 0], v[1, 1], v[1, 2], v[2, 0], v[2, 1], v[2, 2])
        return rot, rot * mean + vec3(v[0, 3], v[1, 3], v[2, 3])

    @wp.func
    def world_covariance(q: vec4, s: vec3):
        """(unit quaternion, R_q S, Sigma)."""
        qn = wp.max(wp.length(q), float_t(1e-12))
        qh = q / qn
        rq = quat_rotmat(qh)
        m = mat33(
            rq[0, 0] * s[0], rq[0, 1] * s[1], rq[0, 2] * s[2],
            rq[1, 0] * s[0], rq[1, 1] * s[1], rq[1, 2] * s[2],
            rq[2, 0] * s[0], rq[2, 1] * s[1], rq[2, 2] * s[2],
        )
        return m, m * wp.transpose(m)

    @wp.func
    def jacobian(p: vec3, intr: vec4, width: float_t, height: float_t):
        """EWA Jacobian with x/z, y/z clamped (gsplat persp_proj); also returns the clamp flags."""
        fx = intr[0]
        fy = intr[1]
        cx = intr[2]
        cy = intr[3]
        tan_x = float_t(0.5) * width / fx
        tan_y = float_t(0.5) * height / fy
        lim_xp = (width - cx) / fx + float_t(fov_margin) * tan_x
        lim_xn = cx / fx + float_t(fov_margin) * tan_x
        lim_yp = (height - cy) / fy + float_t(fov_margin) * tan_y
        lim_yn = cy / fy + float_t(fov_margin) * tan_y
        rz = float_t(1.0) / p[2]
        u = p[0] * rz
        v = p[1] * rz
        uc = wp.min(lim_xp, wp.max(-lim_xn, u))
        vc = wp.min(lim_yp, wp.max(-lim_yn, v))
        tx = p[2] * uc
        ty = p[2] * vc
        zero = float_t(0.0)
        jac = mat23(fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz)
        return jac, tx, ty, uc != u, vc != v

    @wp.kernel(enable_backward=False, module="unique")
    def forward(
        means: wp.array(dtype=vec3),  # [N]
        quats: wp.array(dtype=vec4),  # [N]
        scales: wp.array(dtype=vec3),  # [N]
        opacities: wp.array(dtype=float_t),  # [N], read when use_opacity
        viewmats: wp.array(dtype=mat44),  # [C]
        intrinsics: wp.array(dtype=vec4),  # [C] (fx, fy, cx, cy)
        n_gauss: int,
        i0: int,
        width: int,
        height: int,
        eps2d: float_t,
        near: float_t,
        far: float_t,
        radius_clip: float_t,
        use_opacity: int,
        calc_comp: int,
        radii: wp.array(dtype=wp.vec2i),  # [C*N] out, all outputs zero on entry
        means2d: wp.array(dtype=vec2),
        depths: wp.array(dtype=float_t),
        conics: wp.array(dtype=vec3),
        comps: wp.array(dtype=float_t),
    ):
        i = i0 + wp.tid()
        c = i // n_gauss
        n = i - c * n_gauss
        rot, p = to_camera(viewmats[c], means[n])
        depths[i] = p[2]
        if p[2] < near or p[2] > far:
            return
        m, sigma = world_covariance(quats[n], scales[n])
        cov_c = rot * sigma * wp.transpose(rot)
        intr = intrinsics[c]
        fw = float_t(width)
        fh = float_t(height)
        jac, tx, ty, clamp_x, clamp_y = jacobian(p, intr, fw, fh)
        cov2 = jac * cov_c * wp.transpose(jac)
        rz = float_t(1.0) / p[2]
        mx = intr[0] * p[0] * rz + intr[2]
        my = intr[1] * p[1] * rz + intr[3]
        det_orig = cov2[0, 0] * cov2[1, 1] - cov2[0, 1] * cov2[1, 0]
        a = cov2[0, 0] + eps2d
        b = float_t(0.5) * (cov2[0, 1] + cov2[1, 0])
        cc = cov2[1, 1] + eps2d
        det = a * cc - cov2[0, 1] * cov2[1, 0]
        if det <= float_t(0.0):
            return
        comp = float_t(0.0)
        if calc_comp != 0:
            ratio = det_orig / det
            if ratio > float_t(0.0):
                comp = wp.sqrt(ratio)
        extend = float_t(extend_max)
        if use_opacity != 0:
            o = opacities[n]
            if calc_comp != 0:
                o = o * comp
            if o < float_t(alpha_thr):
                return
            extend = wp.min(float_t(extend_max), wp.sqrt(float_t(2.0) * wp.log(wp.max(o / float_t(alpha_thr), float_t(1.0)))))
        rx = wp.ceil(extend * wp.sqrt(wp.max(a, float_t(0.0))))
        ry = wp.ceil(extend * wp.sqrt(wp.max(cc, float_t(0.0))))
        if rx <= radius_clip and ry <= radius_clip:
            return
        if mx + rx <= float_t(0.0) or mx - rx >= fw or my + ry <= float_t(0.0) or my - ry >= fh:
            return
        radii[i] = wp.vec2i(int(rx), int(ry))
        means2d[i] = vec2(mx, my)
        conics[i] = vec3(cc / det, -b / det, a / det)
        comps[i] = comp

    @wp.kernel(enable_backward=False, module="unique")
    def backward(
        means: wp.array(dtype=vec3),
        quats: wp.array(dtype=vec4),
        scales: wp.array(dtype=vec3),
        viewmats: wp.array(dtype=mat44),
        intrinsics: wp.array(dtype=vec4),
        n_gauss: int,
        i0: int,
        width: int,
        height: int,
        eps2d: float_t,
        calc_comp: int,
        radii: wp.array(dtype=wp.vec2i),
        conics: wp.array(dtype=vec3),
        comps: wp.array(dtype=float_t),
        v_means2d: wp.array(dtype=vec2),  # [C*N]
        v_depths: wp.array(dtype=float_t),
        v_conics: wp.array(dtype=vec3),
        v_comps: wp.array(dtype=float_t),
        v_means: wp.array(dtype=vec3),  # [C*N] out, per pair (summed over cameras outside)
        v_quats: wp.array(dtype=vec4),
        v_scales: wp.array(dtype=vec3),
    ):
        i = i0 + wp.tid()
        c = i // n_gauss
        n = i - c * n_gauss
        rot, p = to_camera(viewmats[c], means[n])
        v_p = vec3(float_t(0.0), float_t(0.0), v_depths[i])
        r = radii[i]
        if r[0] <= 0 and r[1] <= 0:
            v_means[i] = wp.transpose(rot) * v_p
            return
        q = quats[n]
        s = scales[n]
        m, sigma = world_covariance(q, s)
        cov_c = rot * sigma * wp.transpose(rot)
        intr = intrinsics[c]
        fx = intr[0]
        fy = intr[1]
        jac, tx, ty, clamp_x, clamp_y = jacobian(p, intr, float_t(width), float_t(height))
        cov2 = jac * cov_c * wp.transpose(jac)
        rz = float_t(1.0) / p[2]
        rz2 = rz * rz

        # mean2d = (fx x / z + cx, fy y / z + cy)
        vm = v_means2d[i]
        v_p = v_p + vec3(vm[0] * fx * rz, vm[1] * fy * rz, -(vm[0] * fx * p[0] + vm[1] * fy * p[1]) * rz2)

        # conic = inverse of the blurred covariance
        con = conics[i]
        inv = mat22(con[0], con[1], con[1], con[2])
        vc = v_conics[i]
        half = float_t(0.5)
        g = mat22(vc[0], half * vc[1], half * vc[1], vc[2])
        v_cov2 = -(inv * g * inv)

        # compensation = sqrt(det_orig / det_blur)
        comp = comps[i]
        if calc_comp != 0 and comp > float_t(0.0):
            a = cov2[0, 0] + eps2d
            cc = cov2[1, 1] + eps2d
            det = a * cc - cov2[0, 1] * cov2[1, 0]
            det_orig = cov2[0, 0] * cov2[1, 1] - cov2[0, 1] * cov2[1, 0]
            k = half * v_comps[i] / comp
            ratio = det_orig / det
            g00 = k * (cov2[1, 1] - ratio * cc) / det
            g11 = k * (cov2[0, 0] - ratio * a) / det
            g01 = k * (ratio - float_t(1.0)) * cov2[0, 1] / det  # per off-diagonal entry
            v_cov2 = v_cov2 + mat22(g00, g01, g01, g11)

        # cov2 = J cov_c J^T
        v_cov_c = wp.transpose(jac) * v_cov2 * jac
        v_jac = float_t(2.0) * v_cov2 * jac * cov_c
        v_z = -(fx * v_jac[0, 0] + fy * v_jac[1, 1]) * rz2
        v_tx = -fx * rz2 * v_jac[0, 2]
        v_ty = -fy * rz2 * v_jac[1, 2]
        v_z = v_z + float_t(2.0) * (fx * tx * v_jac[0, 2] + fy * ty * v_jac[1, 2]) * rz2 * rz
        v_x = float_t(0.0)
        v_y = float_t(0.0)
        if clamp_x:
            v_z = v_z + v_tx * tx * rz  # tx = z * limit
        else:
            v_x = v_tx
        if clamp_y:
            v_z = v_z + v_ty * ty * rz
        else:
            v_y = v_ty
        v_p = v_p + vec3(v_x, v_y, v_z)

        # cov_c = R Sigma R^T, Sigma = M M^T, M = R_q diag(s)
        v_sigma = wp.transpose(rot) * v_cov_c * rot
        v_m = (v_sigma + wp.transpose(v_sigma)) * m
        qn = wp.max(wp.length(q), float_t(1e-12))
        qh = q / qn
        rq = quat_rotmat(qh)
        v_scales[i] = vec3(
            v_m[0, 0] * rq[0, 0] + v_m[1, 0] * rq[1, 0] + v_m[2, 0] * rq[2, 0],
            v_m[0, 1] * rq[0, 1] + v_m[1, 1] * rq[1, 1] + v_m[2, 1] * rq[2, 1],
            v_m[0, 2] * rq[0, 2] + v_m[1, 2] * rq[1, 2] + v_m[2, 2] * rq[2, 2],
        )
        gr = mat33(
            v_m[0, 0] * s[0], v_m[0, 1] * s[1], v_m[0, 2] * s[2],
            v_m[1, 0] * s[0], v_m[1, 1] * s[1], v_m[1, 2] * s[2],
            v_m[2, 0] * s[0], v_m[2, 1] * s[1], v_m[2, 2] * s[2],
        )
        w = qh[0]
        x = qh[1]
        y = qh[2]
        z = qh[3]
        two = float_t(2.0)
        v_qh = two * vec4(
            -z * gr[0, 1] + y * gr[0, 2] + z * gr[1, 0] - x * gr[1, 2] - y * gr[2, 0] + x * gr[2, 1],
            y * gr[0, 1] + z * gr[0, 2] + y * gr[1, 0] - two * x * gr[1, 1] - w * gr[1, 2] + z * gr[2, 0]
            + w * gr[2, 1] - two * x * gr[2, 2],
            -two * y * gr[0, 0] + x * gr[0, 1] + w * gr[0, 2] + x * gr[1, 0] + z * gr[1, 2] - w * gr[2, 0]
            + z * gr[2, 1] - two * y * gr[2, 2],
            -two * z * gr[0, 0] - w * gr[0, 1] + x * gr[0, 2] + w * gr[1, 0] - two * z * gr[1, 1]
            + y * gr[1, 2] + x * gr[2, 0] + y * gr[2, 1],
        )
        if wp.length(q) > float_t(1e-12):
            v_quats[i] = (v_qh - qh * wp.dot(qh, v_qh)) / qn
        else:
            v_quats[i] = v_qh / qn
        v_means[i] = wp.transpose(rot) * v_p

    return forward, backward


def _types(scalar: str) -> dict[str, Any]:
    wp = _warp()
    float_t = wp.float32 if scalar == "float32" else wp.float64
    return {k: wp.types.vector(length=k, dtype=float_t) for k in (2, 3, 4)} | {
        44: wp.types.matrix(shape=(4, 4), dtype=float_t)
    }


class _WarpProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, Ks, opacities, settings):
        width, height, eps2d, near, far, radius_clip, calc_comp = settings
        C, N = viewmats.shape[0], means.shape[0]
        scalar = "float64" if means.dtype == torch.float64 else "float32"
        fwd, _ = _kernels(scalar)
        t = _types(scalar)
        intr = torch.stack([Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]], -1).contiguous()
        radii = torch.zeros(C * N, 2, dtype=torch.int32, device=means.device)
        means2d = means.new_zeros(C * N, 2)
        depths = means.new_zeros(C * N)
        conics = means.new_zeros(C * N, 3)
        comps = means.new_zeros(C * N)
        use_opacity = opacities is not None
        opac = opacities.contiguous() if use_opacity else means.new_zeros(1)
        launcher = Launcher(means.device, C * N, BLOCK)
        if C * N:
            args = [to_warp(means, t[3]), to_warp(quats, t[4]), to_warp(scales, t[3]), to_warp(opac),
                    to_warp(viewmats, t[44]), to_warp(intr, t[4]), N]
            rest = [width, height, eps2d, near, far, radius_clip, int(use_opacity), int(calc_comp),
                    to_warp(radii, _warp().vec2i), to_warp(means2d, t[2]), to_warp(depths), to_warp(conics, t[3]),
                    to_warp(comps)]
            launcher(fwd, lambda i0, worker: [*args, i0, *rest])
        ctx.settings = settings
        ctx.launcher = launcher
        ctx.save_for_backward(means, quats, scales, viewmats, intr, radii, conics, comps)
        ctx.mark_non_differentiable(radii)
        return radii.reshape(C, N, 2), means2d.reshape(C, N, 2), depths.reshape(C, N), conics.reshape(C, N, 3), comps.reshape(C, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, _v_radii, v_means2d, v_depths, v_conics, v_comps):
        means, quats, scales, viewmats, intr, radii, conics, comps = ctx.saved_tensors
        width, height, eps2d, _, _, _, calc_comp = ctx.settings
        C, N = viewmats.shape[0], means.shape[0]
        scalar = "float64" if means.dtype == torch.float64 else "float32"
        _, bwd = _kernels(scalar)
        t = _types(scalar)

        def grad(v: Tensor | None, *shape: int) -> Tensor:
            return means.new_zeros(C * N, *shape) if v is None else v.reshape(C * N, *shape).to(means.dtype).contiguous()

        v_means2d, v_depths, v_conics = grad(v_means2d, 2), grad(v_depths), grad(v_conics, 3)
        v_comps = grad(v_comps if calc_comp else None)
        v_means = means.new_zeros(C * N, 3)
        v_quats = means.new_zeros(C * N, 4)
        v_scales = means.new_zeros(C * N, 3)
        if C * N:
            args = [to_warp(means, t[3]), to_warp(quats, t[4]), to_warp(scales, t[3]), to_warp(viewmats, t[44]),
                    to_warp(intr, t[4]), N]
            rest = [width, height, eps2d, int(calc_comp), to_warp(radii, _warp().vec2i), to_warp(conics, t[3]),
                    to_warp(comps), to_warp(v_means2d, t[2]), to_warp(v_depths), to_warp(v_conics, t[3]),
                    to_warp(v_comps), to_warp(v_means, t[3]), to_warp(v_quats, t[4]), to_warp(v_scales, t[3])]
            ctx.launcher(bwd, lambda i0, worker: [*args, i0, *rest])
        sum_c = lambda v: v.reshape(C, N, -1).sum(0)  # noqa: E731
        return sum_c(v_means), sum_c(v_quats), sum_c(v_scales), None, None, None, None


def project_gaussians_warp(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    opacities: Tensor | None = None,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
) -> Projection:
    """:func:`recon.render.gaussians.projection.project_gaussians` with Warp kernels (same inputs,
    rules and outputs; gradients to means, quats and scales; none to viewmats, Ks or opacities).

    float32 and float64 run natively; other floating dtypes are computed in float32 and returned in
    their own dtype."""
    out_dtype = means.dtype
    dtype = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32
    if means.dim() != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    N = means.shape[0]
    if quats.shape != (N, 4) or scales.shape != (N, 3):
        raise ValueError(f"quats and scales must be [N, 4] and [N, 3], got {tuple(quats.shape)}, {tuple(scales.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[-2:] != (4, 4):
        raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    if Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"Ks must be [C, 3, 3] with C = {viewmats.shape[0]}, got {tuple(Ks.shape)}")
    conv = lambda x: x.to(dtype).contiguous()  # noqa: E731
    opac = None if opacities is None else conv(opacities.detach())
    settings = (int(width), int(height), float(eps2d), float(near_plane), float(far_plane), float(radius_clip),
                bool(calc_compensations))
    radii, means2d, depths, conics, comps = _WarpProjection.apply(
        conv(means), conv(quats), conv(scales), conv(viewmats.detach()), conv(Ks.detach()), opac, settings
    )
    back = lambda x: x.to(out_dtype)  # noqa: E731
    return Projection(radii, back(means2d), back(depths), back(conics), back(comps) if calc_compensations else None)
