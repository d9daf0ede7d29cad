"""``save_image`` only: what nerfstudio's pipeline calls (see ../README.md)."""

import numpy as np
import torch
from PIL import Image


def save_image(tensor: torch.Tensor, fp, **_unused) -> None:
    """Write a [C, H, W] (or [1, C, H, W]) image in [0, 1] to ``fp``."""
    image = tensor.detach().cpu().float()
    if image.dim() == 4:
        image = image[0]
    array = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else np.ascontiguousarray(array)).save(fp)
