"""Multi-layer perceptrons."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected network with ReLU between layers and optional input skip connections.

    ``skips`` lists layer indices whose input is concatenated with the network input (NeRF feeds
    the encoded position again into the fifth layer). in: [..., in_dim]; out: [..., out_dim].
    """

    def __init__(self, in_dim: int, hidden_dim: int, num_layers: int, out_dim: int, skips: Sequence[int] = (), out_activation: nn.Module | None = None):
        super().__init__()
        self.skips = set(skips)
        layers = []
        for i in range(num_layers):
            d_in = in_dim if i == 0 else hidden_dim
            if i in self.skips and i > 0:
                d_in += in_dim
            d_out = out_dim if i == num_layers - 1 else hidden_dim
            layers.append(nn.Linear(d_in, d_out))
        self.layers = nn.ModuleList(layers)
        self.out_activation = out_activation
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for i, layer in enumerate(self.layers):
            if i in self.skips and i > 0:
                h = torch.cat([h, x], -1)
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return self.out_activation(h) if self.out_activation is not None else h
