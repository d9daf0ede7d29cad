"""IDR / NeuS / VolSDF DTU layout: ``cameras.npz`` (or ``cameras_sphere.npz``), ``image/``, ``mask/``.

Shared with the MonoSDF parser: projection-matrix decomposition, the ``scale_mat`` normalisation
and the DTU centre-crop fix for intrinsics.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.linalg

from data.base import DataparserOutputs
from data.images import image_size, load_npz
from data.normalize import apply_normalization
from data.parsers.common import ParserConfig, list_images, make_cameras, raw_outputs, require_dir
from data.splits import dtu_splits
from recon.errors import DataError

CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")

DTU_FULL_SIZE = (1600, 1200)
"""(width, height) of the original DTU images that IDR's world_mat intrinsics refer to."""


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 3x4 projection ``P = s K [R | t]`` into K [3, 3] (K[2, 2] = 1, positive focal
    lengths) and an OpenCV camera-to-world [3, 4], via an RQ decomposition of P[:, :3].

    The overall sign of P is arbitrary (it is defined up to scale), so it is chosen to make R a
    proper rotation. Skew, if any, is left in K[0, 1].
    """
    P = np.asarray(P, dtype=np.float64)[:3, :4]
    K, R = scipy.linalg.rq(P[:, :3])
    signs = np.sign(np.diag(K))  # RQ is unique only up to signs: make diag(K) positive
    D = np.diag(np.where(signs == 0, 1.0, signs))
    K, R = K @ D, D @ R
    t = np.linalg.solve(K, P[:, 3])
    if np.linalg.det(R) < 0:  # P had the wrong overall sign
        R, t = -R, -t
    K = K / K[2, 2]
    centre = -R.T @ t
    return K, np.concatenate([R.T, centre[:, None]], axis=1)


def similarity_inverse(scale_mat: np.ndarray, path: Path) -> tuple[np.ndarray, float]:
    """For ``scale_mat`` = [s R | c] (unit sphere -> object), the transform [3, 4] and scale with
    x_unit = scale * (T[:, :3] @ x + T[:, 3]), i.e. scale = 1/s and T = [R^T | -R^T c]."""
    S = np.asarray(scale_mat, dtype=np.float64)
    if S.shape not in ((4, 4), (3, 4)) or not np.isfinite(S).all():
        raise DataError(f"scale_mat must be a finite 4x4 matrix, got shape {S.shape}", path)
    M, c = S[:3, :3], S[:3, 3]
    det = np.linalg.det(M)
    if det <= 0:
        raise DataError("scale_mat must have a positive determinant", path)
    s = det ** (1.0 / 3.0)
    R = M / s
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4):
        raise DataError("scale_mat is not a uniform scale with rotation and translation", path)
    return np.concatenate([R.T, (-R.T @ c)[:, None]], axis=1), 1.0 / s


def fit_intrinsics(K: np.ndarray, width: int, height: int, crop: bool | None, path: Path, index: int) -> tuple[np.ndarray, bool]:
    """Intrinsics for the image size actually on disk, and whether the DTU crop was applied.

    MonoSDF's DTU images are the 1600x1200 originals centre-cropped to 1200x1200 and resized,
    while ``world_mat`` keeps the original intrinsics. MonoSDF's ``center_crop_for_dtu`` is then
    ``cx -= 200`` and fx, fy, cx, cy times ``size / 1200``. With ``crop=None`` this is detected:
    the principal point lies outside the central half of the image on disk (for DTU, cx ~ 823 on
    a 384-wide image) but inside that of a 1600x1200 image.
    """
    K = K.copy()

    def central(k: np.ndarray, w: float, h: float) -> bool:
        return abs(k[0, 2] - w / 2) <= 0.25 * w and abs(k[1, 2] - h / 2) <= 0.25 * h

    if crop is None:
        crop = not central(K, width, height) and central(K, *DTU_FULL_SIZE)
    if crop:
        offset = (DTU_FULL_SIZE[0] - DTU_FULL_SIZE[1]) / 2
        K[0, 2] -= offset
        K[0, :] *= width / DTU_FULL_SIZE[1]
        K[1, :] *= height / DTU_FULL_SIZE[1]
    if not (0 <= K[0, 2] <= width and 0 <= K[1, 2] <= height):
        raise DataError(
            f"view {index}: the principal point ({K[0, 2]:.1f}, {K[1, 2]:.1f}) of world_mat does not fit the"
            f" {width}x{height} image (set the crop option explicitly if the images were cropped)",
            path,
        )
    return K, crop


def frame_id(path: Path, fallback: int) -> int:
    """The view number in a file name (``000025_rgb.png`` -> 25), else ``fallback``."""
    m = re.match(r"(\d+)", path.name)
    return int(m.group(1)) if m else fallback


def idr_cameras(
    npz: dict[str, np.ndarray], n: int, sizes: np.ndarray, crop: bool | None, path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """c2w [N, 3, 4] in the world_mat (input) frame, K [N, 3, 3] for the images on disk, the
    scale_mat [4, 4] of view 0 and whether the DTU crop was applied."""
    c2ws, Ks, crops = [], [], []
    scale0 = None
    for i in range(n):
        key, skey = f"world_mat_{i}", f"scale_mat_{i}"
        if key not in npz:
            raise DataError(f"{key} missing (the file must hold world_mat_i for each of the {n} images)", path)
        P = np.asarray(npz[key], dtype=np.float64)
        if P.shape not in ((4, 4), (3, 4)) or not np.isfinite(P).all():
            raise DataError(f"{key} must be a finite 4x4 or 3x4 matrix (frame {i})", path)
        if abs(np.linalg.det(P[:3, :3])) < 1e-12 * max(1.0, np.abs(P[:3, :3]).max()) ** 3:
            raise DataError(f"{key} is singular (frame {i})", path)
        K, c2w = decompose_projection(P)
        K, did_crop = fit_intrinsics(K, int(sizes[i, 0]), int(sizes[i, 1]), crop, path, i)
        c2ws.append(c2w)
        Ks.append(K)
        crops.append(did_crop)
        S = np.asarray(npz.get(skey, np.eye(4)), dtype=np.float64)
        if scale0 is None:
            scale0 = S
        elif S.shape != scale0.shape or not np.allclose(S, scale0, rtol=1e-4, atol=1e-6):
            warnings.warn(f"{path}: {skey} differs from scale_mat_0; using scale_mat_0 for all views", stacklevel=3)
    return np.stack(c2ws), np.stack(Ks), scale0, bool(any(crops))


def normalize_unit_sphere(
    outputs: DataparserOutputs, scale_mat: np.ndarray, path: Path, c2w: np.ndarray | None = None
) -> DataparserOutputs:
    """Map the world through ``scale_mat^-1`` so the object's unit sphere is the unit sphere, with
    scene box [-1, 1]^3 (the sphere's box: already the largest-side-2 box, so no extra scale).
    near/far become the nearest/farthest camera distance to the sphere, padded (near >= 0.05)."""
    T, scale = similarity_inverse(scale_mat, path)
    outputs = apply_normalization(outputs, T, scale, scene_box=np.array([[-1.0] * 3, [1.0] * 3]), c2w=c2w)
    dist = outputs.cameras.camera_to_worlds[:, :, 3].norm(dim=-1)
    outputs.near = max(0.05, float(dist.min()) - 1.0)
    outputs.far = float(dist.max()) + 1.0
    return outputs


@dataclass
class IDRParserConfig(ParserConfig):
    """DTU in IDR/NeuS/VolSDF layout: cameras.npz or cameras_sphere.npz (world_mat_i, scale_mat_i),
    images in image/ and optional masks in mask/ (matched by sorted order).

    ``world_mat`` is decomposed (RQ) into intrinsics and an OpenCV pose; ``scale_mat^-1`` maps the
    object's unit sphere to the unit sphere, and the scene box is [-1, 1]^3. Splits: all views
    train, the RegNeRF DTU test views are test (= val); few-shot uses the RegNeRF training IDs."""

    name: ClassVar[str] = "dtu-data"

    cameras_file: str | None = None
    """Camera file name; None: cameras_sphere.npz, else cameras.npz."""
    load_masks: bool = True
    """Read object masks from mask/ when present."""
    center_crop_for_dtu: bool | None = None
    """Images are DTU's centre crop (MonoSDF); None detects it from the principal point."""

    def parse(self, data: Path) -> DataparserOutputs:
        require_dir(data)
        cam_path = self._camera_file(data)
        images = list_images(data / "image")
        if not images:
            raise DataError("no images in image/", data)
        sizes = np.array([image_size(p) for p in images], dtype=np.float64)
        npz = load_npz(cam_path)
        c2w, K, scale_mat, cropped = idr_cameras(npz, len(images), sizes, self.center_crop_for_dtu, cam_path)
        masks = None
        if self.load_masks and (data / "mask").is_dir():
            masks = list_images(data / "mask")
            if len(masks) != len(images):
                raise DataError(f"mask/ has {len(masks)} files but image/ has {len(images)}", data)
        ids = [frame_id(p, i) for i, p in enumerate(images)]
        outputs = raw_outputs(
            images,
            make_cameras(c2w, K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], sizes[:, 0], sizes[:, 1], source=cam_path),
            dtu_splits(ids),
            mask_filenames=masks,
            metadata=self._metadata(ids, cropped),
        )
        return normalize_unit_sphere(outputs, scale_mat, cam_path, c2w=c2w)

    def _metadata(self, ids: list[int], cropped: bool) -> dict[str, Any]:
        return {"format": self.name, "few_shot_protocol": "dtu", "frame_ids": ids, "dtu_center_crop": cropped}

    def _camera_file(self, data: Path) -> Path:
        names = [self.cameras_file] if self.cameras_file else list(CAMERA_FILES)
        for name in names:
            if (data / name).is_file():
                return data / name
        raise DataError(f"no camera file (looked for {', '.join(names)})", data)
