"""HelixSurf's cleaning of MVS maps through a Poisson surface (recon.geometry.point_cleaning): the
grazing-angle test against its closed form, trimming and small pieces, isolated wrong depths
dropped while the true surface is kept, and the one-line error without Open3D."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from recon.cameras import Cameras, look_at
from recon.errors import ConfigError
from recon.geometry.patchmatch import PatchMatchConfig
from recon.geometry.point_cleaning import SurfaceCleaningConfig, clean_mvs, grazing_mask, require_open3d, trim_surface

SIZE = 48
FOCAL = 50.0


def _cameras(n: int = 6) -> Cameras:
    ring = [(0.0, 0.0)] + [(0.6 * np.cos(a), 0.6 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, n - 1, endpoint=False)]
    eyes = torch.tensor([[x, y, 2.5] for x, y in ring], dtype=torch.float32)
    return Cameras(look_at(eyes, eyes * torch.tensor([0.2, 0.2, 0.0]), up=torch.tensor([0.0, 1.0, 0.0])), FOCAL, FOCAL, SIZE / 2, SIZE / 2, SIZE, SIZE)


def _plane_maps(cams: Cameras, tilt: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact z-depth [C, H, W] and camera-frame normals [C, H, W, 3] of the plane ``z = tilt x``."""
    normal = F.normalize(torch.tensor([-tilt, 0.0, 1.0]), dim=0)
    depths, normals = [], []
    for i in range(len(cams)):
        rays = cams.generate_rays(i)
        t = -(rays.origins @ normal) / (rays.directions @ normal)
        depths.append((t * rays.z_scale).reshape(SIZE, SIZE))
        n_cam = normal @ cams.camera_to_worlds[i, :3, :3]  # R^T n
        n_cam = n_cam if float(n_cam[2]) < 0 else -n_cam  # facing the camera (OpenCV: towards -z)
        normals.append(n_cam.expand(SIZE, SIZE, 3))
    return torch.stack(depths), torch.stack(normals)


def test_grazing_mask_against_the_closed_form():
    """Centre pixel of a camera: its ray is the optical axis, so a normal tilted by a from -z makes
    angle a with the direction back to the camera."""
    cams = Cameras(torch.eye(4)[None, :3], FOCAL, FOCAL, SIZE / 2, SIZE / 2, SIZE, SIZE)
    for angle, expected in ((0.0, True), (60.0, True), (69.0, True), (71.0, False), (85.0, False)):
        a = math.radians(angle)
        n = torch.tensor([math.sin(a), 0.0, -math.cos(a)]).expand(1, SIZE, SIZE, 3).clone()
        mask = grazing_mask(cams, n, 70.0)
        assert bool(mask[0, SIZE // 2, SIZE // 2]) is expected, angle


def test_trim_surface_removes_unsupported_faces_and_small_pieces():
    big = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    big = big.subdivide().subdivide().subdivide()
    speck = trimesh.creation.icosphere(subdivisions=1, radius=0.01)
    speck.apply_translation((3.0, 0.0, 0.0))
    far = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    far.apply_translation((0.0, 4.0, 0.0))  # a piece no point supports
    mesh = trimesh.util.concatenate([big, speck, far])
    points = torch.cat([torch.tensor(trimesh.sample.sample_surface(big, 5000, seed=0)[0], dtype=torch.float32),
                        torch.tensor(speck.vertices, dtype=torch.float32)])
    out = trim_surface(mesh, points, band=0.05, min_component_fraction=0.05)
    assert len(out.faces) > 0
    lo, hi = out.bounds
    assert np.allclose(lo, -0.5, atol=1e-6) and np.allclose(hi, 0.5, atol=1e-6)  # the box alone: no speck, no far piece


def test_clean_mvs_drops_isolated_wrong_depths_and_keeps_the_surface():
    require_open3d_or_skip()
    cams = _cameras()
    depths, normals = _plane_maps(cams)
    truth = depths.clone()
    g = torch.Generator().manual_seed(0)
    planted = torch.zeros_like(depths, dtype=torch.bool)
    for view in range(len(cams)):  # 12 scattered wrong pixels per view, 15 % too far (about 0.35 units off the plane)
        flat = torch.randperm(SIZE * SIZE, generator=g)[:12]
        planted[view].view(-1)[flat] = True
    depths = torch.where(planted, depths * 1.15, depths)
    images = [torch.full((SIZE, SIZE, 3), 0.5) for _ in range(len(cams))]
    keep = torch.ones_like(depths, dtype=torch.bool)
    cleaned, mesh = clean_mvs(cams, depths, normals, images, keep, PatchMatchConfig(), SurfaceCleaningConfig(enabled=True))
    assert len(mesh.faces) > 0
    assert not bool((cleaned & ~keep).any())
    dropped_outliers = float((~cleaned & planted).sum() / planted.sum())
    kept_surface = float((cleaned & ~planted).sum() / (~planted).sum())
    assert dropped_outliers > 0.95, dropped_outliers
    assert kept_surface > 0.9, kept_surface
    # the kept pixels are the right ones: exact depths only
    assert torch.allclose(depths[cleaned], truth[cleaned])


def require_open3d_or_skip() -> None:
    try:
        require_open3d("this test")
    except ConfigError:
        pytest.skip("Open3D is not installed (pip install 'recon[mvs]')")


def test_missing_open3d_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "open3d", None)  # import open3d now raises ImportError
    with pytest.raises(ConfigError, match=r"--model\.helix\.clean\.enabled needs Open3D.*pip install") as info:
        SurfaceCleaningConfig(enabled=True).check()
    assert "\n" not in str(info.value)
    SurfaceCleaningConfig(enabled=False).check()  # off: Open3D not needed
