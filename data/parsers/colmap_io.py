"""Reading and writing COLMAP sparse models (``cameras``, ``images``, ``points3D``; .bin and .txt).

Written from COLMAP's documented file layout (https://colmap.github.io/format.html). Binary files
are little-endian:

* cameras.bin: uint64 count; per camera int32 id, int32 model id, uint64 width, uint64 height,
  float64 params[n] (n fixed by the model);
* images.bin: uint64 count; per image int32 id, float64 qvec[4] (w, x, y, z), float64 tvec[3],
  int32 camera id, NUL-terminated name, uint64 n, then n x (float64 x, float64 y, int64 point id);
* points3D.bin: uint64 count; per point uint64 id (read as int64, recon's id type), float64 xyz[3], uint8 rgb[3], float64 error,
  uint64 n, then n x (int32 image id, int32 point2D index).

``qvec``/``tvec`` are world-to-camera (x_cam = R(q) x_world + t), OpenCV camera axes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recon.atomic import atomic_write, atomic_write_bytes
from recon.errors import DataError, check_declared_size
from recon.rotations import quaternion_to_matrix

# name -> (model id, number of params), from COLMAP's src/colmap/sensor/models.h
CAMERA_MODELS: dict[str, tuple[int, int]] = {
    "SIMPLE_PINHOLE": (0, 3),
    "PINHOLE": (1, 4),
    "SIMPLE_RADIAL": (2, 4),
    "RADIAL": (3, 5),
    "OPENCV": (4, 8),
    "OPENCV_FISHEYE": (5, 8),
    "FULL_OPENCV": (6, 12),
    "FOV": (7, 5),
    "SIMPLE_RADIAL_FISHEYE": (8, 4),
    "RADIAL_FISHEYE": (9, 5),
    "THIN_PRISM_FISHEYE": (10, 12),
    "RAD_TAN_THIN_PRISM_FISHEYE": (11, 16),
}
MODEL_BY_ID = {mid: (name, n) for name, (mid, n) in CAMERA_MODELS.items()}
_INT64, _INT32 = np.iinfo(np.int64), np.iinfo(np.int32)


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # [n] float64


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # [4] (w, x, y, z) world-to-camera rotation
    tvec: np.ndarray  # [3] world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [K, 2] keypoints
    point3d_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [K], -1 = none

    def rotation(self) -> np.ndarray:
        """[3, 3] float64 world-to-camera rotation (qvec normalised first)."""
        return quaternion_to_matrix(torch.tensor(self.qvec, dtype=torch.float64)).numpy()


@dataclass
class ColmapPoints:
    """P points: ids [P] int64, xyz [P, 3] float64, rgb [P, 3] uint8, error [P] float64,
    tracks: per point an [n, 2] int32 array of (image id, point2D index)."""

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    tracks: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


# -- binary ----------------------------------------------------------------------------------
class _Reader:
    """Bounds-checked little-endian reader over a whole file (a short file is a DataError)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.buf = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read file: {exc}", path) from None
        self.pos = 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise DataError("truncated COLMAP binary file", self.path)
        out = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return out

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype).newbyteorder("<")
        size = dtype.itemsize * count
        if self.pos + size > len(self.buf):
            raise DataError("truncated COLMAP binary file", self.path)
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def count(self, record_bytes: int, what: str) -> int:
        """A uint64 record count, refused when ``count`` records of at least ``record_bytes`` each
        cannot fit in the rest of the file (before anything is allocated for them)."""
        (n,) = self.take("Q")
        check_declared_size(n * record_bytes, len(self.buf) - self.pos, f"{n} {what}", self.path)
        return n

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise DataError("truncated COLMAP binary file (unterminated image name)", self.path)
        out = self.buf[self.pos : end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return out


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path)
    count = r.count(struct.calcsize("<iiQQ"), "cameras")
    cams: dict[int, ColmapCamera] = {}
    for _ in range(count):
        cam_id, model_id, width, height = r.take("iiQQ")
        if model_id not in MODEL_BY_ID:
            raise DataError(f"unknown COLMAP camera model id {model_id}", path)
        name, n = MODEL_BY_ID[model_id]
        cams[cam_id] = ColmapCamera(cam_id, name, int(width), int(height), np.array(r.take("d" * n)))
    return cams


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    r = _Reader(path)
    count = r.count(struct.calcsize("<idddddddi") + 1 + 8, "images")
    images: dict[int, ColmapImage] = {}
    rec = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
    for _ in range(count):
        vals = r.take("idddddddi")
        image_id, qvec, tvec, cam_id = vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8]
        name = r.cstring()
        n = r.count(rec.itemsize, f"keypoints of image {image_id}")
        pts = r.array(rec, n)
        xys = np.stack([pts["x"], pts["y"]], -1) if n else np.zeros((0, 2))
        images[image_id] = ColmapImage(image_id, qvec, tvec, cam_id, name, xys, pts["id"].astype(np.int64).copy())
    return images


