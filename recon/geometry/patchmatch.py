"""PatchMatch multi-view stereo with slanted planes, in PyTorch (its matching cost also has a Warp
kernel twin, :mod:`recon.geometry.warp_patchmatch`).

Every pixel of a reference view carries a plane hypothesis: a z-depth ``d`` along its ray and a
unit normal ``n`` in the reference camera frame (OpenCV: x right, y down, z forward), facing the
camera (``n . ray < 0``). Following Bleyer, Rhemann & Rother 2011 ("PatchMatch Stereo - stereo
matching with slanted support windows", BMVC), a hypothesis is scored by warping a patch around
the pixel into each source view through the homography its plane induces (Hartley & Zisserman
2004, "Multiple View Geometry", sec. 13.1), and comparing with normalised cross-correlation
(NCC), optionally bilaterally weighted (Schönberger, Zheng, Pollefeys & Frahm 2016, "Pixelwise
view selection for unstructured multi-view stereo", ECCV). The multi-view cost is the
mean of the best ``top_k`` per-view costs (Galliani, Lasinger & Schindler 2015, "Massively
parallel multiview stereopsis by surface normal diffusion", ICCV).

Hypotheses spread by red-black checkerboard propagation with Galliani et al.'s fixed neighbour
pattern: all pixels of one colour update at once from neighbours of the other colour,
each neighbour's plane re-intersected with the pixel's ray. (ACMH's adaptive neighbour choice,
Xu & Tao 2019, "Multi-scale geometric consistency guided multi-view stereo", CVPR, on which
ACMP -- Xu & Tao 2020, "Planar prior assisted PatchMatch multi-view stereo", AAAI -- builds, is
not implemented.) Random refinement then tries perturbed and fresh depths and normals
(Schönberger et al. 2016; Xu & Tao 2019). A hypothesis is replaced only by a cheaper one.

Depth maps of all views are then filtered by geometric consistency (a pixel is kept when at least
``min_views`` other views see the same point: reprojection error and relative depth difference
below thresholds; Schönberger et al. 2016; Xu & Tao 2019) and fused into an
oriented, coloured point cloud in world coordinates.

Pixel centres are at ``+0.5`` (:mod:`recon.cameras`); the cameras must be pinholes (undistort
first). Shapes: C cameras, H x W pixels, M pixels being scored, V source views, P patch samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.cameras import Cameras
from recon.geometry.warp import backproject
from recon.geometry.warp_patchmatch import INVALID_COST, view_costs_warp

__all__ = [
    "PatchMatchConfig",
    "PatchMatchResult",
    "select_source_views",
    "depth_range",
    "relative_poses",
    "plane_homographies",
    "patch_offsets",
    "warp_patches",
    "ncc",
    "view_costs",
    "bilateral_weights",
    "plane_depth",
    "patchmatch_view",
    "patchmatch",
    "depth_to_points",
    "geometric_consistency",
    "fuse_points",
]


@dataclass
class PatchMatchConfig:
    """Settings of the PatchMatch search, the consistency filter and the fusion."""

    patch_radius: int = 3
    """Patch half-width in samples: (2 r + 1)^2 samples per patch."""
    patch_step: int = 1
    """Pixels between patch samples (ACMP samples an 11 x 11 window every second pixel)."""
    num_source_views: int = 6
    """Source views per reference view, nearest in viewing direction above ``min_angle_deg``."""
    min_angle_deg: float = 3.0
    """Source views closer than this to the reference viewing direction are skipped (no baseline)."""
    top_k: int = 3
    """The multi-view cost averages the best ``top_k`` per-view costs (occlusion robustness)."""
    iterations: int = 3
    """Red-black sweeps; each sweep propagates and refines both colours (ACMP's default)."""
    refine_candidates: int = 6
    """Perturbed / fresh hypotheses tried per pixel in each refinement."""
    refine_depth_fraction: float = 0.25
    """Initial depth perturbation: up to this fraction of the current depth either way; halves every sweep."""
    refine_normal_scale: float = 0.5
    """Initial normal perturbation (added to the unit normal before renormalising); halves every sweep."""
    bilateral_sigma_color: float = 0.2
    """Bilateral weighting: grey-level sigma on [0, 1] (0: plain NCC), Schönberger et al. 2016's
    value; it halves the foreground fattening at silhouettes on the synthetic scene."""
    bilateral_sigma_spatial: float = 3.0
    """Bilateral weighting: spatial sigma in pixels."""
    min_patch_std: float = 0.02
    """Reference patches whose (weighted) grey-level standard deviation is below this are
    textureless, and their pixels get no depth."""
    max_cost: float = 0.6
    """Pixels whose final cost is above this are left out of the depth map (depth 0)."""
    reproj_error_px: float = 1.0
    """Geometric consistency: largest forward-backward reprojection error, pixels."""
    rel_depth_diff: float = 0.01
    """Geometric consistency: largest relative depth difference."""
    min_views: int = 2
    """Geometric consistency: a pixel is kept when at least this many other views agree."""
    seed: int = 0
    """Random seed of the initialisation and refinement."""
    backend: Literal["torch", "warp"] = "torch"
    """Matching-cost implementation: the PyTorch reference or the Warp kernel (CPU and CUDA)."""


@dataclass
class PatchMatchResult:
    """Per-view outputs of :func:`patchmatch`, one row per matched view in the order of ``views``
    (C of them; for a subset, give :func:`geometric_consistency` the cameras ``cameras[views]``).

    depth: [C, H, W] z-depth in each camera (0: no estimate).
    normal: [C, H, W, 3] unit normals in each camera's frame (OpenCV), zeros where depth is 0.
    cost: [C, H, W] final multi-view cost (1 - NCC, lower is better).
    source_views: C lists of the camera indices (into the cameras given) each view was matched against.
    """

    depth: Tensor
    normal: Tensor
    cost: Tensor
    source_views: list[list[int]] = field(default_factory=list)


# -- view selection and geometry ---------------------------------------------------------------


def select_source_views(cameras: Cameras, ref: int, num: int, min_angle_deg: float = 3.0, candidates: list[int] | None = None) -> list[int]:
    """The ``num`` views whose optical axes are closest to view ``ref``'s, skipping those within
    ``min_angle_deg`` (no baseline) and those looking 90 degrees or more away.

    A simple stand-in for COLMAP's triangulation-angle score (Schönberger et al. 2016),
    which needs sparse points the dataset may not have. Returns indices into ``cameras``.
    """
    c2w = cameras.camera_to_worlds
    axes = c2w[:, :, 2]
    cos = (axes @ axes[ref]).clamp(-1, 1)
    angle = torch.rad2deg(torch.acos(cos))
    centres = c2w[:, :, 3]
    pool = range(len(cameras)) if candidates is None else candidates
    ok = [i for i in pool if i != ref and float(angle[i]) >= min_angle_deg and float(angle[i]) < 90.0]
    ok.sort(key=lambda i: (float(angle[i]), float((centres[i] - centres[ref]).norm())))
    return ok[:num]


def depth_range(cameras: Cameras, ref: int, aabb: Tensor, points: Tensor | None = None, min_depth: float = 1e-3,
                min_points: int = 20) -> tuple[float, float]:
    """(near, far) z-depth search range of view ``ref``.

    With sparse ``points`` [P, 3] (SfM), as gmvs's ``colmap2mvs`` does: the 1st and 99th
    percentiles of the depths of those that project into the image, times 0.75 and 1.25, when at
    least ``min_points`` do. Otherwise the depths of the corners of the box ``aabb`` [2, 3], near
    clamped to ``min_depth`` when the camera is inside the box.
    """
    if points is not None and len(points) >= min_points:
        uv, z = cameras.project(points.to(cameras.device).float(), ref)
        w, h = float(cameras.width[ref]), float(cameras.height[ref])
        seen = (z > min_depth) & (uv[:, 0] >= 0) & (uv[:, 0] <= w) & (uv[:, 1] >= 0) & (uv[:, 1] <= h)
        if int(seen.sum()) >= min_points:
            lo, hi = torch.quantile(z[seen], torch.tensor([0.01, 0.99], device=z.device)).tolist()
            return max(0.75 * lo, min_depth), 1.25 * hi
    corners = torch.stack(torch.meshgrid(*(aabb[:, k] for k in range(3)), indexing="ij"), -1).reshape(-1, 3)
    _, z = cameras.project(corners.to(cameras.device).float(), ref)
    return max(float(z.min()), min_depth), max(float(z.max()), 2 * min_depth)


def relative_poses(cameras: Cameras, ref: int, sources: list[int]) -> tuple[Tensor, Tensor]:
    """Rotation [V, 3, 3] and translation [V, 3] taking reference-camera points to each source
    camera: ``x_src = R x_ref + t``."""
    w2c = cameras.world_to_cameras()
    c2w_ref = torch.eye(4, device=cameras.device)
    c2w_ref[:3] = cameras.camera_to_worlds[ref]
    rel = w2c[sources] @ c2w_ref
    return rel[:, :3, :3], rel[:, :3, 3]


def plane_homographies(K_ref: Tensor, K_src: Tensor, R: Tensor, t: Tensor, normal: Tensor, offset: Tensor) -> Tensor:
    """Homographies [M, V, 3, 3] that map reference pixels to source pixels through planes.

    The plane of pixel m is ``{X : n_m . X = offset_m}`` in the reference frame (offset < 0 for a
    camera-facing normal and a plane in front of the camera; any non-zero offset works). For X on it, ``R X + t = (R + t n^T / offset) X``, so
    ``H = K_src (R + t n^T / offset) K_ref^-1`` (Hartley & Zisserman 2004, sec. 13.1).

    K_ref: [3, 3]; K_src: [V, 3, 3]; R: [V, 3, 3]; t: [V, 3]; normal: [M, 3]; offset: [M].
    """
    plane = normal / offset[:, None]  # [M, 3]
    A = R[None] + t[None, :, :, None] * plane[:, None, None, :]  # [M, V, 3, 3]
    return K_src[None] @ A @ torch.linalg.inv(K_ref)


def patch_offsets(radius: int, step: int, device=None) -> Tensor:
    """Offsets [P, 2] (du, dv) of a square patch of (2 radius + 1)^2 samples, ``step`` pixels apart."""
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32) * step
    dv, du = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([du.reshape(-1), dv.reshape(-1)], -1)


