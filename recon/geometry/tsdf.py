"""Truncated signed distance fusion of rendered depth maps into a mesh.

Volumetric integration after Curless & Levoy 1996 ("A volumetric method for building complex
models from range images", SIGGRAPH), in the projective form popularised by KinectFusion
(Newcombe et al. 2011): every voxel centre is projected into the depth map, the signed distance
along the camera's z axis ``sdf = depth(pixel) - z`` is truncated to ``[-1, 1]`` in units of the
truncation distance, and a per-voxel running weighted average of it (and of colour) is kept.
The zero level set is extracted with marching cubes (Lorensen & Cline 1987; skimage's Lewiner
variant).

Conventions: positive distances are in front of the surface (free space), negative behind it;
voxel ``(i, j, k)`` has its centre at ``aabb[0] + (ijk + 0.5) * voxel_size``; volumes are stored
flat in ``i``-major (x slowest) order, i.e. ``reshape(nx, ny, nz)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import trimesh
from torch import Tensor

from recon.cameras import Cameras
from recon.engine.logging import track

__all__ = ["TSDFVolume", "tsdf_from_render", "DEFAULT_TRUNCATION_VOXELS"]

# Default truncation in voxels. Marching cubes only needs a sign change one voxel either side of
# the surface; 3 voxels leaves room for the nearest-pixel depth lookup and for rendered depth that
# is noisy by a voxel or so, while keeping thin structures (a few voxels thick) from being
# erased by observations of their far side.
DEFAULT_TRUNCATION_VOXELS = 3.0


class TSDFVolume:
    """A dense TSDF + colour volume over an axis-aligned box.

    aabb: [2, 3] (min corner, max corner) in world units.
    resolution: voxels per axis, an int or (nx, ny, nz).
    truncation: world units; None = ``DEFAULT_TRUNCATION_VOXELS`` x the largest voxel edge.
    max_weight: cap on the accumulated per-voxel weight (None = no cap); a cap keeps the average
        responsive to later observations.
    chunk_size: voxels processed per vectorised step (bounds temporary memory).
    device: where the volume lives (default: the aabb's device).

    Attributes: ``tsdf`` [V] in [-1, 1] (1 where unobserved), ``weight`` [V] (0 = never
    observed), ``color`` [V, 3] in [0, 1] or None until an integration brings colour; V = nx*ny*nz.
    """

    def __init__(
        self,
        aabb: Tensor | Sequence[Sequence[float]],
        resolution: int | Sequence[int],
        truncation: float | None = None,
        max_weight: float | None = None,
        chunk_size: int = 1 << 21,
        device: torch.device | str | None = None,
    ) -> None:
        aabb_t = torch.as_tensor(aabb, dtype=torch.float32)
        device = torch.device(device) if device is not None else aabb_t.device
        self.aabb = aabb_t.reshape(2, 3).to(device)
        if not bool((self.aabb[1] > self.aabb[0]).all()):
            raise ValueError(f"aabb max must exceed min on every axis, got {self.aabb.tolist()}")
        res = (int(resolution),) * 3 if isinstance(resolution, (int, np.integer)) else tuple(int(r) for r in resolution)
        if len(res) != 3 or min(res) < 2:
            raise ValueError(f"resolution must be an int or 3 ints >= 2, got {resolution}")
        self.resolution: tuple[int, int, int] = res  # type: ignore[assignment]
        self.voxel_size = (self.aabb[1] - self.aabb[0]) / torch.tensor(res, dtype=torch.float32, device=device)
        self.truncation = float(truncation) if truncation is not None else DEFAULT_TRUNCATION_VOXELS * float(self.voxel_size.max())
        if self.truncation <= 0:
            raise ValueError("truncation must be positive")
        self.max_weight = max_weight
        self.chunk_size = int(chunk_size)
        self.device = device
        n = res[0] * res[1] * res[2]
        self.tsdf = torch.ones(n, device=device)
        self.weight = torch.zeros(n, device=device)
        self.color: Tensor | None = None

    @property
    def num_voxels(self) -> int:
        return self.tsdf.numel()

    def voxel_centers(self, start: int = 0, end: int | None = None) -> Tensor:
        """[V', 3] world-space centres of flat voxel indices ``start:end`` (computed, not stored)."""
        end = self.num_voxels if end is None else end
        idx = torch.arange(start, end, device=self.device)
        ny, nz = self.resolution[1], self.resolution[2]
        ijk = torch.stack([idx // (ny * nz), (idx // nz) % ny, idx % nz], dim=-1).float()
        return self.aabb[0] + (ijk + 0.5) * self.voxel_size

    @torch.no_grad()
    def integrate(
        self,
        depth: Tensor,
        camera: Cameras,
        rgb: Tensor | None = None,
        weight: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> None:
        """Fuse one depth map.

        depth: [H, W] (or [H, W, 1]) z-depth along the camera's optical axis, world units;
            pixels with depth <= 0 or non-finite are ignored.
        camera: a single camera (``len(camera) == 1``), OpenCV convention, distortion honoured.
        rgb: [H, W, 3] in [0, 1] or None.
        weight: [H, W] per-pixel confidence >= 0 (None = 1); zero-weight pixels are ignored.
        mask: [H, W] bool, False pixels are ignored.

        Each voxel looks up the nearest pixel of its projection. Voxels that project outside the
        image, lie behind the camera, hit an ignored pixel, or lie more than the truncation
        distance behind the observed surface (occluded, unknown) are left untouched.
        """
        if len(camera) != 1:
            raise ValueError(f"integrate takes a single camera, got {len(camera)}")
        camera = camera.to(self.device)
        depth = depth.to(self.device, torch.float32)
        if depth.ndim == 3:
            depth = depth[..., 0]
        h, w = depth.shape
        if (int(camera.height[0]), int(camera.width[0])) != (h, w):
            raise ValueError(f"depth is {h}x{w} but the camera is {int(camera.height[0])}x{int(camera.width[0])}")
        pix_w = torch.ones_like(depth) if weight is None else weight.to(self.device, torch.float32).reshape(h, w)
        valid_pix = torch.isfinite(depth) & (depth > 0) & (pix_w > 0)
        if mask is not None:
            valid_pix &= mask.to(self.device).reshape(h, w).bool()
        # Flatten once; invalid pixels get depth 0 so a single gather serves both checks.
        depth_flat = torch.where(valid_pix, depth, torch.zeros_like(depth)).reshape(-1)
        w_flat = torch.where(valid_pix, pix_w, torch.zeros_like(pix_w)).reshape(-1)
        rgb_flat = None
        if rgb is not None:
            rgb_flat = rgb.to(self.device, torch.float32).reshape(h * w, 3)
            if self.color is None:
                self.color = torch.zeros(self.num_voxels, 3, device=self.device)

        for start in range(0, self.num_voxels, self.chunk_size):
            end = min(start + self.chunk_size, self.num_voxels)
            pts = self.voxel_centers(start, end)
            uv, z = camera.project(pts, 0)
            # Nearest pixel: pixel (u, v) covers [u, u + 1) since centres are at +0.5.
            ui, vi = torch.floor(uv[:, 0]), torch.floor(uv[:, 1])
            inside = (z > 1e-8) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h) & torch.isfinite(uv).all(-1)
            if not bool(inside.any()):
                continue
            sel = inside.nonzero()[:, 0]
            pix = (vi[sel].long() * w + ui[sel].long())
            d = depth_flat[pix]
            sdf = d - z[sel]
            keep = (d > 0) & (sdf >= -self.truncation)
            sel, pix, sdf = sel[keep], pix[keep], sdf[keep]
            if sel.numel() == 0:
                continue
            vox = sel + start
            obs = (sdf / self.truncation).clamp(max=1.0)
            wo = w_flat[pix]
            w_old = self.weight[vox]
            w_new = w_old + wo
            self.tsdf[vox] = (self.tsdf[vox] * w_old + obs * wo) / w_new
            if rgb_flat is not None and self.color is not None:
                self.color[vox] = (self.color[vox] * w_old[:, None] + rgb_flat[pix] * wo[:, None]) / w_new[:, None]
            if self.max_weight is not None:
                w_new = w_new.clamp(max=self.max_weight)
            self.weight[vox] = w_new

    # -- extraction ----------------------------------------------------------------------------
    def _sample_colors(self, verts_ijk: np.ndarray) -> np.ndarray:
        """Trilinear colour at fractional voxel indices [M, 3], averaging only observed voxels."""
        assert self.color is not None
        res = np.array(self.resolution)
        color = self.color.cpu().numpy().reshape(*self.resolution, 3)
        observed = (self.weight.cpu().numpy() > 0).reshape(self.resolution).astype(np.float64)
        base = np.clip(np.floor(verts_ijk).astype(np.int64), 0, res - 2)
        frac = np.clip(verts_ijk - base, 0.0, 1.0)
        acc = np.zeros((len(verts_ijk), 3))
        wsum = np.zeros(len(verts_ijk))
        for corner in range(8):
            offs = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
            idx = base + offs
            wgt = np.prod(np.where(offs == 1, frac, 1.0 - frac), axis=1)
            wgt = wgt * observed[idx[:, 0], idx[:, 1], idx[:, 2]]
            acc += wgt[:, None] * color[idx[:, 0], idx[:, 1], idx[:, 2]]
            wsum += wgt
        return acc / np.maximum(wsum, 1e-12)[:, None]

    def extract_mesh(self) -> trimesh.Trimesh:
        """Marching cubes at level 0 over observed voxels -> a mesh in world units.

        Only cubes whose eight corners have all been observed are polygonised, so the borders
        between observed and never-observed space (outside every frustum, or deep inside
        objects, which are never updated) produce no spurious surfaces. Faces are oriented with
        normals pointing to positive distances (outwards, as skimage's default orientation gives
        for an SDF that is negative inside). Vertex colours (RGBA uint8), when
        colour was integrated, are trilinear over observed voxels. Returns an empty mesh when
        there is no zero crossing.
        """
        from skimage.measure import marching_cubes

        vol = self.tsdf.cpu().numpy().reshape(self.resolution).astype(np.float32)
        observed = (self.weight.cpu().numpy() > 0).reshape(self.resolution)
        vol = np.where(observed, vol, 1.0).astype(np.float32)
        cube_mask = _cube_mask(observed)
        empty = trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64))
        if not cube_mask.any() or vol[observed].min() >= 0.0 or vol[observed].max() <= 0.0:
            return empty
        try:
            verts, faces, _, _ = marching_cubes(vol, level=0.0, mask=cube_mask, allow_degenerate=False)
        except (ValueError, RuntimeError):  # no surface inside the mask
            return empty
        if len(faces) == 0:
            return empty
        lo = self.aabb[0].cpu().numpy().astype(np.float64)
        vs = self.voxel_size.cpu().numpy().astype(np.float64)
        world = lo + (verts.astype(np.float64) + 0.5) * vs
        colors = None
        if self.color is not None:
            rgb = self._sample_colors(verts.astype(np.float64))
            colors = np.concatenate([np.clip(np.round(rgb * 255), 0, 255), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
        return trimesh.Trimesh(vertices=world, faces=faces, vertex_colors=colors, process=True)


@functools.lru_cache(maxsize=1)
def _mask_corner_offset() -> tuple[int, int, int] | None:
    """Which corner of a cube skimage's ``marching_cubes(mask=...)`` tests, as an (ox, oy, oz)
    offset from the cube's lowest corner, found by probing tiny volumes (the choice is an
    undocumented implementation detail). None if the probe is inconclusive.
    """
    from skimage.measure import marching_cubes

    offset = []
    for axis in range(3):
        ramp = (np.arange(6, dtype=np.float32) - 2.5).reshape([6 if a == axis else 1 for a in range(3)])
        vol = np.broadcast_to(ramp, (6, 6, 6)).copy()  # crossing inside cubes with origin 2 on `axis`
        base = len(marching_cubes(vol, 0.0, mask=np.ones(vol.shape, bool))[1])
        hits = []
        for o in (0, 1):
            m = np.ones(vol.shape, bool)
            m[tuple(2 + o if a == axis else 2 for a in range(3))] = False
            if len(marching_cubes(vol, 0.0, mask=m)[1]) < base:
                hits.append(o)
        if len(hits) != 1:
            return None
        offset.append(hits[0])
    return tuple(offset)  # type: ignore[return-value]


def _cube_mask(observed: np.ndarray) -> np.ndarray:
    """observed: [nx, ny, nz] bool -> the ``mask`` for skimage's marching cubes that enables
    exactly the cubes whose eight corners are all observed."""
    o = observed
    all8 = o[:-1, :-1, :-1] & o[1:, :-1, :-1] & o[:-1, 1:, :-1] & o[:-1, :-1, 1:]
    all8 &= o[1:, 1:, :-1] & o[1:, :-1, 1:] & o[:-1, 1:, 1:] & o[1:, 1:, 1:]
    off = _mask_corner_offset()
    if off is None:
        # Unknown semantics: demand a fully observed 3x3x3 neighbourhood around every voxel, which
        # is safe whichever corner is tested (at the price of one voxel of erosion).
        from scipy.ndimage import minimum_filter

        return minimum_filter(o.astype(np.uint8), size=3, mode="nearest").astype(bool)
    mask = np.zeros_like(o)
    nx, ny, nz = all8.shape
    mask[off[0] : off[0] + nx, off[1] : off[1] + ny, off[2] : off[2] + nz] = all8
    return mask


@torch.no_grad()
def tsdf_from_render(
    render_fn: Callable[[Cameras], dict[str, Tensor]],
    cameras: Cameras,
    aabb: Tensor | Sequence[Sequence[float]],
    resolution: int | Sequence[int],
    truncation: float | None = None,
    depth_key: str = "depth",
    accumulation_threshold: float = 0.5,
    progress: bool = True,
    rgb_key: str = "rgb",
    accumulation_key: str = "accumulation",
    device: torch.device | str | None = None,
) -> trimesh.Trimesh:
    """Render every camera and fuse the depth maps into a TSDF, then extract a coloured mesh.

    render_fn: single camera -> dict with ``depth_key`` [H, W, 1] z-depth, optionally
        ``rgb_key`` [H, W, 3] and ``accumulation_key`` [H, W, 1].
    cameras: C cameras to render. aabb: [2, 3]. resolution, truncation: see :class:`TSDFVolume`.
    accumulation_threshold: pixels whose accumulated opacity is below it are skipped (they show
        background, whose depth is meaningless). Ignored when no accumulation is rendered.
    device: volume device (default: the cameras' device).

    Returns the mesh in world units (empty if nothing was observed).
    """
    vol = TSDFVolume(aabb, resolution, truncation, device=device if device is not None else cameras.device)
    for i in track(range(len(cameras)), "TSDF fusion", enabled=progress):
        cam = cameras[i]
        out = render_fn(cam)
        depth = out[depth_key]
        mask = None
        if accumulation_key in out and out[accumulation_key] is not None:
            mask = out[accumulation_key].reshape(depth.shape[0], depth.shape[1]) >= accumulation_threshold
        rgb = out.get(rgb_key)
        vol.integrate(depth, cam, rgb=rgb, mask=mask)
    return vol.extract_mesh()
