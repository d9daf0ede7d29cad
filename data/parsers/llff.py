"""LLFF forward-facing scenes: ``poses_bounds.npy`` and ``images[_N]/``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from data.base import DataparserOutputs
from data.images import image_size, load_array
from data.normalize import auto_orient_and_center, content_box_from_frustums, normalize_to_box
from data.parsers.colmap_io import read_points3d, track_pairs
from data.parsers.common import ParserConfig, is_rotation, list_images, make_cameras, raw_outputs, require_dir
from data.splits import interval_splits
from recon.errors import DataError
from recon.render.ndc import ndc_frame


def llff_to_opencv(poses: np.ndarray) -> np.ndarray:
    """LLFF camera-to-world [N, 3, 4] with columns (down, right, back, t) to OpenCV (right, down, forward, t)."""
    return np.stack([poses[:, :, 1], poses[:, :, 0], -poses[:, :, 2], poses[:, :, 3]], axis=-1)


def image_folders(data: Path) -> dict[int, Path]:
    """factor -> folder for ``images`` (1) and every ``images_N`` that holds images."""
    out: dict[int, Path] = {}
    for p in data.iterdir() if data.is_dir() else []:
        m = re.fullmatch(r"images(?:_(\d+))?", p.name)
        if m and p.is_dir() and list_images(p):
            out[int(m.group(1) or 1)] = p
    return out


@dataclass
class LLFFParserConfig(ParserConfig):
    """LLFF forward-facing capture: poses_bounds.npy ([N, 17]: 3x5 [R|t|hwf] per image in LLFF's
    (down, right, back) axes, then near/far depth bounds) and images sorted by name.

    Intrinsics are the pose file's focal at (H, W), scaled to the size of the images actually read;
    principal point at the image centre. Every 8th image (i % 8 == 0) is test (= val). Normalisation:
    cameras rotated so their mean up is +z and mean view +y, then the box holding every camera
    centre and every camera's frustum out to its own far bound is fitted into [-1, 1]^3. (NeRF's
    alternative, scaling by 1/(0.75 * min near) for NDC rays, would put the content far outside
    the unit box that recon's fields and exporters assume.) NeRF's NDC space is recorded instead as
    ``metadata["ndc"]`` (:func:`recon.render.ndc.ndc_frame`: the average pose of every camera, the
    near plane at 0.75 x the nearest bound), for ray methods with ``ray_space`` auto or ndc."""

    name: ClassVar[str] = "llff-data"

    downscale_factor: int | None = None
    """Read ``images_<factor>/`` (1 = ``images/``); None: ``images/`` if present, else images_8, else the smallest images_N."""
    orientation_method: Literal["up", "align", "none"] = "align"
    """Rotation applied to the poses ("align": mean up to +z and mean view direction to +y)."""
    eval_every: int = 8
    """Hold out every N-th image (i % N == 0) for test/val (NeRF's llffhold)."""
    load_points: bool = True
    """Also read sparse/0/points3D.{bin,txt} when present (same world frame as the poses)."""

    def parse(self, data: Path) -> DataparserOutputs:
        require_dir(data)
        pb_path = data / "poses_bounds.npy"
        if not pb_path.is_file():
            raise DataError("not an LLFF dataset: poses_bounds.npy not found", data)
        arr = load_array(pb_path)
        if arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.shape[1] != 17 or len(arr) == 0:
            raise DataError(f"poses_bounds.npy must be [N, 17], got shape {tuple(arr.shape)} of {arr.dtype}", pb_path)
        arr = arr.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(arr).all(1))
        if len(bad):
            raise DataError(f"row {bad[0]} (frame {bad[0]}) contains NaN or Inf", pb_path)

        folder = self._image_folder(data)
        images = list_images(folder)
        if len(images) != len(arr):
            raise DataError(f"poses_bounds.npy has {len(arr)} poses but {folder.name}/ has {len(images)} images", data)

        poses = arr[:, :15].reshape(-1, 3, 5)
        bounds = arr[:, 15:17]
        H, W, focal = poses[:, 0, 4], poses[:, 1, 4], poses[:, 2, 4]
        if (H <= 0).any() or (W <= 0).any() or (focal <= 0).any():
            raise DataError("non-positive H, W or focal in the hwf column", pb_path)
        if (bounds <= 0).any() or (bounds[:, 1] < bounds[:, 0]).any():
            raise DataError("near/far bounds must be positive with near <= far", pb_path)
        c2w = llff_to_opencv(poses[:, :, :4])
        bad = np.flatnonzero(~is_rotation(c2w[:, :, :3]))
        if len(bad):
            raise DataError(f"row {bad[0]}: the rotation part of the pose is not a rotation (columns not orthonormal)", pb_path)

        sizes = np.array([image_size(p) for p in images], dtype=np.float64)  # (w, h), headers only
        sx, sy = sizes[:, 0] / W, sizes[:, 1] / H
        cameras = make_cameras(c2w, focal * sx, focal * sy, sizes[:, 0] / 2, sizes[:, 1] / 2, sizes[:, 0], sizes[:, 1], source=pb_path)

        pts = rgb = tracks = None
        if self.load_points:
            for ext in (".bin", ".txt"):
                pfile = data / "sparse" / "0" / f"points3D{ext}"
                if pfile.is_file():
                    points = read_points3d(pfile, with_tracks=self.num_train_views is not None)
                    if len(points):
                        pts, rgb = points.xyz, points.rgb  # float64 until normalised
                        if points.tracks:
                            # No images.bin here: COLMAP numbers images 1..N in name order, the
                            # order of poses_bounds.npy (LLFF's imgs2poses sorts by name).
                            tracks = track_pairs(points, {i + 1: i for i in range(len(images))})
                    break

        outputs = raw_outputs(
            images,
            cameras,
            interval_splits(len(images), self.eval_every),
            points3d=pts,
            points3d_rgb=rgb,
            points3d_tracks=tracks,
            near=float(bounds.min()),
            far=float(bounds.max()),
            metadata={
                "format": self.name,
                "few_shot_protocol": "llff",
                "bounds": bounds.tolist(),  # per-image (near, far); normalised units once fitted below
                "forward_facing": True,
            },
        )
        orient = auto_orient_and_center(c2w, self.orientation_method, "poses")
        box = content_box_from_frustums(
            c2w, cameras.fx.numpy(), cameras.fy.numpy(), cameras.cx.numpy(), cameras.cy.numpy(),
            sizes[:, 0], sizes[:, 1], bounds[:, 1], transform=orient,
        )
        outputs = normalize_to_box(outputs, orient, box, c2w=c2w)
        outputs.metadata["bounds"] = (bounds * outputs.dataparser_scale).tolist()
        cams = outputs.cameras
        outputs.metadata["ndc"] = ndc_frame(
            cams.camera_to_worlds.double().numpy(), float(cams.fx[0]), float(cams.fy[0]), float(cams.width[0]), float(cams.height[0]),
            float(bounds.min()) * outputs.dataparser_scale,
        ).to_metadata()
        return outputs

    def _image_folder(self, data: Path) -> Path:
        found = image_folders(data)
        if self.downscale_factor is not None:
            if self.downscale_factor not in found:
                name = "images" if self.downscale_factor == 1 else f"images_{self.downscale_factor}"
                have = ", ".join(p.name for _, p in sorted(found.items())) or "none"
                raise DataError(f"{name}/ not found (image folders present: {have})", data)
            return found[self.downscale_factor]
        if not found:
            raise DataError("no image folder (looked for images/ and images_N/ with image files)", data)
        for factor in (1, 8):
            if factor in found:
                return found[factor]
        return found[min(found)]
