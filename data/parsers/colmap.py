"""COLMAP sparse reconstructions (``sparse/0``) with the images they were made from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from data.base import DataparserOutputs
from data.images import image_size, is_file
from data.normalize import normalize_points_or_cameras
from data.parsers.colmap_io import ColmapCamera, read_model, track_observations
from data.parsers.common import (
    ParserConfig,
    c2w_from_w2c,
    make_cameras,
    natural_key,
    raw_outputs,
    require_dir,
    warn_missing,
)
from data.splits import interval_splits
from recon.cameras import FISHEYE, NUM_DISTORTION, PERSPECTIVE
from recon.errors import DataError

SUPPORTED_MODELS = (
    "SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV",
    "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "OPENCV_FISHEYE",
)

# Where a sparse model is looked for, relative to the dataset folder, in this order.
MODEL_CANDIDATES = ("sparse/0", "colmap/sparse/0", "sparse", ".")

"""Fewer sparse points than this cannot give a robust content box; the cameras rule is used then."""


def camera_intrinsics(cam: ColmapCamera, source: Path) -> tuple[float, float, float, float, np.ndarray, int]:
    """(fx, fy, cx, cy, distortion [8], camera model) of a COLMAP camera in recon's terms
    (:mod:`recon.cameras`); DataError for the models recon does not model (FOV, thin-prism).

    Perspective models give OpenCV's (k1, k2, p1, p2, k3, k4, k5, k6), of which COLMAP's FULL_OPENCV
    is the whole; the fisheye models are Kannala-Brandt's (k1, k2, k3, k4): COLMAP's
    SIMPLE_RADIAL_FISHEYE and RADIAL_FISHEYE are OPENCV_FISHEYE with the higher terms zero."""
    p = np.asarray(cam.params, dtype=np.float64)
    k = np.zeros(NUM_DISTORTION)
    if cam.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
        f, cx, cy = p[:3]
        k[: len(p) - 3] = p[3:]
        return f, f, cx, cy, k, FISHEYE if cam.model.endswith("FISHEYE") else PERSPECTIVE
    if cam.model in ("PINHOLE", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE"):
        fx, fy, cx, cy = p[:4]
        k[: len(p) - 4] = p[4:]
        return fx, fy, cx, cy, k, FISHEYE if cam.model == "OPENCV_FISHEYE" else PERSPECTIVE
    raise DataError(
        f"unsupported COLMAP camera model {cam.model} (camera {cam.id}); supported: {', '.join(SUPPORTED_MODELS)}."
        " Undistort the images first (colmap image_undistorter) to get PINHOLE cameras",
        source,
    )


def find_model(data: Path, colmap_path: str | None) -> Path:
    """The folder holding the sparse model; DataError listing the places tried."""
    from data.parsers.colmap_io import model_files

    candidates = [colmap_path] if colmap_path else list(MODEL_CANDIDATES)
    for rel in candidates:
        folder = data / rel
        if folder.is_dir() and model_files(folder) is not None:
            return folder
    tried = ", ".join(f"{c}/" for c in candidates)
    raise DataError(
        f"no COLMAP sparse model (cameras.bin+images.bin or .txt) found; looked in {tried}", data
    )


@dataclass
class ColmapParserConfig(ParserConfig):
    """COLMAP sparse model (``sparse/0``, ``colmap/sparse/0`` or the folder itself) and ``images/``.

    Every 8th image (sorted by name, ``i % 8 == 0``) is held out as test (= val). Poses are oriented
    so the mean camera up is +z and normalised so the robust bounds of the sparse points fill
    [-1, 1]^3 (cameras-only rule if the model has no points)."""

    name: ClassVar[str] = "colmap"

    colmap_path: str | None = None
    """Sparse model folder relative to the data folder; None tries sparse/0, colmap/sparse/0, sparse and the folder itself."""
    images_path: str = "images"
    """Image folder relative to the data folder."""
    downscale_factor: int = 1
    """Read images from ``<images_path>_<factor>`` (e.g. images_4); intrinsics follow the actual image size."""
    orientation_method: Literal["up", "align", "none"] = "up"
    """Rotation applied to the poses: mean camera up to +z ("up"), also mean view to +y ("align"), or none."""
    center_method: Literal["poses", "focus", "none"] = "poses"
    """Origin before fitting the content box (matters only for the cameras-only rule)."""
    eval_every: int = 8
    """Hold out every N-th image (i % N == 0) for test/val."""

    def parse(self, data: Path) -> DataparserOutputs:
        require_dir(data)
        model_dir = find_model(data, self.colmap_path)
        cams, images, points = read_model(model_dir, with_tracks=self.num_train_views is not None)
        if not images:
            raise DataError("the COLMAP model has no registered images", model_dir)
        folder = data / (self.images_path if self.downscale_factor == 1 else f"{self.images_path}_{self.downscale_factor}")
        if not folder.is_dir():
            raise DataError(f"image folder {folder.name}/ not found next to the COLMAP model", data)

        ordered = sorted(images.values(), key=lambda im: natural_key(im.name))
        paths, missing, c2ws, intr, dists, models, sizes, model_sizes, frame_of_image = [], [], [], [], [], [], [], [], {}
        for im in ordered:
            path = folder / im.name
            if not is_file(path):
                missing.append(path)
                continue
            if im.camera_id not in cams:
                raise DataError(f"image {im.name!r} refers to camera {im.camera_id}, which is not in the model", model_dir)
            cam = cams[im.camera_id]
            fx, fy, cx, cy, k, model = camera_intrinsics(cam, model_dir)
            w, h = cam.width, cam.height
            if self.downscale_factor != 1:
                # Downscaled folders may round differently: scale by the real size, not 1/factor.
                w_img, h_img = image_size(path)
                sx, sy = w_img / cam.width, h_img / cam.height
                fx, cx, fy, cy, w, h = fx * sx, cx * sx, fy * sy, cy * sy, w_img, h_img
            q = np.asarray(im.qvec, dtype=np.float64)
            if not (np.isfinite(q).all() and np.isfinite(im.tvec).all()) or np.linalg.norm(q) < 1e-12:
                raise DataError(f"image {im.name!r} has an invalid pose (NaN, Inf or zero quaternion)", model_dir)
            c2ws.append(c2w_from_w2c(im.rotation(), np.asarray(im.tvec, dtype=np.float64)))
            intr.append((fx, fy, cx, cy))
            sizes.append((w, h))
            model_sizes.append((cam.width, cam.height))
            dists.append(k)
            models.append(model)
            frame_of_image[im.id] = len(paths)
            paths.append(path)
        if not paths:
            raise DataError(f"none of the {len(ordered)} images of the COLMAP model exist in {folder.name}/", data)
        warn_missing(missing, "COLMAP images", model_dir)

        c2w = np.stack(c2ws)
        intr_a, sizes_a = np.array(intr), np.array(sizes)
        cameras = make_cameras(c2w, *intr_a.T, sizes_a[:, 0], sizes_a[:, 1], distortion=np.stack(dists), camera_model=models, source=model_dir)
        pts = rgb = tracks = keypoints = None
        if points is not None and len(points):
            pts, rgb = points.xyz, points.rgb.astype(np.uint8)  # float64 until normalised
            if points.tracks:
                tracks, keypoints = track_observations(points, images, frame_of_image, model_dir)
                # Keypoints are in the model's camera pixels: scale them with the intrinsics
                # (COLMAP's origin is the image corner, so scaling is exact).
                keypoints *= (sizes_a / np.array(model_sizes))[tracks[:, 1]]
        outputs = raw_outputs(
            paths,
            cameras,
            interval_splits(len(paths), self.eval_every),
            points3d=pts,
            points3d_rgb=rgb,
            points3d_tracks=tracks,
            points3d_keypoints=keypoints,
            metadata={"format": self.name, "few_shot_protocol": "even", "colmap_model": str(model_dir)},
        )
        return normalize_points_or_cameras(outputs, c2w, pts, self.orientation_method, self.center_method)
