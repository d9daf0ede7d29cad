"""Blender / NeRF-synthetic scenes: ``transforms_{train,val,test}.json`` and RGBA PNGs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from data.base import DataparserOutputs
from data.images import image_size, is_file
from data.normalize import normalize_to_box
from data.parsers.common import (
    ParserConfig,
    alpha_color,
    check_pose,
    focal_from_fov,
    make_cameras,
    number,
    opengl_to_opencv_np,
    raw_outputs,
    read_json,
    require_dir,
)
from recon.errors import DataError


def resolve_frame_image(base: Path, file_path: str) -> Path:
    """NeRF-synthetic ``file_path`` values have no extension (``./train/r_0``): try as is, then .png."""
    path = base / file_path
    if path.suffix.lower() in (".png", ".jpg", ".jpeg") or is_file(path):
        return path
    return path.with_name(path.name + ".png")


@dataclass
class BlenderParserConfig(ParserConfig):
    """Blender / NeRF-synthetic: transforms_{train,val,test}.json.

    Splits are the files (a missing val uses test, and the other way round). Poses are OpenGL
    camera-to-world, converted to OpenCV; the object is known to fit ``[-scene_bound, scene_bound]^3``,
    which is mapped to [-1, 1]^3 (scale 1/1.5 by default, no rotation or translation)."""

    name: ClassVar[str] = "blender-data"

    background: Literal["white", "black"] = "white"
    """Colour the RGBA images are composited onto."""
    scene_bound: float = 1.5
    """Half side of the cube, in input units, that holds the object (nerfstudio's Blender aabb)."""
    near: float = 2.0
    """Near ray bound in input units (NeRF's value for the synthetic scenes)."""
    far: float = 6.0
    """Far ray bound in input units."""

    def parse(self, data: Path) -> DataparserOutputs:
        require_dir(data)
        if not (data / "transforms_train.json").is_file():
            raise DataError("not a Blender dataset: transforms_train.json not found", data)
        paths: list[Path] = []
        c2ws: list[np.ndarray] = []
        intr: list[tuple[float, float, float, float, int, int]] = []
        ranges: dict[str, list[int]] = {}
        missing: list[Path] = []
        for split in ("train", "val", "test"):
            jpath = data / f"transforms_{split}.json"
            if not jpath.is_file():
                continue
            meta = read_json(jpath)
            frames = meta.get("frames") if isinstance(meta, dict) else None
            if not isinstance(frames, list):
                raise DataError("no 'frames' list", jpath)
            start = len(paths)
            for i, frame in enumerate(frames):
                if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
                    raise DataError(f"frame {i}: needs 'file_path' and 'transform_matrix'", jpath)
                path = resolve_frame_image(data, str(frame["file_path"]))
                if not is_file(path):
                    missing.append(path)
                    continue
                w, h = image_size(path)
                fx, fy, cx, cy = self._intrinsics(meta, frame, w, h, jpath, i)
                c2ws.append(check_pose(frame["transform_matrix"], jpath, i))
                intr.append((fx, fy, cx, cy, w, h))
                paths.append(path)
            ranges[split] = list(range(start, len(paths)))
        if missing:
            shown = ", ".join(str(p.relative_to(data) if p.is_relative_to(data) else p) for p in missing[:10])  # file_path may be absolute
            raise DataError(f"{len(missing)} image files listed in the transforms files are missing: {shown}", data)
        if not ranges.get("train"):
            raise DataError("transforms_train.json lists no frames", data / "transforms_train.json")
        ranges.setdefault("val", ranges.get("test", []))
        ranges.setdefault("test", ranges["val"])

        c2w = opengl_to_opencv_np(np.stack(c2ws))
        fx, fy, cx, cy, w, h = np.array(intr).T
        outputs = raw_outputs(
            paths,
            make_cameras(c2w, fx, fy, cx, cy, w, h, source=data),
            ranges,
            alpha_color=alpha_color(self.background),
            near=self.near,
            far=self.far,
            metadata={"format": self.name, "few_shot_protocol": "blender", "scene": data.absolute().name},
        )
        b = float(self.scene_bound)
        box = np.array([[-b, -b, -b], [b, b, b]])
        return normalize_to_box(outputs, np.eye(4)[:3], box, c2w=c2w)

    @staticmethod
    def _intrinsics(meta: dict, frame: dict, w: int, h: int, path: Path, i: int) -> tuple[float, float, float, float]:
        """Focal from ``fl_x`` or ``camera_angle_x`` (horizontal FOV, resolution independent)."""
        get = lambda k: frame.get(k, meta.get(k))  # noqa: E731
        if get("fl_x") is not None:
            fx = number(get("fl_x"), path, f"frame {i}: fl_x")
            # fl_x is in pixels of the stated w; rescale if the image on disk differs.
            if get("w") is not None:
                fx *= w / number(get("w"), path, "w", positive=True)
        elif get("camera_angle_x") is not None:
            fx = focal_from_fov(w, get("camera_angle_x"), path, "camera_angle_x")
        else:
            raise DataError(f"frame {i}: no intrinsics (camera_angle_x or fl_x)", path)
        if get("fl_y") is not None:
            fy = number(get("fl_y"), path, f"frame {i}: fl_y") * (h / number(get("h"), path, "h", positive=True) if get("h") is not None else 1.0)
        elif get("camera_angle_y") is not None:
            fy = focal_from_fov(h, get("camera_angle_y"), path, "camera_angle_y")
        else:
            fy = fx
        sx = w / number(get("w"), path, "w", positive=True) if get("w") is not None else 1.0
        sy = h / number(get("h"), path, "h", positive=True) if get("h") is not None else 1.0
        cx = number(get("cx"), path, "cx") * sx if get("cx") is not None else w / 2.0
        cy = number(get("cy"), path, "cy") * sy if get("cy") is not None else h / 2.0
        if not (fx > 0 and fy > 0):
            raise DataError(f"frame {i}: focal length must be positive", path)
        return fx, fy, cx, cy
