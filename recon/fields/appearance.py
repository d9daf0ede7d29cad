"""Per-camera appearance embeddings (NeRF in the Wild, Martin-Brualla et al. 2021, section 4.1;
nerfacto's "appearance embedding", Tancik et al. 2023)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Fallback = Literal["mean", "zeros"]


class AppearanceEmbedding(nn.Module):
    """A learned latent vector per training camera, fed to the colour head to absorb per-image
    exposure / white balance / lighting changes.

    camera_indices: [R] int in [0, num_cameras) -> [R, dim].

    Cameras not seen in training have no embedding (and evaluation cameras are numbered within
    their own split, so their indices do not name training cameras). In eval mode (``not
    self.training``, or ``use_fallback=True``) every ray therefore gets the fallback vector instead:
    ``"mean"`` (default; nerfacto's ``use_average_appearance_embedding``) is the average training
    embedding, a typical appearance; ``"zeros"`` is the zero vector, which is only meaningful if
    training kept embeddings centred. NeRF-W's alternative, optimising a test embedding on part of
    each test image, is a training-loop concern and not done here.

    Initialisation is N(0, init_std^2) per entry, torch.nn.Embedding's default (as nerfacto).
    """

    def __init__(self, num_cameras: int, dim: int, fallback: Fallback = "mean", init_std: float = 1.0):
        super().__init__()
        if num_cameras < 1 or dim < 1:
            raise ValueError(f"need num_cameras >= 1 and dim >= 1, got {num_cameras}, {dim}")
        if fallback not in ("mean", "zeros"):
            raise ValueError(f"fallback must be 'mean' or 'zeros', got {fallback!r}")
        self.num_cameras, self.dim, self.fallback = num_cameras, dim, fallback
        self.weight = nn.Parameter(torch.randn(num_cameras, dim) * init_std)
        """[num_cameras, dim]: row i is training camera i's embedding."""

    @property
    def out_dim(self) -> int:
        return self.dim

    def extra_repr(self) -> str:
        return f"num_cameras={self.num_cameras}, dim={self.dim}, fallback={self.fallback!r}"

    def fallback_embedding(self) -> Tensor:
        """[dim]: the vector used for unseen cameras."""
        if self.fallback == "mean":
            return self.weight.mean(0)
        return self.weight.new_zeros(self.dim)

    def forward(self, camera_indices: Tensor, use_fallback: bool | None = None) -> Tensor:
        """camera_indices: [...] int -> [..., dim]; ``use_fallback`` defaults to ``not self.training``."""
        if use_fallback is None:
            use_fallback = not self.training
        if use_fallback:
            return self.fallback_embedding().expand(*camera_indices.shape, self.dim).contiguous()
        if camera_indices.dtype.is_floating_point or camera_indices.dtype == torch.bool:
            raise TypeError(f"camera_indices must be integers, got {camera_indices.dtype}")
        # Check on the host: an out-of-range index on CUDA is an asynchronous device assert.
        if camera_indices.numel() and (int(camera_indices.min()) < 0 or int(camera_indices.max()) >= self.num_cameras):
            raise IndexError(
                f"camera index out of range [0, {self.num_cameras}): got {int(camera_indices.min())}..{int(camera_indices.max())};"
                " use use_fallback=True (or eval mode) for cameras not seen in training"
            )
        return self.weight[camera_indices.long()]
