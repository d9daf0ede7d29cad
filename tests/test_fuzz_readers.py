"""Property-based fuzzing of every reader a user can point at a file (issue 31).

Each reader gets a small valid input built here from synthetic data, and hypothesis mutates one of
its files: truncation, bit flips, overwritten / inserted / deleted bytes, numbers replaced by
NaN, inf, negative or huge values (a declared count of 10^12 among them), structured changes of
JSON / YAML / .npy / .npz contents (wrong types, wrong shapes, missing keys), or junk bytes.

The property: reading either succeeds with a usable result, or raises recon's one-line user error
(:class:`recon.errors.ReconError`, which the console scripts print as one line) naming the file.
Any other exception is a reader bug, and so is a case that runs longer than ``CASE_SECONDS`` or
tries to allocate more than ``CASE_EXTRA_BYTES`` of address space (a declared count must be
checked against the file before anything that size is allocated).

Two tiers: ``make test`` runs ``RECON_FUZZ_EXAMPLES`` (default 100) derandomized cases per
reader, the same cases every run (about 30 s on one core); ``make fuzz`` runs the long campaign
(``FUZZ_EXAMPLES=3000`` cases per reader by default). Set ``RECON_FUZZ_SEED`` to draw other cases
than the fixed ones. What the fuzzing found is kept below as regression examples.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import resource
import shutil
import signal
import struct
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from recon.errors import ReconError  # noqa: E402

CASES = int(os.environ.get("RECON_FUZZ_EXAMPLES", "100"))
SEED = os.environ.get("RECON_FUZZ_SEED")
CASE_SECONDS = 20.0
"""A case that runs longer than this is a hang (the slowest valid case here takes well under 1 s)."""
CASE_EXTRA_BYTES = 2 << 30
"""Address space a case may add to the process (the valid inputs here need a few MB)."""

FUZZ_SETTINGS = settings(
    max_examples=CASES,
    derandomize=SEED is None,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)


def fuzz(test: Callable) -> Callable:
    test = FUZZ_SETTINGS(test)
    return seed(int(SEED))(test) if SEED is not None else test


# -- limits and the property -----------------------------------------------------------------
class CaseTimeout(BaseException):
    """Raised in a case that runs past CASE_SECONDS (a BaseException: readers catch Exception)."""


@contextmanager
def limits():
    """Time and address-space limits for one case (SIGALRM; RLIMIT_AS above the current size)."""
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran longer than {CASE_SECONDS} s")

    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * resource.getpagesize()
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes + CASE_EXTRA_BYTES, old_limit[1]))
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)


def outcome(read: Callable[[], Any], names: Path) -> Any:
    """Run ``read``; return its result, or None for a ReconError that is one line and names a file
    (``names`` itself for a single-file reader, anything inside it for a dataset folder). Any other
    exception propagates and fails the case."""
    try:
        with limits(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read()
    except ReconError as err:
        message = str(err)
        assert "\n" not in message, f"not one line: {message!r}"
        assert err.path is not None and message.startswith(f"{err.path}: "), f"does not name the file: {message!r}"
        if names.is_file():
            assert err.path == names, f"names {err.path}, not the file read ({names})"
        return None


# -- mutations -------------------------------------------------------------------------------
SPECIAL_NUMBERS = [b"nan", b"NaN", b"inf", b"-inf", b"-1", b"0", b"-0.0", b"1e308", b"1e-320", b"1000000000000",
                   b"18446744073709551615", b"99999999999999999999999", b"1.5", b"x", b""]
BIG_INTEGERS = [10**12, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, 2**40, 0]
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@st.composite
def byte_mutation(draw, data: bytes) -> bytes:
    """One mutation of a file's bytes (or a whole file of junk)."""
    n = len(data)
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "number", "count", "junk"]))
    if kind == "truncate" and n:
        return data[: draw(st.integers(0, n - 1))]
    if kind == "flip" and n:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, n - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if kind == "overwrite" and n:
        at = draw(st.integers(0, n - 1))
        junk = draw(st.binary(min_size=1, max_size=16))
        return data[:at] + junk + data[at + len(junk) :]
    if kind == "insert":
        at = draw(st.integers(0, n))
        return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    if kind == "delete" and n:
        at = draw(st.integers(0, n - 1))
        return data[:at] + data[at + draw(st.integers(1, 64)) :]
    if kind == "number":
        found = list(_NUMBER.finditer(data))
        if found:
            m = found[draw(st.integers(0, len(found) - 1))]
            return data[: m.start()] + draw(st.sampled_from(SPECIAL_NUMBERS)) + data[m.end() :]
    if kind == "count" and n >= 4:  # a binary count / size field made huge (or zero)
        value = draw(st.sampled_from(BIG_INTEGERS))
        fmt = draw(st.sampled_from(["<Q", "<I", "<i", "<q", ">I", "<d"]))
        width = struct.calcsize(fmt)
        at = draw(st.integers(0, max(0, n - width)))
        if fmt == "<d":
            packed = struct.pack(fmt, float(value))
        else:
            wrapped = value % (1 << (8 * width))  # the same bits, as the field's signedness reads them
            if fmt[1].islower() and wrapped >= 1 << (8 * width - 1):
                wrapped -= 1 << (8 * width)
            packed = struct.pack(fmt, wrapped)
        return data[:at] + packed + data[at + width :]
    return draw(st.binary(max_size=512))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) to a node of a JSON-like tree."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def tree_mutation(draw, doc: Any) -> Any:
    """A JSON-like tree with one node replaced by another value, deleted, or its list emptied / repeated."""
    doc = json.loads(json.dumps(doc))
    path = draw(st.sampled_from(_paths(doc)))
    if not path:
        return draw(JSON_VALUES)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    kind = draw(st.sampled_from(["replace", "replace", "delete", "special", "repeat"]))
    if kind == "delete":
        del parent[key]
    elif kind == "special":
        parent[key] = draw(st.sampled_from([float("nan"), float("inf"), -1, 0, 10**12, 1e308, -1e308, "", [], {}]))
    elif kind == "repeat" and isinstance(parent[key], list):
        parent[key] = parent[key] * draw(st.integers(0, 3))
    else:
        parent[key] = draw(JSON_VALUES)
    return doc


