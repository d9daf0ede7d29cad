"""Front-to-back alpha compositing of depth-sorted 2D Gaussians per tile, pure PyTorch.

Per pixel (centre at x + 0.5, y + 0.5) and Gaussian i of its tile, in depth order (Kerbl et al. 2023,
eq. 3; the per-pixel rules of gsplat 1.5.3 ``RasterizeToPixels3DGSFwd.cu``, Ye et al. 2024):

    d = mean2d_i - pixel,  sigma = 0.5 (a dx^2 + c dy^2) + b dx dy   (conic (a, b, c))
    alpha = min(0.999, opacity_i exp(-sigma));  skip i if sigma < 0 or alpha < 1/255
    T_next = T (1 - alpha);  if T_next <= 1e-4: stop (i does not contribute)
    colour += colour_i alpha T;  T = T_next

and render_alpha = 1 - T_final, render_colour += T_final * background.

The work is vectorised over chunks of tiles x 256 pixels x K Gaussians of each tile's list; K-chunks
carry the transmittance, and tiles whose pixels have all stopped are skipped. Because T only
decreases, "contributes" is exactly ``T_inclusive > 1e-4`` over the non-skipped Gaussians, so the
stop rule is a mask. Memory is bounded by the chunk (``CHUNK_ELEMENTS`` pixel-Gaussian pairs), not
by the number of intersections: the backward pass is a hand-written ``torch.autograd.Function``
that recomputes each chunk and uses the closed-form adjoint of the compositing recursion (the
reverse scan of gsplat's ``RasterizeToPixels3DGSBwd.cu``):

    dC/dalpha_i = T_i c_i - (S_i + T_final bg) / (1 - alpha_i),  dA/dalpha_i = T_final / (1 - alpha_i)

with S_i the colour composited behind i, taken here as (total - prefix up to i). The opacity and
sigma gradients pass only where alpha is not clamped (opacity exp(-sigma) <= 0.999), as in gsplat.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._constants import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_THRESHOLD

CHUNK_ELEMENTS = 1 << 20  # pixel x Gaussian pairs evaluated at once (tens of MB of temporaries)
K_CHUNK = 64  # Gaussians of a tile's list per step


class _Geometry:
    """Image, tile and list layout shared by the forward and backward scans."""

    def __init__(self, offsets: Tensor, n_isects: int, width: int, height: int, tile_size: int):
        self.C, self.th, self.tw = offsets.shape
        self.width, self.height, self.ts = width, height, tile_size
        self.n_tiles = self.th * self.tw
        self.P = tile_size * tile_size
        starts = offsets.reshape(-1).long()
        ends = torch.cat([starts[1:], starts.new_tensor([n_isects])])
        self.starts, self.counts = starts, ends - starts
        # Tiles with work, longest lists first, so a chunk holds lists of similar length.
        work = torch.nonzero(self.counts > 0).squeeze(1)
        self.work = work[torch.argsort(self.counts[work], descending=True, stable=True)]

    def pixels(self, tiles: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel centres [nt, P] (x and y) of global tiles and whether they lie in the image."""
        t = tiles % self.n_tiles
        lin = torch.arange(self.P, device=tiles.device)
        col = (t % self.tw)[:, None] * self.ts + lin % self.ts
        row = (t // self.tw)[:, None] * self.ts + lin // self.ts
        inside = (col < self.width) & (row < self.height)
        return col.to(dtype) + 0.5, row.to(dtype) + 0.5, inside

    def to_image(self, padded: Tensor) -> Tensor:
        """[C * tiles, P, ...] -> [C, H, W, ...]."""
        extra = padded.shape[2:]
        img = padded.reshape(self.C, self.th, self.tw, self.ts, self.ts, *extra)
        img = img.transpose(2, 3).reshape(self.C, self.th * self.ts, self.tw * self.ts, *extra)
        return img[:, : self.height, : self.width]

    def to_padded(self, image: Tensor) -> Tensor:
        """[C, H, W, ...] -> [C * tiles, P, ...] (zeros outside the image)."""
        extra = image.shape[3:]
        full = image.new_zeros(self.C, self.th * self.ts, self.tw * self.ts, *extra)
        full[:, : self.height, : self.width] = image
        full = full.reshape(self.C, self.th, self.ts, self.tw, self.ts, *extra).transpose(2, 3)
        return full.reshape(self.C * self.n_tiles, self.P, *extra)


def _scan(geo: _Geometry, means2d, conics, colors, opacities, flatten_ids, grad=None):
    """Composite every tile (forward) or accumulate the input gradients (``grad`` given).

    grad = (accum_pad [C*tiles, P, D], T_final_pad [C*tiles, P], g_accum_pad, g_T_pad)."""
    dtype, device = means2d.dtype, means2d.device
    D = colors.shape[-1]
    n_rows = geo.C * geo.n_tiles
    if grad is None:
        accum_out = torch.zeros(n_rows, geo.P, D, dtype=dtype, device=device)
        T_out = torch.ones(n_rows, geo.P, dtype=dtype, device=device)
    else:
        accum_pad, T_final_pad, g_accum_pad, g_T_pad = grad
        v_means2d = torch.zeros_like(means2d)
        v_conics = torch.zeros_like(conics)
        v_colors = torch.zeros_like(colors)
        v_opac = torch.zeros_like(opacities)
    n_isects = flatten_ids.numel()
    nt_max = max(1, CHUNK_ELEMENTS // (geo.P * K_CHUNK))
    k_range = torch.arange(K_CHUNK, device=device)

    for c0 in range(0, geo.work.numel(), nt_max):
        tiles = geo.work[c0 : c0 + nt_max]
        nt = tiles.numel()
        px, py, inside = geo.pixels(tiles, dtype)
        counts, starts = geo.counts[tiles], geo.starts[tiles]
        T = torch.ones(nt, geo.P, dtype=dtype, device=device)  # over contributors
        T_all = torch.where(inside, T, torch.zeros_like(T))  # over all non-skipped, drives the stop
        if grad is None:
            accum = torch.zeros(nt, geo.P, D, dtype=dtype, device=device)
        else:
            g_acc, g_T = g_accum_pad[tiles], g_T_pad[tiles]  # [nt, P, D], [nt, P]
            total_dot = (accum_pad[tiles] * g_acc).sum(-1)  # (sum of all w c) . gC per pixel
            gT_Tf = g_T * T_final_pad[tiles]
            prefix_dot = torch.zeros(nt, geo.P, dtype=dtype, device=device)
        for k0 in range(0, int(counts.max()), K_CHUNK):
            live = (counts > k0) & (T_all > TRANSMITTANCE_THRESHOLD).any(1)
            if not bool(live.any()):
                break
            rows = torch.nonzero(live).squeeze(1)
            kk = k0 + k_range
            in_list = kk[None, :] < counts[rows, None]  # [n, K]
            gid = flatten_ids[(starts[rows, None] + kk).clamp(max=n_isects - 1)]
            gid = torch.where(in_list, gid, torch.zeros_like(gid))
            mean, con, opac = means2d[gid], conics[gid], opacities[gid]  # [n, K, *]
            dx = mean[:, None, :, 0] - px[rows, :, None]  # [n, P, K]
            dy = mean[:, None, :, 1] - py[rows, :, None]
            ca, cb, cc = con[:, None, :, 0], con[:, None, :, 1], con[:, None, :, 2]
            sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
            vis = torch.exp(-sigma.clamp_min(0))  # clamped before exp: no inf for sigma << 0
            raw = opac[:, None, :] * vis
            alpha = raw.clamp_max(MAX_ALPHA)
            ok = in_list[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
            T_all_incl = T_all[rows, :, None] * torch.cumprod(1 - torch.where(ok, alpha, 0), -1)
            contrib = ok & (T_all_incl > TRANSMITTANCE_THRESHOLD)
            a = torch.where(contrib, alpha, 0)
            one_minus = 1 - a
            cp = torch.cumprod(one_minus, -1)
            T0 = T[rows]
            T_excl = T0[:, :, None] * torch.cat([torch.ones_like(cp[..., :1]), cp[..., :-1]], -1)
            w = a * T_excl  # [n, P, K] blend weights
            col = colors[gid]  # [n, K, D]
            if grad is None:
                accum[rows] += torch.einsum("npk,nkd->npd", w, col)
            else:
                gc = g_acc[rows]  # [n, P, D]
                cg = torch.einsum("nkd,npd->npk", col, gc)  # c_k . gC
                wcg = w * cg
                behind = total_dot[rows, :, None] - prefix_dot[rows, :, None] - torch.cumsum(wcg, -1)
                v_alpha = T_excl * cg - (behind + gT_Tf[rows, :, None]) / one_minus
                v_raw = torch.where(contrib & (raw <= MAX_ALPHA), v_alpha, 0)
                v_sigma = -raw * v_raw
                flat = gid.reshape(-1)
                v_opac.index_add_(0, flat, (vis * v_raw).sum(1).reshape(-1))
                v_con = torch.stack(
                    [(0.5 * v_sigma * dx * dx).sum(1), (v_sigma * dx * dy).sum(1), (0.5 * v_sigma * dy * dy).sum(1)],
                    -1,
                )
                v_conics.index_add_(0, flat, v_con.reshape(-1, 3))
                v_mean = torch.stack(
                    [(v_sigma * (ca * dx + cb * dy)).sum(1), (v_sigma * (cb * dx + cc * dy)).sum(1)], -1
                )
                v_means2d.index_add_(0, flat, v_mean.reshape(-1, 2))
                v_colors.index_add_(0, flat, torch.einsum("npk,npd->nkd", w, gc).reshape(-1, D))
                prefix_dot[rows] += wcg.sum(-1)
            T[rows] = T0 * cp[..., -1]
            T_all[rows] = T_all_incl[..., -1]
        if grad is None:
            accum_out[tiles] = accum
            T_out[tiles] = T
    if grad is None:
        return accum_out, T_out
    return v_means2d, v_conics, v_colors, v_opac


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, flatten_ids, geo):
        accum_pad, T_pad = _scan(geo, means2d, conics, colors, opacities, flatten_ids)
        ctx.geo = geo
        ctx.save_for_backward(means2d, conics, colors, opacities, flatten_ids, accum_pad, T_pad)
        return geo.to_image(accum_pad), geo.to_image(T_pad)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_accum, g_T):
        means2d, conics, colors, opacities, flatten_ids, accum_pad, T_pad = ctx.saved_tensors
        geo = ctx.geo
        g_accum = torch.zeros_like(accum_pad) if g_accum is None else geo.to_padded(g_accum)
        g_T = torch.zeros_like(T_pad) if g_T is None else geo.to_padded(g_T)
        grads = _scan(geo, means2d, conics, colors, opacities, flatten_ids, grad=(accum_pad, T_pad, g_accum, g_T))
        return (*grads, None, None)


def rasterize_to_pixels(
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
    """Composite binned 2D Gaussians into images (gsplat's ``rasterize_to_pixels``, non-packed).

    means2d [C, N, 2], conics [C, N, 3], colors [C, N, D], opacities [C, N]; isect_offsets
    [C, tile_height, tile_width] and flatten_ids [M] from :func:`isect_tiles` /
    :func:`isect_offset_encode`; backgrounds [C, D] or None.
    Returns render_colors [C, H, W, D] and render_alphas [C, H, W, 1] (= 1 - final transmittance).
    Differentiable w.r.t. means2d, conics, colors, opacities and backgrounds (first order only).
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
    dtype = means2d.dtype
    geo = _Geometry(isect_offsets, flatten_ids.numel(), image_width, image_height, tile_size)
    accum, T_final = _Composite.apply(
        means2d.reshape(C * N, 2),
        conics.reshape(C * N, 3).to(dtype),
        colors.reshape(C * N, D).to(dtype),
        opacities.reshape(C * N).to(dtype),
        flatten_ids.long(),
        geo,
    )
    render_alphas = (1 - T_final)[..., None]
    if backgrounds is not None:
        if backgrounds.shape != (C, D):
            raise ValueError(f"backgrounds must be [C={C}, D={D}], got {tuple(backgrounds.shape)}")
        accum = accum + T_final[..., None] * backgrounds[:, None, None, :].to(dtype)
    return accum, render_alphas
