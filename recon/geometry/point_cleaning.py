"""Surface reconstruction and cleaning of fused multi-view-stereo points, and the per-pixel mask it gives.

HelixSurf (Liang, Huang, Ding & Jia, CVPR 2023) does not supervise its SDF with raw PatchMatch
maps: its MVS package drops pixels whose normal is nearly perpendicular to the viewing ray, fuses
the rest into an oriented point cloud, reconstructs a watertight surface from it by screened
Poisson reconstruction (Kazhdan & Hoppe 2013, "Screened Poisson surface reconstruction", ACM TOG),
trims the surface where no point supports it, removes its small connected pieces, and keeps only
the depth / normal pixels that lie within a band of what remains. Isolated wrong matches, which
one or two views agree on by chance, lie off the smooth surface and are dropped.

Here (our implementation of that step, written from the paper and the method spec):

1. ``max_view_angle_deg``: a pixel whose camera-frame normal makes more than this angle with the
   direction back to the camera is dropped (HelixSurf: 70 degrees);
2. the remaining pixels are fused (:func:`recon.geometry.patchmatch.fuse_points`) and meshed by
   Open3D's screened Poisson reconstruction at octree depth ``poisson_depth`` (HelixSurf: 9);
3. mesh vertices farther than ``band`` from every fused point are removed (the Poisson surface
   closes holes and bounds the scene with surface nobody saw);
4. connected pieces whose bounding-box diagonal is below ``min_component_fraction`` of the point
   cloud's are removed (HelixSurf: 5 %);
5. a pixel is kept when its back-projected point lies within ``band`` of the cleaned mesh.

Open3D is an optional dependency (``pip install 'recon[mvs]'``); :func:`require_open3d` says so
in one line when it is missing. Distances are in the dataset's normalised frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from recon.cameras import Cameras

__all__ = ["SurfaceCleaningConfig", "require_open3d", "grazing_mask", "poisson_surface", "trim_surface", "surface_band_mask",
           "clean_mvs"]


@dataclass
class SurfaceCleaningConfig:
    """HelixSurf's cleaning of the MVS maps through a Poisson surface of the fused points."""

    enabled: bool = False
    """Clean each round's maps (needs Open3D: ``pip install 'recon[mvs]'``)."""
    max_view_angle_deg: float = 70.0
    """Pixels whose normal is more than this from the direction to the camera are dropped (HelixSurf: 70)."""
    poisson_depth: int = 9
    """Octree depth of the screened Poisson reconstruction (HelixSurf: 9)."""
    band: float = 0.03
    """Distance (normalised units) within which mesh vertices need a point and pixels need the mesh
    (HelixSurf: 3 cm in its scenes' units)."""
    min_component_fraction: float = 0.05
    """Mesh pieces smaller than this fraction of the point cloud's bounding-box diagonal are removed (HelixSurf: 5 %)."""

    def check(self, flag: str = "--model.helix.clean") -> None:
        from recon.errors import ConfigError

        if not 0 < self.max_view_angle_deg <= 90:
            raise ConfigError(f"{flag}.max-view-angle-deg must be in (0, 90], got {self.max_view_angle_deg}")
        if not 1 <= self.poisson_depth <= 12:
            raise ConfigError(f"{flag}.poisson-depth must be in 1..12, got {self.poisson_depth}")
        if self.band <= 0:
            raise ConfigError(f"{flag}.band must be positive, got {self.band}")
        if self.enabled:
            require_open3d(f"{flag}.enabled")


def require_open3d(what: str):
    """The ``open3d`` module, or a one-line :class:`recon.errors.ConfigError` naming ``what`` needs it."""
    try:
        import open3d
    except ImportError as exc:
        from recon.errors import ConfigError

        raise ConfigError(f"{what} needs Open3D, which is not installed: pip install 'recon[mvs]' (or open3d)") from exc
    return open3d


