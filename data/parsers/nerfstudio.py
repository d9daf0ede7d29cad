"""nerfstudio ``transforms.json`` datasets (what ``ns-process-data`` writes)."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from data.base import DataparserOutputs
from data.images import image_size, is_file
from data.normalize import normalize_points_or_cameras
from data.parsers.common import (
    ParserConfig,
    alpha_color,
    check_pose,
    focal_from_fov,
    has_alpha,
    make_cameras,
    natural_key,
    number,
    numeric_array,
    opengl_to_opencv_np,
    raw_outputs,
    read_json,
    warn_missing,
)
from data.splits import interval_splits
from recon.cameras import FISHEYE, NUM_DISTORTION, PERSPECTIVE
from recon.errors import DataError
from recon.export.splat_ply import check_ply_counts

CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE")
CUE_KEYS = {
    "mask_path": "mask_filenames",
    "depth_file_path": "depth_filenames",
    "normal_file_path": "normal_filenames",
    "instance_file_path": "instance_filenames",
}


def load_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Points [P, 3] float64 and colours [P, 3] uint8 (grey when the file has none) of a PLY
    point cloud or mesh (its vertices), binary or ASCII."""
    import trimesh

    if not is_file(path):
        raise DataError("point cloud file not found", path)
    check_ply_counts(path, DataError)
    try:
        geom = trimesh.load(path, process=False)
    except Exception as exc:  # trimesh raises many kinds of errors for bad files
        raise DataError(f"cannot read PLY point cloud ({exc})", path) from None
    vertices = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
    colors = None
    if isinstance(geom, trimesh.PointCloud):
        colors = np.asarray(geom.colors)
    elif hasattr(geom, "visual") and getattr(geom.visual, "kind", None) == "vertex":
        colors = np.asarray(geom.visual.vertex_colors)
    if colors is None or colors.shape[:1] != vertices.shape[:1] or colors.ndim != 2:
        colors = np.full((len(vertices), 3), 128, dtype=np.uint8)
    keep = np.isfinite(vertices).all(-1)
    return vertices[keep], colors[keep, :3].astype(np.uint8)


def _rel(path: str) -> str:
    """Normalised relative path string for comparing ``file_path`` with ``*_filenames`` entries."""
    return os.path.normpath(str(path)).replace("\\", "/")


