"""Image quality metrics: PSNR, SSIM and LPIPS (AlexNet).

All functions take channel-last images in [0, 1]: ``[H, W, 3]`` or batched ``[B, H, W, 3]`` (PSNR
accepts any leading dims) and return one value per image. They are plain torch, differentiable,
and run on whatever device the inputs are on.

LPIPS needs weights that recon never downloads; see :func:`load_lpips` for where it looks and
:class:`LPIPS` for the expected key names. Without a weights file evaluation omits LPIPS.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.errors import CheckpointError
from recon.features import read_state_dict

__all__ = [
    "psnr",
    "ssim",
    "LPIPS",
    "load_lpips",
    "LPIPS_ENV_VAR",
    "DEFAULT_LPIPS_PATH",
]


def _check_pair(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.ndim < 3 or pred.shape[-1] != 3:
        raise ValueError(f"expected images [..., H, W, 3], got {tuple(pred.shape)}")


# ---------------------------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------------------------
def psnr(pred: Tensor, gt: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB for data range 1.

    pred, gt: [..., H, W, 3] in [0, 1]. Returns [...] (a 0-d tensor for a single image).
    Identical images give +inf, like ``skimage.metrics.peak_signal_noise_ratio``.
    """
    _check_pair(pred, gt)
    mse = ((pred - gt) ** 2).mean(dim=(-3, -2, -1))
    return -10.0 * torch.log10(mse)


