"""MonoSDF layout (``NNNNNN_rgb.png`` + monocular ``_depth.npy``/``_normal.npy`` + ``cameras.npz``)
and sdfstudio's ``meta_data.json``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from data.base import DataparserOutputs
from data.images import image_size, is_file, load_npz
from data.normalize import normalize_to_box
from data.parsers.common import (
    ParserConfig,
    check_pose,
    make_cameras,
    natural_key,
    number,
    numeric_array,
    raw_outputs,
    read_json,
    require_dir,
)
from data.parsers.idr import CAMERA_FILES, frame_id, idr_cameras, normalize_unit_sphere
from data.splits import dtu_splits, interval_splits
from recon.errors import DataError

DTU_VIEW_COUNTS = (49, 64)
"""Number of views in DTU scans (IDR: 49 or 64); with "auto" these get the DTU split."""


def rgb_files(data: Path) -> list[Path]:
    """``*_rgb.png``/``.jpg`` files, sorted naturally (MonoSDF pairs the i-th with world_mat_i)."""
    files = [p for p in data.iterdir() if re.fullmatch(r".+_rgb\.(png|jpe?g)", p.name, flags=re.IGNORECASE)]
    return sorted(files, key=lambda p: natural_key(p.name))


def _cue(rgb: Path, suffixes: tuple[str, ...]) -> Path | None:
    stem = rgb.name[: rgb.name.lower().rindex("_rgb")]
    for suffix in suffixes:
        p = rgb.with_name(stem + suffix)
        if p.is_file():
            return p
    return None


def _segs(rgb: Path) -> Path | None:
    """ObjectSDF++'s instance mask of an image: ``segs/<stem>_segs.png`` beside ``<stem>_rgb.png``."""
    stem = rgb.name[: rgb.name.lower().rindex("_rgb")]
    p = rgb.parent / "segs" / f"{stem}_segs.png"
    return p if p.is_file() else None


def _all_or_none(files: list[Path | None], what: str, data: Path) -> list[Path] | None:
    found = [f for f in files if f is not None]
    if not found:
        return None
    if len(found) != len(files):
        missing = next(i for i, f in enumerate(files) if f is None)
        raise DataError(f"{what} files exist for {len(found)} of {len(files)} frames (first missing: frame {missing})", data)
    return found  # type: ignore[return-value]


