"""Multi-resolution hash encoding (Müller, Evans, Schied, Keller 2022, "Instant Neural Graphics
Primitives with a Multiresolution Hash Encoding", ACM TOG 41(4), section 3).

Pure-PyTorch implementation (the reference and the CPU path), with optional tiny-cuda-nn on CUDA
(DESIGN.md section 3: tiny-cuda-nn only when it imports and the tensors are on CUDA).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor, nn

# Spatial-hash primes of the paper (eq. 4); the first is 1 so that the x coordinate stays coherent
# in memory along a row.
HASH_PRIMES = (1, 2654435761, 805459861)

Implementation = Literal["torch", "tcnn", "auto"]


def level_resolutions(num_levels: int, min_res: int, max_res: int) -> tuple[float, list[int]]:
    """Per-level growth factor b and grid resolutions N_l = floor(min_res * b^l) (paper eqs. 2-3).

    b = exp((ln max_res - ln min_res) / (num_levels - 1)); b = 1 for a single level.
    """
    if num_levels < 1 or min_res < 1 or max_res < min_res:
        raise ValueError(f"need num_levels >= 1 and 1 <= min_res <= max_res, got {num_levels}, {min_res}, {max_res}")
    growth = math.exp((math.log(max_res) - math.log(min_res)) / (num_levels - 1)) if num_levels > 1 else 1.0
    # The small epsilon keeps min_res * b^(L-1) = 2047.9999... from flooring to 2047.
    return growth, [int(math.floor(min_res * growth**level + 1e-6)) for level in range(num_levels)]


class HashGridEncoding(nn.Module):
    """Multi-resolution hash encoding of Müller et al. 2022 (instant-ngp), pure PyTorch.

    positions: [..., 3] in [0, 1]^3 (callers normalise from the scene box; values outside are clamped,
    so their gradient w.r.t. the position is zero). out: [..., num_levels * features_per_level],
    level-major (all features of level 0, then level 1, ...), in the table's dtype.

    Level l has resolution N_l = floor(min_res * b^l) cells per axis, with b chosen so that the
    last level reaches max_res. Its grid vertices sit at x = i / N_l, i = 0..N_l, so the
    (N_l + 1)^3 vertices of a level are indexed densely when they fit in the 2^log2_hashmap_size
    table (coarse levels: no collisions, and the table is only as large as needed) and otherwise
    by the spatial hash ``(i * 1) xor (j * 2654435761) xor (k * 805459861) mod T`` (paper eq. 4).
    A point's feature is the trilinear interpolation of its cell's 8 corner features. Table entries
    are initialised uniform in [-init_scale, init_scale] (paper: 1e-4).

    Differences from tiny-cuda-nn's HashGrid: vertices are aligned with the box (tcnn shifts each
    level by half a cell and uses resolution ceil(min_res * b^l - 1) + 1), and dense levels are not
    padded to a multiple of 8, so the parameter layouts are NOT interchangeable.

    implementation: "torch" (default) always runs this module's PyTorch code; "tcnn" requires
    tiny-cuda-nn and CUDA tensors; "auto" uses tiny-cuda-nn when the module is moved to CUDA and
    ``import tinycudann`` succeeds, and PyTorch otherwise. tinycudann is imported lazily, only when
    the module is moved to a CUDA device, never on CPU. Once tiny-cuda-nn is in use its own
    parameters replace ``table`` (which becomes empty), so a tcnn-trained encoding refuses to run
    the torch path instead of silently using untrained features.
    """

    def __init__(
        self,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        min_res: int = 16,
        max_res: int = 2048,
        init_scale: float = 1e-4,
        implementation: Implementation = "torch",
    ):
        super().__init__()
        if implementation not in ("torch", "tcnn", "auto"):
            raise ValueError(f"implementation must be 'torch', 'tcnn' or 'auto', got {implementation!r}")
        if not 1 <= log2_hashmap_size <= 40:
            raise ValueError(f"log2_hashmap_size must be in [1, 40], got {log2_hashmap_size}")
        self.num_levels, self.features_per_level = num_levels, features_per_level
        self.log2_hashmap_size, self.min_res, self.max_res = log2_hashmap_size, min_res, max_res
        self.implementation: Implementation = implementation
        self.init_scale = init_scale
        self.growth_factor, self.resolutions = level_resolutions(num_levels, min_res, max_res)

        hashmap_size = 2**log2_hashmap_size
        sizes = [min((res + 1) ** 3, hashmap_size) for res in self.resolutions]
        # Resolutions grow with the level, so the dense levels are a prefix of the level list.
        self.num_dense_levels = sum((res + 1) ** 3 <= hashmap_size for res in self.resolutions)
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        self.level_sizes = sizes

        # One flat table for all levels: level l occupies rows offsets[l] : offsets[l + 1], so the
        # corners of every level are fetched with a single gather.
        self.table = nn.Parameter(torch.empty(offsets[-1], features_per_level))
        nn.init.uniform_(self.table, -init_scale, init_scale)
        self.register_buffer("level_offsets", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.register_buffer("level_res", torch.tensor(self.resolutions, dtype=torch.float64), persistent=False)
        res_long = torch.tensor(self.resolutions, dtype=torch.long)
        # Per-axis index multipliers: dense levels use strides (1, N+1, (N+1)^2) and add; hashed
        # levels multiply by the primes and xor.
        dense_mul = torch.stack([torch.ones_like(res_long), res_long + 1, (res_long + 1) ** 2], -1)
        hash_mul = torch.tensor(HASH_PRIMES, dtype=torch.long).expand(num_levels, 3)
        is_dense = torch.arange(num_levels) < self.num_dense_levels
        self.register_buffer("axis_mul", torch.where(is_dense[:, None], dense_mul, hash_mul).contiguous(), persistent=False)
        self.tcnn_encoding: nn.Module | None = None

    @property
    def out_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def extra_repr(self) -> str:
        return (
            f"levels={self.num_levels}, features={self.features_per_level}, log2_T={self.log2_hashmap_size}, "
            f"res={self.min_res}..{self.max_res} (b={self.growth_factor:.4f}), dense_levels={self.num_dense_levels}, "
            f"implementation={self.implementation!r}"
        )

    # ------------------------------------------------------------------ backend selection
    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        # Moving to CUDA is when tiny-cuda-nn may be imported (never before: on a CPU machine with
        # nvcc its import may start a failing build). Models are moved before their optimizers are
        # built, so the tcnn parameters created here are seen by the optimizer.
        if self.implementation != "torch" and self.tcnn_encoding is None and self.level_offsets.is_cuda:
            self._build_tcnn(self.level_offsets.device)
        return module

    def _build_tcnn(self, device: torch.device) -> None:
        try:
            import tinycudann as tcnn  # noqa: PLC0415 - lazy on purpose (see _apply)
        except Exception as err:  # ImportError, or a failing extension load / build
            if self.implementation == "tcnn":
                raise RuntimeError(f"implementation='tcnn' but tinycudann does not import: {err}") from err
            warnings.warn(f"tinycudann does not import ({err}); HashGridEncoding uses the PyTorch path on CUDA", stacklevel=3)
            return
        config = {
            "otype": "HashGrid",
            "n_levels": self.num_levels,
            "n_features_per_level": self.features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.min_res,
            "per_level_scale": self.growth_factor,
        }
        with torch.cuda.device(device):
            # tcnn initialises its grid uniform in [-1e-4, 1e-4] like the paper.
            self.tcnn_encoding = tcnn.Encoding(n_input_dims=3, encoding_config=config)
        # The torch table is never used again: drop its memory (and make the state dict say so).
        self.table = nn.Parameter(self.table.new_empty(0, self.features_per_level))

    @property
    def active_implementation(self) -> Literal["torch", "tcnn"]:
        """Which code runs forward now: "tcnn" once tiny-cuda-nn was built on CUDA, else "torch"."""
        return "tcnn" if self.tcnn_encoding is not None else "torch"

    # ------------------------------------------------------------------ forward
    def forward(self, positions: Tensor) -> Tensor:
        """positions: [..., 3] in [0, 1] -> [..., num_levels * features_per_level]."""
        if positions.shape[-1] != 3:
            raise ValueError(f"positions must be [..., 3], got {tuple(positions.shape)}")
        lead = positions.shape[:-1]
        flat = positions.reshape(-1, 3)
        if self.tcnn_encoding is not None:
            if not flat.is_cuda:
                raise RuntimeError("this HashGridEncoding holds tiny-cuda-nn parameters; run it on CUDA")
            # tcnn wants contiguous float32 in [0, 1] and returns half precision by default.
            out = self.tcnn_encoding(flat.clamp(0.0, 1.0).float().contiguous()).to(torch.float32)
        else:
            if self.implementation == "tcnn":
                raise RuntimeError("implementation='tcnn' needs the module on CUDA (call .to('cuda') first)")
            if self.table.numel() == 0:
                raise RuntimeError("the hash table is empty (tcnn parameters were dropped); cannot run the torch path")
            out = self._torch_forward(flat)
        return out.reshape(*lead, self.out_dim)

    def corner_indices_and_weights(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Rows of ``table`` and trilinear weights of the 8 cell corners at every level.

        positions: [N, 3] in [0, 1] -> (indices [N, L, 8] long, weights [N, L, 8] positions' dtype).
        Corner c = 4 * bx + 2 * by + bz, with b* in {0, 1} the offset along each axis.
        """
        x = positions.clamp(0.0, 1.0)
        res = self.level_res.to(x.dtype)  # [L]
        scaled = x[:, None, :] * res[:, None]  # [N, L, 3]
        # Cells are clamped to the last one so that x = 1 lands on the far vertex (frac = 1).
        cell = torch.minimum(scaled.floor(), (res - 1)[:, None]).clamp_min(0.0)
        frac = scaled - cell  # [N, L, 3]; carries the gradient w.r.t. positions
        cell_i = cell.long()

        # Per axis, the index contribution of the lower (b=0) and upper (b=1) corner: [N, L, 3, 2].
        contrib = (cell_i[..., None] + torch.arange(2, device=cell_i.device)) * self.axis_mul[..., None]
        cx = contrib[:, :, 0, :, None, None]
        cy = contrib[:, :, 1, None, :, None]
        cz = contrib[:, :, 2, None, None, :]
        d = self.num_dense_levels
        dense = (cx[:, :d] + cy[:, :d] + cz[:, :d]).flatten(2)  # [N, Ld, 8]
        mask = 2**self.log2_hashmap_size - 1  # table size is a power of two: modulo is a mask
        hashed = ((cx[:, d:] ^ cy[:, d:] ^ cz[:, d:]) & mask).flatten(2)  # [N, L - Ld, 8]
        idx = torch.cat([dense, hashed], 1) + self.level_offsets[:, None]

        w = torch.stack([1.0 - frac, frac], -1)  # [N, L, 3, 2]
        weights = (w[:, :, 0, :, None, None] * w[:, :, 1, None, :, None] * w[:, :, 2, None, None, :]).flatten(2)
        return idx, weights

    def _torch_forward(self, positions: Tensor) -> Tensor:
        n, levels, feats = positions.shape[0], self.num_levels, self.features_per_level
        idx, weights = self.corner_indices_and_weights(positions)
        # One gather for all corners of all levels; autograd turns it into one index_add_.
        corner_feats = self.table.index_select(0, idx.reshape(-1)).view(n * levels, 8, feats)
        # Weighted sum of the 8 corners as a batched [1, 8] x [8, F] product (faster on CPU than
        # broadcasting multiply + sum, and it keeps no [N, L, 8, F] product alive for backward).
        out = torch.bmm(weights.to(corner_feats.dtype).reshape(n * levels, 1, 8), corner_feats)
        return out.view(n, levels * feats)