@st.composite
def array_mutation(draw, arr: np.ndarray) -> np.ndarray:
    """An array with a value made special, another shape or dtype, or replaced by junk."""
    kind = draw(st.sampled_from(["value", "value", "shape", "dtype", "object", "other"]))
    if kind == "value" and arr.size:
        out = np.array(arr, dtype=np.float64 if arr.dtype.kind != "f" else arr.dtype)
        with np.errstate(over="ignore"):  # 1e300 in a float32 array is inf, one more special value
            out.reshape(-1)[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e300, -1e300, 1e-300]))
        return out
    if kind == "shape":
        flat = arr.reshape(-1)
        size = draw(st.integers(0, max(0, arr.size)))
        dims = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
        want = int(np.prod(dims)) if dims else 1
        return np.resize(flat[:size] if size else np.zeros(1, arr.dtype), want).reshape(dims)
    if kind == "dtype":
        return arr.astype(draw(st.sampled_from([np.int8, np.uint16, np.int64, np.float16, np.complex64, np.bool_, "U3"])))
    if kind == "object":
        return np.array([None, "x"], dtype=object)
    return np.asarray(draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20)), dtype=np.float64)


def _save_npy(arr: np.ndarray, path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=True)  # an object array is written as a pickle: readers must refuse it


@st.composite
def file_mutation(draw, path: Path) -> Callable[[Path], None]:
    """A function that writes a mutated copy of ``path``'s content to a given path."""
    data = path.read_bytes()
    suffix = path.suffix.lower()
    structured = draw(st.booleans()) and suffix in (".json", ".yml", ".npy", ".npz", ".safetensors")
    if not structured:
        mutated = draw(byte_mutation(data))
        return lambda dst: dst.write_bytes(mutated)
    if suffix == ".json":
        doc = draw(tree_mutation(json.loads(data)))
        text = json.dumps(doc)
        return lambda dst: dst.write_text(text)
    if suffix == ".yml":
        doc = draw(tree_mutation(yaml.safe_load(data)))
        text = yaml.safe_dump(doc)
        return lambda dst: dst.write_text(text)
    if suffix == ".safetensors":  # its JSON header (tensor names, dtypes, shapes, offsets, metadata)
        (length,) = struct.unpack("<Q", data[:8])
        header = json.dumps(draw(tree_mutation(json.loads(data[8 : 8 + length])))).encode()
        mutated = struct.pack("<Q", len(header)) + header + data[8 + length :]
        return lambda dst: dst.write_bytes(mutated)
    if suffix == ".npy":
        arr = draw(array_mutation(np.load(path)))
        return lambda dst: _save_npy(arr, dst)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    key = draw(st.sampled_from(sorted(arrays)))
    if draw(st.integers(0, 4)) == 0:
        del arrays[key]
    else:
        arrays[key] = draw(array_mutation(arrays[key]))

    def write(dst: Path) -> None:
        with open(dst, "wb") as f:
            np.savez(f, **arrays)

    return write


