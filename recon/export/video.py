"""Videos, image sequences and colour maps for rendered outputs.

Videos are H.264 (libx264, yuv420p) MP4 files written through imageio's ffmpeg plugin, which uses
the ffmpeg binary shipped with ``imageio-ffmpeg``. All files are written atomically
(:func:`recon.atomic.atomic_write`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from recon.errors import ReconError
from recon.atomic import atomic_write

__all__ = ["VIDEO_SUFFIXES", "write_video", "write_frames", "colormap", "to_uint8_frame"]

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".mkv")


def to_uint8_frame(frame) -> np.ndarray:
    """frame: [H, W, 3] / [H, W, 1] / [H, W] uint8, or float in [0, 1] (numpy or torch) -> [H, W, 3] uint8."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    f = np.asarray(frame)
    if f.ndim == 2:
        f = f[:, :, None]
    if f.ndim != 3 or f.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a frame [H, W, 3], got shape {f.shape}")
    if f.shape[2] == 1:
        f = np.repeat(f, 3, axis=2)
    elif f.shape[2] == 4:
        f = f[:, :, :3]
    if f.dtype != np.uint8:
        f = np.clip(np.round(f.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(f)


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """yuv420p stores chroma at half resolution, so H.264 needs even sizes: replicate the last
    row/column of odd-sized frames rather than rescaling them."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(frames: Iterable, path: str | Path, fps: float = 30.0, quality: float = 8.0) -> Path:
    """Encode ``frames`` as an H.264 video at ``path`` (atomically). Returns the path.

    frames: iterable of [H, W, 3] uint8 (float [0, 1] and grey frames are converted), all the
        same size; consumed lazily, so a generator of renders never has to fit in memory.
    path: ``.mp4`` (or ``.mov`` / ``.mkv``); another suffix raises :class:`ReconError`.
    quality: imageio's 0-10 variable-bitrate quality (10 best).

    Odd widths/heights are padded by one replicated pixel to even sizes for yuv420p.
    """
    import imageio.v2 as iio

    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        got = f"'{path.suffix}'" if path.suffix else "no suffix"
        raise ReconError(f"cannot write a video with {got}; supported suffixes: {', '.join(VIDEO_SUFFIXES)}", path)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    with atomic_write(path) as tmp:
        writer = None
        size = None
        try:
            for i, frame in enumerate(frames):
                f = to_uint8_frame(frame)
                if size is None:
                    size = f.shape[:2]
                    writer = iio.get_writer(
                        str(tmp),
                        format="FFMPEG",
                        mode="I",
                        fps=fps,
                        codec="libx264",
                        pixelformat="yuv420p",
                        quality=quality,
                        # we pad to even sizes ourselves; imageio's default (16) would resize
                        macro_block_size=1,
                        ffmpeg_log_level="error",
                    )
                elif f.shape[:2] != size:
                    raise ValueError(f"frame {i} has size {f.shape[:2]}, the first frame {size}")
                writer.append_data(_pad_even(f))
            if writer is None:
                raise ValueError("write_video got no frames")
        finally:
            if writer is not None:
                writer.close()
    return path


def write_frames(frames: Iterable, folder: str | Path, start: int = 0) -> list[Path]:
    """Write frames as ``00000.png``, ``00001.png``, ... in ``folder`` (created; each file atomic).

    frames: iterable of [H, W, 3] uint8 (or float in [0, 1]). Returns the written paths.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames, start=start):
        p = folder / f"{i:05d}.png"
        with atomic_write(p) as tmp:
            Image.fromarray(to_uint8_frame(frame)).save(tmp, format="PNG")
        paths.append(p)
    return paths


# Turbo (Mikhailov 2019, "Turbo, an improved rainbow colormap for visualization", Google AI
# blog) as a degree-5 polynomial per channel in x in [0, 1]; coefficients c0..c5 of the
# published polynomial fit by Ruofei Du (2019). Maximum deviation from the reference lookup
# table is a few percent, fine for visualising depth.
_TURBO_COEFFS = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def _turbo(x: np.ndarray) -> np.ndarray:
    """x: [...] in [0, 1] -> [..., 3] RGB in [0, 1]."""
    powers = np.stack([x**k for k in range(6)], axis=-1)  # [..., 6]
    return np.clip(powers @ _TURBO_COEFFS.T, 0.0, 1.0)


def colormap(values, cmap: str = "turbo", vmin: float | None = None, vmax: float | None = None, mask=None):
    """Map scalar images (depth, accumulation, ...) to colours.

    values: [H, W, 1] or [H, W] (numpy or torch). mask: [H, W(, 1)] bool or None; masked-out and
    non-finite pixels are black and do not influence the automatic range.
    vmin/vmax: default to the min/max of the valid values.
    cmap: ``"turbo"`` or ``"gray"``.

    Returns [H, W, 3] float in [0, 1], a torch tensor on the input's device for torch input,
    otherwise a numpy float32 array.
    """
    is_torch = isinstance(values, torch.Tensor)
    device = values.device if is_torch else None
    v = values.detach().float().cpu().numpy() if is_torch else np.asarray(values, dtype=np.float32)
    if v.ndim == 3 and v.shape[-1] == 1:
        v = v[..., 0]
    if v.ndim != 2:
        raise ValueError(f"expected values [H, W, 1] or [H, W], got shape {tuple(v.shape)}")
    valid = np.isfinite(v)
    if mask is not None:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        valid &= m.reshape(v.shape).astype(bool)
    if vmin is None:
        vmin = float(v[valid].min()) if valid.any() else 0.0
    if vmax is None:
        vmax = float(v[valid].max()) if valid.any() else 1.0
    x = np.clip((np.where(valid, v, vmin) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    if cmap == "turbo":
        rgb = _turbo(x)
    elif cmap in ("gray", "grey"):
        rgb = np.repeat(x[..., None], 3, axis=-1)
    else:
        raise ValueError(f"unknown colormap {cmap!r}: use 'turbo' or 'gray'")
    rgb = np.where(valid[..., None], rgb, 0.0).astype(np.float32)
    return torch.from_numpy(rgb).to(device) if is_torch else rgb
