"""Point clouds from rendered depth: back-project every camera's depth map into world space.

A rendered pixel with z-depth ``d`` lies at ``origin + (d / z_scale) * direction`` on its ray,
where ``z_scale`` is the camera-space z component of the unit ray direction
(:class:`recon.cameras.RayBundle`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.engine.logging import track

__all__ = ["pointcloud_from_render", "remove_statistical_outliers"]


def remove_statistical_outliers(points: np.ndarray, k: int = 16, std_ratio: float = 2.0) -> np.ndarray:
    """Statistical outlier removal (as in Rusu et al. 2008, "Towards 3D point cloud based object
    maps for household environments"): keep points whose mean distance to their ``k`` nearest
    neighbours is at most ``mean + std_ratio * std`` of that quantity over the cloud.

    points: [P, 3]. Returns a [P] bool keep-mask.
    """
    from scipy.spatial import cKDTree

    n = len(points)
    if n <= k:
        return np.ones(n, dtype=bool)
    tree = cKDTree(points)
    dist, _ = tree.query(points, k=k + 1, workers=-1)  # first neighbour is the point itself
    mean_d = dist[:, 1:].mean(axis=1)
    return mean_d <= mean_d.mean() + std_ratio * mean_d.std()


@torch.no_grad()
def pointcloud_from_render(
    render_fn: Callable[[Cameras], dict[str, Tensor]],
    cameras: Cameras,
    num_points: int = 1_000_000,
    accumulation_threshold: float = 0.5,
    aabb: Tensor | Sequence[Sequence[float]] | None = None,
    depth_key: str = "depth",
    rgb_key: str = "rgb",
    normal_key: str = "normal",
    seed: int = 0,
    remove_outliers: bool = False,
    outlier_neighbors: int = 16,
    outlier_std_ratio: float = 2.0,
    accumulation_key: str = "accumulation",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Render each camera, back-project its depth and return a (sub-sampled) coloured point cloud.

    render_fn: single camera -> dict with ``depth_key`` [H, W, 1] z-depth, ``rgb_key``
        [H, W, 3] in [0, 1], optionally ``accumulation_key`` [H, W, 1] and ``normal_key``
        [H, W, 3] world-space normals (used when present in every render).
    cameras: C cameras. aabb: [2, 3] crop box (None = no crop).
    accumulation_threshold: keep pixels with accumulation >= it (no accumulation key = keep all
        pixels with positive, finite depth).
    num_points: size of a uniform random subset (without replacement) of all kept points; every
        kept point is equally likely whichever camera it came from (a bottom-k sample of random
        keys, so memory stays ~ num_points + one image). Seeded by ``seed``.
    remove_outliers: after subsampling, drop points whose mean distance to their
        ``outlier_neighbors`` nearest neighbours exceeds mean + ``outlier_std_ratio`` * std.

    Returns points [P, 3] float32 (world), colors [P, 3] uint8, normals [P, 3] float32 (unit
    length) or None; P <= num_points.
    """
    gen = torch.Generator().manual_seed(int(seed))
    box = None if aabb is None else torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
    pool_pts: Tensor | None = None
    pool_col: Tensor | None = None
    pool_nrm: Tensor | None = None
    pool_key: Tensor | None = None
    use_normals = True
    for i in track(range(len(cameras)), "Point cloud", enabled=progress):
        cam = cameras[i]
        out = render_fn(cam)
        depth = out[depth_key].detach().reshape(-1).float().cpu()
        rays = cam.generate_rays(0)
        origins, dirs, z_scale = rays.origins.cpu(), rays.directions.cpu(), rays.z_scale.cpu()
        keep = torch.isfinite(depth) & (depth > 0)
        acc = out.get(accumulation_key)
        if acc is not None:
            keep &= acc.detach().reshape(-1).float().cpu() >= accumulation_threshold
        # Distance along the unit ray from the z-depth.
        pts = origins + (depth / z_scale)[:, None] * dirs
        if box is not None:
            keep &= ((pts >= box[0]) & (pts <= box[1])).all(-1)
        idx = keep.nonzero()[:, 0]
        if idx.numel() == 0:
            continue
        pts = pts[idx]
        col = out[rgb_key].detach().reshape(-1, 3).float().cpu()[idx]
        nrm = None
        if use_normals and out.get(normal_key) is not None:
            nrm = out[normal_key].detach().reshape(-1, 3).float().cpu()[idx]
        else:
            use_normals = False  # normals only make sense if every camera provides them
        key = torch.rand(idx.numel(), generator=gen)
        if pool_pts is None:
            pool_pts, pool_col, pool_nrm, pool_key = pts, col, nrm, key
        else:
            pool_pts = torch.cat([pool_pts, pts])
            pool_col = torch.cat([pool_col, col])  # type: ignore[list-item]
            pool_nrm = torch.cat([pool_nrm, nrm]) if use_normals and pool_nrm is not None and nrm is not None else None
            pool_key = torch.cat([pool_key, key])  # type: ignore[list-item]
        if pool_key is not None and pool_key.numel() > num_points:
            # Keeping the num_points smallest i.i.d. keys is a uniform sample of everything seen.
            top = torch.topk(pool_key, num_points, largest=False).indices
            pool_pts, pool_col, pool_key = pool_pts[top], pool_col[top], pool_key[top]  # type: ignore[index]
            pool_nrm = pool_nrm[top] if pool_nrm is not None else None

    if pool_pts is None:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), None
    points = pool_pts.numpy().astype(np.float32)
    colors = np.clip(np.round(pool_col.numpy() * 255.0), 0, 255).astype(np.uint8)  # type: ignore[union-attr]
    normals = None
    if use_normals and pool_nrm is not None:
        n = pool_nrm / pool_nrm.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        normals = n.numpy().astype(np.float32)
    if remove_outliers and len(points) > 0:
        ok = remove_statistical_outliers(points, outlier_neighbors, outlier_std_ratio)
        points, colors = points[ok], colors[ok]
        normals = normals[ok] if normals is not None else None
    return points, colors, normals