@dataclass
class MonoSDFParserConfig(ParserConfig):
    """MonoSDF data (DTU, Replica, ScanNet, TnT): NNNNNN_rgb.png, optional NNNNNN_depth.npy (relative
    monocular depth), NNNNNN_normal.npy ([3, H, W] in [0, 1], camera frame) and NNNNNN_mask.{npy,png},
    with cameras.npz (world_mat_i/scale_mat_i, i-th file <-> index i). Also sdfstudio's
    meta_data.json (rgb_path, camtoworld (OpenCV), intrinsics, mono_depth_path, mono_normal_path).

    cameras.npz: scale_mat^-1 maps the object's unit sphere to the unit sphere; scene box [-1, 1]^3.
    DTU scans in this format are centre-cropped from 1600x1200, which MonoSDF undoes with
    center_crop_for_dtu (cx -= 200, then x size/1200); it is detected from the principal point.
    meta_data.json: its scene_box aabb is fitted into [-1, 1]^3 (identity for sdfstudio's DTU).
    Splits: DTU scans (49 or 64 views) use all views for train and the RegNeRF test views as test
    (few-shot: RegNeRF training IDs); other scenes hold out every 8th frame."""

    name: ClassVar[str] = "monosdf-data"

    center_crop_for_dtu: bool | None = None
    """Apply MonoSDF's DTU centre-crop fix to the intrinsics; None detects it (principal point outside the image)."""
    split_protocol: Literal["auto", "dtu", "interval"] = "auto"
    """"dtu": RegNeRF DTU split by view ID; "interval": every 8th frame is test; auto: dtu for 49/64-view scans."""
    load_depth: bool = True
    """Attach the monocular depth files (relative depth: known up to scale and shift)."""
    load_normals: bool = True
    """Attach the monocular normal files."""

    def parse(self, data: Path) -> DataparserOutputs:
        if data.is_file() and data.name == "meta_data.json":
            return self._parse_sdfstudio(data)
        require_dir(data)
        if (data / "meta_data.json").is_file():
            return self._parse_sdfstudio(data / "meta_data.json")
        cam_path = next((data / n for n in ("cameras.npz", "cameras_sphere.npz") if (data / n).is_file()), None)
        if cam_path is None:
            raise DataError(f"not a MonoSDF dataset: no meta_data.json or {' / '.join(CAMERA_FILES[::-1])}", data)
        images = rgb_files(data)
        if not images:
            raise DataError("no *_rgb.png images", data)
        sizes = np.array([image_size(p) for p in images], dtype=np.float64)
        c2w, K, scale_mat, cropped = idr_cameras(load_npz(cam_path), len(images), sizes, self.center_crop_for_dtu, cam_path)
        depths = _all_or_none([_cue(p, ("_depth.npy",)) for p in images], "depth", data) if self.load_depth else None
        normals = _all_or_none([_cue(p, ("_normal.npy",)) for p in images], "normal", data) if self.load_normals else None
        masks = _all_or_none([_cue(p, ("_mask.npy", "_mask.png")) for p in images], "mask", data)
        instances = _all_or_none([_segs(p) for p in images], "segs/*_segs.png instance", data)
        ids = [frame_id(p, i) for i, p in enumerate(images)]
        dtu = self._is_dtu(len(images), cropped)
        outputs = raw_outputs(
            images,
            make_cameras(c2w, K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], sizes[:, 0], sizes[:, 1], source=cam_path),
            dtu_splits(ids) if dtu else interval_splits(len(images)),
            mask_filenames=masks,
            depth_filenames=depths,
            depth_is_relative=True,
            depth_unit_scale_factor=1.0,
            normal_filenames=normals,
            instance_filenames=instances,
            metadata={
                "format": self.name,
                "few_shot_protocol": "dtu" if dtu else "even",
                "frame_ids": ids,
                "dtu_center_crop": cropped,
                "normal_frame": "camera",
            },
        )
        return normalize_unit_sphere(outputs, scale_mat, cam_path, c2w=c2w)

    def _is_dtu(self, n: int, cropped: bool) -> bool:
        if self.split_protocol != "auto":
            return self.split_protocol == "dtu"
        return cropped or n in DTU_VIEW_COUNTS

    def _parse_sdfstudio(self, jpath: Path) -> DataparserOutputs:
        base = jpath.parent
        meta = read_json(jpath)
        if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
            raise DataError("no frames (expected a non-empty 'frames' list)", jpath)
        model = str(meta.get("camera_model", "OPENCV")).upper()
        if model not in ("OPENCV", "PINHOLE"):
            raise DataError(f"unsupported camera_model {model} (sdfstudio data are OPENCV pinhole)", jpath)
        paths, c2ws, intr, depths, normals, masks, instances = [], [], [], [], [], [], []
        for i, frame in enumerate(meta["frames"]):
            if not isinstance(frame, dict) or "rgb_path" not in frame or "camtoworld" not in frame or "intrinsics" not in frame:
                raise DataError(f"frame {i}: needs rgb_path, camtoworld and intrinsics", jpath)
            path = base / str(frame["rgb_path"])
            w, h = image_size(path)
            c2ws.append(check_pose(frame["camtoworld"], jpath, i, key="camtoworld"))
            K = numeric_array(frame["intrinsics"], jpath, f"frame {i}: intrinsics")
            if K.shape not in ((4, 4), (3, 3)) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
                raise DataError(f"frame {i}: intrinsics must be a finite 3x3 or 4x4 K matrix", jpath)
            intr.append((K[0, 0], K[1, 1], K[0, 2], K[1, 2], w, h))
            paths.append(path)
            depths.append(base / str(frame["mono_depth_path"]) if frame.get("mono_depth_path") else None)
            normals.append(base / str(frame["mono_normal_path"]) if frame.get("mono_normal_path") else None)
            mask = frame.get("foreground_mask") or frame.get("mask_path")
            masks.append(base / str(mask) if mask else None)
            instances.append(base / str(frame["instance_path"]) if frame.get("instance_path") else None)
        has_prior = bool(meta.get("has_mono_prior", True))
        depth_files = _all_or_none(depths, "mono_depth_path", jpath) if (has_prior and self.load_depth) else None
        normal_files = _all_or_none(normals, "mono_normal_path", jpath) if (has_prior and self.load_normals) else None
        for group in (depth_files, normal_files):
            for f in group or []:
                if not is_file(f):
                    raise DataError(f"cue file {f.name} not found", jpath)
        fx, fy, cx, cy, w, h = np.array(intr).T
        dtu = self._is_dtu(len(paths), False)
        ids = [frame_id(p, i) for i, p in enumerate(paths)]
        sb = meta.get("scene_box") or {}
        if not isinstance(sb, dict):
            raise DataError("scene_box must be an object", jpath)
        aabb = numeric_array(sb.get("aabb", [[-1, -1, -1], [1, 1, 1]]), jpath, "scene_box.aabb")
        if aabb.shape != (2, 3) or not np.isfinite(aabb).all() or (aabb[1] <= aabb[0]).any():
            raise DataError("scene_box.aabb must be [[xmin, ymin, zmin], [xmax, ymax, zmax]]", jpath)
        outputs = raw_outputs(
            paths,
            make_cameras(np.stack(c2ws), fx, fy, cx, cy, w, h, source=jpath),
            dtu_splits(ids) if dtu else interval_splits(len(paths)),
            mask_filenames=_all_or_none(masks, "mask", jpath),
            instance_filenames=_all_or_none(instances, "instance_path", jpath),
            depth_filenames=depth_files,
            depth_is_relative=True,
            normal_filenames=normal_files,
            near=number(sb["near"], jpath, "scene_box.near") if "near" in sb else None,
            far=number(sb["far"], jpath, "scene_box.far") if "far" in sb else None,
            metadata={
                "format": self.name,
                "few_shot_protocol": "dtu" if dtu else "even",
                "frame_ids": ids,
                "normal_frame": "camera",
                **({"worldtogt": meta["worldtogt"]} if "worldtogt" in meta else {}),
            },
        )
        return normalize_to_box(outputs, np.eye(4)[:3], aabb, c2w=np.stack(c2ws))
