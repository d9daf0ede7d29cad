"""Distorted cameras to pinhole cameras, for methods that render whole images through a pinhole.

Ray methods trace each camera's exact distorted rays (:class:`recon.cameras.Cameras`). Methods
that rasterize primitives into a whole image (3DGS, CoherentGS, later primitive methods) project
through a pinhole, so their datamanagers take undistorted data: :func:`undistort_outputs` replaces
every distorted camera (radial-tangential, rational or fisheye) by a pinhole camera and every
per-pixel file of its frame (image, mask, depth, normal and instance maps) by the file resampled
into that camera, as nerfstudio's full-image datamanager and gsplat's COLMAP loader do.

The pinhole camera (:func:`undistortion`): the rays through the border of the distorted image are
intersected with the plane z = 1; the largest axis-aligned rectangle inside that outline (OpenCV's
``getOptimalNewCameraMatrix`` with ``alpha=0`` makes the same choice for perspective cameras, and
``cv2.fisheye.estimateNewCameraMatrixForUndistortRectify`` with ``balance=0`` for fisheye ones) is
mapped onto at most the original pixel count, keeping the ratio of the focal lengths, and a wide
fisheye is cut at :data:`MAX_HALF_ANGLE` from the axis. Rows and columns whose pixels would sample
outside the distorted image are then trimmed, so every pixel of the result is valid and no mask is
needed. Resampling uses recon's own projection (:meth:`Cameras.camera_to_pixels`), the model the
ray methods trace, and OpenCV's ``remap``: bilinear for colours (alpha-premultiplied for RGBA) and
normals, nearest for masks, depth and instance ids, so labels stay labels and depth gets no values
interpolated across an occlusion edge.

Cache: the resampled files are written once under ``$RECON_CACHE_DIR/undistorted/`` (default
``~/.cache/recon/undistorted/``), never into the dataset, named by a hash of the source file's path,
size and modification time, the distorted camera and :data:`CACHE_VERSION`; the pinhole camera of
each distorted camera is kept beside them as JSON. Resume, ``ns-eval``, ``ns-render``, ``ns-export``
and ``ns-viewer`` reparse the dataset and find everything there. A JPEG source is cached as a JPEG
of quality 95 and everything else losslessly (PNG, or ``.npy`` for depth and ids): at 12 MP a
cached PNG takes longer to decode (0.65 s) than the source JPEG plus the remap (0.16 + 0.14 s),
while the cached JPEG decodes in 0.14 s and differs from the lossless result by 43 dB PSNR
(benchmarks/bench_undistort.py). The folder can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from data.base import DataparserOutputs
from data.images import load_depth, load_image, load_instance, load_mask, load_normal
from recon.atomic import atomic_write_bytes
from recon.cameras import NUM_DISTORTION, PERSPECTIVE, Cameras
from recon.errors import DataError

CACHE_VERSION = 1
"""Bump when the resampling changes, so cached files are made again."""
MAX_HALF_ANGLE = 75.0
"""Degrees from the optical axis beyond which a wide fisheye is cut: a pinhole image reaching 90
degrees would be infinitely large, and at 75 degrees its border pixels already cover 14x the solid
angle of its centre pixels."""
_ROWS_PER_CHUNK = 256  # rows of a sampling map computed at once (bounds memory on large images)


@dataclass(frozen=True)
class Undistortion:
    """Where each pixel of a pinhole camera samples a distorted camera's image.

    source: the distorted camera (one camera); target: its pinhole replacement (one camera).
    map_x, map_y: [H', W'] float32 source pixel coordinates in OpenCV's convention (pixel centres at
    integers, recon's minus 0.5), as ``cv2.remap`` takes them.
    """

    source: Cameras
    target: Cameras
    map_x: np.ndarray
    map_y: np.ndarray

    def remap(self, array: np.ndarray, nearest: bool = False) -> np.ndarray:
        """Resample a source-sized array [H, W] or [H, W, C] into the target camera ([H', W'(, C)]):
        bilinear, or the nearest source pixel (any dtype, e.g. int32 ids)."""
        h, w = array.shape[:2]
        if nearest:
            # Pixel centres are at integers in this convention: rounding picks the nearest one.
            xi = np.clip(np.floor(self.map_x + 0.5), 0, w - 1).astype(np.intp)
            yi = np.clip(np.floor(self.map_y + 0.5), 0, h - 1).astype(np.intp)
            return array[yi, xi]
        # Border replication: the outermost valid pixels sample up to half a pixel outside the image.
        out = cv2.remap(array, self.map_x, self.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(*out.shape[:2], *array.shape[2:])


def _at_image_size(array: np.ndarray, plan: Undistortion, nearest: bool) -> np.ndarray:
    """A per-pixel array [h, w(, C)] of another size than its image (half-resolution depth) brought
    to the image's size first, so the image's sampling map applies: nearest pixel (any dtype), or
    bilinear. Done with plain resampling rather than a map of its own, so the worker threads run no
    torch code."""
    w, h = int(plan.source.width[0]), int(plan.source.height[0])
    if array.shape[:2] == (h, w):
        return array
    if not nearest:
        return cv2.resize(array, (w, h), interpolation=cv2.INTER_LINEAR)
    rows = np.minimum(((np.arange(h) + 0.5) * array.shape[0] / h).astype(np.intp), array.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * array.shape[1] / w).astype(np.intp), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]


def is_pinhole(camera: Cameras) -> bool:
    """Whether a single camera needs no undistortion."""
    return not camera.has_distortion


def _sampling_maps(source: Cameras, target: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV remap coordinates [H', W'] (float32) of the target's pixel centres in the source image."""
    h, w = int(target.height[0]), int(target.width[0])
    u = torch.arange(w, dtype=torch.float32) + 0.5
    x = (u - target.cx[0]) / target.fx[0]
    map_x = np.empty((h, w), np.float32)
    map_y = np.empty((h, w), np.float32)
    for r0 in range(0, h, _ROWS_PER_CHUNK):
        v = torch.arange(r0, min(h, r0 + _ROWS_PER_CHUNK), dtype=torch.float32) + 0.5
        y = (v - target.cy[0]) / target.fy[0]
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        rays = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3)
        uv = source.camera_to_pixels(rays, 0).reshape(len(v), w, 2) - 0.5
        map_x[r0 : r0 + len(v)] = uv[..., 0].numpy()
        map_y[r0 : r0 + len(v)] = uv[..., 1].numpy()
    return map_x, map_y


