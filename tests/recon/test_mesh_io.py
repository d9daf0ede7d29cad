"""Atomic writes, mesh and point-cloud files."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from recon.errors import ReconError
from recon.export.mesh_io import write_mesh, write_pointcloud
from recon.atomic import atomic_write, atomic_write_bytes


def test_atomic_write_success_and_replace(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"old")
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".bin" and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # untouched until the block finishes
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.ply"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half a fi")
            raise RuntimeError("writer crashed")
    assert list(tmp_path.iterdir()) == []

    target.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.ply"]

    with pytest.raises(FileNotFoundError):  # a writer that silently wrote nothing
        with atomic_write(tmp_path / "never.txt"):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["out.ply"]


def test_failed_mesh_export_leaves_nothing(tmp_path, monkeypatch):
    mesh = trimesh.creation.box()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(trimesh.Trimesh, "export", boom)
    with pytest.raises(OSError):
        write_mesh(mesh, tmp_path / "mesh.ply")
    assert list(tmp_path.iterdir()) == []


def test_unknown_suffix(tmp_path):
    mesh = trimesh.creation.box()
    with pytest.raises(ReconError) as e:
        write_mesh(mesh, tmp_path / "mesh.stlx")
    msg = str(e.value)
    assert "mesh.stlx" in msg and ".ply" in msg and ".obj" in msg and ".glb" in msg
    with pytest.raises(ReconError, match=r"points\.xyz.*\.ply"):
        write_pointcloud(np.zeros((3, 3)), None, None, tmp_path / "points.xyz")
    with pytest.raises(ReconError, match="no suffix"):
        write_mesh(mesh, tmp_path / "mesh")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_mesh_roundtrip(tmp_path, suffix):
    mesh = trimesh.creation.icosphere(subdivisions=1)
    colors = np.random.default_rng(0).integers(0, 256, size=(len(mesh.vertices), 4), dtype=np.uint8)
    colors[:, 3] = 255
    mesh.visual.vertex_colors = colors
    path = write_mesh(mesh, tmp_path / f"mesh{suffix}")
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) == len(mesh.faces)
    assert loaded.volume == pytest.approx(mesh.volume, rel=1e-5)
    if suffix == ".ply":
        assert np.allclose(loaded.vertices, mesh.vertices, atol=1e-6)
        assert np.array_equal(np.asarray(loaded.visual.vertex_colors), colors)


def test_pointcloud_ply_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(1000, 3)).astype(np.float32)
    cols = rng.integers(0, 256, size=(1000, 3), dtype=np.uint8)
    nrm = rng.normal(size=(1000, 3)).astype(np.float32)
    path = write_pointcloud(pts, cols, nrm, tmp_path / "cloud.ply")
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    assert "format binary_little_endian 1.0" in header
    props = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    assert props == ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"]
    pc = trimesh.load(path)
    assert isinstance(pc, trimesh.PointCloud)
    assert np.array_equal(np.asarray(pc.vertices, dtype=np.float32), pts)
    assert np.array_equal(np.asarray(pc.colors)[:, :3], cols)

    # Float colours in [0, 1] are rounded to uint8; torch input works; normals optional.
    import torch

    path2 = write_pointcloud(torch.from_numpy(pts), torch.from_numpy(cols / 255.0), None, tmp_path / "cloud2.ply")
    pc2 = trimesh.load(path2)
    assert np.array_equal(np.asarray(pc2.colors)[:, :3], cols)
    assert b"nx" not in path2.read_bytes().split(b"end_header")[0]

    with pytest.raises(ValueError):
        write_pointcloud(pts, cols[:10], None, tmp_path / "bad.ply")
    assert not (tmp_path / "bad.ply").exists()
