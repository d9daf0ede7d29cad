"""Image feature extractors for feature-space losses, and reading network weights from local files.

* :class:`PatchFeatures`: weight-free, the default wherever a paper uses a pretrained network:
  colours, their Sobel gradients and local contrast at two scales (1/2 and 1/4, the resolutions of
  VGG's pool1 and pool2 outputs).
* :class:`VGG19Features`: the first two blocks of VGG-19 (Simonyan & Zisserman, "Very Deep
  Convolutional Networks for Large-Scale Image Recognition", ICLR 2015) built here, outputs after
  pool1 and pool2, with ImageNet weights from a torchvision-format state dict the user has on
  disk (recon downloads nothing and does not depend on torchvision).
* :func:`masked_feature_l1`: the masked, channel-averaged L1 between two feature pyramids.

Images are [B, 3, H, W] in [0, 1]; masks [B, 1, H, W].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.errors import CheckpointError
from recon.geometry.local_models import IMAGENET_MEAN, IMAGENET_STD


def read_state_dict(path: str | Path, what: str) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or a torch ``.pth``/``.pt`` state dict (read with
    ``weights_only=True``: no code runs; a ``{"state_dict": ...}`` wrapper and ``module.``
    prefixes are removed). A one-line :class:`CheckpointError` naming the file otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
                raw = raw["state_dict"]
    except Exception as e:  # noqa: BLE001 -- corrupt/truncated file, wrong format, unsafe pickle...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(f"cannot read {what} ({type(e).__name__}: {first})", path) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{what} file does not hold a state dict", path)
    return {str(k).removeprefix("module."): v for k, v in raw.items() if isinstance(v, Tensor)}


VGG19_CONVS: tuple[tuple[int, int, int], ...] = (
    (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256), (16, 256, 256),
    (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512),
    (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512),
)
"""(index in torchvision's ``vgg19().features``, in channels, out channels) of every 3x3 convolution."""


class VGG19Features(nn.Module):
    """VGG-19's conv1_1..pool2 (frozen): images [B, 3, H, W] in [0, 1] -> [pool1 [B, 64, H/2, W/2],
    pool2 [B, 128, H/4, W/4]] after ImageNet normalisation. Built with random weights;
    :meth:`load_weights` loads a torchvision ``vgg19`` state dict (``features.{i}.weight|bias``)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleDict({str(i): nn.Conv2d(cin, cout, 3, padding=1) for i, cin, cout in VGG19_CONVS[:4]})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, path: str | Path) -> "VGG19Features":
        """Load a torchvision-format VGG-19 state dict; the whole convolutional part must be VGG-19's
        (a VGG-16, AlexNet or other file is a one-line :class:`CheckpointError`), classifier keys
        are ignored."""
        state = read_state_dict(path, "VGG-19 weights")
        convs = {k for k in state if k.startswith("features.")}
        expected = {f"features.{i}.{p}" for i, _, _ in VGG19_CONVS for p in ("weight", "bias")}
        if convs != expected:
            extra = sorted(convs - expected)[:3]
            missing = sorted(expected - convs)[:3]
            detail = f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}"
            raise CheckpointError(f"not a torchvision VGG-19 state dict ({detail})", path)
        for i, cin, cout in VGG19_CONVS:
            for p, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
                if tuple(state[f"features.{i}.{p}"].shape) != shape:
                    got = tuple(state[f"features.{i}.{p}"].shape)
                    raise CheckpointError(f"not a torchvision VGG-19 state dict (features.{i}.{p} is {got}, expected {shape})", path)
        self.convs.load_state_dict({f"{i}.{p}": state[f"features.{i}.{p}"] for i, _, _ in VGG19_CONVS[:4] for p in ("weight", "bias")})
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        x = (images - self.mean) / self.std
        c = self.convs
        pool1 = F.max_pool2d(F.relu(c["2"](F.relu(c["0"](x)))), 2)
        pool2 = F.max_pool2d(F.relu(c["7"](F.relu(c["5"](pool1)))), 2)
        return [pool1, pool2]


class PatchFeatures(nn.Module):
    """Weight-free features: at 1/2 and 1/4 resolution (box-averaged), each colour channel, its
    Sobel x and y gradients and its 3x3 local standard deviation (12 channels per scale)."""

    def __init__(self) -> None:
        super().__init__()
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        self.register_buffer("kernels", torch.stack([sobel, sobel.T])[:, None].repeat(3, 1, 1, 1), persistent=False)

    def _describe(self, x: Tensor) -> Tensor:
        pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
        grads = F.conv2d(pad, self.kernels.to(x), groups=3)
        mean = F.avg_pool2d(pad, 3, 1)
        var = (F.avg_pool2d(pad * pad, 3, 1) - mean * mean).clamp_min(0.0)
        return torch.cat([x, grads, torch.sqrt(var + 1e-6)], 1)

    def forward(self, images: Tensor) -> list[Tensor]:
        half = F.avg_pool2d(images, 2)
        return [self._describe(half), self._describe(F.avg_pool2d(half, 2))]


def masked_feature_l1(a: list[Tensor], b: list[Tensor], mask: Tensor) -> Tensor:
    """Sum over levels of ``sum_p M(p) sum_c |a - b| / (C sum_p M(p) + 1e-9)``: the L1 of feature
    maps a[l], b[l] [B, C, h, w] over the pixels where ``mask`` [B, 1, H, W] (resized to each
    level by nearest neighbour) is set (GeCoNeRF, Kwak et al. 2023, sec. 3.3)."""
    total = mask.new_zeros(())
    for fa, fb in zip(a, b):
        m = F.interpolate(mask.float(), size=fa.shape[-2:], mode="nearest")
        total = total + (m * (fa - fb).abs()).sum() / (fa.shape[1] * m.sum() + 1e-9)
    return total
