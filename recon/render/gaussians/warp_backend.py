"""Gaussian compositing with NVIDIA Warp kernels: the ``"warp"`` backend of ``rasterize_to_pixels``.

Same call, semantics and outputs as the PyTorch reference in ``composite.py`` (gsplat 1.5.3's
``RasterizeToPixels3DGSFwd.cu`` / ``Bwd.cu`` rules, Ye et al. 2024; Kerbl et al. 2023, eq. 3), but
one Warp thread per pixel walks its tile's depth-sorted list sequentially:

- forward, front to back: pixel centre (x + 0.5, y + 0.5), sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,
  skip sigma < 0, alpha = min(0.999, o exp(-sigma)), skip alpha < 1/255, stop before the Gaussian
  that would take T to <= 1e-4; stores the colour, the final T and the list position of the last
  contributing Gaussian per pixel;
- backward, back to front from the last contributor (gsplat's scheme): T is recovered by division,
  T_i = T_{i+1} / (1 - alpha_i), the colour behind i is carried as the scalar S_i . g, and

      dL/dalpha_i = T_i (c_i . g) - (S_i . g + g_T T_final) / (1 - alpha_i)

  with g = dL/d(colour) at the pixel and g_T = dL/dT_final. Opacity and sigma gradients pass only
  where o exp(-sigma) <= 0.999 (alpha not clamped). Per-Gaussian gradients are summed with
  ``wp.atomic_add``.

The backward is written by hand: Warp's automatic adjoint of loops with loop-carried state gives
silently wrong gradients (``/work/shared/reference/backend.md`` section 3.4). The background is
added in torch (``colour + T_final * bg``), so its gradient comes from torch autograd.

Kernels are generated per scalar type (float32, float64; anything else is computed in float32) by a
factory closure and compiled on first use (a few seconds, then cached in Warp's kernel cache). Warp
is imported lazily, only when this backend runs. On the CPU Warp runs a launch on one thread.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._constants import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_THRESHOLD


@functools.cache
def _warp() -> Any:
    """The ``warp`` module, initialised once and quiet (ImportError when warp-lang is missing)."""
    import warp as wp

    wp.config.quiet = True  # warp < 1.10
    if hasattr(wp, "LOG_ERROR"):
        wp.config.log_level = wp.LOG_ERROR  # warp >= 1.10: no start-up banner / compile messages
    if torch.cuda.is_available():
        wp.init()
        return wp
    # Without a GPU, Warp's native library reports the missing CUDA driver on the C-level stderr
    # while it initialises; that line only confuses CPU users, so it is silenced (errors still raise).
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            wp.init()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return wp


@functools.cache
def warp_available() -> bool:
    """True when warp-lang imports and initialises."""
    try:
        _warp()
    except Exception:  # noqa: BLE001  (ImportError or a failing native library load)
        return False
    return True


@functools.cache
def _kernels(scalar: str) -> tuple[Any, Any]:
    """(forward, backward) Warp kernels for ``scalar`` in ("float32", "float64")."""
    wp = _warp()
    float_t = wp.float32 if scalar == "float32" else wp.float64
    max_alpha = MAX_ALPHA
    alpha_thr = ALPHA_THRESHOLD
    t_thr = TRANSMITTANCE_THRESHOLD

    @wp.kernel(enable_backward=False, module="unique")
    def forward(
        means: wp.array2d(dtype=float_t),  # [C*N, 2]
        conics: wp.array2d(dtype=float_t),  # [C*N, 3]
        colors: wp.array2d(dtype=float_t),  # [C*N, D]
        opac: wp.array(dtype=float_t),  # [C*N]
        offsets: wp.array(dtype=wp.int32),  # [C*th*tw]
        flatten_ids: wp.array(dtype=wp.int32),  # [M]
        width: int,
        height: int,
        tile_size: int,
        tiles_w: int,
        tiles_h: int,
        accum: wp.array2d(dtype=float_t),  # [C*H*W, D] out (zeros on entry)
        t_final: wp.array(dtype=float_t),  # [C*H*W] out
        last: wp.array(dtype=wp.int32),  # [C*H*W] out: list position of the last contributor, -1 none
    ):
        pix = wp.tid()
        hw = width * height
        cam = pix // hw
        rem = pix - cam * hw
        py = rem // width
        px = rem - py * width
        tile = (cam * tiles_h + py // tile_size) * tiles_w + px // tile_size
        start = offsets[tile]
        end = flatten_ids.shape[0]
        if tile + 1 < offsets.shape[0]:
            end = offsets[tile + 1]
        fx = float_t(px) + float_t(0.5)
        fy = float_t(py) + float_t(0.5)
        n_ch = colors.shape[1]
        T = float_t(1.0)
        last_k = int(-1)  # noqa: UP018, RUF046  (Warp: a dynamic variable, mutated in the loop)
        for k in range(start, end):
            g = flatten_ids[k]
            dx = means[g, 0] - fx
            dy = means[g, 1] - fy
            sigma = float_t(0.5) * (conics[g, 0] * dx * dx + conics[g, 2] * dy * dy) + conics[g, 1] * dx * dy
            if sigma < float_t(0.0):
                continue
            alpha = wp.min(float_t(max_alpha), opac[g] * wp.exp(-sigma))
            if alpha < float_t(alpha_thr):
                continue
            next_T = T * (float_t(1.0) - alpha)
            if next_T <= float_t(t_thr):
                break
            w = alpha * T
            for d in range(n_ch):
                accum[pix, d] = accum[pix, d] + colors[g, d] * w
            T = next_T
            last_k = k
        t_final[pix] = T
        last[pix] = last_k

    @wp.kernel(enable_backward=False, module="unique")
    def backward(
        means: wp.array2d(dtype=float_t),
        conics: wp.array2d(dtype=float_t),
        colors: wp.array2d(dtype=float_t),
        opac: wp.array(dtype=float_t),
        offsets: wp.array(dtype=wp.int32),
        flatten_ids: wp.array(dtype=wp.int32),
        width: int,
        height: int,
        tile_size: int,
        tiles_w: int,
        tiles_h: int,
        t_final: wp.array(dtype=float_t),
        last: wp.array(dtype=wp.int32),
        g_accum: wp.array2d(dtype=float_t),  # [C*H*W, D]
        g_t: wp.array(dtype=float_t),  # [C*H*W]
        v_means: wp.array2d(dtype=float_t),  # outs, zeros on entry
        v_conics: wp.array2d(dtype=float_t),
        v_colors: wp.array2d(dtype=float_t),
        v_opac: wp.array(dtype=float_t),
    ):
        pix = wp.tid()
        last_k = last[pix]
        if last_k < 0:
            return
        hw = width * height
        cam = pix // hw
        rem = pix - cam * hw
        py = rem // width
        px = rem - py * width
        tile = (cam * tiles_h + py // tile_size) * tiles_w + px // tile_size
        start = offsets[tile]
        fx = float_t(px) + float_t(0.5)
        fy = float_t(py) + float_t(0.5)
        n_ch = colors.shape[1]
        T_f = t_final[pix]
        T = T_f
        gT_Tf = g_t[pix] * T_f
        behind = float_t(0.0)  # (colour composited behind the current Gaussian) . g
        k = last_k
        while k >= start:
            g = flatten_ids[k]
            k = k - 1
            dx = means[g, 0] - fx
            dy = means[g, 1] - fy
            ca = conics[g, 0]
            cb = conics[g, 1]
            cc = conics[g, 2]
            sigma = float_t(0.5) * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
            if sigma < float_t(0.0):
                continue
            vis = wp.exp(-sigma)
            raw = opac[g] * vis
            alpha = wp.min(float_t(max_alpha), raw)
            if alpha < float_t(alpha_thr):
                continue
            one_minus = float_t(1.0) - alpha
            T = T / one_minus  # transmittance in front of this Gaussian
            w = alpha * T
            cg = float_t(0.0)
            for d in range(n_ch):
                gd = g_accum[pix, d]
                cg = cg + colors[g, d] * gd
                wp.atomic_add(v_colors, g, d, w * gd)
            v_alpha = T * cg - (behind + gT_Tf) / one_minus
            if raw <= float_t(max_alpha):
                v_sigma = -raw * v_alpha
                wp.atomic_add(v_opac, g, vis * v_alpha)
                wp.atomic_add(v_conics, g, 0, float_t(0.5) * v_sigma * dx * dx)
                wp.atomic_add(v_conics, g, 1, v_sigma * dx * dy)
                wp.atomic_add(v_conics, g, 2, float_t(0.5) * v_sigma * dy * dy)
                wp.atomic_add(v_means, g, 0, v_sigma * (ca * dx + cb * dy))
                wp.atomic_add(v_means, g, 1, v_sigma * (cb * dx + cc * dy))
            behind = behind + w * cg

    return forward, backward


def _launch(kernel: Any, dim: int, inputs: list, device: torch.device) -> None:
    wp = _warp()
    wp_device = wp.device_from_torch(device)
    if device.type == "cuda":
        wp.launch(kernel, dim=dim, inputs=inputs, device=wp_device, stream=wp.stream_from_torch(device))
    else:
        wp.launch(kernel, dim=dim, inputs=inputs, device=wp_device)
        wp.synchronize_device(wp_device)


def _wp(t: Tensor) -> Any:
    return _warp().from_torch(t, requires_grad=False)


class _WarpComposite(torch.autograd.Function):
    """(means2d [M, 2], conics [M, 3], colors [M, D], opacities [M]) -> (accum [C, H, W, D],
    T_final [C, H, W]); M = C * N, the camera's block of N selected through the tile lists."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, offsets, flatten_ids, layout):
        C, H, W, ts, th, tw = layout
        scalar = "float64" if means2d.dtype == torch.float64 else "float32"
        fwd, _ = _kernels(scalar)
        P = C * H * W
        D = colors.shape[1]
        accum = means2d.new_zeros(P, D)
        T = means2d.new_empty(P)
        last = torch.empty(P, dtype=torch.int32, device=means2d.device)
        if P:
            _launch(
                fwd,
                P,
                [_wp(means2d), _wp(conics), _wp(colors), _wp(opacities), _wp(offsets), _wp(flatten_ids),
                 W, H, ts, tw, th, _wp(accum), _wp(T), _wp(last)],
                means2d.device,
            )
        ctx.layout = layout
        ctx.save_for_backward(means2d, conics, colors, opacities, offsets, flatten_ids, T, last)
        ctx.mark_non_differentiable(last)
        return accum.reshape(C, H, W, D), T.reshape(C, H, W)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_accum, g_T):
        means2d, conics, colors, opacities, offsets, flatten_ids, T, last = ctx.saved_tensors
        C, H, W, ts, th, tw = ctx.layout
        scalar = "float64" if means2d.dtype == torch.float64 else "float32"
        _, bwd = _kernels(scalar)
        P, D = C * H * W, colors.shape[1]
        g_accum = means2d.new_zeros(P, D) if g_accum is None else g_accum.reshape(P, D).to(means2d.dtype).contiguous()
        g_T = means2d.new_zeros(P) if g_T is None else g_T.reshape(P).to(means2d.dtype).contiguous()
        v_means = torch.zeros_like(means2d)
        v_conics = torch.zeros_like(conics)
        v_colors = torch.zeros_like(colors)
        v_opac = torch.zeros_like(opacities)
        if P:
            _launch(
                bwd,
                P,
                [_wp(means2d), _wp(conics), _wp(colors), _wp(opacities), _wp(offsets), _wp(flatten_ids),
                 W, H, ts, tw, th, _wp(T), _wp(last), _wp(g_accum), _wp(g_T),
                 _wp(v_means), _wp(v_conics), _wp(v_colors), _wp(v_opac)],
                means2d.device,
            )
        return v_means, v_conics, v_colors, v_opac, None, None, None


