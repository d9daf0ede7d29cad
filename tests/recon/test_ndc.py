"""NDC ray space: the mapping against NeRF's closed form, its inverse, rays staying straight."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.cameras import Cameras, look_at
from recon.errors import ConfigError
from recon.render.ndc import NDCFrame, RaySpace, ndc_distance_to_world, ndc_frame, ndc_rays, ndc_to_world, world_to_ndc


def _frame() -> NDCFrame:
    c2w = look_at(torch.tensor([[0.3, -2.0, 0.5]]), torch.tensor([[0.1, 1.0, 0.2]]))[0]
    return NDCFrame(c2w, near=0.7, ax=2 * 40.0 / 64, ay=2 * 42.0 / 48)


def _nerf_ndc_rays(o: torch.Tensor, d: torch.Tensor, near: float, ax: float, ay: float):
    """NeRF's ndc_rays (appendix C), written for a camera looking down -z (OpenGL)."""
    t = -(near + o[:, 2]) / d[:, 2]
    o = o + t[:, None] * d
    o0 = -ax * o[:, 0] / o[:, 2]
    o1 = -ay * o[:, 1] / o[:, 2]
    o2 = 1.0 + 2.0 * near / o[:, 2]
    d0 = -ax * (d[:, 0] / d[:, 2] - o[:, 0] / o[:, 2])
    d1 = -ay * (d[:, 1] / d[:, 2] - o[:, 1] / o[:, 2])
    d2 = -2.0 * near / o[:, 2]
    return torch.stack([o0, o1, o2], -1), torch.stack([d0, d1, d2], -1)


def _rays(frame: NDCFrame, n: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = frame.camera_to_world
    origins = m[:, 3] + (torch.rand(n, 3, generator=g) - 0.5) * 0.4 @ m[:, :3].T
    local = torch.cat([(torch.rand(n, 2, generator=g) - 0.5) * 1.2, torch.ones(n, 1)], -1)
    directions = local @ m[:, :3].T
    return origins, directions / directions.norm(dim=-1, keepdim=True)


def test_ndc_rays_match_nerfs_closed_form_with_y_flipped():
    frame = _frame()
    origins, directions = _rays(frame)
    m = frame.camera_to_world
    gl = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # OpenCV reference frame -> NeRF's OpenGL frame
    o_gl = (origins - m[:, 3]) @ m[:, :3] @ gl
    d_gl = directions @ m[:, :3] @ gl
    o_ref, d_ref = _nerf_ndc_rays(o_gl, d_gl, frame.near, frame.ax, frame.ay)
    o, d, length = ndc_rays(origins, directions, frame)
    flip = torch.tensor([1.0, -1.0, 1.0])
    assert torch.allclose(o, o_ref * flip, atol=1e-5)
    assert torch.allclose(d * length[:, None], d_ref * flip, atol=1e-5)
    assert torch.allclose(o[:, 2], torch.full((len(o),), -1.0), atol=1e-6)  # on the near plane
    assert torch.allclose((o + d * length[:, None])[:, 2], torch.ones(len(o)), atol=1e-5)  # z = infinity


def test_world_to_ndc_is_the_reference_cameras_projection_and_inverts():
    frame = _frame()
    w, h = 64, 48
    cam = Cameras(frame.camera_to_world[None], fx=frame.ax * w / 2, fy=frame.ay * h / 2, cx=w / 2, cy=h / 2, width=w, height=h)
    g = torch.Generator().manual_seed(1)
    local = torch.cat([(torch.rand(200, 2, generator=g) - 0.5) * 3, 0.8 + 10 * torch.rand(200, 1, generator=g)], -1)
    m = frame.camera_to_world
    points = local @ m[:, :3].T + m[:, 3]
    ndc = world_to_ndc(points, frame)
    uv, z = cam.project(points)
    assert torch.allclose(ndc[:, 0], 2 * uv[:, 0] / w - 1, atol=1e-5)
    assert torch.allclose(ndc[:, 1], 2 * uv[:, 1] / h - 1, atol=1e-5)
    assert torch.allclose(ndc[:, 2], 1 - 2 * frame.near / z, atol=1e-6)
    assert torch.allclose(ndc_to_world(ndc, frame), points, atol=1e-4)


def test_world_rays_stay_straight_and_distances_map_back():
    frame = _frame()
    origins, directions = _rays(frame, n=20, seed=2)
    o, d, length = ndc_rays(origins, directions, frame)
    s = torch.rand(20, 7, generator=torch.Generator().manual_seed(3)) * length[:, None] * 0.98
    on_ndc_ray = o[:, None] + s[..., None] * d[:, None]
    t = ndc_distance_to_world(s, origins, directions, frame)
    world = origins[:, None] + t[..., None] * directions[:, None]
    assert torch.allclose(world_to_ndc(world.reshape(-1, 3), frame), on_ndc_ray.reshape(-1, 3), atol=2e-4)
    assert (t[:, 1:] - t[:, :-1] > 0).eq(s[:, 1:] - s[:, :-1] > 0).all()  # monotone


def test_ray_space_needs_a_forward_facing_frame():
    with pytest.raises(ConfigError, match="forward-facing"):
        RaySpace("ndc", {})
    assert not RaySpace("auto", {}).is_ndc
    meta = {"ndc": _frame().to_metadata()}
    assert RaySpace("auto", meta).is_ndc and not RaySpace("euclidean", meta).is_ndc


def test_reference_pose_is_the_mean_view():
    yaw = np.radians([-10.0, 0.0, 10.0])
    c2w = np.zeros((3, 3, 4))
    for i, a in enumerate(yaw):
        c2w[i, :, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
        c2w[i, :, 3] = [i - 1.0, 0.0, 0.0]
    frame = ndc_frame(c2w, 50.0, 50.0, 100.0, 80.0, min_depth=2.0)
    assert torch.allclose(frame.camera_to_world, torch.eye(3, 4), atol=1e-6)
    assert frame.near == pytest.approx(1.5) and frame.ax == pytest.approx(1.0) and frame.ay == pytest.approx(1.25)


def test_llff_rays_fill_the_ndc_cube(shared_data):
    from data.parsers.llff import LLFFParserConfig

    outputs = LLFFParserConfig().load(shared_data / "fern")
    frame = NDCFrame.from_metadata(outputs.metadata["ndc"])
    cams = outputs.cameras
    for i in (0, 10):
        rays = cams.generate_rays(i)
        o, _, length = ndc_rays(rays.origins, rays.directions, frame)
        # Every camera sees about the reference frustum: near-plane points span about [-1, 1] (fern: up to 1.34).
        assert o[:, :2].abs().max() < 1.5 and o[:, :2].abs().max() > 0.8
        assert torch.isfinite(length).all() and (length > 0).all()
