"""Tile-intersection keys with an NVIDIA Warp kernel: the ``"warp"`` path of ``isect_tiles``.

The PyTorch reference (``binning.py``) expands every (Gaussian, tile) intersection through several
[M]-sized int64 temporaries; here one kernel per Gaussian writes its intersections' 64-bit keys
(gsplat's ``camera | tile | float32 depth bits`` encoding, Ye et al. 2024) and flattened Gaussian
ids straight into their place in the list (the exclusive prefix sum of the per-Gaussian tile counts),
in the reference's order, so that the one stable sort after it gives the same list.
"""

# No "from __future__ import annotations": Warp reads the kernels' annotations.

import functools
from typing import Any

import torch
from torch import Tensor

from .warp_backend import Launcher, _warp, to_warp

BLOCK = 4096  # Gaussians per CPU block


@functools.cache
def _kernel() -> Any:
    wp = _warp()

    @wp.kernel(enable_backward=False, module="unique")
    def keys_kernel(
        x0: wp.array(dtype=wp.int32),  # [C*N] first tile column
        x1: wp.array(dtype=wp.int32),  # [C*N] end tile column (exclusive)
        y0: wp.array(dtype=wp.int32),  # [C*N] first tile row
        count: wp.array(dtype=wp.int32),  # [C*N] tiles covered (0: culled)
        first: wp.array(dtype=wp.int64),  # [C*N] position of the first intersection in the list
        depth_bits: wp.array(dtype=wp.int32),  # [C*N] float32 bit pattern of the depth
        n_gauss: int,
        tiles_w: int,
        tile_bits: int,
        i0: int,
        keys: wp.array(dtype=wp.int64),  # [M] out
        ids: wp.array(dtype=wp.int32),  # [M] out
    ):
        i = i0 + wp.tid()
        cnt = count[i]
        if cnt <= 0:
            return
        cam = wp.int64(i // n_gauss) << wp.int64(32 + tile_bits)
        depth = wp.int64(depth_bits[i]) & wp.int64(4294967295)
        base = first[i]
        left = x0[i]
        top = y0[i]
        w = x1[i] - left
        for j in range(cnt):
            tile = wp.int64((top + j // w) * tiles_w + left + j % w)
            keys[base + wp.int64(j)] = cam | (tile << wp.int64(32)) | depth
            ids[base + wp.int64(j)] = i

    return keys_kernel


def intersection_keys(
    x0: Tensor, x1: Tensor, y0: Tensor, count: Tensor, depths: Tensor, n_gauss: int, tile_width: int, tile_bits: int,
    n_isects: int,
) -> tuple[Tensor, Tensor]:
    """Unsorted keys [M] int64 and flattened Gaussian ids [M] int32 of every intersection.

    x0, x1, y0, count: [C*N] tile ranges and counts (count 0 = culled); depths [C*N] (float32 bits
    are encoded)."""
    device = x0.device
    first = torch.cumsum(count, 0) - count
    keys = torch.empty(n_isects, dtype=torch.int64, device=device)
    ids = torch.empty(n_isects, dtype=torch.int32, device=device)
    i32 = lambda t: t.to(torch.int32).contiguous()  # noqa: E731
    bits = depths.detach().to(torch.float32).contiguous().view(torch.int32)
    args = [to_warp(i32(x0)), to_warp(i32(x1)), to_warp(i32(y0)), to_warp(i32(count)),
            to_warp(first.to(torch.int64).contiguous()), to_warp(bits), n_gauss, tile_width, tile_bits]
    outs = [to_warp(keys), to_warp(ids)]
    Launcher(device, x0.numel(), BLOCK)(_kernel(), lambda i0, worker: [*args, i0, *outs])
    return keys, ids