@dataclass
class NerfstudioParserConfig(ParserConfig):
    """nerfstudio transforms.json: global and per-frame intrinsics, OpenGL c2w ``transform_matrix``.

    Frames are sorted by ``file_path`` (natural order). Splits come from ``train_filenames``/
    ``val_filenames``/``test_filenames`` when the file has them; otherwise every 8th frame
    (``i % 8 == 0``) is held out as test, and val = test. Frames whose image is missing are skipped
    with one warning. Normalisation: mean camera up to +z, then the 1st-99th percentile box of the
    ``ply_file_path`` points (padded 5 %) fills [-1, 1]^3; without points, nerfstudio's rule
    (poses centred, max |translation| = 1, box [-1, 1]^3)."""

    name: ClassVar[str] = "nerfstudio-data"

    background: Literal["white", "black"] = "white"
    """Colour RGBA images are composited onto."""
    orientation_method: Literal["up", "align", "none"] = "up"
    """Rotation applied to the poses: mean camera up to +z ("up"), also mean view to +y ("align"), or none."""
    center_method: Literal["poses", "focus", "none"] = "poses"
    """Origin before fitting the content box: mean camera position, the point the cameras look at, or none."""
    depth_unit_scale_factor: float | None = None
    """Multiply depth file values by this to get scene units; None: the file's own
    ``depth_unit_scale_factor`` key, else 1.0 when every depth file is .npy, else 1e-3 (nerfstudio's default, PNG millimetres)."""
    downscale_factor: int = 1
    """Read images from ``images_<factor>/`` instead of ``images/`` (intrinsics follow the real image size)."""
    eval_every: int = 8
    """Without split lists in the file, hold out every N-th frame (i % N == 0) for test/val."""
    load_points: bool = True
    """Read ``ply_file_path`` (sparse points for the content box and Gaussian-splat initialisation)."""

    def parse(self, data: Path) -> DataparserOutputs:
        jpath = data if data.is_file() else data / "transforms.json"
        base = jpath.parent
        if not jpath.is_file():
            raise DataError("not a nerfstudio dataset: transforms.json not found", data)
        meta = read_json(jpath)
        if not isinstance(meta, dict):
            raise DataError("transforms.json must hold an object", jpath)
        frames = meta.get("frames")
        if not isinstance(frames, list) or not frames:
            raise DataError("no frames (expected a non-empty 'frames' list)", jpath)
        for i, frame in enumerate(frames):
            if not isinstance(frame, dict) or "file_path" not in frame:
                raise DataError(f"frame {i}: missing 'file_path'", jpath)
            if "transform_matrix" not in frame:
                raise DataError(f"frame {i}: missing 'transform_matrix'", jpath)
        # Validate every pose with its index in the file, before sorting changes the order.
        poses = [check_pose(f["transform_matrix"], jpath, i) for i, f in enumerate(frames)]
        order = sorted(range(len(frames)), key=lambda i: natural_key(frames[i]["file_path"]))

        paths, rels, c2ws, intr, dists, models, missing = [], [], [], [], [], [], []
        cues: dict[str, list[Path]] = {key: [] for key in CUE_KEYS}
        cue_seen: dict[str, int] = {key: 0 for key in CUE_KEYS}
        for i in order:
            frame = frames[i]
            rel = str(frame["file_path"])
            path = self._image_path(base, rel)
            if not is_file(path):
                missing.append(path)
                continue
            fx, fy, cx, cy, w, h, k, model = self._intrinsics(meta, frame, path, jpath, i)
            for key in CUE_KEYS:
                if frame.get(key) is not None:
                    cue_seen[key] += 1
                    cue = base / str(frame[key])
                    if not is_file(cue):
                        raise DataError(f"frame {i}: {key} file {frame[key]!r} not found", jpath)
                    cues[key].append(cue)
            paths.append(path)
            rels.append(_rel(rel))
            c2ws.append(poses[i])
            intr.append((fx, fy, cx, cy, w, h))
            dists.append(k)
            models.append(model)
        if not paths:
            raise DataError(f"none of the {len(frames)} images listed exist (first: {missing[0]})", jpath)
        warn_missing(missing, "frames", jpath)
        for key, count in cue_seen.items():
            if 0 < count < len(paths):
                raise DataError(f"{key} is given for {count} of {len(paths)} frames; give it for all or none", jpath)

        c2w = opengl_to_opencv_np(np.stack(c2ws))
        fx, fy, cx, cy, w, h = np.array(intr).T
        cameras = make_cameras(c2w, fx, fy, cx, cy, w, h, distortion=np.stack(dists), camera_model=models, source=jpath)

        pts = rgb = None
        if self.load_points and meta.get("ply_file_path"):
            pts, rgb = load_ply_points(base / str(meta["ply_file_path"]))
            if len(pts) == 0:
                pts = rgb = None

        depth_scale = self.depth_unit_scale_factor
        if depth_scale is None and "depth_unit_scale_factor" in meta:
            depth_scale = number(meta["depth_unit_scale_factor"], jpath, "depth_unit_scale_factor")
        if depth_scale is None:
            # nerfstudio's 1e-3 is meant for 16-bit PNG millimetres; float .npy depth (what recon's
            # synthetic scenes write) is taken to be in scene units already.
            npy = bool(cues["depth_file_path"]) and all(p.suffix.lower() == ".npy" for p in cues["depth_file_path"])
            depth_scale = 1.0 if npy else 1e-3
        outputs = raw_outputs(
            paths,
            cameras,
            self._splits(meta, rels, jpath),
            alpha_color=alpha_color(self.background) if has_alpha(paths[0]) else None,
            depth_unit_scale_factor=float(depth_scale),
            points3d=pts,
            points3d_rgb=rgb,
            metadata={
                "format": self.name,
                "few_shot_protocol": "even",
                # recon's synthetic scenes write world-space normals; other producers can say "camera"
                "normal_frame": str(meta.get("normal_frame", "world")),
                **({"ground_truth_mesh": base / str(meta["mesh_file_path"])} if meta.get("mesh_file_path") else {}),
            },
            **{CUE_KEYS[key]: files for key, files in cues.items() if files},
        )
        outputs = self._record_applied_transform(outputs, meta, jpath)

        return normalize_points_or_cameras(outputs, c2w, pts, self.orientation_method, self.center_method)

    # -- pieces ------------------------------------------------------------------------------
    def _image_path(self, base: Path, rel: str) -> Path:
        if self.downscale_factor == 1:
            return base / rel
        # ns-process-data layout: images/frame_00001.png -> images_2/frame_00001.png
        parent = Path(rel).parent
        if parent == Path("."):
            raise DataError(f"downscale_factor needs images inside a folder (file_path {rel!r} has none)", base)
        return base / parent.with_name(f"{parent.name}_{self.downscale_factor}") / Path(rel).name

    def _intrinsics(
        self, meta: dict, frame: dict, path: Path, jpath: Path, i: int
    ) -> tuple[float, float, float, float, int, int, np.ndarray, int]:
        """(fx, fy, cx, cy, w, h, distortion [8], camera model) for one frame in recon's terms
        (:mod:`recon.cameras`); frame keys override global ones."""
        get = lambda key: frame.get(key, meta.get(key))  # noqa: E731
        model = str(get("camera_model") or "OPENCV").upper()
        if model not in CAMERA_MODELS:
            raise DataError(f"frame {i}: unsupported camera_model {model} (supported: {', '.join(CAMERA_MODELS)})", jpath)
        w_json, h_json = get("w"), get("h")
        if w_json is None or h_json is None or self.downscale_factor != 1:
            w_img, h_img = image_size(path)
        if w_json is None or h_json is None:
            w_json, h_json = w_img, h_img
        w_json, h_json = number(w_json, jpath, f"frame {i}: w"), number(h_json, jpath, f"frame {i}: h")
        if get("fl_x") is not None:
            fx = number(get("fl_x"), jpath, f"frame {i}: fl_x")
        elif get("camera_angle_x") is not None:
            fx = focal_from_fov(w_json, get("camera_angle_x"), jpath, f"frame {i}: camera_angle_x")
        else:
            raise DataError(f"frame {i}: missing intrinsics (no fl_x or camera_angle_x, globally or in the frame)", jpath)
        if get("fl_y") is not None:
            fy = number(get("fl_y"), jpath, f"frame {i}: fl_y")
        elif get("camera_angle_y") is not None:
            fy = focal_from_fov(h_json, get("camera_angle_y"), jpath, f"frame {i}: camera_angle_y")
        else:
            fy = fx
        cx = number(get("cx"), jpath, f"frame {i}: cx") if get("cx") is not None else w_json / 2.0
        cy = number(get("cy"), jpath, f"frame {i}: cy") if get("cy") is not None else h_json / 2.0
        if fx <= 0 or fy <= 0 or w_json <= 0 or h_json <= 0:
            raise DataError(f"frame {i}: focal length and image size must be positive", jpath)
        w, h = w_json, h_json
        if self.downscale_factor != 1:
            sx, sy = w_img / w_json, h_img / h_json
            fx, cx, fy, cy, w, h = fx * sx, cx * sx, fy * sy, cy * sy, w_img, h_img
        coeff = {key: number(get(key) or 0.0, jpath, f"frame {i}: {key}") for key in ("k1", "k2", "k3", "k4", "p1", "p2")}
        k = np.zeros(NUM_DISTORTION)
        if model == "OPENCV_FISHEYE":
            if coeff["p1"] or coeff["p2"]:
                raise DataError(f"frame {i}: OPENCV_FISHEYE has no tangential terms, but p1/p2 are set", jpath)
            k[:4] = [coeff[key] for key in ("k1", "k2", "k3", "k4")]
            return fx, fy, cx, cy, int(round(w)), int(round(h)), k, FISHEYE
        if model == "OPENCV":
            # nerfstudio's perspective k4 is an r^8 term, which OpenCV's model (and recon's) has not.
            if coeff["k4"]:
                raise DataError(f"frame {i}: k4 with camera_model OPENCV (nerfstudio's r^8 radial term) is not supported; use a COLMAP model (FULL_OPENCV) instead", jpath)
            k[:5] = [coeff[key] for key in ("k1", "k2", "p1", "p2", "k3")]
        elif model in ("SIMPLE_RADIAL", "RADIAL"):
            k[:2] = coeff["k1"], coeff["k2"]
        return fx, fy, cx, cy, int(round(w)), int(round(h)), k, PERSPECTIVE

    def _splits(self, meta: dict, rels: list[str], jpath: Path) -> dict[str, list[int]]:
        keys = {s: meta.get(f"{s}_filenames") for s in ("train", "val", "test")}
        if all(v is None for v in keys.values()):
            return interval_splits(len(rels), self.eval_every)
        index = {rel: i for i, rel in enumerate(rels)}
        lists: dict[str, list[int]] = {}
        for split, names in keys.items():
            if names is None:
                continue
            if not isinstance(names, list):
                raise DataError(f"{split}_filenames must be a list of image paths", jpath)
            # Entries naming skipped (missing) images are dropped, like the frames themselves.
            lists[split] = sorted(index[_rel(n)] for n in names if _rel(n) in index)
        if "test" not in lists:
            lists["test"] = lists.get("val", [])
        if "val" not in lists:
            lists["val"] = lists["test"]
        if "train" not in lists:
            held = set(lists["val"]) | set(lists["test"])
            lists["train"] = [i for i in range(len(rels)) if i not in held]
        return lists

    @staticmethod
    def _record_applied_transform(outputs: DataparserOutputs, meta: dict, jpath: Path) -> DataparserOutputs:
        """nerfstudio's ``applied_transform``/``applied_scale`` say how the file's world was made from
        the original capture's (x_file = applied_scale * (A x_orig)). Like nerfstudio, the poses are
        used as they are and the record is folded into ``dataparser_transform``/``scale``, so that
        exports map back to the original capture frame."""
        from dataclasses import replace

        applied = meta.get("applied_transform")
        scale = number(meta.get("applied_scale", 1.0) or 1.0, jpath, "applied_scale")
        T = np.eye(4)[:3]
        if applied is not None:
            A = numeric_array(applied, jpath, "applied_transform")
            if A.shape not in ((3, 4), (4, 4)) or not np.isfinite(A).all():
                raise DataError("applied_transform must be a finite 3x4 or 4x4 matrix", jpath)
            R = A[:3, :3]
            if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
                warnings.warn(f"{jpath}: applied_transform is not a rotation; ignored", stacklevel=3)
            else:
                T = A[:3, :4]
        if not (math.isfinite(scale) and scale > 0):
            raise DataError("applied_scale must be a positive number", jpath)
        return replace(outputs, dataparser_transform=torch.from_numpy(T.copy()).float(), dataparser_scale=scale)
