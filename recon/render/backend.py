"""Which implementation runs a backend operation (``docs/architecture.md``, "Rendering backend").

Every operation has a pure-PyTorch reference that runs everywhere. On CUDA tensors an optional
compiled library takes over when it imports: nerfacc for the packed volume-rendering scans (and,
in the Gaussian backend, gsplat / Warp). ``RECON_BACKEND`` forces a path: ``torch`` always runs
the reference; any other value leaves the automatic choice. Compiled libraries are imported
lazily and only for CUDA tensors: on a machine with nvcc but no GPU, importing them starts a JIT
build that fails with a misleading error.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from types import ModuleType

from torch import Tensor

BACKENDS = ("torch", "warp", "gsplat", "nerfacc", "auto")


def forced_backend() -> str:
    """The value of ``RECON_BACKEND`` ("auto" when unset); a ValueError names the allowed values."""
    value = os.environ.get("RECON_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"RECON_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    return value


@functools.cache
def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception as err:  # ImportError, or a failing extension build / load
        warnings.warn(f"{name} does not import ({err}); using the PyTorch path", stacklevel=3)
        return None


def nerfacc_for(tensor: Tensor) -> ModuleType | None:
    """The nerfacc module when ``tensor`` is on CUDA, nerfacc imports and RECON_BACKEND is not
    ``torch``; else None (the caller runs its PyTorch reference)."""
    if not tensor.is_cuda or forced_backend() == "torch":
        return None
    return _optional_module("nerfacc")


def gsplat_module(tensor: Tensor) -> ModuleType | None:
    """The gsplat module when ``tensor`` is on CUDA and gsplat imports, else None. gsplat is never
    imported for CPU tensors (on a machine with nvcc but no GPU its import starts a JIT build that
    fails with a misleading error)."""
    if not tensor.is_cuda:
        return None
    return _optional_module("gsplat")
