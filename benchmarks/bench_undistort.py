"""Cost of undistorting a capture for the whole-image methods (data/undistort.py), per image.

For each image size, a few JPEG photos (smooth random texture, quality 90) behind one OPENCV
camera (k1 = -0.12, k2 = 0.03, small tangential terms, 60-degree field of view) are undistorted
into an empty cache and then again from the full cache; the stages of the first pass are timed one
by one on one image: decoding the JPEG, building the sampling map (once per distinct camera),
``cv2.remap``, encoding as PNG and as JPEG (quality 95, what the cache keeps for a JPEG source), and
decoding each (what every later run pays instead of decoding the source and remapping it); and the
PSNR of the cached JPEG against the lossless undistorted image.

    python -m benchmarks.bench_undistort [--sizes 1 4 12] [--images 4] [--no-record]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

import data.synthetic  # noqa: F401  (the first undistortion imports it; keep that out of the timings)
from benchmarks.common import append_results
from data.base import DataparserOutputs, SceneBox
from data.images import load_image
from data.undistort import _encoded, undistort_image, undistort_outputs, undistortion
from recon.cameras import Cameras

ASPECT = 4 / 3


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = (rng.random((height // 16, width // 16, 3)) * 255).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(megapixels: float, images: int, root: Path) -> dict:
    height = int(round(math.sqrt(megapixels * 1e6 / ASPECT)))
    width = int(round(height * ASPECT))
    folder = root / f"{megapixels}mp"
    folder.mkdir()
    paths = []
    for i in range(images):
        path = folder / f"img_{i:03d}.jpg"
        cv2.imwrite(str(path), _photo(width, height, i), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    f = 0.5 * width / math.tan(math.radians(30))
    cameras = Cameras(torch.eye(4)[:3].expand(images, 3, 4), f, f, width / 2, height / 2, width, height, distortion=[-0.12, 0.03, 0.001, -0.001])
    outputs = DataparserOutputs(paths, cameras, {"train": list(range(images)), "val": [], "test": []}, SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])))
    cache = root / f"cache-{megapixels}"

    t0 = time.perf_counter()
    undistorted = undistort_outputs(outputs, cache=cache)
    first = (time.perf_counter() - t0) / images
    t0 = time.perf_counter()
    undistort_outputs(outputs, cache=cache)
    cached = (time.perf_counter() - t0) / images

    decode_jpeg, image = _timed(lambda: load_image(paths[0]))
    build_map, plan = _timed(lambda: undistortion(cameras[0]), repeat=1)
    remap, out = _timed(lambda: undistort_image(image, plan))
    encode_png, png = _timed(lambda: _encoded(out, ".png"), repeat=2)
    encode_jpg, _ = _timed(lambda: _encoded(out, ".jpg"), repeat=2)
    (root / "cached.png").write_bytes(png)
    decode_png, _ = _timed(lambda: load_image(root / "cached.png"))
    decode_jpg, cached_pixels = _timed(lambda: load_image(undistorted.image_filenames[0]))
    mse = np.mean((cached_pixels.astype(np.float64) - out.astype(np.float64)) ** 2) / 255.0**2
    return {
        "image": f"{width}x{height}",
        "images": images,
        "first_s_per_image": first,
        "cached_s_per_image": cached,
        "decode_jpeg_s": decode_jpeg,
        "map_s_per_camera": build_map,
        "remap_s": remap,
        "encode_png_s": encode_png,
        "decode_png_s": decode_png,
        "encode_jpg_s": encode_jpg,
        "decode_jpg_s": decode_jpg,
        "png_mb": len(png) / 1e6,
        "jpg_mb": undistorted.image_filenames[0].stat().st_size / 1e6,
        "jpg_psnr_db": -10 * math.log10(mse),
        "pinhole": f"{int(undistorted.cameras.width[0])}x{int(undistorted.cameras.height[0])}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1.0, 4.0, 12.0], help="image sizes in megapixels")
    parser.add_argument("--images", type=int, default=4, help="images per size (one shared camera)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(mp, args.images, Path(tmp)) for mp in args.sizes]
    columns = list(rows[0])
    print(append_results("Undistortion for whole-image methods, per image (benchmarks/bench_undistort.py)", columns, rows, record=not args.no_record))


if __name__ == "__main__":
    main()