def _inner_rectangle(camera: Cameras) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) on the plane z = 1: the largest axis-aligned rectangle inside the outline of
    the rays through the image border, cut at :data:`MAX_HALF_ANGLE`."""
    w, h = int(camera.width[0]), int(camera.height[0])
    limit = math.tan(math.radians(MAX_HALF_ANGLE))

    def edge(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d = camera.pixel_directions(torch.zeros(len(u), dtype=torch.long), u, v)
        # Rays at or beyond 90 degrees have no point on z = 1: push them past the cut, on their side.
        return (d[:, :2] / d[:, 2:].clamp_min(1e-6)).clamp(-limit, limit)

    along_v = torch.linspace(0.0, h, 2 * h + 1)
    along_u = torch.linspace(0.0, w, 2 * w + 1)
    x0 = float(edge(torch.zeros_like(along_v), along_v)[:, 0].max())
    x1 = float(edge(torch.full_like(along_v, float(w)), along_v)[:, 0].min())
    y0 = float(edge(along_u, torch.zeros_like(along_u))[:, 1].max())
    y1 = float(edge(along_u, torch.full_like(along_u, float(h)))[:, 1].min())
    return x0, x1, y0, y1


def _trim(valid: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) bounds of a sub-rectangle of ``valid`` [H, W] whose border holds
    only True, found by repeatedly dropping the border row or column with the most False."""
    top, bottom, left, right = 0, valid.shape[0], 0, valid.shape[1]
    while top < bottom and left < right:
        bad = [
            (~valid[top, left:right]).sum(),
            (~valid[bottom - 1, left:right]).sum(),
            (~valid[top:bottom, left]).sum(),
            (~valid[top:bottom, right - 1]).sum(),
        ]
        side = int(np.argmax(bad))
        if bad[side] == 0:
            break
        if side == 0:
            top += 1
        elif side == 1:
            bottom -= 1
        elif side == 2:
            left += 1
        else:
            right -= 1
    return top, bottom, left, right


