"""CoherentGS's preprocessing of the sparse input views and its datamanager (the official ``data_preparation_scripts/`` and ``scene/dataset_readers.py``).

For the N training views: optical flow between every ordered pair with forward-backward consistency
masks; an initial depth map per view from what the data offers (the dataset's depth files, its
sparse points, or flow triangulated with the known poses; a view flow cannot triangulate falls back
to the points, then to a plane), aligned across views by a per-view scale
and offset that minimise the flow loss; and C depth layers per view by agglomerative (Ward)
clustering of its disparity. Batches are whole training images with that view's layers and its
flows to every other view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data.base import DataparserOutputs
from data.datamanager import ImageDataManager, ImageDataManagerConfig, ImageDataset
from data.images import load_depth, load_image
from recon.cameras import Cameras
from recon.engine.logging import console
from recon.errors import DataError
from recon.geometry.flow import (
    FlowMethod,
    backward_warp,
    fill_depth,
    forward_backward_consistency,
    optical_flow,
    pixel_grid,
    triangulate_flow,
)
from recon.geometry.local_models import (
    RelativeKind,
    depth_from_model,
    fit_relative_depth,
    flow_from_model,
    load_network,
    sharpen_depth_edges,
)

DepthSource = Literal["auto", "files", "sfm", "flow", "model"]
EDGE_THRESHOLD_HEIGHT = 378
"""Image height at which depth_edge_threshold applies as given (LLFF images_8, the official setting)."""
BACKGROUND_DEPTH_FACTOR = 10.0
"""Pixels a depth file marks as misses (0) get this times the view's farthest depth."""


@dataclass
class SparseViews:
    """Everything CoherentGS derives from its V training views (all on one device).

    images [V, H, W, 3] float RGB; cameras (V, one size); depth [V, H, W] aligned initial z-depth;
    layers [V, C, H, W] one-hot depth-layer masks (float); flows [V, V, H, W, 2] with flows[i, j] =
    F_{i->j} (zeros on the diagonal); flow_masks [V, V, H, W] float 0/1 (consistent and inside);
    hits [V, H, W] bool: pixels that see a surface (False where a depth file marks a miss).
    """

    images: Tensor
    cameras: Cameras
    depth: Tensor
    layers: Tensor
    flows: Tensor
    flow_masks: Tensor
    hits: Tensor

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])


def camera_rays(cameras: Cameras) -> Tensor:
    """Per-pixel ray directions with camera z = 1 [V, H, W, 3] in camera coordinates (pixel centres)."""
    h, w = int(cameras.height[0]), int(cameras.width[0])
    p = pixel_grid(h, w, cameras.device)
    x = (p[None, ..., 0] - cameras.cx[:, None, None]) / cameras.fx[:, None, None]
    y = (p[None, ..., 1] - cameras.cy[:, None, None]) / cameras.fy[:, None, None]
    return torch.stack([x, y, torch.ones_like(x)], -1)


def world_positions(depth: Tensor, rays: Tensor, c2w: Tensor) -> Tensor:
    """Points on the pixel rays: depth [V, H, W] z-depth, rays [V, H, W, 3] (camera z = 1),
    c2w [V, 3, 4] -> world positions [V, H, W, 3]."""
    cam = depth[..., None] * rays
    return torch.einsum("vij,vhwj->vhwi", c2w[:, :, :3], cam) + c2w[:, None, None, :, 3]


def flow_loss(positions: Tensor, reference: int, partners: list[int], flows: Tensor, masks: Tensor) -> Tensor:
    """CoherentGS's flow loss for one reference view i: sum over partners j of mean(M_ij |X_j(p + F_ij(p)) - X_i(p)|),
    mean over every pixel and channel, masked ones included (official ``train.py``).

    positions [V, H, W, 3] world positions of every view's pixels; flows [P, H, W, 2] = F_{i->j} and
    masks [P, H, W] for the P partners j.
    """
    if not partners:
        return positions.new_zeros(())
    src = positions[partners].permute(0, 3, 1, 2)
    warped, _ = backward_warp(src, flows)
    diff = (warped.permute(0, 2, 3, 1) - positions[reference][None]).abs()
    return (masks[..., None] * diff).mean(dim=(1, 2, 3)).sum()


