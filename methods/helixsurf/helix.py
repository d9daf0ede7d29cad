"""HelixSurf's helix loop: PatchMatch multi-view stereo rounds that supervise the SDF, each later
round started from the SDF's own rendered depth and normals (Liang, Huang, Ding & Jia,
"HelixSurf: A Robust and Efficient Neural Implicit Surface Learning of Indoor Scenes with
Iterative Intertwined Regularization", CVPR 2023, sec. 3).

One round (:func:`mvs_round`):

1. the training images and cameras are resized by ``image_scale`` (PatchMatch's cost grows with the
   pixel count; the small preset matches at half size);
2. from round 1 on, the model renders z-depth and normals at those cameras; pixels whose opacity
   reaches ``min_accumulation`` start PatchMatch from that plane, plus uniform noise (HelixSurf adds
   +-0.3 to the depth and to each normal component before its second PatchMatch), the others from
   random planes (:func:`recon.geometry.patchmatch.patchmatch`);
3. the geometric-consistency filter (:func:`recon.geometry.patchmatch.geometric_consistency`) zeroes
   the pixels fewer than ``min_views`` other views agree with: they carry no supervision; with
   ``clean.enabled``, so do the pixels off a trimmed Poisson surface of the fused points
   (HelixSurf's cleaning, :mod:`recon.geometry.point_cleaning`);
4. each training pixel takes the plane of its nearest matched pixel, re-intersected with its own
   ray (exact at ``image_scale`` 1), giving a z-depth map and a world-frame normal map per training
   image for :meth:`data.datamanager.RayDataManager.set_cues`;
5. with planar priors, superpixels of the matched images whose filtered MVS points lie on one plane
   give every pixel of theirs that plane's normal (:mod:`recon.geometry.planar`); HelixSurf
   regenerates these every 2500 steps from the SDF's mesh, here they follow each round's MVS.

Every random draw comes from generators seeded with ``patchmatch.seed + round``, never the global
RNG, so a round re-run after a resume gives the same maps.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.cameras import Cameras
from recon.geometry.patchmatch import PatchMatchConfig, geometric_consistency, patchmatch, plane_depth
from recon.geometry.planar import PlanarPriorConfig, planar_normals, superpixels
from recon.geometry.point_cleaning import SurfaceCleaningConfig, clean_mvs


@dataclass
class HelixLoopConfig:
    """When and how the PatchMatch rounds run."""

    refresh_every: int = 12_000
    """Steps between rounds: round 0 runs before the first step (from random planes), round k at step
    k x refresh_every from the SDF's rendered depth and normals (HelixSurf: 12k-25k steps a round,
    two rounds); 0: round 0 only."""
    image_scale: float = 1.0
    """PatchMatch runs on the training images (as the datamanager loaded them) resized by this factor."""
    patchmatch: PatchMatchConfig = field(default_factory=PatchMatchConfig)
    """PatchMatch, consistency-filter settings and the seed of the rounds."""
    init_depth_noise: float = 0.3
    """Uniform noise (+- this, normalised z-depth units) on the rendered depth that starts a later round."""
    init_normal_noise: float = 0.3
    """Uniform noise (+- this) on each component of the rendered normal, renormalised afterwards."""
    min_accumulation: float = 0.5
    """A rendered pixel starts PatchMatch from the SDF's plane only where its opacity reaches this."""
    planar: PlanarPriorConfig = field(default_factory=PlanarPriorConfig)
    """Superpixels and plane fitting of the planar priors (used when ``model.plane_normal_weight`` > 0)."""
    clean: SurfaceCleaningConfig = field(default_factory=SurfaceCleaningConfig)
    """HelixSurf's cleaning of each round's maps through a Poisson surface of the fused points (needs Open3D)."""

    def check(self) -> None:
        from recon.errors import ConfigError

        if self.refresh_every < 0:
            raise ConfigError(f"--model.helix.refresh-every must be 0 or more, got {self.refresh_every}")
        if not 0 < self.image_scale <= 1:
            raise ConfigError(f"--model.helix.image-scale must be in (0, 1], got {self.image_scale}")
        if self.patchmatch.top_k < 1 or self.patchmatch.num_source_views < self.patchmatch.top_k:
            raise ConfigError("--model.helix.patchmatch.top-k must be at least 1 and at most --model.helix.patchmatch.num-source-views")
        self.clean.check("--model.helix.clean")


