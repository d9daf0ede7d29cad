"""Tile binning: every (camera, tile, Gaussian) intersection, sorted by (camera, tile, depth).

Semantics of gsplat 1.5.3 ``IntersectTile.cu`` (Ye et al. 2024), vectorised (no per-Gaussian loop):
a Gaussian with radii (rx, ry) > 0 and centre (mx, my) covers the tiles
``[floor((mx - rx) / ts), ceil((mx + rx) / ts))`` x ``[floor((my - ry) / ts), ceil((my + ry) / ts))``
clamped to the tile grid. Within a tile the Gaussians are ordered front to back by camera z (the
tile-based sort of Kerbl et al. 2023, sec. 6); ties keep the Gaussian order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _bits(n: int) -> int:
    """gsplat's bit width: floor(log2(n)) + 1."""
    return math.floor(math.log2(max(n, 1))) + 1


@torch.no_grad()
def isect_tiles(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    tile_size: int,
    tile_width: int,
    tile_height: int,
    *,
    backend: str = "torch",
) -> tuple[Tensor, Tensor, Tensor]:
    """Bin projected Gaussians into screen tiles (gsplat's ``isect_tiles``, non-packed).

    means2d [C, N, 2], radii [C, N, 2] int (0 = culled), depths [C, N]; tile_width / tile_height =
    ceil(width / tile_size), ceil(height / tile_size).

    Returns ``tiles_per_gauss`` [C, N] int32 (tiles each Gaussian covers), ``isect_ids`` [M] int64
    and ``flatten_ids`` [M] int32, sorted by (camera, tile, depth). ``flatten_ids`` index the
    flattened [C * N] Gaussian rows. ``isect_ids`` use gsplat's encoding
    ``camera << (32 + tile_bits) | tile << 32 | float32 bits of the depth`` (tile_bits =
    floor(log2(tile_width * tile_height)) + 1). For float32 depths one stable sort of these keys
    orders the list, as gsplat's radix sort (the float32 bit pattern orders positive depths as the
    depths); float64 depths are compared as float64 (their float32 bits may tie where they do not).
    """
    if means2d.dim() != 3 or means2d.shape[-1] != 2:
        raise ValueError(f"means2d must be [C, N, 2], got {tuple(means2d.shape)}")
    C, N = means2d.shape[:2]
    device = means2d.device
    n_tiles = tile_width * tile_height
    if C * N == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return torch.zeros(C, N, dtype=torch.int32, device=device), empty, empty.to(torch.int32)

    m = means2d.detach()
    r = radii.to(m.dtype)
    visible = (radii > 0).all(-1)
    tx, ty = m[..., 0] / tile_size, m[..., 1] / tile_size
    rx, ry = r[..., 0] / tile_size, r[..., 1] / tile_size
    x0 = torch.floor(tx - rx).clamp(0, tile_width).long()
    x1 = torch.ceil(tx + rx).clamp(0, tile_width).long()
    y0 = torch.floor(ty - ry).clamp(0, tile_height).long()
    y1 = torch.ceil(ty + ry).clamp(0, tile_height).long()
    count = torch.where(visible, (x1 - x0) * (y1 - y0), 0)  # [C, N]
    tiles_per_gauss = count.to(torch.int32)

    count_f = count.reshape(-1)
    n_isects = int(count_f.sum())
    if n_isects == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return tiles_per_gauss, empty, empty.to(torch.int32)
    tile_bits = _bits(n_tiles)
    if backend == "warp" and depths.dtype != torch.float64:
        from .warp_binning import intersection_keys

        keys, ids = intersection_keys(
            x0.reshape(-1), x1.reshape(-1), y0.reshape(-1), count_f, depths.reshape(-1), N, tile_width, tile_bits, n_isects
        )
        isect_ids, order = torch.sort(keys, stable=True)
        del keys
        return tiles_per_gauss, isect_ids, ids[order]
    # Per intersection: its Gaussian (flattened row) and tile; int32 keeps the [M] temporaries small.
    index_t = torch.int32 if C * N < 2**31 and n_isects < 2**31 else torch.int64
    gauss = torch.repeat_interleave(torch.arange(C * N, device=device, dtype=index_t), count_f, output_size=n_isects)
    first = (torch.cumsum(count_f, 0) - count_f).to(index_t)  # first isect of each Gaussian
    local = torch.arange(n_isects, device=device, dtype=index_t) - first[gauss]
    box_w = (x1 - x0).reshape(-1).to(index_t)[gauss]
    row = y0.reshape(-1).to(index_t)[gauss] + torch.div(local, box_w, rounding_mode="floor")
    col = x0.reshape(-1).to(index_t)[gauss] + local % box_w
    del local, box_w
    # gsplat's key: camera << (32 + tile_bits) | tile << 32 | float32 bits of the (positive) depth.
    key = ((gauss // N).long() << tile_bits) | (row * tile_width + col).long()
    del row, col
    if depths.dtype == torch.float64:
        # The float64 reference orders by the float64 depth (the float32 bits can tie where it does not).
        depth = depths.detach().reshape(-1)[gauss]
        order = torch.argsort(depth, stable=True)
        order = order[torch.argsort(key[order], stable=True)]
        gauss = gauss[order]
        key = key[order]
        depth_bits = depths.detach().to(torch.float32).reshape(-1)[gauss].view(torch.int32).long() & 0xFFFFFFFF
        isect_ids = (key << 32) | depth_bits
    else:
        # One stable sort of the 64-bit keys, as gsplat's radix sort (ties keep the Gaussian order).
        depth_bits = depths.detach().to(torch.float32).reshape(-1)[gauss].view(torch.int32).long() & 0xFFFFFFFF
        isect_ids, order = torch.sort((key << 32) | depth_bits, stable=True)
        del key, depth_bits
        gauss = gauss[order]
    return tiles_per_gauss, isect_ids, gauss.to(torch.int32)


@torch.no_grad()
def isect_offset_encode(isect_ids: Tensor, n_cameras: int, tile_width: int, tile_height: int) -> Tensor:
    """Start of each tile's run in the sorted intersection list (gsplat's ``isect_offset_encode``).

    isect_ids [M] sorted, from :func:`isect_tiles` -> offsets [C, tile_height, tile_width] int32. Tile
    t of camera c owns ``flatten_ids[offsets[c, t] : next offset]`` (the next offset in flattened
    [C * tiles] order; M after the last tile); an empty tile has the same offset as the next one."""
    n_tiles = tile_width * tile_height
    tile_bits = _bits(n_tiles)
    cams = torch.arange(n_cameras, device=isect_ids.device, dtype=torch.int64)
    tiles = torch.arange(n_tiles, device=isect_ids.device, dtype=torch.int64)
    bounds = ((cams[:, None] << tile_bits) | tiles[None, :]).reshape(-1) << 32  # first id of each tile
    offsets = torch.searchsorted(isect_ids, bounds)
    return offsets.to(torch.int32).reshape(n_cameras, tile_height, tile_width)
