"""What ``ns-process-data`` starts from: a folder of photos, or a video.

Both end as ``images/frame_00001.<ext>``, ``frame_00002...`` in capture order (photos in natural
name order, so ``IMG_2`` comes before ``IMG_10`` for sequential matching). Photos are written
upright: a phone stores a portrait photo as landscape pixels plus an EXIF orientation tag, which
COLMAP and recon's image loaders ignore, so such images are rotated and re-encoded; the rest are
copied byte for byte (EXIF focal length kept for COLMAP's initial intrinsics).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from data.images import _open
from data.parsers.common import IMAGE_EXTENSIONS, list_images
from recon.engine.logging import make_progress
from recon.errors import DataError

MIN_IMAGES = 2
"""Structure from motion needs at least two views of the scene."""
COLMAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Formats COLMAP reads; other images (WebP) are converted to PNG."""
SHARPNESS_MAX_SIDE = 640
"""Frames are scored at this size: enough for motion blur to show, cheap for long clips."""


def frame_name(index: int, suffix: str) -> str:
    """nerfstudio's file names, counting from 1: ``frame_00001.png``."""
    return f"frame_{index + 1:05d}{suffix}"


def list_input_images(folder: Path) -> list[Path]:
    """Images directly in ``folder`` in natural name order; DataError when there are fewer than two."""
    if not folder.exists():
        raise DataError("input folder does not exist", folder)
    if not folder.is_dir():
        raise DataError("expected a folder of images, got a file (use `ns-process-data video` for a video)", folder)
    paths = list_images(folder)
    if not paths:
        raise DataError(f"no images found (looked for {' '.join(IMAGE_EXTENSIONS)} files directly in the folder)", folder)
    if len(paths) < MIN_IMAGES:
        raise DataError(f"found only {len(paths)} image; structure from motion needs at least {MIN_IMAGES} views of the scene", folder)
    return paths


def copy_images(paths: Sequence[Path], dest: Path, same_size: bool) -> list[str]:
    """Copy ``paths`` into ``dest`` as ``frame_00001...`` (upright, COLMAP-readable) and return the
    new names. ``same_size``: every image must have the first one's size (one shared camera).
    DataError naming the file for an unreadable image or a differing size."""
    dest.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    first: tuple[Path, tuple[int, int]] | None = None
    with make_progress(transient=True) as bar:
        task = bar.add_task("copying images", total=len(paths), rate="", info="")
        for i, src in enumerate(paths):
            img = _open(src)  # decodes fully: a corrupt file fails here, not inside COLMAP
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
            upright = ImageOps.exif_transpose(img) if orientation != 1 else img
            if first is None:
                first = (src, upright.size)
            elif same_size and upright.size != first[1]:
                (w, h), (w0, h0) = upright.size, first[1]
                raise DataError(
                    f"size {w}x{h} differs from {w0}x{h0} of {first[0].name}; images from several cameras"
                    " need --no-single-camera",
                    src,
                )
            suffix = src.suffix.lower()
            if suffix not in COLMAP_SUFFIXES:
                suffix = ".png"
            name = frame_name(i, ".jpg" if suffix == ".jpeg" else suffix)
            if upright is img and suffix == src.suffix.lower():
                shutil.copyfile(src, dest / name)
            elif suffix in (".jpg", ".jpeg"):
                upright.save(dest / name, quality=95, exif=upright.getexif())
            else:
                upright.save(dest / name)
            names.append(name)
            bar.advance(task)
    return names


@dataclass
class VideoFrames:
    """Frames taken from a video."""

    names: list[str]
    """Written frames, in time order."""
    num_decoded: int
    """Frames in the clip."""
    num_blurry: int
    """Chosen frames dropped as blurry."""
    threshold: float
    """The sharpness (variance of the Laplacian) below which a frame counted as blurry."""


def sharpness(frame: np.ndarray) -> float:
    """Variance of the Laplacian of a frame [H, W, 3] uint8 at most SHARPNESS_MAX_SIDE pixels wide
    (Pech-Pacheco et al. 2000, "Diatom autofocusing in brightfield microscopy: a comparative
    study", ICPR): low when motion blur or defocus removed the fine detail."""
    import cv2

    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    scale = SHARPNESS_MAX_SIDE / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _frames(video: Path, description: str):
    """Yield (index, frame [H, W, 3] uint8) of a video with a progress bar; DataError when ffmpeg
    cannot open it."""
    import imageio_ffmpeg

    if not video.is_file():
        raise DataError("video file does not exist" if not video.exists() else "expected a video file, got a folder", video)
    if video.stat().st_size == 0:
        raise DataError("video file is empty", video)
    reader = imageio_ffmpeg.read_frames(str(video))
    try:
        try:
            meta = next(reader)
        except (OSError, RuntimeError) as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            if any("does not contain any stream" in ln for ln in lines):
                raise DataError("the video has no video stream (no frames)", video) from None
            raise DataError(f"cannot read video ({lines[-1] if lines else exc})", video) from None
        w, h = meta["size"]
        estimate = meta.get("fps", 0) * meta.get("duration", 0)
        with make_progress(transient=True) as bar:
            task = bar.add_task(description, total=round(estimate) or None, rate="", info="")
            for i, raw in enumerate(reader):
                yield i, np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
                bar.advance(task)
    finally:
        reader.close()


def select_frames(scores: np.ndarray, num_frames_target: int, blur_fraction: float) -> tuple[list[int], int, float]:
    """Split a clip of len(scores) frames into ``num_frames_target`` equal parts and take the
    sharpest frame of each, dropping it as blurry when it is below ``blur_fraction`` times the
    clip's median sharpness. Returns (frame indices, number dropped as blurry, threshold)."""
    n = len(scores)
    k = min(num_frames_target, n)
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    best = [int(lo + np.argmax(scores[lo:hi])) for lo, hi in zip(bounds[:-1], bounds[1:])]
    threshold = blur_fraction * float(np.median(scores))
    keep = [i for i in best if scores[i] >= threshold]
    return keep, len(best) - len(keep), threshold


def extract_frames(video: Path, dest: Path, num_frames_target: int, blur_fraction: float) -> VideoFrames:
    """Write about ``num_frames_target`` frames spread evenly over ``video`` to ``dest`` as PNG
    (two decoding passes: sharpness of every frame, then the chosen ones)."""
    scores = np.array([sharpness(frame) for _, frame in _frames(video, "scoring video frames")])
    if len(scores) == 0:
        raise DataError("the video has no frames that could be decoded", video)
    chosen, blurry, threshold = select_frames(scores, num_frames_target, blur_fraction)
    if len(chosen) < MIN_IMAGES:
        raise DataError(
            f"only {len(chosen)} usable frame of {len(scores)} ({blurry} too blurry); structure from motion needs at least {MIN_IMAGES}",
            video,
        )
    dest.mkdir(parents=True, exist_ok=True)
    names, wanted = [], set(chosen)
    for i, frame in _frames(video, "extracting frames"):
        if i in wanted:
            names.append(frame_name(len(names), ".png"))
            Image.fromarray(frame).save(dest / names[-1])
            if len(names) == len(chosen):
                break
    return VideoFrames(names, len(scores), blurry, threshold)