# -- the readers and their valid inputs --------------------------------------------------------
def _png(path: Path, w: int = 8, h: int = 6, mode: str = "RGB", value: Any = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    if value is not None:
        Image.new(mode, (w, h), value).save(path)
    elif mode == "RGBA":
        Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _ring_c2w(n: int, radius: float = 3.0) -> np.ndarray:
    """OpenCV camera-to-world [n, 3, 4] on a ring, looking at the origin."""
    from recon.cameras import look_at

    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    eye = torch.tensor(np.stack([radius * np.cos(a), radius * np.sin(a), np.full(n, 1.0)], -1))
    return look_at(eye, torch.zeros(n, 3, dtype=torch.float64)).numpy()


def _opengl_4x4(c2w: np.ndarray) -> list:
    m = np.eye(4)
    m[:3] = c2w
    m[:3, 1:3] *= -1
    return m.tolist()


def _ply_points(path: Path) -> None:
    pts = np.random.default_rng(0).uniform(-1, 1, (6, 3))
    lines = ["ply", "format ascii 1.0", "element vertex 6", "property float x", "property float y", "property float z",
             "property uchar red", "property uchar green", "property uchar blue", "end_header"]
    lines += [f"{x:.4f} {y:.4f} {z:.4f} 200 100 50" for x, y, z in pts]
    path.write_text("\n".join(lines) + "\n")


def seed_nerfstudio(root: Path) -> None:
    c2w = _ring_c2w(3)
    frames = []
    for i in range(3):
        _png(root / f"images/frame_{i:05d}.png")
        frames.append({"file_path": f"images/frame_{i:05d}.png", "transform_matrix": _opengl_4x4(c2w[i])})
    _ply_points(root / "points.ply")
    meta = {"camera_model": "OPENCV", "fl_x": 9.0, "fl_y": 9.0, "cx": 4.0, "cy": 3.0, "w": 8, "h": 6, "k1": 0.01,
            "ply_file_path": "points.ply", "applied_scale": 1.0, "frames": frames, "train_filenames": [f["file_path"] for f in frames[:2]]}
    (root / "transforms.json").write_text(json.dumps(meta))


def seed_blender(root: Path) -> None:
    c2w = _ring_c2w(4, radius=4.0)
    for split, ids in (("train", [0, 1]), ("test", [2, 3])):
        frames = []
        for i in ids:
            _png(root / split / f"r_{i}.png", mode="RGBA")
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": _opengl_4x4(c2w[i])})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))


def _colmap_model(root: Path, ext: str) -> None:
    from data.parsers.colmap_io import ColmapCamera, ColmapImage, ColmapPoints, write_model
    from recon.rotations import matrix_to_quaternion

    c2w = _ring_c2w(3)
    cams = {1: ColmapCamera(1, "PINHOLE", 8, 6, np.array([9.0, 9.0, 4.0, 3.0])), 2: ColmapCamera(2, "OPENCV", 8, 6, np.array([9.0, 9.5, 4.0, 3.0, 0.01, 0.0, 0.001, 0.0]))}
    images = {}
    for i in range(3):
        R = c2w[i, :, :3].T
        q = matrix_to_quaternion(torch.from_numpy(R)).numpy()
        images[i + 1] = ColmapImage(i + 1, q, -R @ c2w[i, :, 3], 1 + i % 2, f"img_{i}.png", np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0, -1]))
        _png(root / "images" / f"img_{i}.png")
    xyz = np.random.default_rng(1).uniform(-0.5, 0.5, (4, 3))
    tracks = [np.array([[1, 0], [2, 0]], np.int32)] * 4
    points = ColmapPoints(np.arange(4, dtype=np.int64), xyz, np.full((4, 3), 100, np.uint8), np.full(4, 0.5), tracks)
    write_model(root / "sparse" / "0", cams, images, points, ext=ext)


def seed_llff(root: Path) -> None:
    c2w = _ring_c2w(3)
    llff = np.stack([-c2w[:, :, 1], c2w[:, :, 0], -c2w[:, :, 2], c2w[:, :, 3]], axis=-1)  # inverse of llff_to_opencv
    hwf = np.broadcast_to(np.array([6.0, 8.0, 9.0])[None, :, None], (3, 3, 1))
    rows = np.concatenate([np.concatenate([llff, hwf], -1).reshape(3, 15), np.tile([[1.0, 6.0]], (3, 1))], 1)
    np.save(root / "poses_bounds.npy", rows)
    for i in range(3):
        _png(root / "images" / f"img_{i}.png")
    _colmap_model(root / "colmap_tmp", ".bin")
    (root / "sparse" / "0").mkdir(parents=True)
    shutil.move(root / "colmap_tmp" / "sparse" / "0" / "points3D.bin", root / "sparse" / "0" / "points3D.bin")
    shutil.rmtree(root / "colmap_tmp")