def _folded(w: int, h: int) -> DataError:
    return DataError(
        f"the lens distortion of a {w}x{h} camera leaves no region that a pinhole camera can show"
        " (it folds over within the image: are the distortion coefficients right?)"
    )


def undistortion(camera: Cameras) -> Undistortion:
    """The pinhole replacement of one distorted camera and its sampling maps (see the module docstring)."""
    from data.synthetic import torch_threads

    # Many small element-wise ops: one thread is as fast, and on a busy machine two can be 100x slower.
    with torch_threads(1):
        return _undistortion(camera)


def _undistortion(camera: Cameras) -> Undistortion:
    w, h = int(camera.width[0]), int(camera.height[0])
    fx, fy = float(camera.fx[0]), float(camera.fy[0])
    x0, x1, y0, y1 = _inner_rectangle(camera)
    if not (x1 > x0 and y1 > y0):
        raise _folded(w, h)
    scale = min(w / (fx * (x1 - x0)), h / (fy * (y1 - y0)))
    nfx, nfy = fx * scale, fy * scale
    nw, nh = max(1, int(nfx * (x1 - x0) + 1e-6)), max(1, int(nfy * (y1 - y0) + 1e-6))
    target = Cameras(camera.camera_to_worlds, nfx, nfy, -x0 * nfx, -y0 * nfy, nw, nh)
    map_x, map_y = _sampling_maps(camera, target)
    tol = 1e-3  # pixels: the rectangle's own edge maps onto the image border up to rounding
    valid = np.isfinite(map_x) & np.isfinite(map_y)
    valid &= (map_x >= -0.5 - tol) & (map_x <= w - 0.5 + tol) & (map_y >= -0.5 - tol) & (map_y <= h - 0.5 + tol)
    top, bottom, left, right = _trim(valid)
    # Invalid pixels inside a valid border mean the lens folds over within the image.
    if bottom - top < 2 or right - left < 2 or not valid[top:bottom, left:right].all():
        raise _folded(w, h)
    target = Cameras(camera.camera_to_worlds, nfx, nfy, -x0 * nfx - left, -y0 * nfy - top, right - left, bottom - top)
    return Undistortion(camera, target, map_x[top:bottom, left:right].copy(), map_y[top:bottom, left:right].copy())


# -- the cache -----------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$RECON_CACHE_DIR/undistorted`` (default ``~/.cache/recon/undistorted``)."""
    from data.synthetic import cache_root

    return cache_root() / "undistorted"


def _camera_record(camera: Cameras) -> list[float]:
    """What defines one camera's intrinsics (not its pose), exactly, as JSON numbers."""
    values = [camera.fx[0], camera.fy[0], camera.cx[0], camera.cy[0], camera.width[0], camera.height[0], camera.camera_model[0]]
    return [float(v) for v in values] + [float(v) for v in camera.distortion[0, :NUM_DISTORTION]]


def _hash(payload: object) -> str:
    return hashlib.sha256(json.dumps({"version": CACHE_VERSION, **payload}, sort_keys=True).encode()).hexdigest()[:32]  # type: ignore[dict-item]