# ---------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------
def _gaussian_kernel_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device, center: float | None = None) -> Tensor:
    """Normalised 1-D Gaussian weights at taps 0..size-1, centred on ``center`` ((size - 1) / 2 by default)."""
    x = torch.arange(size, dtype=torch.float64) - ((size - 1) / 2.0 if center is None else center)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(
    pred: Tensor,
    gt: Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
) -> Tensor:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004, "Image quality assessment:
    from error visibility to structural similarity", IEEE TIP).

    pred, gt: [H, W, 3] or [B, H, W, 3] (any leading dims) in [0, 1]. Returns [] or [B, ...].

    Local statistics use an 11x11 Gaussian window (sigma 1.5), population (biased) covariances,
    C1 = (K1 L)^2, C2 = (K2 L)^2, and the SSIM map is averaged over channels and over the pixels
    whose window lies fully inside the image ("valid" filtering, as in the NeRF / mip-NeRF
    evaluation code). This equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)`` exactly: skimage
    filters with reflected borders but then crops ``(win_size - 1) // 2`` = 5 pixels from every
    side before averaging, which leaves precisely the valid-window pixels. The only deviation is
    that local variances are clamped at 0 to absorb float32 cancellation (mip-NeRF does the same).

    The Gaussian filter is separable, so it runs as two depthwise conv2d passes (vectorised over
    batch and channels; differentiable; CPU or CUDA).
    """
    _check_pair(pred, gt)
    h, w = pred.shape[-3], pred.shape[-2]
    if h < window_size or w < window_size:
        raise ValueError(f"SSIM needs images of at least {window_size}x{window_size}, got {h}x{w}")
    lead = pred.shape[:-3]
    # [N, 3, H, W] with N the flattened leading dims.
    x = pred.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    y = gt.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    if not x.is_floating_point():
        x, y = x.float(), y.float()
    c = x.shape[1]
    g = _gaussian_kernel_1d(window_size, sigma, x.dtype, x.device)
    gx = g.view(1, 1, 1, window_size).expand(c, 1, 1, window_size)
    gy = g.view(1, 1, window_size, 1).expand(c, 1, window_size, 1)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z, gx, groups=c), gy, groups=c)

    # Filter all five moment images in one batched call.
    n = x.shape[0]
    stats = blur(torch.cat([x, y, x * x, y * y, x * y], dim=0))
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(n, dim=0)
    var_x = (e_xx - mu_x * mu_x).clamp_min(0.0)
    var_y = (e_yy - mu_y * mu_y).clamp_min(0.0)
    cov = e_xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=(1, 2, 3)).reshape(lead)


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------
LPIPS_ENV_VAR = "RECON_LPIPS_WEIGHTS"
DEFAULT_LPIPS_PATH = Path("~/.cache/recon/lpips_alex.safetensors")

# (in_channels, out_channels, kernel, stride, padding) of AlexNet's five conv layers, keyed by their
# index in torchvision's ``alexnet().features`` so that its state-dict names can be used unchanged.
_ALEX_CONVS: dict[int, tuple[int, int, int, int, int]] = {
    0: (3, 64, 11, 4, 2),
    3: (64, 192, 5, 1, 2),
    6: (192, 384, 3, 1, 1),
    8: (384, 256, 3, 1, 1),
    10: (256, 256, 3, 1, 1),
}
_LPIPS_CHANNELS = (64, 192, 384, 256, 256)
# Per-channel affine map applied to inputs in [-1, 1] before AlexNet (the LPIPS "scaling layer").
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity with an AlexNet backbone (Zhang, Isola, Efros,
    Shechtman & Wang 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
    Metric", CVPR), "lin" variant, version 0.1.

    Pipeline for an image pair in [0, 1]: map to [-1, 1]; the scaling layer ``(x - shift) / scale``;
    AlexNet (Krizhevsky et al. 2012) conv stages, taking the ReLU outputs after conv1..conv5 (with
    3x3/stride-2 max-pools before conv2, conv3 and after conv5 as in ``torchvision.models.alexnet``);
    each feature map is unit-normalised along channels; squared differences are weighted per
    channel by a learned 1x1 convolution without bias (``lin0..lin4``), averaged spatially and
    summed over the five layers.

    State-dict keys (``LPIPS().state_dict()``; this is what the ``.safetensors`` file must hold)::

        features.0.weight  [64, 3, 11, 11]   features.0.bias  [64]
        features.3.weight  [192, 64, 5, 5]   features.3.bias  [192]
        features.6.weight  [384, 192, 3, 3]  features.6.bias  [384]
        features.8.weight  [256, 384, 3, 3]  features.8.bias  [256]
        features.10.weight [256, 256, 3, 3]  features.10.bias [256]
        lin0.weight [1, 64, 1, 1]   lin1.weight [1, 192, 1, 1]   lin2.weight [1, 384, 1, 1]
        lin3.weight [1, 256, 1, 1]  lin4.weight [1, 256, 1, 1]

    The ``features.*`` names are those of torchvision's AlexNet. :meth:`load_weights` also accepts
    the names used by the reference ``lpips`` package's combined model (``net.slice{k}.{i}.*`` for
    the backbone, ``lin{k}.model.1.weight`` for the heads, ``scaling_layer.*`` ignored) and a merge
    of a torchvision AlexNet state dict with the reference ``alex.pth`` head weights
    (``classifier.*`` ignored).

    A freshly constructed model has random weights (non-negative heads, so distances are >= 0):
    useful for tests only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ModuleDict(
            {str(i): nn.Conv2d(cin, cout, k, stride=s, padding=p) for i, (cin, cout, k, s, p) in _ALEX_CONVS.items()}
        )
        for k, ch in enumerate(_LPIPS_CHANNELS):
            lin = nn.Conv2d(ch, 1, 1, bias=False)
            with torch.no_grad():
                lin.weight.uniform_(0.0, 1.0 / ch)
            self.add_module(f"lin{k}", lin)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)  # a fixed metric; gradients still flow to the inputs
        self.eval()

    def _taps(self, x: Tensor) -> list[Tensor]:
        """x: [N, 3, H, W] scaled input -> the five ReLU feature maps."""
        f = self.features
        out = []
        x = F.relu(f["0"](x))
        out.append(x)
        x = F.relu(f["3"](F.max_pool2d(x, 3, 2)))
        out.append(x)
        x = F.relu(f["6"](F.max_pool2d(x, 3, 2)))
        out.append(x)
        x = F.relu(f["8"](x))
        out.append(x)
        x = F.relu(f["10"](x))
        out.append(x)
        return out

    def forward(self, pred: Tensor, gt: Tensor) -> Tensor:
        """pred, gt: [H, W, 3] or [B, H, W, 3] in [0, 1]. Returns [] or [B] distances (lower is closer)."""
        _check_pair(pred, gt)
        h, w = pred.shape[-3], pred.shape[-2]
        lead = pred.shape[:-3]
        p = pred.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float()
        g = gt.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float()
        n = p.shape[0]
        x = torch.cat([p, g], dim=0) * 2.0 - 1.0
        x = (x - self.shift) / self.scale
        total = x.new_zeros(n)
        for k, feat in enumerate(self._taps(x)):
            # Unit-normalise each spatial feature vector; eps guards all-zero ReLU outputs.
            feat = feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            diff = (feat[:n] - feat[n:]) ** 2
            total = total + getattr(self, f"lin{k}")(diff).mean(dim=(1, 2, 3))
        return total.reshape(lead)

    # -- weights -------------------------------------------------------------------------------
    @staticmethod
    def _canonical_key(key: str) -> str | None:
        """Map accepted key spellings to this module's names; None for keys to ignore."""
        if key.startswith("module."):
            key = key[len("module.") :]
        parts = key.split(".")
        if key.startswith(("scaling_layer.", "classifier.", "shift", "scale")):
            return None
        if parts[0] == "net" and len(parts) == 4 and parts[1].startswith("slice"):
            return f"features.{parts[2]}.{parts[3]}"  # lpips package: net.slice2.3.weight
        if parts[0].startswith("lin") and len(parts) == 4 and parts[1] == "model":
            return f"{parts[0]}.{parts[3]}"  # lpips package: lin0.model.1.weight
        return key

    def load_weights(self, path: str | Path) -> "LPIPS":
        """Load weights from a ``.safetensors`` file or a torch ``.pth``/``.pt`` state dict.

        ``.pth`` files are read with ``torch.load(weights_only=True)`` (no code execution).
        Raises :class:`CheckpointError` naming the file if it cannot be read or lacks keys.
        """
        path = Path(path)
        raw = read_state_dict(path, "LPIPS weights")
        state: dict[str, Tensor] = {}
        for k, v in raw.items():
            ck = self._canonical_key(str(k))
            if ck is not None:
                state[ck] = v
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
            raise CheckpointError(f"LPIPS weights miss {len(missing)} keys ({shown})", path)
        for k in own:
            if tuple(state[k].shape) != tuple(own[k].shape):
                raise CheckpointError(
                    f"LPIPS weight {k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}", path
                )
        self.load_state_dict({k: state[k] for k in own}, strict=True)
        return self

    def save_weights(self, path: str | Path) -> None:
        """Write the weights as ``.safetensors`` under the key names above (atomically)."""
        from safetensors.torch import save_file

        from recon.atomic import atomic_write

        with atomic_write(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))


def load_lpips(weights_path: str | Path | None = None, device: torch.device | str | None = None) -> LPIPS | None:
    """Build LPIPS-Alex from a local weights file, or return None when there is none.

    Lookup order: ``weights_path``; else the environment variable ``RECON_LPIPS_WEIGHTS``; else
    ``~/.cache/recon/lpips_alex.safetensors``. Nothing is ever downloaded. A path given explicitly
    (argument or environment variable) that does not exist raises :class:`CheckpointError` (a typo
    should not silently drop a metric); a missing default file returns None so evaluation just
    omits LPIPS. See :class:`LPIPS` for accepted formats and key names.
    """
    explicit = weights_path if weights_path is not None else os.environ.get(LPIPS_ENV_VAR) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            source = "weights_path" if weights_path is not None else LPIPS_ENV_VAR
            raise CheckpointError(f"LPIPS weights file not found (from {source})", path)
    else:
        path = DEFAULT_LPIPS_PATH.expanduser()
        if not path.is_file():
            return None
    model = LPIPS().load_weights(path)
    if device is not None:
        model = model.to(device)
    return model