def read_points3d_binary(path: Path, with_tracks: bool = False) -> ColmapPoints:
    r = _Reader(path)
    count = r.count(struct.calcsize("<QdddBBBdQ"), "points")
    ids = np.empty(count, dtype=np.int64)
    xyz = np.empty((count, 3))
    rgb = np.empty((count, 3), dtype=np.uint8)
    err = np.empty(count)
    tracks: list[np.ndarray] = []
    for i in range(count):
        v = r.take("qdddBBBd")
        ids[i], xyz[i], rgb[i], err[i] = v[0], v[1:4], v[4:7], v[7]
        n = r.count(8, f"track entries of point {v[0]}")
        if with_tracks:
            tracks.append(r.array(np.int32, 2 * n).reshape(n, 2).copy())
        else:
            r.pos += 8 * n
    return ColmapPoints(ids, xyz, rgb, err, tracks)


# -- text ------------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read file: {exc}", path) from None
    return text.splitlines()


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    cams: dict[int, ColmapCamera] = {}
    for lineno, line in enumerate(_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            cam_id, model, width, height = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = np.array([float(p) for p in parts[4:]])
        except (IndexError, ValueError):
            raise DataError(f"line {lineno}: malformed camera line", path) from None
        if model in CAMERA_MODELS and len(params) != CAMERA_MODELS[model][1]:
            raise DataError(f"line {lineno}: {model} takes {CAMERA_MODELS[model][1]} params, got {len(params)}", path)
        cams[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    return cams


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    images: dict[int, ColmapImage] = {}
    lines = [(i, ln) for i, ln in enumerate(_lines(path), 1) if not ln.lstrip().startswith("#")]
    # Records are two lines; the keypoint line may be empty, so do not drop blank lines blindly.
    while lines and not lines[-1][1].strip():
        lines.pop()
    k = 0
    while k < len(lines):
        lineno, head = lines[k]
        if not head.strip():  # stray blank line between records
            k += 1
            continue
        parts = head.split()
        try:
            image_id = int(parts[0])
            qvec = np.array([float(v) for v in parts[1:5]])
            tvec = np.array([float(v) for v in parts[5:8]])
            cam_id = int(parts[8])
            name = " ".join(parts[9:])
            if len(qvec) != 4 or len(tvec) != 3 or not name:
                raise ValueError
        except (IndexError, ValueError):
            raise DataError(f"line {lineno}: malformed image line", path) from None
        pts_line = lines[k + 1][1].split() if k + 1 < len(lines) else []
        try:
            vals = np.array([float(v) for v in pts_line]).reshape(-1, 3)
        except ValueError:
            raise DataError(f"line {lineno + 1}: malformed POINTS2D line", path) from None
        images[image_id] = ColmapImage(image_id, qvec, tvec, cam_id, name, vals[:, :2].copy(), vals[:, 2].astype(np.int64))
        k += 2
    return images


def read_points3d_text(path: Path, with_tracks: bool = False) -> ColmapPoints:
    ids, xyz, rgb, err, tracks = [], [], [], [], []
    for lineno, line in enumerate(_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            point_id, colour, track = int(parts[0]), [int(v) for v in parts[4:7]], [int(v) for v in parts[8:]]
            if not (_INT64.min <= point_id <= _INT64.max and all(0 <= c <= 255 for c in colour) and all(_INT32.min <= v <= _INT32.max for v in track)):
                raise DataError(f"line {lineno}: point id, colour or track entry out of range", path)
            ids.append(point_id)
            xyz.append([float(v) for v in parts[1:4]])
            rgb.append(colour)
            err.append(float(parts[7]))
            if with_tracks:
                tracks.append(np.array(track, dtype=np.int32).reshape(-1, 2))
        except (IndexError, ValueError):
            raise DataError(f"line {lineno}: malformed point line", path) from None
    return ColmapPoints(
        np.array(ids, dtype=np.int64),
        np.array(xyz, dtype=np.float64).reshape(-1, 3),
        np.array(rgb, dtype=np.uint8).reshape(-1, 3),
        np.array(err, dtype=np.float64),
        tracks,
    )


# -- model folders ---------------------------------------------------------------------------
def model_files(folder: Path) -> dict[str, Path] | None:
    """The cameras/images(/points3D) files of a model folder, binary preferred; None if incomplete."""
    for ext in (".bin", ".txt"):
        cams, imgs = folder / f"cameras{ext}", folder / f"images{ext}"
        if cams.is_file() and imgs.is_file():
            out = {"cameras": cams, "images": imgs}
            pts = folder / f"points3D{ext}"
            if pts.is_file():
                out["points3D"] = pts
            return out
    return None


def read_model(
    folder: Path, with_tracks: bool = False
) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage], ColmapPoints | None]:
    """(cameras, images, points or None) of the sparse model in ``folder`` (.bin or .txt)."""
    files = model_files(folder)
    if files is None:
        raise DataError("no COLMAP model here (looked for cameras.bin+images.bin or cameras.txt+images.txt)", folder)
    binary = files["cameras"].suffix == ".bin"
    cams = (read_cameras_binary if binary else read_cameras_text)(files["cameras"])
    images = (read_images_binary if binary else read_images_text)(files["images"])
    points = None
    if "points3D" in files:
        points = (read_points3d_binary if binary else read_points3d_text)(files["points3D"], with_tracks)
    return cams, images, points


def _flat_tracks(points: ColmapPoints, frame_of_image: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every observation of ``points``' tracks (read with tracks) whose image has a frame: point
    index, frame, image id and point2D index, each [T] int64."""
    if len(points.tracks) != len(points):
        raise ValueError("points were read without tracks")
    lengths = np.fromiter((len(t) for t in points.tracks), dtype=np.int64, count=len(points))
    if not lengths.sum():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    flat = np.concatenate([t for t in points.tracks]).astype(np.int64)
    image_ids = flat[:, 0]
    point_idx = np.repeat(np.arange(len(points), dtype=np.int64), lengths)
    lookup = np.full(int(max(image_ids.max(), max(frame_of_image, default=0))) + 1, -1, dtype=np.int64)
    for image_id, frame in frame_of_image.items():
        if image_id >= 0:
            lookup[image_id] = frame
    frames = np.where(image_ids >= 0, lookup[np.clip(image_ids, 0, None)], -1)
    keep = frames >= 0
    return point_idx[keep], frames[keep], image_ids[keep], flat[keep, 1]


def track_pairs(points: ColmapPoints, frame_of_image: dict[int, int]) -> np.ndarray:
    """[T, 2] int64 (point index, frame index) pairs from ``points``' tracks (read with tracks),
    image ids mapped to frames by ``frame_of_image``; observations in images without a frame (not
    loaded) are dropped, and each (point, frame) pair appears once."""
    point_idx, frames, _, _ = _flat_tracks(points, frame_of_image)
    return np.unique(np.stack([point_idx, frames], axis=1), axis=0)


def track_observations(
    points: ColmapPoints, images: dict[int, ColmapImage], frame_of_image: dict[int, int], source: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`track_pairs` with where each pair was seen: ([T, 2] int64 (point index, frame index),
    [T, 2] float64 keypoint pixel coordinates from ``images``' POINTS2D, in that image's camera
    resolution). A point observed twice in one frame keeps its first observation. A track that
    names a keypoint its image does not have is a DataError naming ``source``."""
    point_idx, frames, image_ids, keypoint = _flat_tracks(points, frame_of_image)
    pairs, first = np.unique(np.stack([point_idx, frames], axis=1), axis=0, return_index=True)
    ids, kp = image_ids[first], keypoint[first]
    xy = np.empty((len(pairs), 2))
    order = np.argsort(ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, ids[order][1:] != ids[order][:-1]])
    for rows in np.split(order, starts[1:]) if len(order) else []:
        image = images[int(ids[rows[0]])]
        bad = (kp[rows] < 0) | (kp[rows] >= len(image.xys))
        if bad.any():
            k = first[rows[bad][0]]
            raise DataError(
                f"point {int(points.ids[point_idx[k]])} is tracked to keypoint {int(keypoint[k])} of image {image.name!r}, which has {len(image.xys)}",
                source,
            )
        xy[rows] = image.xys[kp[rows]]
    return pairs, xy


def read_points3d(path: Path, with_tracks: bool = False) -> ColmapPoints:
    """points3D.bin or points3D.txt, by extension."""
    return (read_points3d_binary if path.suffix == ".bin" else read_points3d_text)(path, with_tracks)


def write_model(
    folder: Path,
    cameras: dict[int, ColmapCamera],
    images: dict[int, ColmapImage],
    points: ColmapPoints | None = None,
    ext: str = ".bin",
) -> None:
    """Write a sparse model (binary with ext=".bin", text with ".txt"), each file atomically; used
    for round-trip tests and for exporting. Points without tracks are written with empty tracks."""
    folder.mkdir(parents=True, exist_ok=True)
    if points is None:
        points = ColmapPoints(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0))
    tracks = points.tracks if len(points.tracks) == len(points) else [np.zeros((0, 2), np.int32)] * len(points)
    if ext == ".bin":
        with atomic_write(folder / "cameras.bin") as tmp, open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(cameras)))
            for c in cameras.values():
                mid, n = CAMERA_MODELS[c.model]
                f.write(struct.pack("<iiQQ", c.id, mid, c.width, c.height))
                f.write(struct.pack("<" + "d" * n, *np.asarray(c.params, dtype=np.float64)))
        with atomic_write(folder / "images.bin") as tmp, open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(images)))
            for im in images.values():
                f.write(struct.pack("<idddddddi", im.id, *im.qvec, *im.tvec, im.camera_id))
                f.write(im.name.encode("utf-8") + b"\x00")
                f.write(struct.pack("<Q", len(im.xys)))
                for (x, y), pid in zip(im.xys, im.point3d_ids):
                    f.write(struct.pack("<ddq", x, y, int(pid)))
        with atomic_write(folder / "points3D.bin") as tmp, open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(points)))
            for i in range(len(points)):
                f.write(struct.pack("<QdddBBBd", int(points.ids[i]), *points.xyz[i], *points.rgb[i].tolist(), points.error[i]))
                tr = np.asarray(tracks[i], dtype=np.int32).reshape(-1, 2)
                f.write(struct.pack("<Q", len(tr)))
                f.write(tr.astype("<i4").tobytes())
    elif ext == ".txt":
        lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
        lines += [f"{c.id} {c.model} {c.width} {c.height} " + " ".join(repr(float(p)) for p in c.params) for c in cameras.values()]
        atomic_write_bytes(folder / "cameras.txt", ("\n".join(lines) + "\n").encode())
        lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
        for im in images.values():
            lines.append(" ".join([str(im.id), *(repr(float(v)) for v in (*im.qvec, *im.tvec)), str(im.camera_id), im.name]))
            lines.append(" ".join(f"{x!r} {y!r} {int(p)}" for (x, y), p in zip(im.xys.tolist(), im.point3d_ids)))
        atomic_write_bytes(folder / "images.txt", ("\n".join(lines) + "\n").encode())
        lines = ["# 3D point list with one line of data per point:", "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
        for i in range(len(points)):
            tr = " ".join(str(int(v)) for v in np.asarray(tracks[i]).reshape(-1))
            lines.append(
                f"{int(points.ids[i])} " + " ".join(repr(float(v)) for v in points.xyz[i])
                + " " + " ".join(str(int(v)) for v in points.rgb[i]) + f" {float(points.error[i])!r} {tr}".rstrip()
            )
        atomic_write_bytes(folder / "points3D.txt", ("\n".join(lines) + "\n").encode())
    else:
        raise ValueError(f"ext must be '.bin' or '.txt', got {ext!r}")
