"""Front-to-back compositing of depth-sorted smooth convexes per tile, pure PyTorch (autograd).

Per pixel (centre at x + 0.5, y + 0.5) and convex i of its tile, in depth order (Held et al. 2025,
eqs. 4-6, with the compositing rules the official CUDA kernel shares with 3DGS):

    phi = logsumexp_e(sdelta_i L_e(x)) over the convex's edges,  I = sigmoid(-ssigma_i phi)
    alpha = min(0.99, opacity_i I);  skip i if alpha < 1/255
    T_next = T (1 - alpha);  if T_next <= 1e-4: stop (i does not contribute)
    colour += colour_i alpha T;  T = T_next

render_alpha = 1 - T_final and render_colour += T_final * background. This is the oracle and the
fallback of the Warp kernels: gradients come from autograd (gathers use ``index_select``, whose
backward is a deterministic ``index_add_``: advanced indexing's ``index_put_`` accumulates in a
thread-dependent order on the CPU, which would break exact resume), so its memory grows with the
intersections of a chunk of tiles (``CHUNK_ELEMENTS`` pixel-convex-edge triples at a time are
evaluated, but autograd keeps every chunk's intermediates until the backward pass).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.render.gaussians import ALPHA_THRESHOLD, TRANSMITTANCE_THRESHOLD

MAX_ALPHA = 0.99
"""alpha = min(0.99, opacity I(x)): the official convex kernel's clamp (3DGS: 0.999)."""
CHUNK_ELEMENTS = 1 << 22


def convex_alpha(px: Tensor, py: Tensor, edges: Tensor, edge_mask: Tensor, sharp_delta: Tensor, sharp_sigma: Tensor, opacities: Tensor) -> Tensor:
    """Unclamped opacity(x) = opacity I(x) at pixel centres for convexes, broadcasting.

    px, py [..., P, 1]; edges [..., 1, L, E, 3]; edge_mask [..., 1, L, E]; sharp_delta, sharp_sigma,
    opacities [..., 1, L] -> [..., P, L]. Convexes without edges give 0."""
    values = edges[..., 0] * px[..., None] + edges[..., 1] * py[..., None] + edges[..., 2]  # [..., P, L, E]
    scaled = sharp_delta[..., None] * values
    scaled = torch.where(edge_mask, scaled, torch.full_like(scaled, -torch.inf))
    has_edges = edge_mask.any(-1)
    top = scaled.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()
    phi = top[..., 0] + torch.log(torch.exp(scaled - top).sum(-1).clamp_min(1e-38))
    indicator = torch.sigmoid(-sharp_sigma * phi)
    return torch.where(has_edges, opacities * indicator, torch.zeros_like(indicator))


