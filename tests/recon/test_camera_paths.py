"""Camera trajectories and camera-path JSON files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from recon.camera_paths import (
    interpolate_path,
    load_camera_path_json,
    orbit_path,
    save_camera_path_json,
    spiral_path,
)
from recon.cameras import Cameras
from recon.errors import ReconError
from recon.rotations import quaternion_to_matrix


def _orthonormal(c: Cameras, tol: float = 1e-5) -> bool:
    R = c.camera_to_worlds[:, :, :3].double()
    eye = torch.eye(3, dtype=torch.float64)
    return bool(((R.transpose(1, 2) @ R - eye).abs().max() < tol) and (torch.linalg.det(R) - 1).abs().max() < tol)


def _random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return quaternion_to_matrix(torch.randn(n, 4, generator=g, dtype=torch.float64))


def _forward_facing(n: int = 12) -> Cameras:
    """LLFF-like: cameras on a small grid around z=0, all looking roughly along +z at a scene ~4 away."""
    g = torch.Generator().manual_seed(1)
    pos = torch.cat([torch.rand(n, 2, generator=g) * 0.6 - 0.3, torch.rand(n, 1, generator=g) * 0.1], 1)
    target = torch.tensor([0.0, 0.0, 4.0])
    z = target - pos
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.cross(torch.tensor([0.0, 1.0, 0.0]).expand_as(z), z, dim=-1)  # image down = world +y
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)
    c2w = torch.stack([x, y, z, pos], -1)
    return Cameras(c2w, 300.0, 300.0, 160.0, 120.0, 320, 240)


def _keys() -> Cameras:
    R = _random_rotations(4, seed=2).float()
    t = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [2.0, 0.0, 1.0], [3.0, 1.0, 1.5]])
    c2w = torch.cat([R, t[:, :, None]], -1)
    return Cameras(
        c2w, torch.tensor([100.0, 120.0, 110.0, 90.0]), torch.tensor([100.0, 120.0, 110.0, 90.0]), 32.0, 24.0, 64, 48
    )


def test_spiral_path():
    cams = _forward_facing()
    path = spiral_path(cams, 60, radius_scale=1.0, rots=2, zrate=0.5)
    assert len(path) == 60 and _orthonormal(path)
    assert int(path.width[0]) == 320 and float(path.fx[0]) == 300.0
    # Focus found from the optical axes (~4 ahead); all frames look at one common point.
    c2w = path.camera_to_worlds
    o, d = c2w[:, :, 3], c2w[:, :, 2]
    focus = o + d * ((torch.tensor([0.0, 0.0, 4.0]) - o) * d).sum(-1, keepdim=True)
    assert (focus - focus.mean(0)).norm(dim=-1).max() < 0.05
    assert abs(float(focus.mean(0)[2]) - 4.0) < 0.3
    # The spiral stays near the capture and keeps the image "down" along world +y.
    assert (o[:, :2].abs() < 0.6).all()
    assert (c2w[:, 1, 1] > 0.9).all()
    assert len(spiral_path(cams, 7, focus_distance=2.0)) == 7


def test_interpolate_hits_keys():
    keys = _keys()
    m = 8
    n = m * (len(keys) - 1) + 1
    for positions in ("catmull_rom", "linear"):
        path = interpolate_path(keys, n, positions=positions)
        assert len(path) == n and _orthonormal(path)
        for k in range(len(keys)):
            f = k * m
            assert torch.allclose(path.camera_to_worlds[f], keys.camera_to_worlds[k], atol=1e-5)
            assert torch.allclose(path.fx[f], keys.fx[k])
        # Intrinsics move linearly between keys.
        assert torch.allclose(path.fx[m // 2], (keys.fx[0] + keys.fx[1]) / 2)
        # Smooth: no jumps between consecutive frames.
        step = (path.camera_to_worlds[1:, :, 3] - path.camera_to_worlds[:-1, :, 3]).norm(dim=-1)
        assert step.max() < 0.5
    assert (path.width == 64).all() and (path.height == 48).all()

    rev = interpolate_path(keys, 9, order=[3, 1, 0])
    assert torch.allclose(rev.camera_to_worlds[0], keys.camera_to_worlds[3], atol=1e-5)
    assert torch.allclose(rev.camera_to_worlds[-1], keys.camera_to_worlds[0], atol=1e-5)
    nn = interpolate_path(keys, 5, order="nearest")
    assert len(nn) == 5 and _orthonormal(nn)
    assert len(interpolate_path(keys[1], 3)) == 3


def test_orbit_path():
    template = Cameras(torch.eye(4)[:3], 50.0, 50.0, 20.0, 15.0, 40, 30)
    center = torch.tensor([0.5, -0.2, 0.1])
    path = orbit_path(center, 2.0, 30.0, 16, template)
    assert len(path) == 16 and _orthonormal(path)
    o, d = path.camera_to_worlds[:, :, 3], path.camera_to_worlds[:, :, 2]
    assert torch.allclose((o - center).norm(dim=-1), torch.full((16,), 2.0), atol=1e-5)
    assert torch.allclose(d, (center - o) / 2.0, atol=1e-5)  # looks at the centre
    assert torch.allclose(o[:, 2] - center[2], torch.full((16,), 2.0 * math.sin(math.radians(30))), atol=1e-5)
    # Image down (camera +y) points against world up (+z): frames are upright.
    assert (path.camera_to_worlds[:, 2, 1] < 0).all()
    assert int(path.width[0]) == 40 and float(path.cx[0]) == 20.0


def test_json_roundtrip(tmp_path):
    path = interpolate_path(_keys(), 10)
    file = save_camera_path_json(path, tmp_path / "path.json", fps=24)
    loaded, fps = load_camera_path_json(file)
    assert fps == 24
    assert len(loaded) == len(path)
    assert torch.allclose(loaded.camera_to_worlds, path.camera_to_worlds, atol=1e-6)
    for name in ("fx", "fy", "cx", "cy"):
        assert torch.allclose(getattr(loaded, name), getattr(path, name))
    assert (loaded.width == 64).all() and (loaded.height == 48).all()
    doc = json.loads(file.read_text())
    assert len(doc["camera_path"][0]["camera_to_world"]) == 16 and doc["render_width"] == 64


def test_json_fov_and_opengl(tmp_path):
    c2w_gl = [1, 0, 0, 0.5, 0, 1, 0, 0, 0, 0, 1, 3, 0, 0, 0, 1]  # OpenGL camera at z=3 looking down -z
    doc = {"convention": "opengl", "render_height": 100, "fps": 10, "camera_path": [{"camera_to_world": c2w_gl, "fov": 90, "aspect": 2.0}]}
    f = tmp_path / "gl.json"
    f.write_text(json.dumps(doc))
    cams, fps = load_camera_path_json(f)
    assert fps == 10 and int(cams.width[0]) == 200 and int(cams.height[0]) == 100
    assert float(cams.fy[0]) == pytest.approx(50.0) and float(cams.fx[0]) == pytest.approx(50.0)
    assert float(cams.cx[0]) == 100.0 and float(cams.cy[0]) == 50.0
    assert torch.allclose(cams.camera_to_worlds[0, :, 2], torch.tensor([0.0, 0.0, -1.0]))  # OpenCV forward


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"render_height": 10, "render_width": 10, "camera_path": []}),
        json.dumps({"render_width": 10, "camera_path": [{"camera_to_world": [0] * 16, "fov": 50}]}),
        json.dumps({"render_height": 10, "render_width": 10, "camera_path": [{"camera_to_world": [1, 2, 3], "fov": 50}]}),
        json.dumps({"render_height": 10, "render_width": 10, "camera_path": [{"camera_to_world": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]}]}),
        json.dumps({"render_height": 10, "render_width": 10, "camera_path": [{"camera_to_world": ["a"] * 16, "fov": 50}]}),
        json.dumps({"render_height": 10, "render_width": 10, "camera_path": [{"camera_to_world": [2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1], "fov": 50}]}),
    ],
)
def test_json_malformed(tmp_path, content):
    f = tmp_path / "broken_path.json"
    f.write_text(content)
    with pytest.raises(ReconError, match="broken_path.json"):
        load_camera_path_json(f)


def test_json_missing_file(tmp_path):
    with pytest.raises(ReconError, match="missing.json.*not found"):
        load_camera_path_json(tmp_path / "missing.json")
