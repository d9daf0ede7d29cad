"""Writing a reconstruction in nerfstudio's layout, and publishing the output folder whole.

::

    OUT/transforms.json        camera_model, fl_x, fl_y, cx, cy, w, h, k1, k2, p1, p2 (per frame when
                               the images have their own cameras), frames[] with file_path,
                               transform_matrix (camera-to-world, OpenGL axes: x right, y up,
                               looking down -z) and colmap_im_id; ply_file_path
    OUT/sparse_pc.ply          COLMAP's 3D points with colours, same world as the poses
    OUT/images/                the full-size images (every input image, registered or not)
    OUT/images_2/, _4/, _8/    the same images downscaled (``--num-downscales``)
    OUT/colmap/sparse/0/       the COLMAP model (cameras, images, points3D .bin), for reference

Poses stay in COLMAP's world frame (no ``applied_transform``): recon's nerfstudio parser orients
and normalises the scene itself. Files are written inside a hidden temporary sibling of ``OUT``
that is renamed into place as a whole (:func:`staged_output`), which is what makes each file
atomic here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from recon.engine.logging import make_progress
from recon.errors import DataError

# COLMAP camera model -> names of its parameters, in COLMAP's order (src/colmap/sensor/models.h).
_PARAMS = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "OPENCV_FISHEYE": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"),
}


def camera_fields(model: str, params: Sequence[float], width: int, height: int) -> dict:
    """nerfstudio's intrinsics keys for a COLMAP camera (distortion terms the model lacks are 0)."""
    if model not in _PARAMS:
        raise ValueError(f"camera model {model} has no nerfstudio mapping here")
    p = dict(zip(_PARAMS[model], map(float, params)))
    fx = p.get("fx", p.get("f"))
    return {
        "camera_model": model,
        "fl_x": fx,
        "fl_y": p.get("fy", fx),
        "cx": p["cx"],
        "cy": p["cy"],
        "w": int(width),
        "h": int(height),
        **{k: p.get(k, 0.0) for k in ("k1", "k2", "p1", "p2")},
        **({k: p[k] for k in ("k3", "k4")} if model == "OPENCV_FISHEYE" else {}),
    }


def opengl_c2w(world_to_camera: np.ndarray) -> np.ndarray:
    """[4, 4] camera-to-world with OpenGL camera axes from a COLMAP world-to-camera [3, 4]
    (OpenCV axes: x right, y down, looking down +z)."""
    c2w = np.eye(4)
    R, t = world_to_camera[:, :3], world_to_camera[:, 3]
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    c2w[:3, 1:3] *= -1
    return c2w


def write_nerfstudio(reconstruction, out: Path, image_folder: str = "images") -> int:
    """transforms.json, sparse_pc.ply and colmap/sparse/0 of a ``pycolmap.Reconstruction`` whose
    image names are files in ``out/image_folder``; returns the number of frames written."""
    import trimesh

    images = sorted((im for im in reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    cameras = {cid: camera_fields(c.model.name, c.params, c.width, c.height) for cid, c in reconstruction.cameras.items()}
    shared = len({im.camera_id for im in images}) == 1
    frames = []
    for im in images:
        frame = {
            "file_path": f"{image_folder}/{im.name}",
            "transform_matrix": opengl_c2w(im.cam_from_world().matrix()).tolist(),
            "colmap_im_id": int(im.image_id),
        }
        if not shared:
            frame.update(cameras[im.camera_id])
        frames.append(frame)
    meta = dict(cameras[images[0].camera_id]) if shared else {}
    meta["frames"] = frames
    meta["ply_file_path"] = "sparse_pc.ply"
    (out / "transforms.json").write_text(json.dumps(meta, indent=2))

    points = list(reconstruction.points3D.values())
    xyz = np.array([p.xyz for p in points], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3)
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    trimesh.PointCloud(xyz, colors=rgba).export(out / "sparse_pc.ply")

    model = out / "colmap" / "sparse" / "0"
    model.mkdir(parents=True)
    reconstruction.write(model)
    return len(frames)


def write_downscales(image_dir: Path, names: Sequence[str], num_downscales: int) -> None:
    """``images_2``, ``images_4``, ... beside ``image_dir`` (factors 2^1 .. 2^num_downscales), each
    image resized over its full extent so that intrinsics scale by the size ratio exactly."""
    factors = [2**k for k in range(1, num_downscales + 1)]
    if not factors:
        return
    with make_progress(transient=True) as bar:
        task = bar.add_task("downscaling", total=len(names), rate="", info="")
        for name in names:
            with Image.open(image_dir / name) as img:
                img.load()
                for f in factors:
                    folder = image_dir.with_name(f"{image_dir.name}_{f}")
                    folder.mkdir(exist_ok=True)
                    size = (max(1, round(img.width / f)), max(1, round(img.height / f)))
                    small = img.resize(size, Image.Resampling.LANCZOS)
                    small.save(folder / name, **({"quality": 95} if name.endswith(".jpg") else {}))
            bar.advance(task)


def check_output_dir(output_dir: Path, inputs: Path, overwrite: bool) -> Path:
    """``output_dir`` made absolute; DataError when it is a file, would replace the inputs, or is a
    non-empty folder without ``overwrite``."""
    output_dir = output_dir.expanduser().absolute()
    inputs = inputs.expanduser().absolute()
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError("--output-dir is a file", output_dir)
    if output_dir == inputs or output_dir in inputs.parents:
        raise DataError(f"--output-dir must not be or contain the input {inputs}", output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise DataError("--output-dir exists and is not empty (pass --overwrite to replace it)", output_dir)
    return output_dir


@contextmanager
def staged_output(output_dir: Path) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``output_dir`` to fill; on success it replaces
    ``output_dir`` (an old one is moved aside, then deleted). On any exception, Ctrl-C included,
    the temporary folder and any parent folders made for it are removed."""
    made = [p for p in [output_dir.parent, *output_dir.parent.parents] if not p.exists()]
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
        old = output_dir.with_name(f".{output_dir.name}.old-{secrets.token_hex(4)}")
        if output_dir.exists():
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in made:  # deepest first
            try:
                parent.rmdir()
            except OSError:
                break
        raise
