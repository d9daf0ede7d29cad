"""The PatchMatch matching cost as one Warp kernel (CPU and CUDA), twin of
:func:`recon.geometry.patchmatch.view_costs`.

One thread scores one (pixel, source view) pair: it forms the homography of the pixel's plane
(Hartley & Zisserman 2004, sec. 13.1), warps the patch samples through it, reads the source image
bilinearly (border clamped, pixel centres at +0.5, like ``grid_sample(align_corners=False,
padding_mode="border")``) and accumulates the weighted sums of a one-pass normalised cross-
correlation, so no [M, V, P] tensor of samples is ever made. The PyTorch function is the oracle
(tests/recon/test_patchmatch.py compares the two); the search itself stays in PyTorch.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from recon.render.gaussians.warp_backend import _warp, to_warp

INVALID_COST = 2.0
"""Cost of a view that cannot score a hypothesis (off-image, behind the camera, flat patch): 1 - NCC is at most 2."""


@functools.cache
def _kernel() -> Any:
    wp = _warp()

    @wp.func
    def bilinear(img: wp.array3d(dtype=wp.float32), v: int, u: float, y: float, width: int, height: int) -> float:
        x = wp.clamp(u - 0.5, 0.0, float(width - 1))
        yy = wp.clamp(y - 0.5, 0.0, float(height - 1))
        x0 = int(wp.floor(x))
        y0 = int(wp.floor(yy))
        x1 = wp.min(x0 + 1, width - 1)
        y1 = wp.min(y0 + 1, height - 1)
        fx = x - float(x0)
        fy = yy - float(y0)
        top = img[v, y0, x0] * (1.0 - fx) + img[v, y0, x1] * fx
        bottom = img[v, y1, x0] * (1.0 - fx) + img[v, y1, x1] * fx
        return top * (1.0 - fy) + bottom * fy

    @wp.kernel(enable_backward=False)
    def view_costs_kernel(
        src: wp.array3d(dtype=wp.float32),
        k_ref_inv: wp.array(dtype=wp.mat33),
        k_src: wp.array(dtype=wp.mat33),
        rot: wp.array(dtype=wp.mat33),
        trans: wp.array(dtype=wp.vec3),
        centres: wp.array(dtype=wp.vec2),
        depth: wp.array(dtype=wp.float32),
        normal: wp.array(dtype=wp.vec3),
        offsets: wp.array(dtype=wp.vec2),
        ref: wp.array2d(dtype=wp.float32),
        weights: wp.array2d(dtype=wp.float32),
        invalid: float,
        out: wp.array2d(dtype=wp.float32),
    ):
        m, v = wp.tid()
        height = src.shape[1]
        width = src.shape[2]
        c = centres[m]
        n = normal[m]
        ray = k_ref_inv[0] * wp.vec3(c[0], c[1], 1.0)
        plane = depth[m] * wp.dot(n, ray)
        if plane >= 0.0:
            out[m, v] = invalid
            return
        hom = k_src[v] * (rot[v] + wp.outer(trans[v], n) / plane) * k_ref_inv[0]
        n_samples = offsets.shape[0]
        sw = float(0.0)
        sa = float(0.0)
        saa = float(0.0)
        sb = float(0.0)
        sbb = float(0.0)
        sab = float(0.0)
        front = int(1)
        for p in range(n_samples):
            q = c + offsets[p]
            ph = hom * wp.vec3(q[0], q[1], 1.0)
            w = ph[2]
            if w <= 0.0:
                front = 0
            if wp.abs(w) < 1e-12:
                w = 1e-12
            u = wp.clamp(ph[0] / w, -1.0e4, 1.0e4)
            y = wp.clamp(ph[1] / w, -1.0e4, 1.0e4)
            if p == n_samples / 2:
                if u < 0.0 or u > float(width) or y < 0.0 or y > float(height):
                    front = 0
            b = bilinear(src, v, u, y, width, height)
            a = ref[m, p]
            wt = weights[m, p]
            sw += wt
            sa += wt * a
            saa += wt * a * a
            sb += wt * b
            sbb += wt * b * b
            sab += wt * a * b
        if front == 0:
            out[m, v] = invalid
            return
        ma = sa / sw
        mb = sb / sw
        var_a = wp.max(saa / sw - ma * ma, 0.0)
        var_b = wp.max(sbb / sw - mb * mb, 0.0)
        cov = sab / sw - ma * mb
        value = wp.clamp(cov / wp.sqrt(var_a * var_b + 1.0e-10), -1.0, 1.0)
        out[m, v] = 1.0 - value

    return view_costs_kernel


def view_costs_warp(src_images: Tensor, K_ref: Tensor, K_src: Tensor, R: Tensor, t: Tensor, centres: Tensor, depth: Tensor, normal: Tensor,
                    offsets: Tensor, ref_patches: Tensor, weights: Tensor | None) -> Tensor:
    """Per-view matching costs [M, V]; the arguments and result of
    :func:`recon.geometry.patchmatch.view_costs` (float32; uniform weights when ``weights`` is None)."""
    wp = _warp()
    f32 = dict(dtype=torch.float32)
    M, V = centres.shape[0], src_images.shape[0]
    out = torch.empty(M, V, device=centres.device, **f32)
    if M == 0 or V == 0:
        return out
    w = torch.ones_like(ref_patches) if weights is None else weights
    inputs = [
        to_warp(src_images.to(**f32).contiguous()),
        to_warp(torch.linalg.inv(K_ref.to(**f32))[None].contiguous(), wp.mat33),
        to_warp(K_src.to(**f32).contiguous(), wp.mat33),
        to_warp(R.to(**f32).contiguous(), wp.mat33),
        to_warp(t.to(**f32).contiguous(), wp.vec3),
        to_warp(centres.to(**f32).contiguous(), wp.vec2),
        to_warp(depth.to(**f32).contiguous()),
        to_warp(normal.to(**f32).contiguous(), wp.vec3),
        to_warp(offsets.to(**f32).contiguous(), wp.vec2),
        to_warp(ref_patches.to(**f32).contiguous()),
        to_warp(w.to(**f32).contiguous()),
        INVALID_COST,
        to_warp(out),
    ]
    device = wp.device_from_torch(centres.device)
    stream = wp.stream_from_torch(centres.device) if centres.is_cuda else None
    wp.launch(_kernel(), dim=(M, V), inputs=inputs, device=device, stream=stream)
    return out