def _idr_npz(path: Path, n: int, K: np.ndarray) -> None:
    c2w = _ring_c2w(n, radius=3.0)
    npz = {}
    for i in range(n):
        R = c2w[i, :, :3].T
        P = np.eye(4)
        P[:3] = K @ np.c_[R, -R @ c2w[i, :, 3]]
        npz[f"world_mat_{i}"] = P
        npz[f"scale_mat_{i}"] = np.diag([1.5, 1.5, 1.5, 1.0])
    np.savez(path, **npz)


def seed_idr(root: Path) -> None:
    for i in range(3):
        _png(root / "image" / f"{i:06d}.png")
        _png(root / "mask" / f"{i:03d}.png", mode="L", value=255)
    _idr_npz(root / "cameras_sphere.npz", 3, np.array([[9.0, 0, 4.0], [0, 9.0, 3.0], [0, 0, 1]]))


def seed_monosdf(root: Path) -> None:
    for i in range(3):
        _png(root / f"{i:06d}_rgb.png")
        np.save(root / f"{i:06d}_depth.npy", np.full((6, 8), 0.5, np.float32))
        np.save(root / f"{i:06d}_normal.npy", np.full((3, 6, 8), 0.5, np.float32))
    _idr_npz(root / "cameras.npz", 3, np.array([[9.0, 0, 4.0], [0, 9.0, 3.0], [0, 0, 1]]))


def seed_sdfstudio(root: Path) -> None:
    c2w = _ring_c2w(3)
    frames = []
    for i in range(3):
        _png(root / f"{i:06d}_rgb.png")
        np.save(root / f"{i:06d}_depth.npy", np.full((6, 8), 0.5, np.float32))
        m = np.eye(4)
        m[:3] = c2w[i]
        frames.append({"rgb_path": f"{i:06d}_rgb.png", "camtoworld": m.tolist(), "intrinsics": [[9.0, 0, 4.0, 0], [0, 9.0, 3.0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                       "mono_depth_path": f"{i:06d}_depth.npy"})
    meta = {"camera_model": "OPENCV", "height": 6, "width": 8, "has_mono_prior": True,
            "scene_box": {"aabb": [[-2, -2, -2], [2, 2, 2]], "near": 0.5, "far": 4.5}, "frames": frames}
    (root / "meta_data.json").write_text(json.dumps(meta))


def seed_csl(root: Path) -> None:
    square = "0 0 {z}\n1 0 {z}\n1 1 {z}\n0 1 {z}\n"
    text = "CSLC\n2 2\n"
    for p, z in ((1, 0.0), (2, 0.5)):
        text += f"{p} 4 1 0 0 1 {-z}\n" + square.format(z=z) + "4 1 0 1 2 3\n"
    (root / "shape.csl").write_text(text)


def seed_images(root: Path) -> None:
    _png(root / "rgb.png")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(root / "rgb.jpg", quality=90)


def seed_masks(root: Path) -> None:
    Image.fromarray((np.arange(48).reshape(6, 8) % 2 * 255).astype(np.uint8)).save(root / "mask.png")
    np.save(root / "mask.npy", np.arange(48).reshape(6, 8) % 2 == 0)


def seed_depths(root: Path) -> None:
    Image.fromarray(np.full((6, 8), 2500, dtype=np.uint16)).save(root / "depth.png")
    np.save(root / "depth.npy", np.linspace(0.5, 3.0, 48, dtype=np.float32).reshape(6, 8))


def seed_normals(root: Path) -> None:
    np.save(root / "normal.npy", np.full((3, 6, 8), 0.5, np.float32))
    Image.fromarray(np.full((6, 8, 3), 128, dtype=np.uint8)).save(root / "normal.png")


def seed_meshes(root: Path) -> None:
    import trimesh

    box = trimesh.creation.box()
    box.export(root / "mesh.ply")
    box.export(root / "mesh_ascii.ply", encoding="ascii")
    box.export(root / "mesh.obj")
    box.export(root / "mesh.stl")


def seed_splat(root: Path) -> None:
    from recon.export.splat_ply import write_splat_ply

    g = torch.Generator().manual_seed(0)
    n = 5
    params = {"means": torch.randn(n, 3, generator=g), "scales": torch.randn(n, 3, generator=g) - 3, "quats": torch.randn(n, 4, generator=g),
              "opacities": torch.randn(n, generator=g), "sh0": torch.randn(n, 1, 3, generator=g), "shN": torch.randn(n, 3, 3, generator=g)}
    write_splat_ply(root / "splat.ply", params, drop_invisible=False)


def seed_convex(root: Path) -> None:
    from recon.export.convex_ply import write_convex_ply

    g = torch.Generator().manual_seed(0)
    n, k = 4, 6
    params = {"points": torch.randn(n, k, 3, generator=g), "delta": torch.randn(n, generator=g), "sigma": torch.randn(n, generator=g),
              "opacities": torch.randn(n, generator=g), "mask": torch.randn(n, generator=g), "sh0": torch.randn(n, 1, 3, generator=g),
              "shN": torch.randn(n, 3, 3, generator=g)}
    write_convex_ply(root / "convex.ply", params, scaling_exponent=2.0, mask_threshold=0.01)


def seed_config(root: Path) -> None:
    from recon.config import get_method, override, save_config

    save_config(override(get_method("vanilla-nerf-small").config, data=root / "scene"), root / "config.yml")


def seed_checkpoint(root: Path) -> None:
    from recon.engine.checkpoint import save_checkpoint

    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))])
    state = {"optimizers": {"fields": opt.state_dict()}, "rng": torch.get_rng_state()[:64], "sampler": {"epoch": 2, "order": [3, 1, 2]}}
    save_checkpoint(root, 7, {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}, state, "vanilla-nerf-small", keep_only_latest=True)