def _sample(images: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples [V, ...] of grey images [V, H, W] at pixel coordinates uv [V, ..., 2]
    (centres at +0.5; border values outside)."""
    V, H, W = images.shape
    shape = uv.shape[1:-1]
    grid = uv.reshape(V, 1, -1, 2) / torch.tensor([W, H], dtype=uv.dtype, device=uv.device) * 2 - 1
    out = F.grid_sample(images[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(V, *shape)


def warp_patches(src_images: Tensor, homographies: Tensor, centres: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Warp the patch around each reference pixel into every source view.

    src_images: [V, H, W] grey; homographies: [M, V, 3, 3] (:func:`plane_homographies`);
    centres: [M, 2] reference pixel coordinates (u, v); offsets: [P, 2].
    Returns samples [M, V, P] and valid [M, V]: the patch centre lands in front of the source
    camera and inside its image.
    """
    V, H, W = src_images.shape
    q = centres[:, None, :] + offsets[None]  # [M, P, 2]
    qh = torch.cat([q, torch.ones_like(q[..., :1])], -1)  # [M, P, 3]
    p = torch.einsum("mvij,mpj->mvpi", homographies, qh)  # [M, V, P, 3]
    w = p[..., 2]
    uv = p[..., :2] / torch.where(w.abs() < 1e-12, torch.full_like(w, 1e-12), w)[..., None]
    uv = uv.clamp(-1e4, 1e4)
    samples = _sample(src_images, uv.permute(1, 0, 2, 3)).permute(1, 0, 2)  # [M, V, P]
    c = uv[:, :, offsets.shape[0] // 2]
    inside = (c[..., 0] >= 0) & (c[..., 0] <= W) & (c[..., 1] >= 0) & (c[..., 1] <= H)
    valid = inside & (w > 0).all(-1)
    return samples, valid


def bilateral_weights(ref_patches: Tensor, offsets: Tensor, sigma_color: float, sigma_spatial: float) -> Tensor:
    """Weights [M, P] of Schönberger et al. 2016's bilateral NCC: ``exp(-dc^2 / 2 sc^2 - dx^2 / 2 sx^2)``
    with dc the grey difference to the patch centre and dx the offset length. ref_patches: [M, P]."""
    centre = ref_patches[:, offsets.shape[0] // 2 : offsets.shape[0] // 2 + 1]
    dc2 = (ref_patches - centre) ** 2
    dx2 = (offsets**2).sum(-1)[None]
    return torch.exp(-dc2 / (2 * sigma_color**2) - dx2 / (2 * sigma_spatial**2))


def ncc(ref: Tensor, src: Tensor, weights: Tensor | None = None, eps: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Weighted normalised cross-correlation of reference patches with source patches.

    ref: [M, P]; src: [M, V, P]; weights: [M, P] or None (uniform). Returns NCC [M, V] in [-1, 1]
    and the reference patches' weighted standard deviation [M].
    ``NCC = cov_w(a, b) / sqrt(var_w(a) var_w(b))`` with weighted means.
    """
    w = torch.ones_like(ref) if weights is None else weights
    w = w / w.sum(-1, keepdim=True)
    a = ref - (w * ref).sum(-1, keepdim=True)
    mean_b = (w[:, None] * src).sum(-1, keepdim=True)
    b = src - mean_b
    var_a = (w * a * a).sum(-1)
    var_b = (w[:, None] * b * b).sum(-1)
    cov = (w[:, None] * a[:, None] * b).sum(-1)
    value = cov / torch.sqrt(var_a[:, None] * var_b + eps)
    return value.clamp(-1, 1), var_a.clamp_min(0).sqrt()


def plane_depth(rays: Tensor, normal: Tensor, offset: Tensor) -> Tensor:
    """z-depth [M] where rays [M, 3] (z = 1, i.e. ``K^-1 [u, v, 1]``) meet planes ``n . X = offset``."""
    denom = (normal * rays).sum(-1)
    return offset / torch.where(denom.abs() < 1e-6, torch.full_like(denom, -1e-6), denom)


# -- the per-view search ------------------------------------------------------------------------


class _ViewProblem:
    """What scoring a hypothesis in one reference view needs, computed once per view."""

    def __init__(self, ref_image: Tensor, src_images: Tensor, K_ref: Tensor, K_src: Tensor, R: Tensor, t: Tensor, config: PatchMatchConfig):
        H, W = ref_image.shape
        self.H, self.W, self.config = H, W, config
        self.src_images, self.K_src, self.R, self.t, self.K_ref = src_images, K_src, R, t, K_ref
        self.offsets = patch_offsets(config.patch_radius, config.patch_step, ref_image.device)
        v, u = torch.meshgrid(torch.arange(H, device=ref_image.device), torch.arange(W, device=ref_image.device), indexing="ij")
        self.centres = torch.stack([u.reshape(-1), v.reshape(-1)], -1).float() + 0.5  # [HW, 2]
        ones = torch.ones(H * W, 1, device=ref_image.device)
        self.rays = torch.cat([self.centres, ones], -1) @ torch.linalg.inv(K_ref).T  # [HW, 3], z = 1
        ref_patches = _sample(ref_image[None], (self.centres[:, None] + self.offsets[None])[None])[0]  # [HW, P]
        self.weights = None
        if config.bilateral_sigma_color > 0:
            self.weights = bilateral_weights(ref_patches, self.offsets, config.bilateral_sigma_color, config.bilateral_sigma_spatial)
        self.ref_patches = ref_patches
        _, self.ref_std = ncc(ref_patches, ref_patches[:, None], self.weights)

    def cost(self, idx: Tensor, depth: Tensor, normal: Tensor) -> Tensor:
        """Multi-view cost [M] of hypotheses (depth [M], normal [M, 3]) at flat pixel indices idx [M]."""
        weights = None if self.weights is None else self.weights[idx]
        args = (self.src_images, self.K_ref, self.K_src, self.R, self.t, self.centres[idx], depth, normal, self.offsets, self.ref_patches[idx], weights)
        per_view = view_costs_warp(*args) if self.config.backend == "warp" else view_costs(*args)
        k = min(self.config.top_k, per_view.shape[1])
        best = torch.topk(per_view, k, dim=1, largest=False).values.mean(1)
        return torch.where(self.ref_std[idx] < self.config.min_patch_std, torch.full_like(best, INVALID_COST), best)


def view_costs(src_images: Tensor, K_ref: Tensor, K_src: Tensor, R: Tensor, t: Tensor, centres: Tensor, depth: Tensor, normal: Tensor,
               offsets: Tensor, ref_patches: Tensor, weights: Tensor | None) -> Tensor:
    """Per-view matching costs [M, V]: ``1 - NCC`` of each reference patch with its warp into every
    source view through the pixel's plane, ``INVALID_COST`` where the view cannot score it
    (:func:`warp_patches`'s validity, or a plane not in front of the camera).

    src_images: [V, H, W] grey; K_ref: [3, 3]; K_src: [V, 3, 3]; R, t: [V, 3, 3], [V, 3]
    reference-to-source; centres: [M, 2] pixel coordinates; depth: [M] z-depth; normal: [M, 3]
    reference frame; offsets: [P, 2]; ref_patches: [M, P] grey; weights: [M, P] or None.
    :func:`recon.geometry.warp_patchmatch.view_costs_warp` is the Warp kernel with this signature.
    """
    ones = torch.ones_like(centres[:, :1])
    rays = torch.cat([centres, ones], -1) @ torch.linalg.inv(K_ref).T
    offset = depth * (normal * rays).sum(-1)  # n . X with X = depth * ray
    Hm = plane_homographies(K_ref, K_src, R, t, normal, offset)
    samples, valid = warp_patches(src_images, Hm, centres, offsets)
    value, _ = ncc(ref_patches, samples, weights)
    return torch.where(valid & (offset[:, None] < 0), 1 - value, torch.full_like(value, INVALID_COST))


def _random_normals(rays: Tensor, generator: torch.Generator) -> Tensor:
    """Random unit normals [M, 3] facing the camera along rays [M, 3], not grazing."""
    n = torch.randn(rays.shape, generator=generator, device=rays.device)
    return _face_camera(F.normalize(n, dim=-1), rays)


def _face_camera(normal: Tensor, rays: Tensor) -> Tensor:
    """Normals [M, 3] flipped to face the camera along rays [M, 3] and tilted away from grazing
    (``n . r <= -0.1`` for the unit ray r): a grazing plane never matches anything."""
    r = F.normalize(rays, dim=-1)
    normal = torch.where(((normal * r).sum(-1) > 0)[:, None], -normal, normal)
    d = (normal * r).sum(-1, keepdim=True)
    normal = torch.where(d > -0.1, normal - (d + 0.1) * r, normal)
    return F.normalize(normal, dim=-1)


def _random_depth(m: int, near: float, far: float, generator: torch.Generator, device) -> Tensor:
    """Depths [m] uniform in inverse depth between near and far (finer sampling close by)."""
    s = torch.rand(m, generator=generator, device=device)
    return 1.0 / (1.0 / near + s * (1.0 / far - 1.0 / near))


def _neighbour_offsets() -> list[tuple[int, int]]:
    """(dv, du) of the neighbours a pixel takes hypotheses from, all of the other checkerboard
    colour (odd |dv| + |du|): the four adjacent pixels and four at distance 5, the pattern of
    Galliani et al. 2015, which spreads a good plane quickly without
    scoring every pixel of a large neighbourhood."""
    return [(-1, 0), (1, 0), (0, -1), (0, 1), (-5, 0), (5, 0), (0, -5), (0, 5)]


def _propagate(problem: _ViewProblem, idx: Tensor, depth: Tensor, normal: Tensor, cost: Tensor) -> None:
    """Checkerboard propagation for the pixels idx [M] (one colour), in place: each neighbour's
    plane, re-intersected with the pixel's ray, replaces the current hypothesis if cheaper."""
    H, W = problem.H, problem.W
    v, u = idx // W, idx % W
    rays = problem.rays[idx]
    for dv, du in _neighbour_offsets():
        nv, nu = v + dv, u + du
        ok = (nv >= 0) & (nv < H) & (nu >= 0) & (nu < W)
        if not bool(ok.any()):
            continue
        sel, nidx = idx[ok], (nv * W + nu)[ok]
        n_nb = normal[nidx]
        offset = depth[nidx] * (n_nb * problem.rays[nidx]).sum(-1)
        d_new = plane_depth(rays[ok], n_nb, offset)
        good = (d_new > 0) & torch.isfinite(d_new)
        sel, d_new, n_nb = sel[good], d_new[good], n_nb[good]
        n_nb = _face_camera(n_nb, problem.rays[sel])
        c_new = problem.cost(sel, d_new, n_nb)
        better = c_new < cost[sel]
        b = sel[better]
        depth[b], normal[b], cost[b] = d_new[better], n_nb[better], c_new[better]


def _refine(problem: _ViewProblem, idx: Tensor, depth: Tensor, normal: Tensor, cost: Tensor, near: float, far: float,
            depth_scale: float, normal_scale: float, generator: torch.Generator) -> None:
    """Random refinement for the pixels idx [M], in place: perturbed and fresh depths and normals
    combined with the current ones (Xu & Tao 2019), each kept if cheaper."""
    rays = problem.rays[idx]
    d0, n0 = depth[idx], normal[idx]
    m = len(idx)
    dev = depth.device
    for j in range(problem.config.refine_candidates):
        kind = j % 3
        if kind == 0:  # perturb both
            d = d0 * (1 + depth_scale * (torch.rand(m, generator=generator, device=dev) * 2 - 1))
            n = n0 + normal_scale * torch.randn(m, 3, generator=generator, device=dev)
        elif kind == 1:  # perturb the normal only
            d = d0
            n = n0 + normal_scale * torch.randn(m, 3, generator=generator, device=dev)
        elif j % 6 == 2:  # a fresh depth with the current normal
            d = _random_depth(m, near, far, generator, dev)
            n = n0
        else:  # a fresh normal at the current depth
            d = d0
            n = _random_normals(rays, generator)
        d = d.clamp(near, far)
        n = _face_camera(F.normalize(n, dim=-1), rays)
        c = problem.cost(idx, d, n)
        better = c < cost[idx]
        b = idx[better]
        depth[b], normal[b], cost[b] = d[better], n[better], c[better]
        d0, n0 = depth[idx], normal[idx]


@torch.no_grad()
def patchmatch_view(ref_image: Tensor, src_images: Tensor, K_ref: Tensor, K_src: Tensor, R: Tensor, t: Tensor, near: float, far: float,
                    config: PatchMatchConfig, init_depth: Tensor | None = None, init_normal: Tensor | None = None,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """PatchMatch for one reference view.

    ref_image: [H, W] grey in [0, 1]; src_images: [V, H', W'] (one size for all sources);
    K_ref: [3, 3]; K_src: [V, 3, 3]; R, t: [V, 3, 3], [V, 3] reference-to-source
    (:func:`relative_poses`); near, far: depth search range; init_depth [H, W] / init_normal
    [H, W, 3] (reference camera frame): start from these where depth > 0 (e.g. a rendered SDF;
    HelixSurf's later rounds), random elsewhere.
    Returns depth [H, W], normal [H, W, 3] (reference frame) and cost [H, W], unfiltered.
    """
    H, W = ref_image.shape
    gen = generator if generator is not None else torch.Generator(device=ref_image.device).manual_seed(config.seed)
    problem = _ViewProblem(ref_image, src_images, K_ref, K_src, R, t, config)
    n_px = H * W
    depth = _random_depth(n_px, near, far, gen, ref_image.device)
    normal = _random_normals(problem.rays, gen)
    if init_depth is not None:
        given = init_depth.reshape(-1) > 0
        depth = torch.where(given, init_depth.reshape(-1).clamp(near, far), depth)
        if init_normal is not None:
            n_init = _face_camera(F.normalize(init_normal.reshape(-1, 3), dim=-1), problem.rays)
            normal = torch.where((given & (init_normal.reshape(-1, 3).norm(dim=-1) > 0.5))[:, None], n_init, normal)
    everything = torch.arange(n_px, device=ref_image.device)
    cost = problem.cost(everything, depth, normal)
    v, u = everything // W, everything % W
    colours = [everything[(u + v) % 2 == 0], everything[(u + v) % 2 == 1]]
    depth_scale, normal_scale = config.refine_depth_fraction, config.refine_normal_scale
    for _ in range(config.iterations):
        for idx in colours:
            _propagate(problem, idx, depth, normal, cost)
            _refine(problem, idx, depth, normal, cost, near, far, depth_scale, normal_scale, gen)
        depth_scale, normal_scale = depth_scale / 2, normal_scale / 2
    return depth.reshape(H, W), normal.reshape(H, W, 3), cost.reshape(H, W)


def _grey(image: Tensor) -> Tensor:
    """[H, W, 3] RGB (or [H, W] grey) in [0, 1] to grey [H, W] (Rec. 601 luma)."""
    if image.ndim == 2:
        return image.float()
    return image[..., :3].float() @ torch.tensor([0.299, 0.587, 0.114], device=image.device)


@torch.no_grad()
def patchmatch(images: list[Tensor], cameras: Cameras, config: PatchMatchConfig, aabb: Tensor, views: list[int] | None = None,
               init_depths: list[Tensor] | None = None, init_normals: list[Tensor] | None = None,
               points: Tensor | None = None) -> PatchMatchResult:
    """PatchMatch depth and normal maps for every view in ``views`` (default: all).

    images: C float images [H, W, 3] in [0, 1] (one size for all); cameras: C pinhole cameras;
    aabb: [2, 3] box holding the scene and points: [P, 3] sparse points or None (each view's depth
    range, :func:`depth_range`); init_depths /
    init_normals: per view [H, W] / [H, W, 3] in the view's camera frame, or None.
    Pixels with cost above ``config.max_cost`` get depth 0.
    """
    if cameras.has_distortion:
        raise ValueError("PatchMatch needs pinhole cameras; undistort the images first")
    views = list(range(len(cameras))) if views is None else views
    greys = [_grey(img) for img in images]
    K = cameras.intrinsics_matrices()
    H, W = greys[0].shape
    depths, normals, costs, sources = [], [], [], []
    gen = torch.Generator(device=greys[0].device).manual_seed(config.seed)
    for ref in views:
        src = select_source_views(cameras, ref, config.num_source_views, config.min_angle_deg, candidates=views)
        if not src:
            depths.append(torch.zeros(H, W))
            normals.append(torch.zeros(H, W, 3))
            costs.append(torch.full((H, W), INVALID_COST))
            sources.append(src)
            continue
        near, far = depth_range(cameras, ref, aabb, points)
        R, t = relative_poses(cameras, ref, src)
        init_d = None if init_depths is None else init_depths[ref]
        init_n = None if init_normals is None else init_normals[ref]
        d, n, c = patchmatch_view(greys[ref], torch.stack([greys[s] for s in src]), K[ref], K[src], R, t, near, far, config,
                                  init_d, init_n, gen)
        keep = c <= config.max_cost
        depths.append(torch.where(keep, d, torch.zeros_like(d)))
        normals.append(torch.where(keep[..., None], n, torch.zeros_like(n)))
        costs.append(c)
        sources.append(src)
    return PatchMatchResult(torch.stack(depths), torch.stack(normals), torch.stack(costs), sources)


# -- consistency and fusion ---------------------------------------------------------------------


def depth_to_points(cameras: Cameras, index: int, depth: Tensor) -> Tensor:
    """World points [H, W, 3] of a z-depth map [H, W] of camera ``index`` (through the engine's rays)."""
    H, W = depth.shape
    rays = cameras.generate_rays(index)
    return backproject(rays.origins, rays.directions, depth.reshape(-1) / rays.z_scale).reshape(H, W, 3)


def _lookup(depth: Tensor, uv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest-pixel lookup of depth [H, W] at pixel coordinates uv [P, 2]: (values [P], inside [P], flat index [P])."""
    H, W = depth.shape
    u = torch.floor(uv[:, 0]).long()
    v = torch.floor(uv[:, 1]).long()
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    flat = v.clamp(0, H - 1) * W + u.clamp(0, W - 1)
    return torch.where(inside, depth.reshape(-1)[flat], torch.zeros_like(uv[:, 0])), inside, flat


def _agreement(cameras: Cameras, depths: Tensor, ref: int, src: int, points: Tensor, config: PatchMatchConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Which points [P, 3] of view ``ref`` (depths [C, H, W]) view ``src`` agrees with: project into
    src, read its depth, back-project that and project into ref again. Returns (agree [P], the
    source's point [P, 3], the source pixel's flat index [P])."""
    H, W = depths.shape[1:]
    uv_s, z_s = cameras.project(points, src)
    d_s, inside, flat = _lookup(depths[src], uv_s)
    ok = inside & (z_s > 0) & (d_s > 0)
    rays = cameras.generate_rays(src)
    p_s = backproject(rays.origins[flat], rays.directions[flat], d_s / rays.z_scale[flat])
    uv_back, z_back = cameras.project(p_s, ref)
    _, z_ref = cameras.project(points, ref)
    v, u = torch.meshgrid(torch.arange(H, device=depths.device), torch.arange(W, device=depths.device), indexing="ij")
    uv_ref = torch.stack([u.reshape(-1), v.reshape(-1)], -1).float() + 0.5
    err = (uv_back - uv_ref).norm(dim=-1)
    rel = (z_back - z_ref).abs() / z_ref.clamp_min(1e-9)
    return ok & (err < config.reproj_error_px) & (rel < config.rel_depth_diff), p_s, flat


@torch.no_grad()
def geometric_consistency(cameras: Cameras, depths: Tensor, config: PatchMatchConfig, sources: list[list[int]] | None = None) -> tuple[Tensor, Tensor]:
    """Count, per pixel, the views whose depth agrees (Schönberger et al. 2016; Xu & Tao 2019: forward-
    backward reprojection error below ``reproj_error_px`` and relative depth difference below
    ``rel_depth_diff``), and keep pixels with at least ``min_views``.

    cameras: C cameras; depths: [C, H, W] (0: none); sources: the views to check each view
    against (default: all others). Returns keep [C, H, W] bool and counts [C, H, W] int.
    """
    C, H, W = depths.shape
    counts = torch.zeros(C, H * W, dtype=torch.long, device=depths.device)
    for ref in range(C):
        valid = depths[ref].reshape(-1) > 0
        if not bool(valid.any()):
            continue
        points = depth_to_points(cameras, ref, depths[ref]).reshape(-1, 3)
        others = [s for s in range(C) if s != ref] if sources is None else sources[ref]
        for src in others:
            agree, _, _ = _agreement(cameras, depths, ref, src, points, config)
            counts[ref] += (agree & valid).long()
    counts = counts.reshape(C, H, W)
    return (counts >= config.min_views) & (depths > 0), counts


@torch.no_grad()
def fuse_points(cameras: Cameras, depths: Tensor, normals: Tensor, images: list[Tensor], keep: Tensor,
                config: PatchMatchConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Fuse the kept pixels of all views into one oriented point cloud in world coordinates.

    Views are visited in order; each kept, not yet used pixel is averaged (position, normal,
    colour) with the agreeing pixels of the other views, which are then marked used so that a
    surface point is written once (ACMP's fusion, in spirit).
    depths: [C, H, W]; normals: [C, H, W, 3] camera frame; images: C [H, W, 3] in [0, 1];
    keep: [C, H, W] bool (:func:`geometric_consistency`).
    Returns points [P, 3], unit normals [P, 3] (world) and colours [P, 3] in [0, 1].
    """
    C, H, W = depths.shape
    used = ~keep.reshape(C, -1).clone()
    world_normals = torch.einsum("cij,chwj->chwi", cameras.camera_to_worlds[:, :, :3], normals).reshape(C, -1, 3)
    colours = torch.stack([img[..., :3].float() for img in images]).reshape(C, -1, 3)
    out_p, out_n, out_c = [], [], []
    for ref in range(C):
        todo = ~used[ref]
        if not bool(todo.any()):
            continue
        points = depth_to_points(cameras, ref, depths[ref]).reshape(-1, 3)
        acc_p, acc_n, acc_c = points.clone(), world_normals[ref].clone(), colours[ref].clone()
        count = torch.ones(H * W, device=depths.device)
        for src in range(C):
            if src == ref:
                continue
            agree, p_s, flat = _agreement(cameras, depths, ref, src, points, config)
            agree = agree & todo & ~used[src][flat]
            acc_p[agree] += p_s[agree]
            acc_n[agree] += world_normals[src][flat[agree]]
            acc_c[agree] += colours[src][flat[agree]]
            count += agree.float()
            used[src][flat[agree]] = True
        used[ref] |= todo
        out_p.append(acc_p[todo] / count[todo, None])
        out_n.append(F.normalize(acc_n[todo], dim=-1))
        out_c.append(acc_c[todo] / count[todo, None])
    if not out_p:
        empty = torch.zeros(0, 3)
        return empty, empty.clone(), empty.clone()
    return torch.cat(out_p), torch.cat(out_n), torch.cat(out_c)
