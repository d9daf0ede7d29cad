"""TSDF fusion of exact depth maps of an analytic sphere."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from recon.cameras import Cameras, look_at
from recon.geometry.mesh import sample_points_on_mesh, transform_mesh
from recon.geometry.tsdf import TSDFVolume, tsdf_from_render

RADIUS = 0.5
AABB = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]


def _fibonacci_sphere(n: int, r: float) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    polar = torch.acos(1 - 2 * i / n)
    azim = math.pi * (1 + 5**0.5) * i
    return (r * torch.stack([torch.cos(azim) * torch.sin(polar), torch.sin(azim) * torch.sin(polar), torch.cos(polar)], -1)).float()


def _cameras(n: int = 20, size: int = 64) -> Cameras:
    c2w = look_at(_fibonacci_sphere(n, 2.5), torch.zeros(1, 3))
    return Cameras(c2w, 60.0, 60.0, size / 2, size / 2, size, size)


def sphere_color(p: torch.Tensor) -> torch.Tensor:
    """Colour of surface point p [..., 3]: its normal mapped to [0, 1]."""
    return (p / p.norm(dim=-1, keepdim=True) + 1) / 2


def render_sphere(cam: Cameras) -> dict[str, torch.Tensor]:
    """Exact z-depth, colour and coverage of the sphere |x| = RADIUS by ray-sphere intersection."""
    h, w = int(cam.height[0]), int(cam.width[0])
    rays = cam.generate_rays(0)
    o, d = rays.origins.double(), rays.directions.double()
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - RADIUS**2)
    hit = disc > 0
    t = -b - torch.sqrt(disc.clamp_min(0))
    p = o + t[:, None] * d
    depth = torch.where(hit, t * rays.z_scale.double(), torch.zeros_like(t))
    rgb = torch.where(hit[:, None], sphere_color(p), torch.zeros_like(p))
    return {
        "depth": depth.reshape(h, w, 1).float(),
        "rgb": rgb.reshape(h, w, 3).float(),
        "accumulation": hit.reshape(h, w, 1).float(),
    }


def test_sphere_fusion():
    res = 96
    voxel = 2.0 / res
    mesh = tsdf_from_render(render_sphere, _cameras(), AABB, res, progress=False)
    assert len(mesh.faces) > 1000
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(r - RADIUS).max() < 1.5 * voxel
    # Closed, outward-oriented surface with the sphere's volume.
    boundary = trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)
    assert len(boundary) <= 0.001 * len(mesh.edges_unique)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.03)
    # Colours transferred: vertex colour ~ colour of the nearest sphere point.
    vc = mesh.visual.vertex_colors[:, :3].astype(np.float64) / 255
    expected = sphere_color(torch.from_numpy(mesh.vertices)).numpy()
    assert np.abs(vc - expected).mean() < 0.01
    assert np.abs(vc - expected).max() < 0.06


def test_integrate_rules():
    """Masked/invalid pixels and voxels far behind the surface leave the volume untouched."""
    cam = Cameras(look_at(torch.tensor([[0.0, 0.0, -3.0]]), torch.zeros(1, 3)), 20.0, 20.0, 8.0, 8.0, 16, 16)
    depth = torch.full((16, 16), 3.0)  # a wall through the origin, facing the camera
    depth[:, :8] = 0.0  # left half of the image has no depth
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[:4] = False
    vol = TSDFVolume(AABB, 16, truncation=0.25)
    vol.integrate(depth, cam, mask=mask)
    c = vol.voxel_centers()
    w = vol.weight
    uv, z = cam.project(c)
    in_image = (uv[:, 0] >= 0) & (uv[:, 0] < 16) & (uv[:, 1] >= 0) & (uv[:, 1] < 16)
    usable = in_image & (uv[:, 0] >= 8) & (uv[:, 1] >= 4)
    sdf = 3.0 - z
    assert torch.all(w[~usable] == 0)  # no depth, masked or outside the image
    assert torch.all(w[usable & (sdf < -0.25)] == 0)  # occluded beyond the truncation
    seen = usable & (sdf >= -0.25)
    assert torch.all(w[seen] == 1)
    assert torch.allclose(vol.tsdf[seen], (sdf[seen] / 0.25).clamp(max=1.0), atol=1e-5)
    assert torch.all(vol.tsdf[w == 0] == 1)
    assert vol.color is None


def test_empty_volume_gives_empty_mesh():
    vol = TSDFVolume(AABB, (8, 9, 10))
    assert vol.truncation == pytest.approx(3 * 2.0 / 8)
    mesh = vol.extract_mesh()
    assert len(mesh.vertices) == 0 and len(mesh.faces) == 0


def test_mesh_helpers():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
    pts, normals = sample_points_on_mesh(mesh, 500, seed=3)
    assert pts.shape == (500, 3) and normals.shape == (500, 3)
    assert np.allclose(np.linalg.norm(pts, axis=1), 1.0, atol=0.05)
    mirrored = transform_mesh(mesh, lambda v: v * np.array([-2.0, 2.0, 2.0]) + 1.0)
    assert mirrored.volume == pytest.approx(mesh.volume * 8, rel=1e-6)  # winding fixed: positive