def grazing_mask(cameras: Cameras, normals: Tensor, max_angle_deg: float) -> Tensor:
    """[C, H, W] True where the camera-frame normal [C, H, W, 3] faces its camera within ``max_angle_deg``
    (the angle between the normal and the direction from the pixel's point back to the camera)."""
    C, H, W, _ = normals.shape
    K_inv = torch.linalg.inv(cameras.intrinsics_matrices().to(normals))
    v, u = torch.meshgrid(torch.arange(H, dtype=normals.dtype), torch.arange(W, dtype=normals.dtype), indexing="ij")
    pixels = torch.stack([u + 0.5, v + 0.5, torch.ones_like(u)], -1)  # [H, W, 3]
    rays = F.normalize(torch.einsum("cij,hwj->chwi", K_inv, pixels), dim=-1)
    cos = -(F.normalize(normals, dim=-1) * rays).sum(-1)
    return cos >= math.cos(math.radians(max_angle_deg))


def poisson_surface(points: Tensor, normals: Tensor, depth: int) -> trimesh.Trimesh:
    """Screened Poisson reconstruction (Open3D) of an oriented point cloud [P, 3] / [P, 3]."""
    o3d = require_open3d("Poisson surface reconstruction")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.double().cpu().numpy()))
    cloud.normals = o3d.utility.Vector3dVector(normals.double().cpu().numpy())
    mesh, _ = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(cloud, depth=depth)
    return trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.triangles), process=False)


def trim_surface(mesh: trimesh.Trimesh, points: Tensor, band: float, min_component_fraction: float) -> trimesh.Trimesh:
    """``mesh`` without the faces that touch a vertex farther than ``band`` from every point [P, 3],
    and without connected pieces whose bounding-box diagonal is below ``min_component_fraction`` of
    the points'."""
    from scipy.spatial import cKDTree

    pts = points.double().cpu().numpy()
    if len(mesh.faces) == 0 or len(pts) == 0:
        return trimesh.Trimesh()
    dist, _ = cKDTree(pts).query(np.asarray(mesh.vertices))
    supported = dist <= band
    faces = np.asarray(mesh.faces)
    mesh = trimesh.Trimesh(np.asarray(mesh.vertices), faces[supported[faces].all(axis=1)], process=False)
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        return mesh
    diagonal = float(np.linalg.norm(pts.max(0) - pts.min(0)))
    pieces = [p for p in mesh.split(only_watertight=False) if float(np.linalg.norm(p.extents)) >= min_component_fraction * diagonal]
    return trimesh.util.concatenate(pieces) if pieces else trimesh.Trimesh()


def surface_band_mask(cameras: Cameras, depths: Tensor, mesh: trimesh.Trimesh, band: float) -> Tensor:
    """[C, H, W] True where the z-depth map's [C, H, W] point lies within ``band`` of ``mesh`` (exact
    point-to-triangle distances, Open3D's raycasting scene); False where the depth is 0."""
    from recon.geometry.patchmatch import depth_to_points

    o3d = require_open3d("the MVS surface band")
    keep = torch.zeros(depths.shape, dtype=torch.bool)
    if len(mesh.faces) == 0:
        return keep
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)), o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)))
    for i in range(depths.shape[0]):
        valid = depths[i] > 0
        if not bool(valid.any()):
            continue
        points = depth_to_points(cameras, i, depths[i].cpu())[valid.cpu()]
        dist = scene.compute_distance(o3d.core.Tensor(points.float().numpy())).numpy()
        keep[i][valid.cpu()] = torch.from_numpy(dist <= band)
    return keep


@torch.no_grad()
def clean_mvs(cameras: Cameras, depths: Tensor, normals: Tensor, images: list[Tensor], keep: Tensor, patchmatch_config,
              config: SurfaceCleaningConfig) -> tuple[Tensor, trimesh.Trimesh]:
    """HelixSurf's cleaning (module docstring) of consistency-filtered PatchMatch maps: depths [C, H, W],
    camera-frame normals [C, H, W, 3], images C x [H, W, 3], keep [C, H, W] (the filter's).
    Returns the cleaned keep mask (a subset of ``keep``) and the cleaned mesh."""
    from recon.geometry.patchmatch import fuse_points

    keep = keep & grazing_mask(cameras, normals, config.max_view_angle_deg)
    points, point_normals, _ = fuse_points(cameras, depths * keep, normals * keep[..., None], images, keep, patchmatch_config)
    if len(points) < 4:
        return torch.zeros_like(keep), trimesh.Trimesh()
    mesh = trim_surface(poisson_surface(points, point_normals, config.poisson_depth), points, config.band, config.min_component_fraction)
    return keep & surface_band_mask(cameras, depths * keep, mesh, config.band), mesh
