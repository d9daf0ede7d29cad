"""Writing meshes and point clouds, always atomically (see :func:`recon.atomic.atomic_write`).

Formats are chosen by the file suffix:

* meshes: ``.ply`` (binary, vertex colours kept), ``.obj`` (vertex colours as ``v x y z r g b``)
  and ``.glb`` (binary glTF) via trimesh;
* reading (:func:`read_mesh`): the same three formats, vertices and faces in the file's order;
* point clouds: ``.ply``, binary little endian with the vertex properties
  ``x y z`` (float32), ``nx ny nz`` (float32, only when normals are given) and
  ``red green blue`` (uint8, only when colours are given), written directly with numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh

from recon.errors import DataError, ReconError
from recon.atomic import atomic_write

__all__ = ["MESH_SUFFIXES", "POINTCLOUD_SUFFIXES", "read_mesh", "write_mesh", "write_pointcloud", "to_uint8_colors"]

MESH_SUFFIXES: dict[str, str] = {".ply": "ply", ".obj": "obj", ".glb": "glb"}
POINTCLOUD_SUFFIXES: tuple[str, ...] = (".ply",)


def _suffix(path: Path, supported, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in supported:
        names = ", ".join(supported)
        got = f"'{suffix}'" if suffix else "no suffix"
        raise ReconError(f"cannot write a {what} with {got}; supported suffixes: {names}", path)
    return suffix


def _numpy(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x.astype(dtype, copy=False) if dtype is not None else x


def to_uint8_colors(colors) -> np.ndarray:
    """colors: [P, 3] uint8 or float in [0, 1] (numpy or torch) -> [P, 3] uint8 (rounded, clipped)."""
    c = _numpy(colors)
    if c.dtype == np.uint8:
        return c
    if np.issubdtype(c.dtype, np.integer):
        return np.clip(c, 0, 255).astype(np.uint8)
    return np.clip(np.round(c.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def write_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` to ``path`` as PLY, OBJ or GLB (by suffix), atomically. Returns the path.

    Unknown suffixes raise :class:`ReconError` naming the path and the supported suffixes.
    """
    path = Path(path)
    file_type = MESH_SUFFIXES[_suffix(path, MESH_SUFFIXES, "mesh")]
    with atomic_write(path) as tmp:
        # file_type is explicit because the temp name's suffix is only a convenience.
        if file_type == "ply":
            data = mesh.export(file_type="ply", encoding="binary")
        else:
            data = mesh.export(file_type=file_type)
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
    return path


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] float64 and triangles [F, 3] int64 of a PLY, OBJ or GLB mesh, in the file's
    order: nothing is merged, reordered or dropped, so two files with the same connectivity (a mesh
    and its deformed copy) give the same faces. A GLB scene's meshes are concatenated with their
    node transforms applied. A missing or unreadable file, another suffix, or a file without
    triangles raises :class:`DataError` naming the file."""
    path = Path(path)
    _suffix(path, MESH_SUFFIXES, "mesh")
    if not path.is_file():
        raise DataError("no such mesh file", path)
    try:
        loaded = trimesh.load(path, process=False, maintain_order=True, force="mesh")
    except Exception as exc:  # trimesh raises many types for malformed files
        raise DataError(f"cannot read the mesh ({type(exc).__name__}: {exc})".split("\n")[0], path) from None
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
    if len(faces) == 0:
        raise DataError("the mesh has no triangle faces", path)
    if not np.isfinite(vertices).all():
        raise DataError("the mesh has non-finite vertex coordinates", path)
    return vertices, faces


def write_pointcloud(points, colors, normals, path: str | Path) -> Path:
    """Write a point cloud as a binary little-endian PLY, atomically. Returns the path.

    points: [P, 3] world-space positions (numpy or torch; stored as float32).
    colors: [P, 3] uint8, or float in [0, 1]; None to omit colour properties.
    normals: [P, 3] or None to omit the ``nx ny nz`` properties.
    """
    path = Path(path)
    _suffix(path, POINTCLOUD_SUFFIXES, "point cloud")
    pts = _numpy(points, np.float32).reshape(-1, 3)
    n = len(pts)
    fields: list[tuple[str, str]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    nrm = col = None
    if normals is not None:
        nrm = _numpy(normals, np.float32).reshape(-1, 3)
        if len(nrm) != n:
            raise ValueError(f"normals have {len(nrm)} rows, points {n}")
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        col = to_uint8_colors(colors).reshape(-1, 3)
        if len(col) != n:
            raise ValueError(f"colors have {len(col)} rows, points {n}")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]

    # A structured array gives the exact interleaved binary layout PLY expects in one write.
    table = np.empty(n, dtype=np.dtype(fields))
    table["x"], table["y"], table["z"] = pts.T
    if nrm is not None:
        table["nx"], table["ny"], table["nz"] = nrm.T
    if col is not None:
        table["red"], table["green"], table["blue"] = col.T

    ply_types = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment written by recon", f"element vertex {n}"]
    header += [f"property {ply_types[t]} {name}" for name, t in fields]
    header += ["end_header"]
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(header) + "\n").encode("ascii"))
            f.write(table.tobytes())
    return path
