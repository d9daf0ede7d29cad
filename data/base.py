"""What every dataset parser returns.

A parser reads one dataset folder (every split at once) and returns a :class:`DataparserOutputs`:
cameras already in recon's convention (OpenCV, normalised world), the image paths and optional
per-image cues, the scene box, and which frames belong to which split. The normalisation from the
input poses is kept in ``dataparser_transform``/``dataparser_scale`` so exports can undo it:

    x_normalised = dataparser_scale * (dataparser_transform[:, :3] @ x_input + dataparser_transform[:, 3])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.atomic import atomic_write_bytes
from recon.cameras import Cameras

SPLITS = ("train", "val", "test")


@dataclass
class SceneBox:
    """Axis-aligned box [2, 3] (min row, max row) enclosing the content, in normalised world units."""

    aabb: Tensor

    @property
    def center(self) -> Tensor:
        return self.aabb.mean(0)

    @property
    def size(self) -> Tensor:
        return self.aabb[1] - self.aabb[0]


class NormalisedFrame:
    """Methods shared by every parser output that records its normalisation
    (``dataparser_transform`` [3, 4] and ``dataparser_scale``)."""

    dataparser_transform: Tensor
    dataparser_scale: float

    def transform_to_input(self, points: Tensor) -> Tensor:
        """Map normalised-world points [P, 3] back to the input coordinates."""
        R, t = self.dataparser_transform[:, :3].to(points), self.dataparser_transform[:, 3].to(points)
        return (points / self.dataparser_scale - t) @ R

    def transform_from_input(self, points: Tensor) -> Tensor:
        """Map input-coordinate points [P, 3] (e.g. a mesh made in the input poses' frame) to the normalised world."""
        R, t = self.dataparser_transform[:, :3].to(points), self.dataparser_transform[:, 3].to(points)
        return self.dataparser_scale * (points @ R.T + t)

    def save_transforms(self, path: Path) -> None:
        """Write ``dataparser_transforms.json`` (nerfstudio's layout: transform 3x4 + scale)."""
        payload = {"transform": self.dataparser_transform.tolist(), "scale": float(self.dataparser_scale)}
        atomic_write_bytes(path, json.dumps(payload, indent=2).encode())


@dataclass
class DataparserOutputs(NormalisedFrame):
    """Every frame of a dataset, normalised, with its split assignment.

    image_filenames: [N] paths to images (RGB or RGBA).
    cameras: N cameras (OpenCV convention, normalised world).
    splits: split name -> sorted frame indices into the lists above.
    scene_box: content bounds in normalised world units.
    alpha_color: [3] colour that RGBA images are composited onto, or None for RGB datasets.
    mask_filenames / depth_filenames / normal_filenames / instance_filenames: per-frame paths or None.
    depth_unit_scale_factor: multiply raw depth file values by this to get input-world units
        (the normalisation scale is applied on load, see :attr:`dataparser_scale`).
    depth_is_relative: True for monocular depth known only up to scale and shift.
    points3d / points3d_rgb: [P, 3] float32 sparse points (normalised world) and [P, 3] uint8 colours.
    points3d_tracks: [T, 2] int64 (point index, frame index) pairs, the frames that observed each
        point (SfM tracks); read only for a few-shot selection, else None.
    points3d_keypoints: [T, 2] float64 pixel coordinates (x, y) of each observation in
        ``points3d_tracks`` in its frame's image as loaded (distorted, pixel centres at +0.5), where
        the format records them (COLMAP images.bin/txt), else None; lets a few-shot selection
        re-triangulate the points from the training views alone.
    near / far: ray bounds in normalised units when the format provides them.
    dataparser_transform: [3, 4] rotation and translation applied to the input poses.
    dataparser_scale: scale applied after the transform.
    metadata: anything else a method may want (e.g. ``ground_truth_mesh`` path).
    """

    image_filenames: list[Path]
    cameras: Cameras
    splits: dict[str, list[int]]
    scene_box: SceneBox
    alpha_color: Tensor | None = None
    mask_filenames: list[Path] | None = None
    depth_filenames: list[Path] | None = None
    depth_unit_scale_factor: float = 1.0
    depth_is_relative: bool = False
    normal_filenames: list[Path] | None = None
    instance_filenames: list[Path] | None = None
    points3d: np.ndarray | None = None
    points3d_rgb: np.ndarray | None = None
    points3d_tracks: np.ndarray | None = None
    points3d_keypoints: np.ndarray | None = None
    near: float | None = None
    far: float | None = None
    dataparser_transform: Tensor = field(default_factory=lambda: torch.eye(4)[:3])
    dataparser_scale: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_filenames)

    def split(self, name: str) -> "DataparserOutputs":
        """The frames of one split, re-indexed from 0 (``splits`` then holds only that split)."""
        idx = self.splits.get(name, [])
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return replace(
            self,
            image_filenames=pick(self.image_filenames),
            cameras=self.cameras[list(idx)],
            splits={name: list(range(len(idx)))},
            mask_filenames=pick(self.mask_filenames),
            depth_filenames=pick(self.depth_filenames),
            normal_filenames=pick(self.normal_filenames),
            instance_filenames=pick(self.instance_filenames),
        )


def load_transforms(path: Path) -> tuple[Tensor, float]:
    """Read ``dataparser_transforms.json`` back: (transform [3, 4], scale)."""
    payload = json.loads(Path(path).read_text())
    return torch.tensor(payload["transform"], dtype=torch.float32), float(payload["scale"])

