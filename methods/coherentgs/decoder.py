"""CoherentGS's implicit convolutional decoder (Paliwal et al. 2024, section 3.2; the official ``scene/decoder.py``).

A convolutional generator, in the spirit of the deep image prior (Ulyanov et al. 2018), maps a fixed
per-view code to C full-resolution maps: its convolutional structure makes the per-pixel residuals
it produces smooth within a depth layer, which is the "single-view coherence" of the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTH_MULTIPLIERS = (16, 16, 16, 8, 8, 8, 4)
"""ngf multipliers of the blocks, coarse to fine; every later block uses the last one."""


def view_encoding(num_views: int, frequencies: int = 10) -> Tensor:
    """The fixed code of each view [V, 2 F, 1, 1]: sin and cos of 2^k t_n, k < F, t_n = n / (V - 1)
    (t = 0 for a single view); the raw t is not included (official code)."""
    t = torch.arange(num_views, dtype=torch.float32) / max(num_views - 1, 1)
    arg = t[:, None] * (2.0 ** torch.arange(frequencies, dtype=torch.float32))[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], -1)[:, :, None, None]


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Output size of every block, coarse to fine: (H, W) halved with ceil until both sides <= 2."""
    sizes = [(height, width)]
    while max(sizes[-1]) > 2:
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes[::-1]


class ImplicitDecoder(nn.Module):
    """Code [V, in_channels, 1, 1] -> maps [V, out_channels, H, W] (no output activation).

    Blocks: bilinear upsampling (align_corners) to the next size of :func:`level_sizes`, padding
    (reflect; replicate on a 1-pixel side), conv, LeakyReLU(0.2). The first block is a 1x1 conv
    after which two coordinate channels in [-1, 1] are appended (CoordConv); the others are 3x3.
    Widths ngf x (16, 16, 16, 8, 8, 8, 4, 4, ...); the last layer is a 3x3 conv to ``out_channels``.
    Weights start N(0, 0.02), biases 0, the head's weights 0 [ours], so the output starts at 0. Upsampling to exact sizes
    replaces the official code's padding bookkeeping for sizes that are not powers of two.
    """

    def __init__(self, height: int, width: int, out_channels: int, ngf: int, in_channels: int = 20):
        super().__init__()
        self.height, self.width = height, width
        self.sizes = level_sizes(height, width)
        widths = [ngf * WIDTH_MULTIPLIERS[min(i, len(WIDTH_MULTIPLIERS) - 1)] for i in range(len(self.sizes))]
        convs = [nn.Conv2d(in_channels, widths[0], 1)]
        for i in range(1, len(self.sizes)):
            convs.append(nn.Conv2d(widths[i - 1] + (2 if i == 1 else 0), widths[i], 3))
        self.convs = nn.ModuleList(convs)
        self.head = nn.Conv2d(widths[-1], out_channels, 3)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
        # [ours] A zero head makes the output exactly 0 at the start, so the Gaussians begin on the
        # initial depth; with N(0, 0.02) it is ~1e-3, which the residual bound (15 median depths)
        # turns into several per cent of depth noise at small image sizes.
        nn.init.zeros_(self.head.weight)

    @staticmethod
    def _pad(x: Tensor) -> Tensor:
        mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
        return F.pad(x, (1, 1, 1, 1), mode=mode)

    def forward(self, code: Tensor) -> Tensor:
        x = code
        for i, (conv, size) in enumerate(zip(self.convs, self.sizes, strict=True)):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            x = F.leaky_relu(conv(x if i == 0 else self._pad(x)), 0.2)
            if i == 0:
                ys = torch.linspace(-1, 1, size[0], device=x.device, dtype=x.dtype)
                xs = torch.linspace(-1, 1, size[1], device=x.device, dtype=x.dtype)
                grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))[None].expand(x.shape[0], 2, *size)
                x = torch.cat([x, grid], 1)
        return self.head(self._pad(x))
