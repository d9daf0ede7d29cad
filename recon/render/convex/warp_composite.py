"""Smooth-convex compositing with NVIDIA Warp kernels: the ``"warp"`` backend of
:func:`recon.render.convex.rasterize_convexes_to_pixels`.

Same call, semantics and outputs as the PyTorch reference in ``composite.py`` (Held et al. 2025,
"3D Convex Splatting", eqs. 4-6, with the compositing rules of the Gaussian backend), in the style
of :mod:`recon.render.gaussians.warp_backend`: one Warp thread per pixel walks its tile's
depth-sorted list.

- Forward, front to back, per pixel centre x and convex: L_e = n_e . x + h_e over the valid
  edges, m = max_e sdelta L_e, phi = m + log sum_e exp(sdelta L_e - m), I = sigmoid(-ssigma phi),
  alpha = min(0.99, o I); skip alpha < 1/255; stop before the convex that would take T to
  <= 1e-4. Since phi >= m, ssigma m > ln(255 o - 1) (+ a rounding margin) proves alpha < 1/255
  before any exp is taken: most pairs of a tile's list leave there. Stores the colour, the final
  T and the list position of the last contributor.
- Backward, back to front from the last contributor, T recovered by division (the scheme of
  ``warp_backend.py``), with

      dL/dalpha_i = T_i (c_i . g) - (S_i . g + g_T T_final) / (1 - alpha_i)
      dI/dphi = -ssigma I (1 - I),  dI/dssigma = -phi I (1 - I)
      dphi/dL_e = sdelta softmax_e,  dphi/dsdelta = sum_e softmax_e L_e,  dL_e/dn_e = x, dL_e/dh_e = 1

  where softmax_e = exp(sdelta L_e - m) / sum. Opacity and indicator gradients pass only where
  o I <= 0.99 (alpha not clamped), as torch's ``clamp_max`` does in the reference.

The backward is hand-written for the reason given in ``warp_backend.py`` (Warp's automatic adjoint
of a loop with loop-carried state is silently wrong). Kernels are generated per scalar type
(float32, float64; others compute in float32), channel count and edge-slot count E (unrolled
loops), compiled on first use and cached. The CPU launch is cut into row blocks over
``torch.get_num_threads()`` threads with one gradient buffer per worker (:class:`Launcher`), so
the gradients are bit-reproducible for a given thread count. The background is added in torch.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from recon.render.gaussians import ALPHA_THRESHOLD, TRANSMITTANCE_THRESHOLD
from recon.render.gaussians.warp_backend import Launcher, _warp, to_warp

from .composite import MAX_ALPHA, check_composite_inputs, finish_composite
from .projection import MAX_POINTS

CONVEX_EXTRA = 4  # per convex after its 3E edge values: sharp_delta, sharp_sigma, opacity, skip bound
GRAD_EXTRA = 3  # per convex gradient after the 3E edge values: sharp_delta, sharp_sigma, opacity
# Margin of the exp-free early-out, in log-odds: a pair within it of the cut-off takes the exact
# test, so the skip rule is the reference's in float32 and float64 alike.
SKIP_MARGIN = 1e-3
# 255 o - 1 is clamped at this before its log: for o just above 1/255 the exact bound tends to
# -inf, where float32 rounding of I near 1 could disagree with it; a larger bound is still safe.
SKIP_ODDS_FLOOR = 1e-3


@functools.cache
def _kernels(scalar: str, n_ch: int, n_edges: int) -> tuple[Any, Any]:
    """(forward, backward) Warp kernels for ``scalar`` in ("float32", "float64"), ``n_ch``
    channels and ``n_edges`` edge slots per convex."""
    wp = _warp()
    float_t = wp.float32 if scalar == "float32" else wp.float64
    vec_t = wp.types.vector(length=n_ch, dtype=float_t)
    conv_t = wp.types.vector(length=3 * n_edges + CONVEX_EXTRA, dtype=float_t)
    E = n_edges
    SD, SS, OP, BOUND = 3 * E, 3 * E + 1, 3 * E + 2, 3 * E + 3
    max_alpha, alpha_thr, t_thr = MAX_ALPHA, ALPHA_THRESHOLD, TRANSMITTANCE_THRESHOLD

    @wp.func
    def pixel_of(pix: int, width: int, height: int, tile_size: int, tiles_w: int, tiles_h: int):
        """(tile index over all cameras, x, y) of the flattened pixel index ``pix``."""
        hw = width * height
        cam = pix // hw
        rem = pix - cam * hw
        py = rem // width
        px = rem - py * width
        return (cam * tiles_h + py // tile_size) * tiles_w + px // tile_size, px, py

    # Generic (Any) arguments: the closure's types would not resolve in string annotations.
    @wp.func
    def edge_max(p: Any, bits: int, fx: Any, fy: Any):
        """m = max over the valid edges of sdelta L_e(x)."""
        top = float_t(-wp.inf)
        for e in range(E):
            if ((bits >> e) & 1) != 0:
                top = wp.max(top, p[SD] * ((p[3 * e] * fx + p[3 * e + 1] * fy) + p[3 * e + 2]))
        return top

    @wp.func
    def indicator(p: Any, bits: int, fx: Any, fy: Any, top: Any):
        """(phi, sum_e exp(sdelta L_e - m), I) of a convex at a pixel."""
        total = float_t(0.0)
        for e in range(E):
            if ((bits >> e) & 1) != 0:
                total = total + wp.exp(p[SD] * ((p[3 * e] * fx + p[3 * e + 1] * fy) + p[3 * e + 2]) - top)
        phi = top + wp.log(total)
        return phi, total, float_t(1.0) / (float_t(1.0) + wp.exp(p[SS] * phi))

    @wp.kernel(enable_backward=False, module="unique")
    def forward(
        conv: wp.array(dtype=conv_t),  # [C*N] (edges 3E, sharp_delta, sharp_sigma, opacity, skip bound)
        masks: wp.array(dtype=wp.int32),  # [C*N] bit e set: edge slot e holds an edge
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
        tile, px, py = pixel_of(pix, width, height, tile_size, tiles_w, tiles_h)
        start = offsets[tile]
        end = flatten_ids.shape[0]
        if tile + 1 < offsets.shape[0]:
            end = offsets[tile + 1]
        fx = float_t(px) + float_t(0.5)
        fy = float_t(py) + float_t(0.5)
        acc = vec_t()
        p = conv_t()  # (names the closure's vector type for Warp's annotation lookup)
        T = float_t(1.0)
        last_k = int(-1)  # noqa: UP018, RUF046  (Warp: a dynamic variable, mutated in the loop)
        for k in range(start, end):
            g = flatten_ids[k]
            bits = masks[g]
            if bits == 0:
                continue
            p = conv[g]
            top = edge_max(p, bits, fx, fy)
            if p[SS] * top > p[BOUND]:
                continue
            phi, total, ind = indicator(p, bits, fx, fy, top)
            alpha = wp.min(float_t(max_alpha), p[OP] * ind)
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
        conv: wp.array(dtype=conv_t),
        masks: wp.array(dtype=wp.int32),
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
        v_conv: wp.array2d(dtype=float_t),  # [C*N, 3E + 3] out (edges, sharp_delta, sharp_sigma, opacity), zeros on entry
        v_colors: wp.array(dtype=vec_t),  # [C*N] out, zeros on entry
    ):
        pix = pix0 + wp.tid()
        last_k = last[pix]
        if last_k < 0:
            return
        tile, px, py = pixel_of(pix, width, height, tile_size, tiles_w, tiles_h)
        start = offsets[tile]
        fx = float_t(px) + float_t(0.5)
        fy = float_t(py) + float_t(0.5)
        gc = vec_t()  # (names the closure's types for Warp's annotation lookup)
        gc = g_accum[pix]
        T_f = t_final[pix]
        T = T_f
        gT_Tf = g_t[pix] * T_f
        behind = float_t(0.0)  # (colour composited behind the current convex) . g
        p = conv_t()
        k = last_k
        while k >= start:
            g = flatten_ids[k]
            k = k - 1
            bits = masks[g]
            if bits == 0:
                continue
            p = conv[g]
            top = edge_max(p, bits, fx, fy)
            if p[SS] * top > p[BOUND]:
                continue
            phi, total, ind = indicator(p, bits, fx, fy, top)
            raw = p[OP] * ind
            alpha = wp.min(float_t(max_alpha), raw)
            if alpha < float_t(alpha_thr):
                continue
            one_minus = float_t(1.0) - alpha
            T = T / one_minus  # transmittance in front of this convex
            w = alpha * T
            cg = wp.dot(colors[g], gc)
            wp.atomic_add(v_colors, g, gc * w)
            if raw <= float_t(max_alpha):
                v_alpha = T * cg - (behind + gT_Tf) / one_minus
                v_ind = p[OP] * v_alpha
                slope = ind * (float_t(1.0) - ind)
                v_phi = -p[SS] * slope * v_ind
                wp.atomic_add(v_conv, g, SS, -phi * slope * v_ind)
                wp.atomic_add(v_conv, g, OP, ind * v_alpha)
                v_sd = float_t(0.0)
                for e in range(E):
                    if ((bits >> e) & 1) != 0:
                        value = (p[3 * e] * fx + p[3 * e + 1] * fy) + p[3 * e + 2]
                        share = wp.exp(p[SD] * value - top) / total  # softmax_e
                        v_sd = v_sd + share * value
                        v_value = v_phi * p[SD] * share
                        wp.atomic_add(v_conv, g, 3 * e, v_value * fx)
                        wp.atomic_add(v_conv, g, 3 * e + 1, v_value * fy)
                        wp.atomic_add(v_conv, g, 3 * e + 2, v_value)
                wp.atomic_add(v_conv, g, SD, v_phi * v_sd)
            behind = behind + w * cg

    return forward, backward


def _types(scalar: str, n_ch: int, n_edges: int) -> tuple[Any, Any]:
    wp = _warp()
    float_t = wp.float32 if scalar == "float32" else wp.float64
    return wp.types.vector(length=3 * n_edges + CONVEX_EXTRA, dtype=float_t), wp.types.vector(length=n_ch, dtype=float_t)


class _WarpConvexComposite(torch.autograd.Function):
    """(edges [M, E, 3], sharp_delta [M], sharp_sigma [M], colors [M, D], opacities [M]) ->
    (accum [C, H, W, D], T_final [C, H, W]); M = C * N, selected through the tile lists."""

    @staticmethod
    def forward(ctx, edges, sharp_delta, sharp_sigma, colors, opacities, masks, offsets, flatten_ids, layout):
        C, H, W, ts, th, tw = layout
        M, E = edges.shape[:2]
        D = colors.shape[1]
        scalar = "float64" if edges.dtype == torch.float64 else "float32"
        fwd, _ = _kernels(scalar, D, E)
        conv_t, vec_t = _types(scalar, D, E)
        with torch.no_grad():
            # The early-out bound of the module docstring; -inf (always skip) below 1/255, where
            # alpha <= o < 1/255, and +inf (never) for a negative sharpness, where phi >= m gives no bound.
            o, ss = opacities.detach(), sharp_sigma.detach()
            odds = (255.0 * o - 1.0).clamp_min(SKIP_ODDS_FLOOR)
            bound = torch.where(o >= ALPHA_THRESHOLD, torch.log(odds) + SKIP_MARGIN, -torch.inf)
            bound = torch.where(ss >= 0, bound, torch.inf)
            conv = torch.cat([edges.detach().reshape(M, 3 * E), sharp_delta.detach()[:, None], ss[:, None], o[:, None], bound[:, None]], 1).contiguous()
        P = C * H * W
        accum = edges.new_empty(P, D)
        T = edges.new_empty(P)
        last = torch.empty(P, dtype=torch.int32, device=edges.device)
        launcher = Launcher(edges.device, P, W)
        if P:
            shared = [to_warp(conv, conv_t), to_warp(masks), to_warp(colors, vec_t), to_warp(offsets), to_warp(flatten_ids)]
            rest = [W, H, ts, tw, th, to_warp(accum, vec_t), to_warp(T), to_warp(last)]
            launcher(fwd, lambda pix0, worker: [*shared, pix0, *rest])
        ctx.layout = layout
        ctx.launcher = launcher
        ctx.save_for_backward(conv, masks, colors, offsets, flatten_ids, T, last)
        ctx.mark_non_differentiable(last)
        return accum.reshape(C, H, W, D), T.reshape(C, H, W)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_accum, g_T):
        conv, masks, colors, offsets, flatten_ids, T, last = ctx.saved_tensors
        C, H, W, ts, th, tw = ctx.layout
        launcher = ctx.launcher
        M = conv.shape[0]
        E = (conv.shape[1] - CONVEX_EXTRA) // 3
        D = colors.shape[1]
        scalar = "float64" if conv.dtype == torch.float64 else "float32"
        _, bwd = _kernels(scalar, D, E)
        conv_t, vec_t = _types(scalar, D, E)
        P = C * H * W
        g_accum = conv.new_zeros(P, D) if g_accum is None else g_accum.reshape(P, D).to(conv.dtype).contiguous()
        g_T = conv.new_zeros(P) if g_T is None else g_T.reshape(P).to(conv.dtype).contiguous()
        workers = launcher.n_workers
        v_conv = conv.new_zeros(workers, M, 3 * E + GRAD_EXTRA)
        v_colors = conv.new_zeros(workers, M, D)
        if P:
            shared = [to_warp(conv, conv_t), to_warp(masks), to_warp(colors, vec_t), to_warp(offsets), to_warp(flatten_ids)]
            rest = [W, H, ts, tw, th, to_warp(T), to_warp(last), to_warp(g_accum, vec_t), to_warp(g_T)]
            outs = [(to_warp(v_conv[w]), to_warp(v_colors[w], vec_t)) for w in range(workers)]
            launcher(bwd, lambda pix0, worker: [*shared, pix0, *rest, *outs[worker]])
        for w in range(1, workers):  # a fixed order: the sums do not depend on thread timing
            v_conv[0] += v_conv[w]
            v_colors[0] += v_colors[w]
        v_conv, v_colors = v_conv[0], v_colors[0]
        v_edges = v_conv[:, : 3 * E].reshape(M, E, 3)
        return v_edges, v_conv[:, 3 * E], v_conv[:, 3 * E + 1], v_colors, v_conv[:, 3 * E + 2], None, None, None, None


def rasterize_convexes_to_pixels_warp(
    edges: Tensor,
    edge_mask: Tensor,
    sharp_delta: Tensor,
    sharp_sigma: Tensor,
    colors: Tensor,
    opacities: Tensor,
    image_width: int,
    image_height: int,
    tile_size: int,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    backgrounds: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`recon.render.convex.rasterize_convexes_to_pixels` with Warp kernels: same inputs,
    outputs, semantics and first-order gradients (edges, sharp_delta, sharp_sigma, colors,
    opacities and backgrounds).

    edges [C, N, E, 3] (n_x, n_y, h), edge_mask [C, N, E] bool (E <= 8 slots, any of them valid),
    sharp_delta / sharp_sigma / opacities [C, N], colors [C, N, D]; isect_offsets
    [C, tile_height, tile_width] and flatten_ids [M] (indices into the flattened C * N);
    backgrounds [C, D] or None. Returns render_colors [C, H, W, D] and render_alphas [C, H, W, 1].
    float32 and float64 run natively; other floating dtypes are computed in float32.
    """
    C, N, E = edge_mask.shape
    th, tw = check_composite_inputs(edges, edge_mask, sharp_delta, sharp_sigma, colors, opacities, image_width, image_height, tile_size, isect_offsets)
    if E > MAX_POINTS:
        raise ValueError(f"at most {MAX_POINTS} edge slots per convex, got {E}")
    D = colors.shape[-1]
    out_dtype = edges.dtype
    dtype = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32
    M = C * N
    bit = 1 << torch.arange(E, dtype=torch.int32, device=edge_mask.device)
    masks = (edge_mask.reshape(M, E).to(torch.int32) * bit).sum(-1, dtype=torch.int32)
    accum, T_final = _WarpConvexComposite.apply(
        edges.reshape(M, E, 3).to(dtype).contiguous(),
        sharp_delta.reshape(M).to(dtype).contiguous(),
        sharp_sigma.reshape(M).to(dtype).contiguous(),
        colors.reshape(M, D).to(dtype).contiguous(),
        opacities.reshape(M).to(dtype).contiguous(),
        masks.contiguous(),
        isect_offsets.reshape(-1).to(torch.int32).contiguous(),
        flatten_ids.reshape(-1).to(torch.int32).contiguous(),
        (C, image_height, image_width, tile_size, th, tw),
    )
    colors_out, alphas = finish_composite(accum, T_final, backgrounds)
    return colors_out.to(out_dtype), alphas.to(out_dtype)
