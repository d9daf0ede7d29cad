"""Loaded at interpreter start by ns_cpu_shim.pth in the scratch venv (see README.md): when (and
only when) torchmetrics is imported, it is told that torchvision is absent (the stand-in has only
two functions) and its LPIPS is replaced by a NaN-returning module."""

import importlib.abc
import importlib.util
import os
import sys



class _NoLPIPS:
    """Stands in for LearnedPerceptualImagePatchSimilarity: no network, no download; returns NaN."""

    def __new__(cls, *args, **kwargs):
        import torch

        class NoLPIPS(torch.nn.Module):
            def forward(self, *inputs, **_kw):
                return torch.tensor(float("nan"))

        return NoLPIPS()


PATCHES = {
    "torchmetrics.utilities.imports": {"_TORCHVISION_AVAILABLE": False},
    "torchmetrics.image.lpip": {"LearnedPerceptualImagePatchSimilarity": _NoLPIPS},
}
"""Module -> attributes set right after the module's own code has run."""


class _PatchTorchmetrics(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.busy = False

    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES or self.busy:
            return None
        self.busy = True  # find the real module without finding ourselves
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def patched(module):
            exec_module(module)
            for attr, value in PATCHES[name].items():
                setattr(module, attr, value)

        spec.loader.exec_module = patched
        return spec


def install() -> None:
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    if not any(isinstance(f, _PatchTorchmetrics) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchTorchmetrics())
