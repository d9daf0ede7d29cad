"""Point clouds back-projected from an analytic sphere render."""

from __future__ import annotations

import math

import numpy as np
import torch

from recon.cameras import Cameras, look_at
from recon.export.pointcloud import pointcloud_from_render, remove_statistical_outliers

RADIUS = 0.5


def _cameras(n: int = 8, size: int = 48) -> Cameras:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    polar = torch.acos(1 - 2 * i / n)
    azim = math.pi * (1 + 5**0.5) * i
    eyes = 2.5 * torch.stack([torch.cos(azim) * torch.sin(polar), torch.sin(azim) * torch.sin(polar), torch.cos(polar)], -1)
    return Cameras(look_at(eyes.float(), torch.zeros(1, 3)), 100.0, 90.0, size / 2 + 0.3, size / 2 - 0.7, size, size)


def render_sphere(cam: Cameras, with_normals: bool = True) -> dict[str, torch.Tensor]:
    h, w = int(cam.height[0]), int(cam.width[0])
    rays = cam.generate_rays(0)
    o, d = rays.origins.double(), rays.directions.double()
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - RADIUS**2)
    hit = disc > 0
    t = -b - torch.sqrt(disc.clamp_min(0))
    p = o + t[:, None] * d
    n = p / p.norm(dim=-1, keepdim=True)
    out = {
        "depth": torch.where(hit, t * rays.z_scale.double(), torch.zeros_like(t)).reshape(h, w, 1).float(),
        "rgb": torch.where(hit[:, None], (n + 1) / 2, torch.zeros_like(n)).reshape(h, w, 3).float(),
        # Partial coverage at the rim: only pixels with accumulation >= 0.5 must be kept.
        "accumulation": torch.where(hit, 1.0, 0.3).reshape(h, w, 1).float(),
    }
    if with_normals:
        out["normal"] = torch.where(hit[:, None], n, torch.zeros_like(n)).reshape(h, w, 3).float()
    return out


def test_points_on_sphere_with_colors_and_normals():
    cams = _cameras()
    pts, col, nrm = pointcloud_from_render(render_sphere, cams, num_points=5000, progress=False)
    assert pts.shape == (5000, 3) and pts.dtype == np.float32
    assert col.shape == (5000, 3) and col.dtype == np.uint8
    assert nrm is not None and nrm.shape == (5000, 3)
    r = np.linalg.norm(pts, axis=1)
    assert np.abs(r - RADIUS).max() < 1e-4
    unit = pts / r[:, None]
    assert np.abs(col / 255.0 - (unit + 1) / 2).max() < 1 / 255 + 1e-6
    assert np.abs(nrm - unit).max() < 1e-4
    # Same seed, same subset; the subset is spread over all cameras (uniform over pixels).
    pts2, _, _ = pointcloud_from_render(render_sphere, cams, num_points=5000, progress=False)
    assert np.array_equal(pts, pts2)
    assert (pts[:, 2] > 0.3).any() and (pts[:, 2] < -0.3).any()


def test_crop_no_subsample_and_no_normals():
    cams = _cameras(4)
    aabb = [[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]]
    pts, col, nrm = pointcloud_from_render(
        lambda c: render_sphere(c, with_normals=False), cams, num_points=10**7, aabb=aabb, progress=False
    )
    assert nrm is None
    assert len(pts) > 1000 and (pts[:, 2] >= 0).all()
    total = sum(int((render_sphere(cams[i])["accumulation"] >= 0.5).sum()) for i in range(len(cams)))
    assert len(pts) < total  # some points were cropped, none subsampled away beyond that


def test_outlier_removal():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3000, 3))
    sphere = (RADIUS * v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    far = rng.uniform(2.0, 3.0, size=(20, 3)).astype(np.float32) * rng.choice([-1, 1], size=(20, 3))
    keep = remove_statistical_outliers(np.concatenate([sphere, far]), k=16, std_ratio=2.0)
    assert not keep[3000:].any()
    assert keep[:3000].mean() > 0.95

    pts, _, _ = pointcloud_from_render(render_sphere, _cameras(4), num_points=3000, remove_outliers=True, progress=False)
    assert 2500 < len(pts) <= 3000
