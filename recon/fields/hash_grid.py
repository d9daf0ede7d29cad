"""Multi-resolution hash encoding (Müller, Evans, Schied, Keller 2022, "Instant Neural Graphics
Primitives with a Multiresolution Hash Encoding", ACM TOG 41(4), section 3).

Pure-PyTorch implementation (the reference and the CPU path), with optional tiny-cuda-nn on CUDA
(only when it imports and the tensors are on CUDA: ``docs/architecture.md``, "Rendering backend").
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor, nn

from recon.errors import ConfigError

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
    return growth, [math.floor(min_res * growth**level + 1e-6) for level in range(num_levels)]


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
    tiny-cuda-nn and CUDA tensors (a :class:`recon.errors.ConfigError` otherwise); "auto" uses
    tiny-cuda-nn when the module is moved to CUDA and ``import tinycudann`` succeeds, and PyTorch
    otherwise. tinycudann is imported lazily, only when
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
        self.level_sizes = [min((res + 1) ** 3, hashmap_size) for res in self.resolutions]
        # Resolutions grow with the level, so the dense levels are a prefix of the level list.
        self.num_dense_levels = sum((res + 1) ** 3 <= hashmap_size for res in self.resolutions)
        d = self.num_dense_levels
        # One flat table for all levels, so that all corners of all levels are fetched with one
        # gather. Hashed levels come first, at rows that are multiples of T: a hashed index is then
        # (hash mod T) + offset = (x-term + offset) xor y-term xor z-term, and the offset can be
        # folded into the small per-axis terms instead of being added to the big [8, L, N] index.
        offsets = [0] * num_levels
        row = 0
        for level in [*range(d, num_levels), *range(d)]:
            offsets[level] = row
            row += self.level_sizes[level]
        self.num_rows = row

        self.table = nn.Parameter(torch.empty(row, features_per_level))
        """[num_rows, F]: level l's features are rows level_offsets[l] : level_offsets[l] + level_sizes[l]."""
        nn.init.uniform_(self.table, -init_scale, init_scale)
        # An integer buffer, so that module.half() / .bfloat16() cannot round the resolutions.
        self.register_buffer("level_res", torch.tensor(self.resolutions, dtype=torch.long), persistent=False)
        res_long = torch.tensor(self.resolutions, dtype=torch.long)
        # Per-axis index multipliers [3, L]: dense levels use strides (1, N+1, (N+1)^2) and add; hashed
        # levels multiply by the primes and xor. Multiplying by (prime mod T) gives the same value
        # mod T, since T is a power of two.
        dense_mul = torch.stack([torch.ones_like(res_long), res_long + 1, (res_long + 1) ** 2])
        hash_mul = (torch.tensor(HASH_PRIMES, dtype=torch.long) % hashmap_size)[:, None].expand(3, num_levels)
        is_dense = torch.arange(num_levels) < d
        # Index arithmetic in int32 halves the memory traffic of the big index tensors; it is exact
        # while every intermediate stays below 2^31: terms <= (max_res + 1) * T, plus the offsets.
        index_dtype = torch.int32 if (self.resolutions[-1] + 1) * hashmap_size + row < 2**31 else torch.int64
        axis_mul = torch.where(is_dense, dense_mul, hash_mul).to(index_dtype).contiguous()
        self.register_buffer("axis_mul", axis_mul, persistent=False)
        self.register_buffer("level_offsets", torch.tensor(offsets, dtype=index_dtype), persistent=False)
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
        # Moving to CUDA is the one moment tiny-cuda-nn may be imported (compiled CUDA extensions are
        # never imported for CPU tensors: docs/architecture.md). The trainer moves models before it builds
        # their optimizers, so the tcnn parameters created here are seen by the optimizer.
        if self.implementation != "torch" and self.tcnn_encoding is None and self.level_offsets.is_cuda:
            self._build_tcnn(self.level_offsets.device)
        return module

    def _build_tcnn(self, device: torch.device) -> None:
        try:
            import tinycudann as tcnn  # lazy on purpose (see _apply)
        except Exception as err:  # ImportError, or a failing extension load / build
            if self.implementation == "tcnn":
                raise ConfigError(f"hash-grid implementation 'tcnn' asked for, but tinycudann does not import ({err}); use 'auto' or 'torch'") from err
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
            if flat.shape[0] == 0:
                return flat.new_zeros(*lead, self.out_dim, dtype=torch.float32)
            # tcnn wants contiguous float32 in [0, 1] and returns half precision by default.
            out = self.tcnn_encoding(flat.clamp(0.0, 1.0).float().contiguous()).to(torch.float32)
        else:
            if self.implementation == "tcnn":
                raise ConfigError("hash-grid implementation 'tcnn' needs CUDA (move the module to a CUDA device); use 'auto' or 'torch' on a CPU")
            if self.table.numel() == 0:
                raise RuntimeError("the hash table is empty (tcnn parameters were dropped); cannot run the torch path")
            out = self._torch_forward(flat)
        return out.reshape(*lead, self.out_dim)

    def corner_indices_and_weights(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Rows of ``table`` and trilinear weights of the 8 cell corners at every level.

        positions: [N, 3] in [0, 1] -> (indices [8, L, N] int, weights [8, L, N] positions' dtype).
        Corner c = 4 * bx + 2 * by + bz, with b* in {0, 1} the offset along each axis. Corner and
        level are the outer dimensions on purpose: every elementwise op then runs over long
        contiguous rows of N (broadcasting over a tiny inner dimension is several times slower).
        """
        x = positions.clamp(0.0, 1.0).t()  # [3, N]
        if x.dtype in (torch.float16, torch.bfloat16):
            # Half precision cannot place points within a cell of a 2048-cell level (its spacing
            # near 1 is 1/2048 or coarser): do the cell arithmetic in float32.
            x = x.float()
        res = self.level_res.to(x.dtype)[:, None]  # [L, 1]
        scaled = x[:, None, :] * res  # [3, L, N]
        # Cells are clamped to the last one so that x = 1 lands on the far vertex (frac = 1).
        cell = torch.minimum(scaled.detach().floor(), res - 1).clamp_min(0.0)
        frac = scaled - cell  # [3, L, N]; carries the gradient w.r.t. positions

        mask = 2**self.log2_hashmap_size - 1
        mul = self.axis_mul[:, :, None]  # [3, L, 1]
        lead = cell.shape[1:]
        # Per axis, the index term of the lower and upper corner: [3, 2, L, N]. Masking is a no-op
        # for dense levels (their terms are < (N+1)^3 <= T) and is "mod T" for hashed ones.
        terms = torch.empty(3, 2, *lead, dtype=mul.dtype, device=mul.device)
        torch.mul(cell.to(mul.dtype), mul, out=terms[:, 0])
        torch.add(terms[:, 0], mul, out=terms[:, 1])
        terms.bitwise_and_(mask)
        terms[0] += self.level_offsets[:, None]
        tx, ty, tz = terms[0][:, None, None], terms[1][None, :, None], terms[2][None, None, :]
        n, d = x.shape[1], self.num_dense_levels
        idx = torch.empty(2, 2, 2, self.num_levels, n, dtype=terms.dtype, device=terms.device)
        torch.add(tx[..., :d, :] + ty[..., :d, :], tz[..., :d, :], out=idx[..., :d, :])
        torch.bitwise_xor(tx[..., d:, :] ^ ty[..., d:, :], tz[..., d:, :], out=idx[..., d:, :])

        w = torch.stack([1.0 - frac, frac], 1)  # [3, 2, L, N]
        weights = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]
        return idx.view(8, self.num_levels, n), weights.view(8, self.num_levels, n)

    def _torch_forward(self, positions: Tensor) -> Tensor:
        n, levels, feats = positions.shape[0], self.num_levels, self.features_per_level
        idx, weights = self.corner_indices_and_weights(positions)
        # Corners innermost ([L*N, 8]): the 8 rows a point reads are then adjacent in the gathered
        # tensor, which feeds the weighted sum below without a copy, and the backward scatters the
        # 8 corner gradients of one cell together (nearby table rows: fewer cache misses).
        idx = idx.view(8, levels * n).t().contiguous()
        w = weights.view(8, levels * n).t().contiguous()
        corner_feats = gather_rows(self.table, idx.view(-1)).view(levels * n, 8, feats)
        # Weighted sum of the 8 corners as a batched [1, 8] x [8, F] product per (level, point);
        # bmm is much faster than broadcast-multiply + sum.
        out = torch.bmm(w.to(corner_feats.dtype)[:, None, :], corner_feats)  # [L*N, 1, F]
        return out.view(levels, n, feats).transpose(0, 1).reshape(n, levels * feats)


def _gather_rows_impl(table: Tensor, idx: Tensor) -> Tensor:
    """table: [R, F], idx: [M] int -> table[idx] [M, F]."""
    view_dtype = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(table.shape[1] * table.element_size())
    if view_dtype is not None and table.is_contiguous() and table.shape[0] > 0:
        # A row of F=2 float32 is one 8-byte word: gathering words from a 1-D tensor is ~2.5x faster
        # on CPU than gathering 2-element rows of a 2-D one.
        words = table.view(view_dtype).view(-1).index_select(0, idx)
        return words.view(table.dtype).view(idx.shape[0], table.shape[1])
    return table.index_select(0, idx)


class _GatherRows(torch.autograd.Function):
    """table[idx] with a scatter-add backward that is itself differentiable (eikonal-style losses
    take gradients of gradients)."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.num_rows = table.shape[0]
        return _gather_rows_impl(table, idx)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        return _ScatterRows.apply(grad, idx, ctx.num_rows), None


class _ScatterRows(torch.autograd.Function):
    """zeros(R, F).index_add_(0, idx, values): the adjoint of _GatherRows."""

    @staticmethod
    def forward(ctx, values: Tensor, idx: Tensor, num_rows: int) -> Tensor:
        ctx.save_for_backward(idx)
        # index_add_ is several times slower with int32 indices on CPU: widen here, not in forward.
        idx = idx.long()
        complex_dtype = {torch.float32: torch.complex64, torch.float64: torch.complex128}.get(values.dtype)
        if values.shape[1] == 2 and complex_dtype is not None and values.device.type == "cpu":
            # Rows of two reals accumulated as one complex number: about 2x faster on CPU than
            # index_add_ over [M, 2] rows (one scalar add loop instead of a strided inner loop).
            out = torch.zeros(num_rows, dtype=complex_dtype, device=values.device)
            out.index_add_(0, idx, torch.view_as_complex(values.contiguous()))
            return torch.view_as_real(out)
        return values.new_zeros(num_rows, values.shape[1]).index_add_(0, idx, values)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        return _GatherRows.apply(grad.contiguous(), idx), None, None


def gather_rows(table: Tensor, idx: Tensor) -> Tensor:
    """table: [R, F], idx: [M] int32/int64 in [0, R) -> [M, F]; differentiable w.r.t. table to any order."""
    return _GatherRows.apply(table, idx)
