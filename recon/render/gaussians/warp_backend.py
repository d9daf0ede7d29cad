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
silently wrong gradients (``docs/architecture.md``, "Rendering backend"). The background is
added in torch (``colour + T_final * bg``), so its gradient comes from torch autograd.

Kernels are generated per scalar type (float32, float64; anything else is computed in float32) by a
factory closure and compiled on first use (a few seconds, then cached in Warp's kernel cache). Warp
is imported lazily, only when this backend runs. On the CPU Warp runs a launch on one thread.
"""

from __future__ import annotations

import functools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._constants import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_THRESHOLD

GAUSS_FIELDS = 8  # per projected Gaussian: mean x, y, conic a, b, c, opacity, skip bound, padding
GRAD_FIELDS = 6  # its gradient: mean x, y, conic a, b, c, opacity
# Margin of the exp-free early-out (sigma > ln(255 o) + margin implies alpha < 1/255 in float32 and
# float64 alike); pairs inside the margin take the exact test, so the rule is unchanged.
SKIP_MARGIN = 1e-3


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
def warp_import_error() -> str | None:
    """Why warp-lang does not import and initialise here, or None when it does."""
    try:
        _warp()
    except Exception as err:  # noqa: BLE001  (ImportError or a failing native library load)
        return f"{type(err).__name__}: {err}"
    return None


def warp_available() -> bool:
    """True when warp-lang imports and initialises."""
    return warp_import_error() is None


def require_warp(source: str) -> None:
    """Raise ImportError, naming ``source`` (what asked for Warp) and the cause, when warp-lang is
    unusable. warp-lang is a dependency of recon, so this means a broken installation."""
    reason = warp_import_error()
    if reason is not None:
        raise ImportError(
            f"{source}: warp-lang does not import ({reason}); it is a dependency of recon: reinstall it "
            "(pip install 'warp-lang>=1.9'), or set RECON_BACKEND=torch to run the 5-8x slower PyTorch reference"
        )


@functools.cache
def _kernels(scalar: str, n_ch: int) -> tuple[Any, Any]:
    """(forward, backward) Warp kernels for ``scalar`` in ("float32", "float64") and ``n_ch`` channels."""
    wp = _warp()
    float_t = wp.float32 if scalar == "float32" else wp.float64
    vec_t = wp.types.vector(length=n_ch, dtype=float_t)
    gauss_t = wp.types.vector(length=GAUSS_FIELDS, dtype=float_t)
    grad_t = wp.types.vector(length=GRAD_FIELDS, dtype=float_t)
    max_alpha = MAX_ALPHA
    alpha_thr = ALPHA_THRESHOLD
    t_thr = TRANSMITTANCE_THRESHOLD

    @wp.func
    def pixel_tile(pix: int, width: int, height: int, tile_size: int, tiles_w: int, tiles_h: int):
        """(tile index over all cameras, x, y) of the flattened pixel index ``pix``."""
        hw = width * height
        cam = pix // hw
        rem = pix - cam * hw
        py = rem // width
        px = rem - py * width
        return (cam * tiles_h + py // tile_size) * tiles_w + px // tile_size, px, py

    @wp.kernel(enable_backward=False, module="unique")
    def forward(
        gauss: wp.array(dtype=gauss_t),  # [C*N] (mx, my, a, b, c, opacity, skip_sigma, 0)
        colors: wp.array(dtype=vec_t),  # [C*N]
        offsets: wp.array(dtype=wp.int32),  # [C*th*tw]
        flatten_ids: wp.array(dtype=wp.int32),  # [M]
        pix0: int,
        width: int,
        height: int,
        tile_size: int,
        tiles_w: int,
        tiles_h: int,
        accum: wp.array(dtype=vec_t),  # [C*H*W] out
        t_final: wp.array(dtype=float_t),  # [C*H*W] out
        last: wp.array(dtype=wp.int32),  # [C*H*W] out: list position of the last contributor, -1 none
    ):
        pix = pix0 + wp.tid()
        tile, px, py = pixel_tile(pix, width, height, tile_size, tiles_w, tiles_h)
        start = offsets[tile]
        end = flatten_ids.shape[0]
        if tile + 1 < offsets.shape[0]:
            end = offsets[tile + 1]
        fx = float_t(px) + float_t(0.5)
        fy = float_t(py) + float_t(0.5)
        acc = vec_t()
        p = gauss_t()  # (names the closure's vector type for Warp's annotation lookup)
        T = float_t(1.0)
        last_k = int(-1)  # noqa: UP018, RUF046  (Warp: a dynamic variable, mutated in the loop)
        for k in range(start, end):
            g = flatten_ids[k]
            p = gauss[g]
            dx = p[0] - fx
            dy = p[1] - fy
            sigma = float_t(0.5) * (p[2] * dx * dx + p[4] * dy * dy) + p[3] * dx * dy
            if sigma < float_t(0.0) or sigma > p[6]:
                continue
            alpha = wp.min(float_t(max_alpha), p[5] * wp.exp(-sigma))
            if alpha < float_t(alpha_thr):
                continue
            next_T = T * (float_t(1.0) - alpha)
            if next_T <= float_t(t_thr):
                break
            acc = acc + colors[g] * (alpha * T)
            T = next_T
            last_k = k
        accum[pix] = acc
        t_final[pix] = T
        last[pix] = last_k

    @wp.kernel(enable_backward=False, module="unique")
    def backward(
        gauss: wp.array(dtype=gauss_t),
        colors: wp.array(dtype=vec_t),
        offsets: wp.array(dtype=wp.int32),
        flatten_ids: wp.array(dtype=wp.int32),
        pix0: int,
        width: int,
        height: int,
        tile_size: int,
        tiles_w: int,
        tiles_h: int,
        t_final: wp.array(dtype=float_t),
        last: wp.array(dtype=wp.int32),
        g_accum: wp.array(dtype=vec_t),  # [C*H*W]
        g_t: wp.array(dtype=float_t),  # [C*H*W]
        v_gauss: wp.array(dtype=grad_t),  # [C*N] out (mx, my, a, b, c, opacity), zeros on entry
        v_colors: wp.array(dtype=vec_t),  # [C*N] out, zeros on entry
    ):
        pix = pix0 + wp.tid()
        last_k = last[pix]
        if last_k < 0:
            return
        tile, px, py = pixel_tile(pix, width, height, tile_size, tiles_w, tiles_h)
        start = offsets[tile]
        fx = float_t(px) + float_t(0.5)
        fy = float_t(py) + float_t(0.5)
        gc = vec_t()  # (names the closure's types for Warp's annotation lookup)
        gc = g_accum[pix]
        T_f = t_final[pix]
        T = T_f
        gT_Tf = g_t[pix] * T_f
        behind = float_t(0.0)  # (colour composited behind the current Gaussian) . g
        p = gauss_t()
        k = last_k
        while k >= start:
            g = flatten_ids[k]
            k = k - 1
            p = gauss[g]
            dx = p[0] - fx
            dy = p[1] - fy
            sigma = float_t(0.5) * (p[2] * dx * dx + p[4] * dy * dy) + p[3] * dx * dy
            if sigma < float_t(0.0) or sigma > p[6]:
                continue
            vis = wp.exp(-sigma)
            raw = p[5] * vis
            alpha = wp.min(float_t(max_alpha), raw)
            if alpha < float_t(alpha_thr):
                continue
            one_minus = float_t(1.0) - alpha
            T = T / one_minus  # transmittance in front of this Gaussian
            w = alpha * T
            cg = wp.dot(colors[g], gc)
            wp.atomic_add(v_colors, g, gc * w)
            if raw <= float_t(max_alpha):
                v_alpha = T * cg - (behind + gT_Tf) / one_minus
                v_sigma = -raw * v_alpha
                wp.atomic_add(
                    v_gauss,
                    g,
                    grad_t(
                        v_sigma * (p[2] * dx + p[3] * dy),
                        v_sigma * (p[3] * dx + p[4] * dy),
                        float_t(0.5) * v_sigma * dx * dx,
                        v_sigma * dx * dy,
                        float_t(0.5) * v_sigma * dy * dy,
                        vis * v_alpha,
                    ),
                )
            behind = behind + w * cg

    return forward, backward


class Launcher:
    """Runs a Warp kernel over ``n_items`` threads (pixels, or camera-Gaussian pairs).

    On CUDA: one launch on torch's current stream. On the CPU Warp runs a launch on one thread, so
    the items are cut into blocks (whole multiples of ``granule``, e.g. image rows, about eight per
    worker) that ``n_workers`` = ``torch.get_num_threads()`` Python threads launch concurrently (Warp
    calls a CPU kernel through ctypes, which releases the GIL); the blocks are dealt out round-robin,
    so that busy and empty image regions balance and each worker's share is fixed. A kernel that
    accumulates into shared outputs gets one output buffer per worker (Warp's CPU ``atomic_add`` is a
    plain add), summed afterwards: with the fixed shares the sums, hence training runs, are
    reproducible for a given thread count.
    """

    def __init__(self, device: torch.device, n_items: int, granule: int = 1):
        self.device = device
        self.n_pixels = n_items
        granule = max(1, granule)
        if device.type == "cpu" and n_items:
            workers = max(1, torch.get_num_threads())
            block = max(4 * granule, -(-n_items // (8 * workers)))
            block = -(-block // granule) * granule
            self.blocks = [(s, min(block, n_items - s)) for s in range(0, n_items, block)]
            self.n_workers = max(1, min(workers, len(self.blocks)))
        else:
            self.blocks = [(0, n_items)]
            self.n_workers = 1

    def __call__(self, kernel: Any, make_inputs: Any) -> None:
        """Launch ``kernel`` over every block; ``make_inputs(pix0, worker)`` gives its inputs."""
        wp = _warp()
        wp_device = wp.device_from_torch(self.device)
        if self.device.type == "cuda":
            wp.launch(kernel, dim=self.n_pixels, inputs=make_inputs(0, 0), device=wp_device,
                      stream=wp.stream_from_torch(self.device))
            return
        if self.n_workers == 1:
            for pix0, count in self.blocks:
                wp.launch(kernel, dim=count, inputs=make_inputs(pix0, 0), device=wp_device)
            return
        wp.load_module(kernel.module, device=wp_device)  # compile/load once, before the threads

        def work(worker: int) -> None:
            for pix0, count in self.blocks[worker :: self.n_workers]:
                wp.launch(kernel, dim=count, inputs=make_inputs(pix0, worker), device=wp_device)

        pool = _pool(self.n_workers)
        for future in [pool.submit(work, w) for w in range(self.n_workers)]:
            future.result()


@functools.cache
def _pool(n_workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="recon-warp")


def to_warp(t: Tensor, dtype: Any = None) -> Any:
    """A Warp view of a contiguous torch tensor (no copy), optionally as an array of ``dtype`` vectors."""
    return _warp().from_torch(t, dtype=dtype, requires_grad=False)


def _vec_types(scalar: str, n_ch: int) -> tuple[Any, Any, Any]:
    wp = _warp()
    float_t = wp.float32 if scalar == "float32" else wp.float64
    return (
        wp.types.vector(length=GAUSS_FIELDS, dtype=float_t),
        wp.types.vector(length=n_ch, dtype=float_t),
        wp.types.vector(length=GRAD_FIELDS, dtype=float_t),
    )


class _WarpComposite(torch.autograd.Function):
    """(means2d [M, 2], conics [M, 3], colors [M, D], opacities [M]) -> (accum [C, H, W, D],
    T_final [C, H, W]); M = C * N, the camera's block of N selected through the tile lists."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, offsets, flatten_ids, layout):
        C, H, W, ts, th, tw = layout
        scalar = "float64" if means2d.dtype == torch.float64 else "float32"
        D = colors.shape[1]
        fwd, _ = _kernels(scalar, D)
        gauss_t, vec_t, _ = _vec_types(scalar, D)
        P = C * H * W
        with torch.no_grad():
            # The early-out bound: o exp(-sigma) < 1/255 for sure when sigma > ln(255 o) + margin.
            o = opacities.detach()
            skip = torch.where(o > 0, torch.log(o.clamp_min(1e-30) / ALPHA_THRESHOLD) + SKIP_MARGIN, -1.0)
            gauss = torch.cat([means2d.detach(), conics.detach(), o[:, None], skip[:, None],
                               o.new_zeros(o.shape[0], GAUSS_FIELDS - 7)], 1).contiguous()
        accum = means2d.new_empty(P, D)
        T = means2d.new_empty(P)
        last = torch.empty(P, dtype=torch.int32, device=means2d.device)
        launcher = Launcher(means2d.device, P, W)
        if P:
            shared = [to_warp(gauss, gauss_t), to_warp(colors, vec_t), to_warp(offsets), to_warp(flatten_ids)]
            rest = [W, H, ts, tw, th, to_warp(accum, vec_t), to_warp(T), to_warp(last)]
            launcher(fwd, lambda pix0, worker: [*shared, pix0, *rest])
        ctx.layout = layout
        ctx.launcher = launcher
        ctx.save_for_backward(gauss, colors, offsets, flatten_ids, T, last)
        ctx.mark_non_differentiable(last)
        return accum.reshape(C, H, W, D), T.reshape(C, H, W)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_accum, g_T):
        gauss, colors, offsets, flatten_ids, T, last = ctx.saved_tensors
        C, H, W, ts, th, tw = ctx.layout
        launcher = ctx.launcher
        scalar = "float64" if gauss.dtype == torch.float64 else "float32"
        D = colors.shape[1]
        _, bwd = _kernels(scalar, D)
        gauss_t, vec_t, grad_t = _vec_types(scalar, D)
        P, M = C * H * W, gauss.shape[0]
        g_accum = gauss.new_zeros(P, D) if g_accum is None else g_accum.reshape(P, D).to(gauss.dtype).contiguous()
        g_T = gauss.new_zeros(P) if g_T is None else g_T.reshape(P).to(gauss.dtype).contiguous()
        workers = launcher.n_workers
        v_gauss = gauss.new_zeros(workers, M, GRAD_FIELDS)
        v_colors = gauss.new_zeros(workers, M, D)
        if P:
            shared = [to_warp(gauss, gauss_t), to_warp(colors, vec_t), to_warp(offsets), to_warp(flatten_ids)]
            rest = [W, H, ts, tw, th, to_warp(T), to_warp(last), to_warp(g_accum, vec_t), to_warp(g_T)]
            outs = [(to_warp(v_gauss[w], grad_t), to_warp(v_colors[w], vec_t)) for w in range(workers)]
            launcher(bwd, lambda pix0, worker: [*shared, pix0, *rest, *outs[worker]])
        for w in range(1, workers):  # in place into worker 0's buffer (no third copy)
            v_gauss[0] += v_gauss[w]
            v_colors[0] += v_colors[w]
        v_gauss, v_colors = v_gauss[0], v_colors[0]
        return v_gauss[:, 0:2], v_gauss[:, 2:5], v_colors, v_gauss[:, 5], None, None, None


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