def seed_camera_path(root: Path) -> None:
    from recon.camera_paths import save_camera_path_json
    from recon.cameras import Cameras

    c2w = torch.from_numpy(_ring_c2w(3)).float()
    cams = Cameras(camera_to_worlds=c2w, fx=torch.full((3,), 9.0), fy=torch.full((3,), 9.0), cx=torch.full((3,), 4.0), cy=torch.full((3,), 3.0),
                   width=torch.full((3,), 8), height=torch.full((3,), 6))
    save_camera_path_json(cams, root / "camera_path.json", fps=24.0)


def seed_crop(root: Path) -> None:
    from recon.export.crop import write_viewer_crop

    write_viewer_crop(root, torch.tensor([-0.5, -0.4, -0.3]), torch.tensor([0.5, 0.4, 0.3]), enabled=True)


# -- what a successful read must give ------------------------------------------------------------
def valid_dataset(out: Any) -> None:
    """Parsed cameras are usable: finite poses and intrinsics, positive image sizes, splits in range."""
    c = out.cameras
    for name in ("camera_to_worlds", "fx", "fy", "cx", "cy"):
        assert torch.isfinite(getattr(c, name)).all(), f"non-finite {name} in a successful parse"
    assert (c.fx > 0).all() and (c.fy > 0).all() and (c.width > 0).all() and (c.height > 0).all()
    n = len(out.image_filenames)
    assert all(0 <= i < n for ids in out.splits.values() for i in ids)
    assert math.isfinite(out.dataparser_scale) and out.dataparser_scale > 0
    assert torch.isfinite(out.dataparser_transform).all()


def valid_sections(out: Any) -> None:
    assert math.isfinite(out.dataparser_scale) and out.dataparser_scale > 0
    assert np.isfinite(out.sections.all_vertices()).all()


def _parser(name: str) -> Callable[[Path], Any]:
    from data.parsers import PARSERS

    return lambda root: PARSERS[name]().load(root)


def _call(target: str, **kwargs: Any) -> Callable[[Path], Any]:
    """A reader ``module:function`` called with the path (and ``kwargs``), imported on first use."""
    module, _, function = target.partition(":")
    return lambda path: getattr(importlib.import_module(module), function)(path, **kwargs)


def _images(path: Path) -> Any:
    from data.images import image_size, load_image

    image_size(path)
    return load_image(path)


def _checkpoint(path: Path) -> Any:
    from recon.engine.checkpoint import load_model_state, load_train_state

    if path.name.endswith(".safetensors"):
        return load_model_state(path, "vanilla-nerf-small")
    return load_train_state(path)


def _crop(path: Path) -> Any:
    from recon.export.crop import read_viewer_crop

    return read_viewer_crop(path.parent)


@dataclass
class Reader:
    """A reader under test: how to build its valid input, which files to mutate, how to read.

    ``dataset``: ``read`` takes the folder (errors may name any file in it); otherwise it takes the
    mutated file and errors must name that file."""

    build: Callable[[Path], None]
    files: list[str]
    read: Callable[[Path], Any]
    dataset: bool = False
    check: Callable[[Any], None] | None = None


