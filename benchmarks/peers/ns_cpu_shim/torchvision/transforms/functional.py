"""``resize`` only: what nerfstudio's cameras and viewer call (see ../../README.md)."""

import torch
import torch.nn.functional as F


def resize(image: torch.Tensor, size, antialias=None, **_unused) -> torch.Tensor:
    """Resize [..., C, H, W]; an int ``size`` sets the shorter side, as torchvision does."""
    h, w = image.shape[-2:]
    if isinstance(size, int) or len(size) == 1:
        s = size if isinstance(size, int) else size[0]
        size = (s, max(1, round(w * s / h))) if h <= w else (max(1, round(h * s / w)), s)
    batch = image.reshape(-1, *image.shape[-3:]).float()
    out = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False, antialias=bool(antialias))
    out = out.reshape(*image.shape[:-2], *out.shape[-2:])
    return out.round().clamp(0, 255).to(image.dtype) if not image.dtype.is_floating_point else out