def rasterize_convexes_to_pixels(
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
    """Composite binned convexes into images (the convex twin of gsplat's ``rasterize_to_pixels``).

    edges [C, N, E, 3], edge_mask [C, N, E], sharp_delta / sharp_sigma / opacities [C, N], colors
    [C, N, D] (see :func:`recon.render.convex.projection.project_convexes`); isect_offsets
    [C, tile_height, tile_width] and flatten_ids [M] from :func:`recon.render.gaussians.isect_tiles`;
    backgrounds [C, D] or None. Returns render_colors [C, H, W, D] and render_alphas [C, H, W, 1].
    """
    C, N, E = edge_mask.shape
    D = colors.shape[-1]
    th, tw = check_composite_inputs(edges, edge_mask, sharp_delta, sharp_sigma, colors, opacities, image_width, image_height, tile_size, isect_offsets)
    dtype, device = edges.dtype, edges.device
    n_tiles = th * tw
    P = tile_size * tile_size
    M = flatten_ids.numel()
    starts = isect_offsets.reshape(-1).long()
    counts = torch.cat([starts[1:], starts.new_tensor([M])]) - starts
    flat_edges = edges.reshape(C * N, E, 3)
    flat_mask = edge_mask.reshape(C * N, E)
    flat_sd, flat_ss = sharp_delta.reshape(-1), sharp_sigma.reshape(-1)
    flat_col, flat_op = colors.reshape(C * N, D).to(dtype), opacities.reshape(-1).to(dtype)
    ids = flatten_ids.long()

    lin = torch.arange(P, device=device)
    rows_out, accum_out, T_out = [], [], []
    work = torch.nonzero(counts > 0).squeeze(1)
    max_count = int(counts.max()) if M else 0
    per_tile = max(1, P * max(max_count, 1) * E)
    step = max(1, CHUNK_ELEMENTS // per_tile)
    for c0 in range(0, work.numel(), step):
        tiles = work[c0 : c0 + step]
        nt = tiles.numel()
        L = int(counts[tiles].max())
        t = tiles % n_tiles
        col_px = (t % tw)[:, None] * tile_size + lin % tile_size  # [nt, P]
        row_px = (t // tw)[:, None] * tile_size + lin // tile_size
        px, py = col_px.to(dtype) + 0.5, row_px.to(dtype) + 0.5
        k = torch.arange(L, device=device)
        in_list = k[None, :] < counts[tiles, None]  # [nt, L]
        gid = ids[(starts[tiles, None] + k).clamp(max=max(M - 1, 0))]
        gid = torch.where(in_list, gid, torch.zeros_like(gid))
        pick = lambda t: torch.index_select(t, 0, gid.reshape(-1)).reshape(*gid.shape, *t.shape[1:])  # noqa: E731
        raw = convex_alpha(
            px[..., None], py[..., None], pick(flat_edges)[:, None], pick(flat_mask)[:, None],
            pick(flat_sd)[:, None], pick(flat_ss)[:, None], pick(flat_op)[:, None],
        )  # [nt, P, L]
        alpha = raw.clamp_max(MAX_ALPHA)
        ok = in_list[:, None, :] & (alpha >= ALPHA_THRESHOLD)
        a_ok = torch.where(ok, alpha, torch.zeros_like(alpha))
        T_incl = torch.cumprod(1 - a_ok, -1)
        contrib = ok & (T_incl.detach() > TRANSMITTANCE_THRESHOLD)
        a = torch.where(contrib, alpha, torch.zeros_like(alpha))
        T = torch.cumprod(1 - a, -1)
        T_excl = torch.cat([torch.ones_like(T[..., :1]), T[..., :-1]], -1)
        w = a * T_excl
        accum = torch.einsum("tpl,tld->tpd", w, pick(flat_col))
        rows_out.append(tiles)
        accum_out.append(accum)
        T_out.append(T[..., -1])
    accum_pad = torch.zeros(C * n_tiles, P, D, dtype=dtype, device=device)
    T_pad = torch.ones(C * n_tiles, P, dtype=dtype, device=device)
    if rows_out:
        rows = torch.cat(rows_out)
        accum_pad = accum_pad.index_put((rows,), torch.cat(accum_out))
        T_pad = T_pad.index_put((rows,), torch.cat(T_out))
    accum_img = _to_image(accum_pad, C, th, tw, tile_size, image_height, image_width)
    T_img = _to_image(T_pad[..., None], C, th, tw, tile_size, image_height, image_width)[..., 0]
    return finish_composite(accum_img, T_img, backgrounds)


def check_composite_inputs(
    edges: Tensor, edge_mask: Tensor, sharp_delta: Tensor, sharp_sigma: Tensor, colors: Tensor, opacities: Tensor,
    image_width: int, image_height: int, tile_size: int, isect_offsets: Tensor,
) -> tuple[int, int]:
    """ValueError unless the inputs of :func:`rasterize_convexes_to_pixels` agree in shape; returns
    (tile_height, tile_width)."""
    C, N, E = edge_mask.shape
    if edges.shape != (C, N, E, 3) or colors.shape[:2] != (C, N) or colors.dim() != 3:
        raise ValueError(f"edges must be [C, N, E, 3] and colors [C, N, D] for edge_mask {tuple(edge_mask.shape)}, got {tuple(edges.shape)} and {tuple(colors.shape)}")
    if sharp_delta.shape != (C, N) or sharp_sigma.shape != (C, N) or opacities.shape != (C, N):
        raise ValueError(f"sharp_delta, sharp_sigma and opacities must be [C={C}, N={N}]")
    if isect_offsets.dim() != 3 or isect_offsets.shape[0] != C:
        raise ValueError(f"isect_offsets must be [C={C}, tile_height, tile_width], got {tuple(isect_offsets.shape)}")
    th, tw = isect_offsets.shape[1:]
    if th != -(-image_height // tile_size) or tw != -(-image_width // tile_size):
        raise ValueError("isect_offsets does not match the image size and tile_size")
    return th, tw


def finish_composite(accum: Tensor, T_final: Tensor, backgrounds: Tensor | None) -> tuple[Tensor, Tensor]:
    """accum [C, H, W, D] and the final transmittance [C, H, W] -> (accum + T_final backgrounds
    [C, D] when given, alpha = 1 - T_final [C, H, W, 1])."""
    C, D = accum.shape[0], accum.shape[-1]
    if backgrounds is not None:
        if backgrounds.shape != (C, D):
            raise ValueError(f"backgrounds must be [C={C}, D={D}], got {tuple(backgrounds.shape)}")
        accum = accum + T_final[..., None] * backgrounds[:, None, None, :].to(accum.dtype)
    return accum, (1 - T_final)[..., None]


def _to_image(padded: Tensor, C: int, th: int, tw: int, ts: int, height: int, width: int) -> Tensor:
    """[C * tiles, P, X] -> [C, H, W, X]."""
    x = padded.shape[-1]
    img = padded.reshape(C, th, tw, ts, ts, x).transpose(2, 3).reshape(C, th * ts, tw * ts, x)
    return img[:, :height, :width]