def rasterize_to_pixels_warp(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    image_width: int,
    image_height: int,
    tile_size: int,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    backgrounds: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`recon.render.gaussians.rasterize_to_pixels` with Warp kernels (same inputs, outputs,
    semantics and gradients: means2d, conics, colors, opacities and backgrounds, first order).

    means2d [C, N, 2], conics [C, N, 3], colors [C, N, D], opacities [C, N]; isect_offsets
    [C, tile_height, tile_width] int32 and flatten_ids [M] (indices into the flattened C * N);
    backgrounds [C, D] or None. Returns render_colors [C, H, W, D] and render_alphas [C, H, W, 1].
    float32 and float64 run natively; other floating dtypes are computed in float32.
    """
    C, N = means2d.shape[:2]
    if isect_offsets.dim() != 3 or isect_offsets.shape[0] != C:
        raise ValueError(f"isect_offsets must be [C={C}, tile_height, tile_width], got {tuple(isect_offsets.shape)}")
    th, tw = isect_offsets.shape[1:]
    if th != -(-image_height // tile_size) or tw != -(-image_width // tile_size):
        raise ValueError("isect_offsets does not match the image size and tile_size")
    D = colors.shape[-1]
    if colors.shape[:2] != (C, N) or conics.shape != (C, N, 3) or opacities.shape != (C, N):
        raise ValueError("means2d, conics, colors, opacities must be [C, N, 2], [C, N, 3], [C, N, D], [C, N]")
    out_dtype = means2d.dtype
    dtype = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32
    accum, T_final = _WarpComposite.apply(
        means2d.reshape(C * N, 2).to(dtype).contiguous(),
        conics.reshape(C * N, 3).to(dtype).contiguous(),
        colors.reshape(C * N, D).to(dtype).contiguous(),
        opacities.reshape(C * N).to(dtype).contiguous(),
        isect_offsets.reshape(-1).to(torch.int32).contiguous(),
        flatten_ids.reshape(-1).to(torch.int32).contiguous(),
        (C, image_height, image_width, tile_size, th, tw),
    )
    render_alphas = (1 - T_final)[..., None]
    if backgrounds is not None:
        if backgrounds.shape != (C, D):
            raise ValueError(f"backgrounds must be [C={C}, D={D}], got {tuple(backgrounds.shape)}")
        accum = accum + T_final[..., None] * backgrounds[:, None, None, :].to(dtype)
    return accum.to(out_dtype), render_alphas.to(out_dtype)
