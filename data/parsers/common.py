"""What every format parser shares: the config base class and small validated readers.

A parser config is a dataclass (its fields become CLI flags through tyro, its field docstrings
the ``--help`` text) whose :meth:`ParserConfig.load` reads a dataset folder and returns a
normalised :class:`~data.base.DataparserOutputs` with every split. Subclasses implement
:meth:`ParserConfig.parse`; ``load`` adds the checks common to all formats and the few-shot
selection (:func:`data.splits.apply_few_shot`) when ``num_train_views`` is set, then a block's
selection (:func:`data.splits.apply_block`) when ``train_views`` or ``points_box`` is set.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from data.base import DataparserOutputs, SceneBox
from data.splits import apply_block, apply_few_shot
from recon.cameras import MAX_IMAGE_SIDE, Cameras
from recon.config import DataParserConfig
from recon.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}



@dataclass
class ParserConfig(DataParserConfig):
    """Base of recon's dataset-format configs (``num_train_views`` is inherited)."""

    name: ClassVar[str] = ""
    """Registry / sub-command name of the format."""

    def load(self, data: Path | None) -> DataparserOutputs:
        """Read the dataset at ``data`` into normalised outputs with train/val/test splits."""
        data = check_dataset_path(data)
        outputs = self.parse(data)
        check_normalised(outputs, data)
        if self.num_train_views is not None:
            protocol = outputs.metadata.get("few_shot_protocol", "even")
            outputs = apply_few_shot(outputs, self.num_train_views, protocol, self.few_shot_points)
        return apply_block(outputs, self.train_views, self.points_box)

    def parse(self, data: Path) -> DataparserOutputs:
        """Format-specific reading; ``data`` exists. Overridden by every format."""
        raise NotImplementedError


def check_normalised(outputs: DataparserOutputs, data: Path) -> None:
    """DataError when normalising the input overflowed: input coordinates so large (or so spread)
    that the normalised cameras, points, scene box or the recorded transform are not finite."""
    values = {
        "camera poses": outputs.cameras.camera_to_worlds,
        "normalisation transform": outputs.dataparser_transform,
        "scene box": outputs.scene_box.aabb,
        "normalisation scale": torch.tensor(float(outputs.dataparser_scale)),
        "sparse points": torch.as_tensor(outputs.points3d) if outputs.points3d is not None else torch.zeros(0),
    }
    for what, value in values.items():
        if not torch.isfinite(value).all():
            raise DataError(f"not finite after normalisation ({what}): input coordinates too large or too far apart", data)
    if not outputs.dataparser_scale > 0:
        raise DataError(f"normalisation scale {outputs.dataparser_scale} is not positive: input coordinates too large or too far apart", data)


# -- paths ------------------------------------------------------------------------------------
def check_dataset_path(data: Path | str | None) -> Path:
    """``data`` as a Path that exists (folder, or a file some formats accept), else DataError."""
    if data is None:
        raise DataError("no dataset path given (pass --data PATH)")
    data = Path(data).expanduser()
    if not data.exists():
        raise DataError("dataset folder does not exist", data)
    if data.is_dir() and not any(data.iterdir()):
        raise DataError("dataset folder is empty", data)
    return data


def require_dir(data: Path) -> Path:
    if not data.is_dir():
        raise DataError("expected a dataset folder, got a file", data)
    return data


def natural_key(s: str | Path) -> list:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(s))]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, naturally sorted (hidden files skipped)."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def warn_missing(paths: list[Path], what: str, source: Path) -> None:
    """One warning listing every skipped file (not one per file: datasets have thousands)."""
    if not paths:
        return
    shown = ", ".join(str(p) for p in paths[:20]) + (f", ... ({len(paths) - 20} more)" if len(paths) > 20 else "")
    warnings.warn(f"{source}: skipping {len(paths)} {what} whose image file is missing: {shown}", stacklevel=3)


# -- validated readers -----------------------------------------------------------------------
def read_json(path: Path) -> Any:
    """Parsed JSON; DataError("invalid JSON: ...") naming the file on a syntax error."""
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc}", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read file: {exc}", path) from None
    except (ValueError, RecursionError) as exc:  # an integer of more than 4300 digits; nesting too deep
        raise DataError(f"invalid JSON: {str(exc).splitlines()[0][:80]}", path) from None


def numeric_array(value: Any, path: Path, what: str) -> np.ndarray:
    """``value`` (nested JSON lists) as a float64 array; DataError naming the file otherwise."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{what} is not a numeric array", path) from None


ROTATION_TOLERANCE = 1e-2
"""Largest |R^T R - I| entry of a pose's rotation part (the files hold rotations, rounded)."""