def align_depth(
    depth: Tensor, cameras: Cameras, flows: Tensor, masks: Tensor, steps: int, lr_scale: float, lr_offset: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-view scale s and offset o minimising the flow loss summed over every ordered pair (Adam,
    cosine annealing to 0 over ``steps``; the official alignment stage). D = s D^m + o median(D^m): the
    offset is relative to the view's median depth, so the learning rates do not depend on the
    scene's units [ours]. Returns the aligned depth [V, H, W], s [V] and o [V].

    A world position c + D r is affine in (s, o), and so is its bilinear warp: the warps of D r and
    r are computed once, which makes each step a few element-wise operations over the masked
    pixels (the loss is exactly :func:`flow_loss` over all pairs).
    """
    v, h, w = depth.shape
    scale = torch.ones(v, device=depth.device, requires_grad=True)
    offset = torch.zeros(v, device=depth.device, requires_grad=True)
    if steps <= 0 or v < 2:
        return depth, scale.detach(), offset.detach()
    median = depth.flatten(1).median(1).values
    c2w = cameras.camera_to_worlds
    rays = torch.einsum("vij,vhwj->vhwi", c2w[:, :, :3], camera_rays(cameras))  # world-rotated, camera z = 1
    terms = []  # per pair: (i, j, A_i, B_i, warped A_j, warped B_j, c_j - c_i) on the masked pixels
    with torch.no_grad():
        for i in range(v):
            for j in range(v):
                keep = masks[i, j] > 0
                if i == j or not keep.any():
                    continue
                src = torch.cat([depth[j][..., None] * rays[j], median[j] * rays[j]], -1).permute(2, 0, 1)[None]
                warped = backward_warp(src, flows[i, j][None])[0][0].permute(1, 2, 0)[keep]
                a_i, b_i = (depth[i][..., None] * rays[i])[keep], (median[i] * rays[i])[keep]
                terms.append((i, j, a_i, b_i, warped[:, :3], warped[:, 3:], c2w[j, :, 3] - c2w[i, :, 3]))
    opt = torch.optim.Adam([{"params": [scale], "lr": lr_scale}, {"params": [offset], "lr": lr_offset}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.0)
    for _ in range(steps):
        loss = depth.new_zeros(())
        for i, j, a_i, b_i, a_j, b_j, dc in terms:
            diff = dc + scale[j] * a_j + offset[j] * b_j - scale[i] * a_i - offset[i] * b_i
            loss = loss + diff.abs().sum() / (h * w * 3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        aligned = scale[:, None, None] * depth + (offset * median)[:, None, None]
        return aligned.clamp_min(1e-3 * float(median.min())), scale.detach(), offset.detach()


def depth_layers(depth: Tensor, num_layers: int, max_samples: int = 4000) -> Tensor:
    """One-hot depth layers [C, H, W] of one view: its disparity 1/depth, min-max normalised, is
    clustered into C groups by Ward agglomerative clustering of an evenly strided subset (at most
    ``max_samples`` pixels [ours]; the official code takes every 10th); each cluster's minimum is a
    bin edge (3D Moments' layering, Wang et al. 2022)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    disp = (1.0 / depth.clamp_min(1e-8)).double().cpu().numpy()
    lo, hi = disp.min(), disp.max()
    norm = (disp - lo) / max(hi - lo, 1e-12)
    flat = norm.reshape(-1)
    stride = max(1, int(np.ceil(len(flat) / max_samples)))
    sample = flat[::stride]
    c = min(num_layers, len(np.unique(sample)))
    if c <= 1:
        idx = np.zeros(flat.shape, dtype=np.int64)
    else:
        labels = fcluster(linkage(sample[:, None], method="ward"), t=c, criterion="maxclust")
        edges = np.sort([sample[labels == k].min() for k in np.unique(labels)])
        idx = np.clip(np.searchsorted(edges, flat, side="right") - 1, 0, None)
    onehot = np.zeros((num_layers, flat.size), dtype=np.float32)
    onehot[idx, np.arange(flat.size)] = 1.0
    return torch.from_numpy(onehot.reshape(num_layers, *norm.shape)).to(depth.device)


def pairwise_flows(
    images: np.ndarray, method: FlowMethod, preset: str, erosion: int, threshold: float, device: torch.device, model_path: Path | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Flows [V, V, H, W, 2], consistency weights [V, V, H, W] and masks (weight > threshold) of
    every ordered pair of uint8 images [V, H, W, 3]; by OpenCV (``method``, ``preset``) or, with
    ``model_path``, by that local TorchScript flow network."""
    v, h, w = images.shape[:3]
    module = load_network(model_path, "flow network") if model_path is not None else None
    flows = torch.zeros(v, v, h, w, 2)
    for i in range(v):
        for j in range(v):
            if i != j:
                if module is not None:
                    flow = flow_from_model(module, images[i], images[j], model_path)
                else:
                    flow = optical_flow(images[i], images[j], method, preset)
                flows[i, j] = torch.from_numpy(flow)
    weights = torch.zeros(v, v, h, w)
    for i in range(v):
        for j in range(v):
            if i != j:
                weights[i, j] = forward_backward_consistency(flows[i, j], flows[j, i], erosion)
    return flows.to(device), weights.to(device), (weights > threshold).float().to(device)


def resize_views(flows: Tensor, masks: Tensor, depth: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Flows [V, V, H, W, 2], flow masks [V, V, H, W] and depth [V, H, W] computed at one resolution,
    brought to ``size`` (H', W'): area-averaged, flow vectors rescaled, a mask kept where every
    covered pixel was valid."""
    v, _, h, w = masks.shape
    hs, ws = size
    f = F.interpolate(flows.reshape(v * v, h, w, 2).permute(0, 3, 1, 2), size=size, mode="area")
    f = f * torch.tensor([ws / w, hs / h], device=f.device)[None, :, None, None]
    m = F.interpolate(masks.reshape(v * v, 1, h, w), size=size, mode="area") > 0.999
    d = F.interpolate(depth[:, None], size=size, mode="area")[:, 0]
    return f.permute(0, 2, 3, 1).reshape(v, v, hs, ws, 2), m.float().reshape(v, v, hs, ws), d


def covisible(hit: Tensor, flows: Tensor) -> Tensor:
    """[V, V, H, W] 1 where pixel p of view i and its flow target p + F_ij(p) in view j both see a
    surface (hit [V, H, W] float 0/1), else 0."""
    v = hit.shape[0]
    out = torch.zeros(flows.shape[:4], device=flows.device)
    for i in range(v):
        warped, inside = backward_warp(hit[:, None], flows[i])
        out[i] = hit[i][None] * (warped[:, 0] > 0.999) * inside
    return out


def epipolar_error(flow: Tensor, K_a: Tensor, c2w_a: Tensor, K_b: Tensor, c2w_b: Tensor) -> Tensor:
    """Distance in pixels [H, W] from each flow target p + F_ab(p) in view b to the epipolar line
    F p of its source pixel p (Hartley and Zisserman 2004, *Multiple View Geometry*, sec. 9.2).

    flow [H, W, 2] = F_{a->b}; K [3, 3]; c2w [3, 4] (OpenCV, pinhole). A flow vector far from its
    epipolar line matches two rays that do not meet: the midpoint of their closest approach is no
    point of the surface."""
    dtype = torch.float64
    h, w = flow.shape[:2]
    pa = pixel_grid(h, w, flow.device, dtype)
    pb = pa + flow.to(dtype)
    R_a, R_b = c2w_a[:3, :3].to(dtype), c2w_b[:3, :3].to(dtype)
    R = R_b.T @ R_a  # x_b = R x_a + t in camera coordinates
    t = R_b.T @ (c2w_a[:3, 3] - c2w_b[:3, 3]).to(dtype)
    t_cross = torch.zeros(3, 3, dtype=dtype, device=flow.device)
    t_cross[0, 1], t_cross[0, 2], t_cross[1, 2] = -t[2], t[1], -t[0]
    t_cross = t_cross - t_cross.T
    fundamental = torch.linalg.inv(K_b.to(dtype)).T @ t_cross @ R @ torch.linalg.inv(K_a.to(dtype))
    line = torch.cat([pa, torch.ones_like(pa[..., :1])], -1) @ fundamental.T
    residual = (pb * line[..., :2]).sum(-1) + line[..., 2]
    return (residual.abs() / line[..., :2].norm(dim=-1).clamp_min(1e-12)).to(flow.dtype)


def triangulated_depth(
    flows: Tensor, masks: Tensor, cameras: Cameras, min_angle_deg: float, max_epipolar_error: float = float("inf")
) -> tuple[Tensor, Tensor]:
    """Per view, the median over partner views of the depth triangulated from consistent flow whose
    target lies within ``max_epipolar_error`` pixels of its epipolar line (:func:`epipolar_error`).
    Returns depth [V, H, W] (NaN where no partner triangulates) and the count of partners [V, H, W]."""
    v = flows.shape[0]
    K, c2w = cameras.intrinsics_matrices(), cameras.camera_to_worlds
    out, count = [], []
    for i in range(v):
        samples = []
        for j in range(v):
            if j == i:
                continue
            d, ok = triangulate_flow(flows[i, j], K[i], c2w[i], K[j], c2w[j], min_angle_deg)
            ok &= (masks[i, j] > 0) & (epipolar_error(flows[i, j], K[i], c2w[i], K[j], c2w[j]) <= max_epipolar_error)
            samples.append(torch.where(ok, d, torch.full_like(d, float("nan"))))
        stack = torch.stack(samples)
        out.append(torch.nanmedian(stack, 0).values)
        count.append((~torch.isnan(stack)).sum(0))
    return torch.stack(out), torch.stack(count)


def sfm_depth(points: np.ndarray, cameras: Cameras) -> Tensor:
    """Sparse z-depth [V, H, W] of the dataset's points (nearest point per pixel; NaN elsewhere)."""
    pts = torch.as_tensor(points, dtype=torch.float32, device=cameras.device)
    h, w = int(cameras.height[0]), int(cameras.width[0])
    maps = []
    for i in range(len(cameras)):
        uv, z = cameras.project(pts, i)
        u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        ok = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        flat = torch.full((h * w,), float("inf"), device=cameras.device)
        flat.scatter_reduce_(0, (v * w + u)[ok], z[ok], reduce="amin")
        maps.append(torch.where(torch.isinf(flat), torch.full_like(flat, float("nan")), flat).reshape(h, w))
    return torch.stack(maps)


def plane_depth(sparse: Tensor, cameras: Cameras, view: int, points: np.ndarray | None = None) -> float | None:
    """Depth of a fronto-parallel plane for a view that has no depth of its own: the median z, in
    camera ``view``, of the other views' sparse depth (``sparse`` [V, H, W] z-depth, NaN where none)
    back-projected to the world, and of ``points`` [P, 3]; counted are those that project into the
    image or, when none does, every one in front of the camera. None when nothing lies in front.

    A plane is the coarsest guess that stays where the scene is: the other views' surfaces are what
    this view most likely sees [ours; the official code always has flow depth]."""
    others = [j for j in range(len(sparse)) if j != view]
    rays = camera_rays(cameras)
    world = [world_positions(sparse[others], rays[others], cameras.camera_to_worlds[others])[torch.isfinite(sparse[others])]]
    if points is not None and len(points):
        world.append(torch.as_tensor(points, dtype=torch.float32))
    uv, z = cameras.project(torch.cat(world), view)
    h, w = int(cameras.height[view]), int(cameras.width[view])
    front = z > 0
    inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    chosen = z[inside] if inside.any() else z[front]
    return float(chosen.median()) if len(chosen) else None


@dataclass
class CoherentGSDataManagerConfig(ImageDataManagerConfig):
    """Whole training images (3DGS sampling) plus CoherentGS's per-view flows, depth and layers."""

    preprocess_full_resolution: bool = True
    """With image_scale != 1: compute flows and initial depth on the dataset's images, then resize
    (DIS flow is far more reliable at the higher resolution) [ours]."""
    flow_method: FlowMethod = "dis"
    """Optical flow: OpenCV DIS (default; fast, coarse to fine) or Farneback (used unless flow_model is given)."""
    flow_model: Path | None = None
    """A local optical-flow network (e.g. FlowFormer++ or RAFT saved with torch.export.save as .pt2, or TorchScript;
    called as model(image0, image1) on [1, 3, H, W] RGB in [0, 255], returning [1, 2, H, W] or a list
    ending with it). Replaces flow_method when given; nothing is downloaded."""
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    """DIS quality preset."""
    flow_erosion: int = 5
    """Side of the minimum filter applied to the forward-backward consistency weight."""
    flow_mask_threshold: float = 0.5
    """Flow pixels with a consistency weight above this enter the flow loss (M = [w > 0.5])."""
    depth_source: DepthSource = "auto"
    """Initial depth: files (the dataset's depth maps; relative ones are fitted like model), sfm (its
    sparse points, hole-filled), flow (triangulated from the flows and the poses, hole-filled), model
    (depth_model's relative output, fitted to relative_depth_reference then aligned on the flow loss);
    auto = model when depth_model is given, else files when the dataset has them, else flow. With
    flow, a view that no flow triangulates (views too far apart) takes the sparse points instead,
    and without those a plane at the median depth of what the other views see (printed per view)."""
    depth_model: Path | None = None
    """A local monocular depth network (e.g. Depth Anything saved with torch.export.save as .pt2, or TorchScript;
    called on [1, 3, H', W'] RGB, returning [1, H', W'] or [1, 1, H', W']). Nothing is downloaded."""
    depth_model_output: RelativeKind = "disparity"
    """What depth_model returns, up to scale and shift: disparity (Depth Anything, MiDaS) or depth."""
    depth_model_input_size: int = 518
    """Shorter side of depth_model's input (both sides rounded to multiples of 14; 0 = image size)."""
    depth_model_normalize: bool = True
    """ImageNet mean/std normalisation of depth_model's input (Depth Anything's and MiDaS's)."""
    sharpen_depth_edges: bool = True
    """Clean the depth edges of relative depth (a depth model's, or relative depth files) before it is
    fitted: the official sparse bilateral filter (3D Photo Inpainting's; windows 7, 7, 5, 5), which
    snaps the values a network smears across an occlusion edge to one side of it."""
    depth_edge_threshold: float = 0.1
    """Jump between neighbouring pixels, in the inverse of the normalised disparity (d / max + 0.2), that
    marks a depth edge: official 0.1 at LLFF images_8 (378 pixels high). Scaled by 378 / H for an image
    H pixels high [ours]: a smooth slope's jump per pixel grows as the resolution drops, an occlusion's
    does not (unscaled, a 64-pixel image flags a quarter of its pixels)."""
    relative_depth_reference: Literal["flow", "sfm"] = "flow"
    """Sparse metric depth that relative depth (a depth model's, or relative depth files) is fitted to
    by a scale and shift: flow (triangulated from the flows and poses) or sfm (the dataset's points)."""
    triangulation_min_angle: float = 0.5
    """Flow triangulation: rays closer than this angle (degrees) are not triangulated."""
    triangulation_max_epipolar_error: float = 2.0
    """Flow triangulation: flow whose target lies farther than this (pixels, at the preprocessing
    resolution) from its epipolar line is not triangulated [ours]. Views where no flow passes get
    their depth from the next source (see depth_source)."""
    num_layers: int = 5
    """Depth layers per view (C)."""
    align_steps: int = 1000
    """Steps of the per-view scale/offset alignment on the flow loss (0 skips it)."""
    align_metric_depth: bool = False
    """Also align depth that is already metric (files, sfm, flow triangulation; every built-in source).
    Off by default [ours]: the official alignment exists for relative monocular depth, and on metric
    depth it measurably hurts (with exact depth files on the synthetic scene it shrank depth by 30-40 %,
    the L1 flow loss in world units favouring smaller depths when the flow is noisy)."""
    align_lr_scale: float = 0.01
    """Alignment learning rate of the scales (cosine-annealed to 0). Official: 1.0 for Depth Anything's relative depth."""
    align_lr_offset: float = 0.01
    """Alignment learning rate of the offsets, in units of the view's median depth. Official: 5 depth units."""


def _sharpened(relative: Tensor, kind: RelativeKind, threshold: float) -> Tensor:
    """:func:`sharpen_depth_edges` on a relative disparity map, or on the inverse of a relative depth map."""
    if kind == "disparity":
        return sharpen_depth_edges(relative, threshold=threshold)
    positive = relative > 0
    disparity = torch.where(positive, 1.0 / relative.clamp_min(1e-12), torch.zeros_like(relative))
    sharp = sharpen_depth_edges(disparity, threshold=threshold)
    return torch.where(sharp > 0, 1.0 / sharp.clamp_min(1e-12), relative)


class CoherentGSDataManager(ImageDataManager):
    """Batches of one training image (``ImageDataManager``) plus ``"layers"`` [C, H, W] of that view,
    ``"partners"`` (the other views' indices), ``"flows"`` [V-1, H, W, 2] and ``"flow_masks"`` [V-1, H, W]
    from that view to each partner. ``views`` (a :class:`SparseViews`) holds the whole preprocessing."""

    config: CoherentGSDataManagerConfig

    def __init__(self, config: CoherentGSDataManagerConfig, outputs: DataparserOutputs, device: torch.device, seed: int = 0):
        super().__init__(config, outputs, device, seed)
        self.train_outputs = outputs.split("train")
        self.points3d = outputs.points3d
        self.views = self._preprocess()

    def _preprocess(self) -> SparseViews:
        c = self.config
        ds = self.train_dataset
        ds.require_single_size("CoherentGS (one Gaussian per pixel of every view)")
        t0 = time.perf_counter()
        rgb = torch.stack([ds.image(i) for i in range(len(ds))])
        cameras = self.cameras
        source = ds
        if c.image_scale != 1.0 and c.preprocess_full_resolution:
            source = ImageDataset(self.train_outputs, 1.0, load_masks=False)
        uint8 = (torch.stack([source.image(i) for i in range(len(source))]) * 255).round().clamp(0, 255).byte().numpy()
        src_cams = source.cameras.to(self.device)
        flows, _, masks = pairwise_flows(uint8, c.flow_method, c.dis_preset, c.flow_erosion, c.flow_mask_threshold, self.device, c.flow_model)
        depth, hit, relative = self._initial_depth(flows, masks, src_cams, torch.from_numpy(uint8).float() / 255)
        masks = masks * covisible(hit.float(), flows)
        if source is not ds:
            flows, masks, depth = resize_views(flows, masks, depth, tuple(rgb.shape[1:3]))
            hit = F.interpolate(hit[:, None].float(), size=tuple(rgb.shape[1:3]), mode="area")[:, 0] > 0.5
        steps = c.align_steps if relative or c.align_metric_depth else 0  # the official stage exists for relative depth
        depth, s, o = align_depth(depth, cameras, flows, masks, steps, c.align_lr_scale, c.align_lr_offset)
        layers = torch.stack([depth_layers(d, c.num_layers) for d in depth])
        by_source: dict[str, list[int]] = {}
        for i, name in enumerate(self.view_depth_sources):
            by_source.setdefault(name, []).append(i)
        sources = ", ".join(f"{name} (views {', '.join(map(str, ids))})" for name, ids in by_source.items())
        if len(by_source) == 1:
            sources = next(iter(by_source))
        console.print(
            f"coherentgs: {len(ds)} views, flow {c.flow_method if c.flow_model is None else c.flow_model.name} ({float(masks.mean()) * len(ds) / max(len(ds) - 1, 1):.0%} of pixel pairs consistent),"
            f" depth from {sources}{' (relative, fitted)' if relative else ''}, alignment s={[round(float(x), 3) for x in s]} o={[round(float(x), 3) for x in o]},"
            f" {time.perf_counter() - t0:.1f} s"
        )
        return SparseViews(rgb.to(self.device), cameras, depth, layers, flows, masks, hit)

    @property
    def depth_source(self) -> str:
        source = self.config.depth_source
        if source == "auto":
            if self.config.depth_model is not None:  # named by the user: used even where depth files exist
                return "model"
            return "files" if self.train_outputs.depth_filenames else "flow"
        return source

    def _initial_depth(self, flows: Tensor, masks: Tensor, cameras: Cameras, images: Tensor) -> tuple[Tensor, Tensor, bool]:
        """Initial z-depth [V, H, W], the pixels that see a surface [V, H, W] (all but the misses a
        metric depth file marks with 0), and whether the depth came from a relative source (then
        fitted to sparse metric depth here and aligned on the flow loss afterwards).
        ``images`` [V, H, W, 3] float RGB at the cameras' size (for a depth network).
        ``self.view_depth_sources`` records where each view's depth came from."""
        h, w = int(cameras.height[0]), int(cameras.width[0])
        source = self.depth_source
        out = self.train_outputs
        v = flows.shape[0]
        self.view_depth_sources = [source] * v
        if source == "model" or (source == "files" and out.depth_is_relative):
            return self._relative_depth(flows, masks, cameras, images), torch.ones(v, h, w, dtype=torch.bool, device=self.device), True
        if source == "files":
            if not out.depth_filenames:
                raise DataError("depth_source=files but the dataset has no depth files", out.metadata.get("source"))
            filled, hits = [], []
            for i, path in enumerate(out.depth_filenames):
                d = load_depth(path, out.depth_unit_scale_factor) * out.dataparser_scale
                d = F.interpolate(torch.from_numpy(d)[None, None].float(), size=(h, w), mode="nearest")[0, 0]
                valid = d > 0
                if not valid.any():
                    raise DataError(f"no usable files depth in training view {i}", out.image_filenames[i])
                # Depth files mark rays that hit nothing (background): put those Gaussians far behind
                # every surface [ours], where nearest-depth filling would float them in front of other views.
                filled.append(torch.where(valid, d, BACKGROUND_DEPTH_FACTOR * d[valid].max()))
                hits.append(valid)
            return torch.stack(filled).to(self.device), torch.stack(hits).to(self.device), False
        if source not in ("sfm", "flow"):
            raise DataError(f"unknown depth_source {source!r} (auto, files, sfm or flow)")
        has_points = self.points3d is not None and len(self.points3d) > 0
        if source == "sfm" and not has_points:
            raise DataError("depth_source=sfm but the dataset has no sparse points", out.metadata.get("source"))
        if source == "flow" and v < 2:
            raise DataError("depth_source=flow needs at least 2 training views", out.metadata.get("source"))
        foreground = torch.stack([self._foreground(i, (h, w)) for i in range(v)])
        sparse = torch.full((v, h, w), float("nan"))
        # Flow first; a view it cannot triangulate (baselines too wide) falls back to the sparse
        # points, the next weight-free source, rather than stopping the run.
        chain = {"flow": ["flow", "sfm"] if has_points else ["flow"], "sfm": ["sfm"]}[source]
        for name in chain:
            todo = [i for i in range(v) if not (sparse[i] > 0).any()]
            if not todo:
                break
            if name == "flow":
                candidate, _ = triangulated_depth(
                    flows.cpu(), masks.cpu(), cameras.to("cpu"), self.config.triangulation_min_angle, self.config.triangulation_max_epipolar_error
                )
            else:
                candidate = sfm_depth(self.points3d, cameras.to("cpu"))
            for i in todo:
                valid = torch.isfinite(candidate[i]) & (candidate[i] > 0) & foreground[i]
                sparse[i] = torch.where(valid, candidate[i].cpu(), float("nan"))
                self.view_depth_sources[i] = name
        planes = {}
        for i in range(v):
            if (sparse[i] > 0).any():
                continue
            if source != "flow":
                raise DataError(f"no usable {source} depth in training view {i}", out.image_filenames[i])
            plane = plane_depth(sparse, cameras.to("cpu"), i, self.points3d)
            if plane is None:
                raise DataError(
                    f"no usable depth in training view {i}: no flow triangulates, no sparse point and no other view's depth lies in front of it",
                    out.image_filenames[i],
                )
            planes[i] = plane
        filled, hits = [], []
        for i in range(v):
            if i in planes:
                self.view_depth_sources[i] = "plane"
                dense, far = torch.full((h, w), planes[i]), planes[i]
            else:
                d = sparse[i]
                valid = d > 0
                # Drop the farthest and nearest 1 %: triangulation outliers would dominate the layering.
                lo, hi = torch.quantile(d[valid], torch.tensor([0.01, 0.99])).tolist()
                valid &= (d >= lo) & (d <= hi)
                dense, far = torch.from_numpy(fill_depth(d.nan_to_num(0).numpy(), valid.numpy())), float(d[valid].max())
            # Transparent pixels see no surface: far behind, as the depth files' misses above.
            filled.append(torch.where(foreground[i], dense, BACKGROUND_DEPTH_FACTOR * far))
            hits.append(foreground[i])
            if self.view_depth_sources[i] != source:
                how = (
                    f"a plane at depth {planes[i]:.3g} (median depth of the other views' points in it)"
                    if i in planes
                    else f"the sparse points ({int((sparse[i] > 0).sum())} pixels)"
                )
                console.print(f"coherentgs: training view {i} ({out.image_filenames[i].name}): no usable {source} depth, starting from {how}")
        return torch.stack(filled).to(self.device), torch.stack(hits).to(self.device), False

    def _foreground(self, view: int, size: tuple[int, int]) -> Tensor:
        """Pixels [H, W] of training view ``view`` that show a surface: alpha >= 0.5 for RGBA images
        (object captures on a transparent background), every pixel otherwise [ours: the official
        code only meets forward-facing scenes, where every pixel sees one]."""
        rgba = load_image(self.train_outputs.image_filenames[view])
        if rgba.shape[-1] != 4:
            return torch.ones(size, dtype=torch.bool)
        alpha = torch.from_numpy(rgba[..., 3].astype(np.float32) / 255.0)[None, None]
        return F.interpolate(alpha, size=size, mode="area")[0, 0] >= 0.5

    def _relative_depth(self, flows: Tensor, masks: Tensor, cameras: Cameras, images: Tensor) -> Tensor:
        """Metric depth [V, H, W] from relative depth (depth_model's output, or the dataset's relative
        depth files), fitted per view by scale and shift to sparse metric depth [ours: the official code
        has no metric reference and leaves the whole scale to the flow-loss alignment]."""
        c, out = self.config, self.train_outputs
        h, w = int(cameras.height[0]), int(cameras.width[0])
        if self.depth_source == "model":
            if c.depth_model is None:
                raise DataError("depth_source=model needs --datamanager.depth-model PATH (a local depth network: .pt2 or TorchScript)")
            module = load_network(c.depth_model, "depth network")
            maps = [depth_from_model(module, im, c.depth_model_input_size, normalize=c.depth_model_normalize, path=c.depth_model) for im in images]
            kind, origin = c.depth_model_output, c.depth_model
        else:
            maps = []
            for path in out.depth_filenames:
                d = torch.from_numpy(load_depth(path, 1.0)).float()[None, None]
                maps.append(F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)[0, 0])
            kind, origin = "depth", out.depth_filenames[0]
        if c.sharpen_depth_edges:
            maps = [_sharpened(m.cpu(), kind, c.depth_edge_threshold * EDGE_THRESHOLD_HEIGHT / h) for m in maps]
        if c.relative_depth_reference == "sfm":
            if self.points3d is None or len(self.points3d) == 0:
                raise DataError("relative_depth_reference=sfm but the dataset has no sparse points", out.metadata.get("source"))
            reference = sfm_depth(self.points3d, cameras.to("cpu"))
        else:
            if flows.shape[0] < 2:
                raise DataError("fitting relative depth to triangulated flow needs at least 2 training views", out.metadata.get("source"))
            reference, _ = triangulated_depth(flows.cpu(), masks.cpu(), cameras.to("cpu"), c.triangulation_min_angle, c.triangulation_max_epipolar_error)
        fitted = []
        for i, (rel, ref) in enumerate(zip(maps, reference.cpu(), strict=True)):
            valid = torch.isfinite(ref) & (ref > 0)
            try:
                depth, _, _ = fit_relative_depth(rel.cpu(), ref.nan_to_num(1.0), valid, kind)
            except ValueError as exc:
                raise DataError(f"training view {i}: {exc} ({c.relative_depth_reference} reference)", origin) from None
            fitted.append(depth)
        return torch.stack(fitted).to(self.device)

    def next_train(self, step: int) -> dict[str, Any]:
        batch = super().next_train(step)
        i, views = batch["index"], self.views
        partners = [j for j in range(views.num_views) if j != i]
        batch.update(layers=views.layers[i], partners=partners, flows=views.flows[i, partners], flow_masks=views.flow_masks[i, partners])
        return batch


CoherentGSDataManagerConfig._target = CoherentGSDataManager