def _file_key(kind: str, path: Path, camera: Cameras) -> str:
    try:
        stat = path.stat()
    except OSError:
        raise DataError(f"{kind} file not found", path) from None
    return _hash({"kind": kind, "path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "camera": _camera_record(camera)})


class _Plans:
    """Undistortions of the distinct cameras of one dataset, built once each, with their pinhole
    cameras read from (or written to) the cache so a fully cached dataset builds no map at all."""

    def __init__(self, root: Path):
        self.root = root
        self.plans: dict[str, Undistortion] = {}

    def key(self, camera: Cameras) -> str:
        return _hash({"camera": _camera_record(camera)})

    def plan(self, camera: Cameras) -> Undistortion:
        key = self.key(camera)
        if key not in self.plans:
            self.plans[key] = undistortion(camera)
        return self.plans[key]

    def target(self, camera: Cameras) -> tuple[float, float, float, float, int, int]:
        """(fx, fy, cx, cy, width, height) of the pinhole camera replacing ``camera``."""
        path = self.root / "cameras" / f"{self.key(camera)}.json"
        try:
            record = json.loads(path.read_text())
            return tuple(record["intrinsics"])  # type: ignore[return-value]
        except (OSError, ValueError, KeyError):
            pass  # absent or unreadable: compute it (again)
        t = self.plan(camera).target
        values = (float(t.fx[0]), float(t.fy[0]), float(t.cx[0]), float(t.cy[0]), int(t.width[0]), int(t.height[0]))
        _write(path, json.dumps({"distorted": _camera_record(camera), "intrinsics": values}).encode())
        return values


def _write(path: Path, payload: bytes) -> None:
    try:
        atomic_write_bytes(path, payload)
    except OSError as exc:
        raise DataError(f"cannot write the undistortion cache ({exc.strerror or exc}); point RECON_CACHE_DIR at a writable folder", path) from None


JPEG_QUALITY = 95
"""Quality of the cached copy of a JPEG source (see :func:`_encoded`)."""


def _encoded(array: np.ndarray, suffix: str) -> bytes:
    """``.png`` (level 1: fast, lossless) or ``.jpg`` bytes of uint8/uint16 [H, W] or RGB(A) [H, W, 3|4]."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA if array.shape[-1] == 4 else cv2.COLOR_RGB2BGR)
    options = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(suffix, array, options)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {suffix} image")
    return buf.tobytes()


def _image_suffix(source: Path) -> str:
    """A JPEG source is cached as JPEG: decoding the cached PNG of a 12 MP photo takes longer than
    decoding the JPEG and resampling it again (benchmarks/RESULTS.md), and one more generation at
    quality 95 changes it far less than training can resolve (measured there too). Everything else
    stays lossless."""
    return ".jpg" if source.suffix.lower() in (".jpg", ".jpeg") else ".png"


def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _check_size(array: np.ndarray, camera: Cameras, path: Path, what: str) -> None:
    expect = (int(camera.width[0]), int(camera.height[0]))
    if (array.shape[1], array.shape[0]) != expect:
        raise DataError(f"{what} is {array.shape[1]}x{array.shape[0]} but its camera says {expect[0]}x{expect[1]}", path)


def undistort_image(image: np.ndarray, plan: Undistortion) -> np.ndarray:
    """uint8 RGB(A) [H, W, 3|4] -> [H', W', 3|4]. RGBA is resampled premultiplied, so colours of
    transparent pixels (often black) do not bleed into the edges of what is visible."""
    if image.shape[-1] != 4:
        return plan.remap(image)
    rgba = image.astype(np.float32) / 255.0
    rgba[..., :3] *= rgba[..., 3:]
    out = plan.remap(rgba)
    alpha = out[..., 3:]
    out[..., :3] = np.where(alpha > 1e-6, out[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _undistorted_file(kind: str, src: Path, dst: Path, plan: Undistortion) -> None:
    """Resample one per-pixel file of a frame into the cache (``kind``: image, mask, depth, normal, instance)."""
    if kind == "image":
        image = load_image(src)
        _check_size(image, plan.source, src, "image")
        _write(dst, _encoded(undistort_image(image, plan), dst.suffix))
    elif kind == "mask":
        mask = load_mask(src).astype(np.uint8) * 255
        _write(dst, _encoded(plan.remap(_at_image_size(mask, plan, True), nearest=True), ".png"))
    elif kind == "depth":
        depth = load_depth(src, 1.0)  # raw values: the dataset's depth_unit_scale_factor still applies
        _write(dst, _npy(plan.remap(_at_image_size(depth, plan, True), nearest=True)))
    elif kind == "instance":
        ids = load_instance(src)
        _write(dst, _npy(plan.remap(_at_image_size(ids, plan, True), nearest=True)))
    elif kind == "normal":
        normals = plan.remap(_at_image_size(load_normal(src), plan, False))
        length = np.linalg.norm(normals, axis=-1, keepdims=True)
        normals = np.where(length > 0.5, normals / np.maximum(length, 1e-6), 0.0)
        # 16-bit PNG stores [0, 1]: unambiguous for load_normal, unlike a .npy of [-1, 1] values
        _write(dst, _encoded(np.round((normals * 0.5 + 0.5) * 65535.0).astype(np.uint16), ".png"))
    else:
        raise ValueError(f"unknown per-pixel file kind {kind!r}")


_CUES = (("image", "image_filenames", None), ("mask", "mask_filenames", ".png"), ("depth", "depth_filenames", ".npy"),
         ("normal", "normal_filenames", ".png"), ("instance", "instance_filenames", ".npy"))


def undistort_outputs(outputs: DataparserOutputs, cache: Path | None = None, workers: int | None = None) -> DataparserOutputs:
    """``outputs`` with every distorted camera replaced by its pinhole camera and the per-pixel files
    of those frames by undistorted copies in the cache; pinhole frames (and datasets without a
    distorted camera, returned as the same object) pass through unchanged. Work already in the
    cache is not redone. ``metadata["undistorted_frames"]`` counts the frames that were distorted.

    cache: the cache folder (default :func:`cache_dir`); workers: threads resampling files (default
    up to 4; OpenCV releases the GIL in remap and PNG encoding).
    """
    cameras = outputs.cameras
    if not cameras.has_distortion:
        return outputs
    root = Path(cache) if cache is not None else cache_dir()
    plans = _Plans(root)
    files = {attr: list(getattr(outputs, attr)) for _, attr, _ in _CUES if getattr(outputs, attr) is not None}
    intrinsics = torch.stack([cameras.fx, cameras.fy, cameras.cx, cameras.cy], -1).clone()
    sizes = torch.stack([cameras.width, cameras.height], -1).clone()
    jobs: list[tuple[str, Path, Path, Cameras]] = []
    undistorted = 0
    for i in range(len(cameras)):
        camera = cameras[i]
        if is_pinhole(camera):
            continue
        undistorted += 1
        fx, fy, cx, cy, w, h = plans.target(camera)
        intrinsics[i] = torch.tensor([fx, fy, cx, cy])
        sizes[i] = torch.tensor([w, h])
        for kind, attr, ext in _CUES:
            if attr not in files:
                continue
            src = Path(files[attr][i])
            key = _file_key(kind, src, camera)
            dst = root / key[:2] / f"{key}{_image_suffix(src) if kind == 'image' else ext}"
            files[attr][i] = dst
            if not dst.is_file():
                jobs.append((kind, src, dst, camera))
    if jobs:
        _run(jobs, plans, root, workers)
    pinhole = Cameras(
        cameras.camera_to_worlds, *intrinsics.unbind(-1), sizes[:, 0], sizes[:, 1],
        distortion=torch.zeros(len(cameras), NUM_DISTORTION), camera_model=torch.full((len(cameras),), PERSPECTIVE),
    )
    metadata = {**outputs.metadata, "undistorted_frames": undistorted}
    return replace(outputs, cameras=pinhole, metadata=metadata, **files)


def _run(jobs: list[tuple[str, Path, Path, Cameras]], plans: _Plans, root: Path, workers: int | None) -> None:
    """Resample the files of ``jobs`` into the cache with a progress bar; the maps are built here,
    once per distinct camera, before the threads start."""
    from recon.engine.logging import console, make_progress

    t0 = time.perf_counter()
    work = [(kind, src, dst, plans.plan(camera)) for kind, src, dst, camera in jobs]
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    bar = make_progress(transient=True)
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task("undistort", total=len(work), rate="", info="")
        futures = [pool.submit(_undistorted_file, *item) for item in work]
        try:
            for future in futures:
                future.result()
                bar.advance(task)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    frames = sum(kind == "image" for kind, *_ in jobs)
    console.print(f"undistorted {frames} images ({len(jobs)} files) to pinhole cameras in {time.perf_counter() - t0:.1f} s; cached in {root}")