@dataclass
class MvsMaps:
    """A round's supervision at the training images' size, and what it cost.

    depths: per training image [H, W] z-depth, 0 where PatchMatch or the consistency filter gave none;
    normals: per training image [H, W, 3] unit world-frame normals, 0 likewise;
    kept: fraction of matched pixels that survived the filter (and the cleaning); seconds: rendering the start, PatchMatch, filter (and cleaning), planar priors;
    plane_normals: per training image [H, W, 3] world-frame normals of the planar regions (0: none), when asked.
    """

    depths: list[Tensor]
    normals: list[Tensor]
    kept: float
    seconds: dict[str, float]
    plane_normals: list[Tensor] | None = None


def resize_images(images: list[Tensor], cameras: Cameras, scale: float) -> tuple[list[Tensor], Cameras]:
    """Float images [H, W, 3] and their cameras resized by ``scale`` (area averaging)."""
    if scale == 1.0:
        return images, cameras
    small = cameras.scaled(scale)
    out = []
    for i, img in enumerate(images):
        size = (int(small.height[i]), int(small.width[i]))
        out.append(F.interpolate(img.permute(2, 0, 1)[None], size=size, mode="area")[0].permute(1, 2, 0))
    return out, small


@torch.no_grad()
def render_init(model: Any, cameras: Cameras, config: HelixLoopConfig, generator: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
    """The model's z-depth [H, W] and camera-frame normals [H, W, 3] at each camera, with the
    round's noise, 0 where its opacity is below ``min_accumulation`` (PatchMatch starts at random there)."""
    was_training = model.training
    model.eval()
    depths, normals = [], []
    try:
        for i in range(len(cameras)):
            out = model.render(cameras[i].to(model.device))
            depth, normal, acc = out["depth"][..., 0].cpu(), out["normal"].cpu(), out["accumulation"][..., 0].cpu()
            rotation = cameras.camera_to_worlds[i, :3, :3].cpu()
            n_cam = F.normalize(normal, dim=-1) @ rotation  # R^T n, row-wise
            noise_d = (torch.rand(depth.shape, generator=generator) * 2 - 1) * config.init_depth_noise
            noise_n = (torch.rand(normal.shape, generator=generator) * 2 - 1) * config.init_normal_noise
            hit = (acc >= config.min_accumulation) & (depth > 0)
            depth = torch.where(hit, (depth + noise_d).clamp_min(1e-3), torch.zeros_like(depth))
            n_cam = torch.where(hit[..., None], F.normalize(n_cam + noise_n, dim=-1), torch.zeros_like(n_cam))
            depths.append(depth)
            normals.append(n_cam)
    finally:
        model.train(was_training)
    return depths, normals


def _nearest_pixels(small_size: tuple[int, int], size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """For every pixel of an image of ``size`` (H, W): the flat index of the pixel of an image of
    ``small_size`` (h, w) nearest to its centre [H W], that pixel's centre [H W, 2] and its own [H W, 2]."""
    (h, w), (H, W) = small_size, size
    v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    centres = torch.stack([u.reshape(-1), v.reshape(-1)], -1).float() + 0.5
    nearest_u = (centres[:, 0] * w / W).long().clamp(0, w - 1)
    nearest_v = (centres[:, 1] * h / H).long().clamp(0, h - 1)
    return nearest_v * w + nearest_u, torch.stack([nearest_u, nearest_v], -1).float() + 0.5, centres


def planes_to_pixels(depth: Tensor, normal: Tensor, small: Cameras, large: Cameras, index: int) -> tuple[Tensor, Tensor]:
    """The planes of one view's matched pixels (z-depth [h, w], camera-frame normal [h, w, 3] at
    camera ``index`` of ``small``) at the pixels of ``large`` (the same view at the training size):
    each pixel takes its nearest matched pixel's plane, re-intersected with its own ray. Returns
    z-depth [H, W] and world-frame normals [H, W, 3], 0 where there is none."""
    H, W = int(large.height[index]), int(large.width[index])
    flat, small_centres, centres = _nearest_pixels(tuple(depth.shape), (H, W))
    ones = torch.ones(len(flat), 1)
    small_rays = torch.cat([small_centres, ones], -1) @ torch.linalg.inv(small.intrinsics_matrices()[index].cpu()).T
    rays = torch.cat([centres, ones], -1) @ torch.linalg.inv(large.intrinsics_matrices()[index].cpu()).T
    d, n = depth.reshape(-1)[flat], normal.reshape(-1, 3)[flat]
    offset = d * (n * small_rays).sum(-1)
    z = plane_depth(rays, n, offset)
    valid = (d > 0) & (z > 0) & torch.isfinite(z)
    z = torch.where(valid, z, torch.zeros_like(z))
    return z.reshape(H, W), _to_world(n, valid, large, index).reshape(H, W, 3)


def normals_to_pixels(normal: Tensor, large: Cameras, index: int) -> Tensor:
    """Camera-frame normals [h, w, 3] of one view (0: none) at the pixels of ``large`` (nearest
    pixel), in the world frame: [H, W, 3]."""
    H, W = int(large.height[index]), int(large.width[index])
    flat, _, _ = _nearest_pixels(tuple(normal.shape[:2]), (H, W))
    n = normal.reshape(-1, 3)[flat]
    return _to_world(n, n.norm(dim=-1) > 0.5, large, index).reshape(H, W, 3)


def _to_world(normal: Tensor, valid: Tensor, cameras: Cameras, index: int) -> Tensor:
    world = F.normalize(normal @ cameras.camera_to_worlds[index, :3, :3].cpu().T, dim=-1)
    return torch.where(valid[:, None], world, torch.zeros_like(world))


def mvs_round(images: list[Tensor], cameras: Cameras, aabb: Tensor, config: HelixLoopConfig, round_index: int,
              model: Any | None = None, points: Tensor | None = None, planar: bool = False) -> MvsMaps:
    """One PatchMatch round on the training images (float [H, W, 3], one size) and their pinhole
    cameras: from random planes, or from ``model``'s rendered depth and normals when given (see the
    module docstring). aabb: [2, 3] scene box; points: [P, 3] sparse points for the depth range, or
    None; planar: also the planar regions' normals (:mod:`recon.geometry.planar`, on the matched images)."""
    pm = dataclasses.replace(config.patchmatch, seed=config.patchmatch.seed + round_index)
    small_images, small = resize_images([img.cpu() for img in images], cameras.to("cpu"), config.image_scale)
    start = time.perf_counter()
    init_d = init_n = None
    if model is not None:
        generator = torch.Generator().manual_seed(pm.seed)
        init_d, init_n = render_init(model, small, config, generator)
    rendered = time.perf_counter()
    result = patchmatch(small_images, small, pm, aabb.cpu(), init_depths=init_d, init_normals=init_n, points=points)
    matched = time.perf_counter()
    keep, _ = geometric_consistency(small, result.depth, pm)
    if config.clean.enabled:
        keep, _ = clean_mvs(small, result.depth, result.normal, small_images, keep, pm, config.clean)
    filtered = time.perf_counter()
    depth, normal = result.depth * keep, result.normal * keep[..., None]
    large = cameras.to("cpu")
    maps = [planes_to_pixels(depth[i], normal[i], small, large, i) for i in range(len(images))]
    plane_normals = None
    if planar:
        K = small.intrinsics_matrices().cpu()
        plane_normals = [normals_to_pixels(planar_normals(superpixels(small_images[i], config.planar), depth[i], normal[i], K[i], config.planar),
                                           large, i) for i in range(len(images))]
    matched_px = (result.depth > 0).sum().clamp_min(1)
    return MvsMaps(
        depths=[d for d, _ in maps], normals=[n for _, n in maps], kept=float(keep.sum() / matched_px), plane_normals=plane_normals,
        seconds={"render": rendered - start, "patchmatch": matched - rendered, "filter": filtered - matched,
                 "planar": time.perf_counter() - filtered},
    )