def is_rotation(rot: np.ndarray) -> np.ndarray:
    """[...] bool: whether each [..., 3, 3] matrix has orthonormal columns, to ``ROTATION_TOLERANCE``."""
    rot = np.asarray(rot, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.abs(np.swapaxes(rot, -1, -2) @ rot - np.eye(3)).max(axis=(-2, -1))
    return err <= ROTATION_TOLERANCE


def check_pose(matrix: Any, path: Path, index: int, key: str = "transform_matrix") -> np.ndarray:
    """A 4x4 or 3x4 pose as float64 [3, 4]; DataError naming file and frame otherwise."""
    arr = numeric_array(matrix, path, f"frame {index}: {key}")
    if arr.shape not in ((4, 4), (3, 4)):
        raise DataError(f"frame {index}: {key} must be 4x4 (or 3x4), got shape {'x'.join(map(str, arr.shape)) or 'scalar'}", path)
    if not np.isfinite(arr).all():
        raise DataError(f"frame {index}: {key} contains NaN or Inf", path)
    if not is_rotation(arr[:3, :3]):
        raise DataError(f"frame {index}: the rotation part of {key} is not a rotation (columns not orthonormal)", path)
    return arr[:3, :4].copy()


def number(value: Any, path: Path, what: str, positive: bool = False) -> float:
    """A finite float from JSON (and > 0 with ``positive``), else DataError."""
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{what} must be a number, got {str(value)[:40]!r}", path) from None
    if not math.isfinite(out):
        raise DataError(f"{what} must be finite, got {value!r}", path)
    if positive and not out > 0:
        raise DataError(f"{what} must be positive, got {value!r}", path)
    return out


def focal_from_fov(size: float, angle: Any, path: Path, what: str) -> float:
    """Focal length in pixels of an image ``size`` pixels across whose field of view is ``angle``
    radians (JSON, 0 < angle < pi), else DataError."""
    angle = number(angle, path, what)
    if not 0 < angle < math.pi:
        raise DataError(f"{what} must be a field of view between 0 and pi radians, got {angle!r}", path)
    return 0.5 * size / math.tan(0.5 * angle)


def opengl_to_opencv_np(c2w: np.ndarray) -> np.ndarray:
    """OpenGL/Blender camera-to-world [..., 3, 4] to OpenCV (flip camera y and z); numpy twin of
    :func:`recon.cameras.opengl_to_opencv`, kept in float64 until normalisation."""
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[..., :3, 1:3] *= -1.0
    return out


def c2w_from_w2c(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[3, 4] camera-to-world from world-to-camera rotation R [3, 3] and translation t [3]."""
    return np.concatenate([R.T, (-R.T @ t)[:, None]], axis=1)


# -- assembling outputs ----------------------------------------------------------------------
def make_cameras(
    c2w: np.ndarray,
    fx: Any,
    fy: Any,
    cx: Any,
    cy: Any,
    width: Any,
    height: Any,
    distortion: np.ndarray | None = None,
    camera_model: Any = None,
    *,
    source: Path,
) -> Cameras:
    """Cameras from numpy arrays (c2w [N, 3, 4] OpenCV; the rest [N] or scalars; distortion
    [N, <= 8] in :class:`~recon.cameras.Cameras`' order; camera_model [N] or a scalar, default perspective).

    Every value must survive float32 (finite), focal lengths and image sizes must be positive and
    sizes at most ``MAX_IMAGE_SIDE``; otherwise DataError naming ``source``, the file the cameras came from."""
    n = len(c2w)
    vec = lambda v: np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy()  # noqa: E731
    arrays = {"pose": np.asarray(c2w, dtype=np.float64), "fx": vec(fx), "fy": vec(fy), "cx": vec(cx), "cy": vec(cy)}
    if distortion is not None:
        arrays["distortion"] = np.asarray(distortion, dtype=np.float64).reshape(n, -1)
    with np.errstate(over="ignore", under="ignore"):
        arrays = {what: arr.astype(np.float32) for what, arr in arrays.items()}  # what the Cameras will hold
    for what, arr in arrays.items():
        bad = ~np.isfinite(arr).reshape(n, -1).all(1)
        if bad.any():
            raise DataError(f"camera {int(np.argmax(bad))}: {what} is not finite (or too large)", source)
    w, h = np.round(vec(width)), np.round(vec(height))
    for what, arr in (("focal length", np.minimum(arrays["fx"], arrays["fy"])), ("image width", w), ("image height", h)):
        bad = ~(arr > 0)
        if bad.any():
            raise DataError(f"camera {int(np.argmax(bad))}: {what} must be positive, got {arr[bad][0]}", source)
    if max(w.max(), h.max()) > MAX_IMAGE_SIDE:
        raise DataError(f"image size {int(w.max())}x{int(h.max())} is larger than {MAX_IMAGE_SIDE} pixels a side", source)
    t = torch.from_numpy
    return Cameras(
        camera_to_worlds=t(arrays["pose"]),
        fx=t(arrays["fx"]),
        fy=t(arrays["fy"]),
        cx=t(arrays["cx"]),
        cy=t(arrays["cy"]),
        width=torch.from_numpy(w).long(),
        height=torch.from_numpy(h).long(),
        distortion=None if distortion is None else t(arrays["distortion"]),
        camera_model=None if camera_model is None else torch.from_numpy(vec(camera_model)).long(),
    )


def raw_outputs(image_filenames: list[Path], cameras: Cameras, splits: dict[str, list[int]], **kwargs: Any) -> DataparserOutputs:
    """Outputs in input units with a placeholder scene box, ready for :func:`data.normalize.normalize_to_box`."""
    splits = {k: sorted(int(i) for i in splits.get(k, [])) for k in ("train", "val", "test")}
    return DataparserOutputs(
        image_filenames=list(image_filenames),
        cameras=cameras,
        splits=splits,
        scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])),
        **kwargs,
    )


def alpha_color(background: str) -> torch.Tensor:
    return torch.tensor(BACKGROUNDS[background], dtype=torch.float32)


def has_alpha(path: Path) -> bool:
    """Whether an image file carries an alpha channel (header only)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info)
    except Exception:  # unreadable files are reported when their pixels are loaded
        return False