READERS: dict[str, Reader] = {
    "nerfstudio": Reader(seed_nerfstudio, ["transforms.json", "points.ply", "images/frame_00000.png"], _parser("nerfstudio-data"), True, valid_dataset),
    "blender": Reader(seed_blender, ["transforms_train.json", "transforms_test.json", "train/r_0.png"], _parser("blender-data"), True, valid_dataset),
    "llff": Reader(seed_llff, ["poses_bounds.npy", "sparse/0/points3D.bin"], _parser("llff-data"), True, valid_dataset),
    "colmap-bin": Reader(lambda r: _colmap_model(r, ".bin"), ["sparse/0/cameras.bin", "sparse/0/images.bin", "sparse/0/points3D.bin"], _parser("colmap"), True, valid_dataset),
    "colmap-txt": Reader(lambda r: _colmap_model(r, ".txt"), ["sparse/0/cameras.txt", "sparse/0/images.txt", "sparse/0/points3D.txt"], _parser("colmap"), True, valid_dataset),
    "idr-dtu": Reader(seed_idr, ["cameras_sphere.npz"], _parser("dtu-data"), True, valid_dataset),
    "monosdf": Reader(seed_monosdf, ["cameras.npz"], _parser("monosdf-data"), True, valid_dataset),
    "sdfstudio": Reader(seed_sdfstudio, ["meta_data.json"], _parser("monosdf-data"), True, valid_dataset),
    "csl": Reader(seed_csl, ["shape.csl"], _parser("csl"), True, valid_sections),
    "images": Reader(seed_images, ["rgb.png", "rgb.jpg"], _images),
    "masks": Reader(seed_masks, ["mask.png", "mask.npy"], _call("data.images:load_mask")),
    "depths": Reader(seed_depths, ["depth.png", "depth.npy"], _call("data.images:load_depth", scale=1e-3)),
    "normals": Reader(seed_normals, ["normal.npy", "normal.png"], _call("data.images:load_normal")),
    "meshes": Reader(seed_meshes, ["mesh.ply", "mesh_ascii.ply", "mesh.obj", "mesh.stl"], _call("viewer.cli:load_mesh")),
    "ply-points": Reader(seed_nerfstudio, ["points.ply"], _call("data.parsers.nerfstudio:load_ply_points")),
    "splat-ply": Reader(seed_splat, ["splat.ply"], _call("viewer.cli:load_splats")),
    "convex-ply": Reader(seed_convex, ["convex.ply"], _call("recon.export.convex_ply:read_convex_ply")),
    "config": Reader(seed_config, ["config.yml"], _call("recon.config:load_config")),
    "checkpoint": Reader(seed_checkpoint, ["step-000000007.safetensors", "step-000000007.state.pt"], _checkpoint),
    "camera-path": Reader(seed_camera_path, ["camera_path.json"], _call("recon.camera_paths:load_camera_path_json")),
    "crop": Reader(seed_crop, ["viewer_crop.json"], _crop),
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``seeds(name)``: the folder with the reader's valid input (built once), checked to read."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            root = tmp_path_factory.mktemp(f"seed-{name}")
            READERS[name].build(root)
            reader = READERS[name]
            for rel in ([""] if reader.dataset else reader.files):
                result = reader.read(root / rel)  # the unmutated input reads without error
                if reader.check:
                    reader.check(result)
            built[name] = root
        return built[name]

    return get


@pytest.mark.parametrize("name", list(READERS))
def test_fuzzed_reader(name: str, seeds, tmp_path_factory: pytest.TempPathFactory) -> None:
    reader = READERS[name]
    root = seeds(name)
    work = tmp_path_factory.mktemp(f"fuzz-{name}")
    cases = 0

    @fuzz
    @given(st.data())
    def case(data: st.DataObject) -> None:
        nonlocal cases
        cases += 1
        rel = data.draw(st.sampled_from(reader.files), label="file")
        write = data.draw(file_mutation(root / rel), label="mutation")
        shutil.rmtree(work)
        shutil.copytree(root, work)
        write(work / rel)
        target = work if reader.dataset else work / rel
        result = outcome(lambda: reader.read(target), target)
        if result is not None and reader.check:
            reader.check(result)

    case()
    print(f"fuzzed {name}: {cases} cases")  # shown by make fuzz (-rP): the figure RESULTS.md reports


# -- regression examples: what the fuzzing found, each fixed in its reader --------------------------
def _json_edit(edit: Callable[[Any], None]) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        doc = json.loads(data)
        edit(doc)
        return json.dumps(doc).encode()

    return change


def _npy_header_shape(shape: str) -> Callable[[bytes], bytes]:
    """A .npy whose header declares ``shape`` (padded to the header's length), data unchanged."""
    def change(data: bytes) -> bytes:
        (hlen,) = struct.unpack("<H", data[8:10])
        header = data[10 : 10 + hlen].decode("latin1")
        new = re.sub(r"'shape': \([^)]*\)", f"'shape': {shape}", header).rstrip("\n ")
        return data[:10] + (new + " " * (hlen - len(new) - 1) + "\n").encode("latin1") + data[10 + hlen :]

    return change


def _text_edit(old: str, new: str) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        assert old.encode() in data
        return data.replace(old.encode(), new.encode(), 1)

    return change


def _at(offset: int, fmt: str, value: Any) -> Callable[[bytes], bytes]:
    return lambda data: data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt) :]


