"""Input encodings for coordinate networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class FrequencyEncoding(nn.Module):
    """NeRF's positional encoding (Mildenhall et al. 2020, eq. 4).

    ``gamma(x) = [x, sin(2^0 pi x), cos(2^0 pi x), ..., sin(2^(L-1) pi x), cos(2^(L-1) pi x)]``
    with frequencies ``2^min_freq .. 2^max_freq`` (L = num_frequencies, log-spaced).
    in: [..., D]; out: [..., D * (2L + include_input)].
    Inputs are multiplied by pi, matching the paper, so a unit box spans half a period of the lowest band.
    """

    def __init__(self, in_dim: int, num_frequencies: int, min_freq: float = 0.0, max_freq: float | None = None, include_input: bool = True):
        super().__init__()
        max_freq = num_frequencies - 1 if max_freq is None else max_freq
        self.in_dim, self.include_input = in_dim, include_input
        self.register_buffer("freqs", 2.0 ** torch.linspace(min_freq, max_freq, num_frequencies) * math.pi, persistent=False)

    @property
    def out_dim(self) -> int:
        return self.in_dim * (2 * self.freqs.numel() + int(self.include_input))

    def forward(self, x: Tensor) -> Tensor:
        scaled = (x[..., None] * self.freqs).flatten(-2)  # [..., D * L]
        parts = [torch.sin(scaled), torch.cos(scaled)]
        if self.include_input:
            parts.insert(0, x)
        return torch.cat(parts, -1)