def _png_idat_length(data: bytes) -> bytes:
    at = data.index(b"IDAT") - 4
    return data[:at] + b"\xff\xff\xff\xff" + data[at + 4 :]


def _npz_member_shape(data: bytes) -> bytes:
    """A stored .npz whose first member's header declares 10^12 rows (same length, CRC ignored by the check)."""
    import io
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for i, info in enumerate(src.infolist()):
            member = src.read(info)
            dst.writestr(info.filename, _npy_header_shape("(1000000000000, 4)")(member) if i == 0 else member)
    return out.getvalue()


REGRESSIONS = {
    # reader, file, change: each raised another exception type (or allocated the declared size) before
    # its fix; all but those in READ_FINE are now a one-line error
    "nerfstudio-huge-width": ("nerfstudio", "transforms.json", _json_edit(lambda d: d.update(w=1e308))),
    "nerfstudio-focal-overflows-float32": ("nerfstudio", "transforms.json", _json_edit(lambda d: d.update(fl_x=1e300))),
    "nerfstudio-scaled-rotation": ("nerfstudio", "transforms.json", _json_edit(lambda d: d["frames"][0]["transform_matrix"][0].__setitem__(0, 1e300))),
    "nerfstudio-applied-transform-ragged": ("nerfstudio", "transforms.json", _json_edit(lambda d: d.update(applied_transform=[[1, 0], [0]]))),
    "nerfstudio-applied-scale-list": ("nerfstudio", "transforms.json", _json_edit(lambda d: d.update(applied_scale=[2.0]))),
    "nerfstudio-applied-scale-1e-320": ("nerfstudio", "transforms.json", _json_edit(lambda d: d.update(applied_scale=1e-320))),
    "llff-npy-declares-1e12-rows": ("llff", "poses_bounds.npy", _npy_header_shape("(1000000000000, 17)")),
    "llff-npy-header-garbled": ("llff", "poses_bounds.npy", _npy_header_shape("(3, 17")),
    "llff-text-array": ("llff", "poses_bounds.npy", lambda data: _saved(np.full((3, 17), "ab"))),
    "llff-points3d-count-1e12": ("llff", "sparse/0/points3D.bin", _at(0, "<Q", 10**12)),
    "colmap-points3d-id-above-int64": ("colmap-bin", "sparse/0/points3D.bin", _at(8, "<Q", 2**64 - 1)),  # read as id -1
    "colmap-images-keypoints-1e12": ("colmap-bin", "sparse/0/images.bin", _at(8 + 64 + len(b"img_0.png\0"), "<Q", 10**12)),
    "colmap-camera-nan-focal": ("colmap-bin", "sparse/0/cameras.bin", _at(8 + 24, "<d", float("nan"))),
    "colmap-camera-zero-width": ("colmap-bin", "sparse/0/cameras.bin", _at(8 + 8, "<Q", 0)),
    "colmap-txt-nan-cx": ("colmap-txt", "sparse/0/cameras.txt", _text_edit("PINHOLE 8 6 9.0 9.0 4.0", "PINHOLE 8 6 9.0 9.0 nan")),
    "colmap-txt-point-colour-300": ("colmap-txt", "sparse/0/points3D.txt", lambda d: re.sub(rb"\n0 (\S+ \S+ \S+) 100 ", rb"\n0 \1 300 ", d, count=1)),
    "colmap-txt-track-above-int32": ("colmap-txt", "sparse/0/points3D.txt", lambda d: d.replace(b" 1 0 2 0", b" 1 0 2 99999999999", 1)),
    "idr-npz-not-a-zip": ("idr-dtu", "cameras_sphere.npz", lambda d: d[:20]),
    "idr-npz-bad-crc": ("idr-dtu", "cameras_sphere.npz", lambda d: d[:200] + bytes([d[200] ^ 1]) + d[201:]),
    "idr-npz-member-declares-1e12-rows": ("idr-dtu", "cameras_sphere.npz", _npz_member_shape),
    "idr-singular-world-mat": ("idr-dtu", "cameras_sphere.npz", lambda d: _saved_npz({**_npz(d), "world_mat_0": np.zeros((4, 4))})),
    "sdfstudio-ragged-intrinsics": ("sdfstudio", "meta_data.json", _json_edit(lambda d: d["frames"][0].update(intrinsics=[[1, 2], [3]]))),
    "sdfstudio-depth-path-object": ("sdfstudio", "meta_data.json", _json_edit(lambda d: d["frames"][0].update(mono_depth_path={"a": 1}))),
    "sdfstudio-scene-box-list": ("sdfstudio", "meta_data.json", _json_edit(lambda d: d.update(scene_box=[1, 2]))),
    "mask-png-idat-4gib": ("masks", "mask.png", _png_idat_length),
    "normal-npy-shape-overflow": ("normals", "normal.npy", _npy_header_shape("(3, 99999999999999999999999, 8)")),
    "csl-vertex-index-1e30": ("csl", "shape.csl", _text_edit("4 1 0 1 2 3", "4 1 0 1 2 1000000000000000000000000000000")),
    "checkpoint-metadata-without-step": ("checkpoint", "step-000000007.safetensors", lambda d: d.replace(b'"step":"7"', b'"stop":"7"')),
    "splat-ply-declares-1e12-vertices": ("splat-ply", "splat.ply", _text_edit("element vertex 5", "element vertex 1000000000000")),
    "convex-ply-declares-1e12-convexes": ("convex-ply", "convex.ply", _text_edit("element convex 4", "element convex 1000000000000")),
    "mesh-ascii-ply-declares-1e12-vertices": ("meshes", "mesh_ascii.ply", _text_edit("element vertex 8", "element vertex 1000000000000")),
    "ply-points-declares-1e12-vertices": ("ply-points", "points.ply", _text_edit("element vertex 6", "element vertex 1000000000000")),
    "nerfstudio-file-path-too-long": ("nerfstudio", "transforms.json", _json_edit(lambda d: d["frames"][0].update(file_path="x" * 5000))),
    "nerfstudio-file-path-nul": ("nerfstudio", "transforms.json", _json_edit(lambda d: [f.update(file_path="images/a\0b.png") for f in d["frames"]])),
    "nerfstudio-5000-digit-integer": ("nerfstudio", "transforms.json", _text_edit('"w": 8', '"w": ' + "9" * 5000)),
    "blender-camera-angle-zero": ("blender", "transforms_train.json", _json_edit(lambda d: d.update(camera_angle_x=0))),
    "blender-w-zero": ("blender", "transforms_train.json", _json_edit(lambda d: d.update(fl_x=9.0, w=0))),
    "nerfstudio-camera-angle-zero": ("nerfstudio", "transforms.json", _json_edit(lambda d: [d.pop("fl_x"), d.update(camera_angle_x=0.0)])),
    "blender-absolute-file-path": ("blender", "transforms_test.json", _json_edit(lambda d: d["frames"][0].update(file_path="/test/r_3"))),
    "blender-file-path-too-long": ("blender", "transforms_train.json", _json_edit(lambda d: d["frames"][0].update(file_path="x" * 5000))),
    "colmap-txt-image-name-too-long": ("colmap-txt", "sparse/0/images.txt", _text_edit("img_0.png", "x" * 5000 + ".png")),
    "colmap-camera-focal-1e-320": ("colmap-bin", "sparse/0/cameras.bin", _at(8 + 24 + 8, "<d", 1e-320)),
    "llff-far-bound-1e300": ("llff", "poses_bounds.npy", lambda d: _saved(np.load(__import__("io").BytesIO(d)) * np.r_[np.ones(16), 1e300])),
    "camera-path-width-1e400": ("camera-path", "camera_path.json", _text_edit('"render_width": 8', '"render_width": 1' + "0" * 400)),
    "camera-path-width-1e30": ("camera-path", "camera_path.json", _text_edit('"render_width": 8', '"render_width": 1' + "0" * 30)),
    "camera-path-5000-digit-integer": ("camera-path", "camera_path.json", _text_edit('"render_width": 8', '"render_width": 1' + "0" * 5000)),
    "crop-nested-too-deeply": ("crop", "viewer_crop.json", lambda d: b"[" * 100000),
    "config-nested-too-deeply": ("config", "config.yml", lambda d: b"_type: " + b"[" * 100000),
}


READ_FINE = {"colmap-points3d-id-above-int64", "mask-png-idat-4gib", "nerfstudio-file-path-too-long", "colmap-txt-image-name-too-long"}
"""Examples that now read: the mask's pixels are all there (its IDAT chunk only claims 4 GiB); an
image whose name is too long for the system is a missing image, skipped like one."""


def _saved(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npz(data: bytes) -> dict[str, np.ndarray]:
    import io

    with np.load(io.BytesIO(data)) as z:
        return {k: z[k] for k in z.files}


def _saved_npz(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("example", list(REGRESSIONS))
def test_regression_example_is_a_one_line_error(example: str, seeds, tmp_path: Path) -> None:
    name, rel, change = REGRESSIONS[example]
    reader = READERS[name]
    work = tmp_path / "input"
    shutil.copytree(seeds(name), work)
    (work / rel).write_bytes(change((work / rel).read_bytes()))
    target = work if reader.dataset else work / rel
    result = outcome(lambda: reader.read(target), target)
    if example in READ_FINE:
        assert result is not None and (reader.check is None or reader.check(result) is None)
    else:
        assert result is None, "read without an error"
