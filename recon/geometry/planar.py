"""Planar priors from superpixels and multi-view stereo: which image regions are planes, and their normals.

HelixSurf (Liang, Huang, Ding & Jia, CVPR 2023) supervises the normals of planar regions, the
textureless ones where PatchMatch finds nothing included, with the normal of the plane that the
region's confident MVS points support. Its MVS package segments every image into Felzenszwalb
superpixels (Felzenszwalb & Huttenlocher 2004, "Efficient graph-based image segmentation", IJCV;
scikit-image's implementation, HelixSurf's scale 100, sigma 0.5, minimum size 5) and merges them
into planar masks after a Poisson reconstruction of the fused points.

Here, without the Poisson stage (our decision): a superpixel is a planar region when it is large
enough (``min_pixels``), enough of its pixels have a consistency-filtered MVS depth
(``min_support``), and a least-squares plane through their back-projected points explains at
least ``match_ratio`` of them (point-to-plane distance below ``inlier_distance`` times the depth and
MVS normal within ``inlier_cosine`` of the plane's). Every pixel of the region then takes the
plane's normal. Shapes: H x W pixels; normals in the camera frame (OpenCV).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["PlanarPriorConfig", "superpixels", "planar_normals"]


@dataclass
class PlanarPriorConfig:
    """Superpixel and plane-fitting settings (defaults: HelixSurf's where it has one)."""

    scale: float = 100.0
    """Felzenszwalb scale: larger gives larger superpixels (HelixSurf: 100)."""
    sigma: float = 0.5
    """Gaussian pre-smoothing of the image, pixels (HelixSurf: 0.5)."""
    min_size: int = 5
    """Smallest superpixel, pixels (HelixSurf: 5)."""
    min_pixels_fraction: float = 1 / 32
    """A superpixel can be a planar region only when it covers at least this fraction of the image
    (HelixSurf's size threshold H W / 32, read as a minimum region size)."""
    min_support: float = 0.25
    """... and at least this fraction of its pixels has an MVS depth (HelixSurf's non-planar fraction 0.75)."""
    inlier_distance: float = 0.01
    """A supporting point agrees with the plane within this fraction of its depth."""
    inlier_cosine: float = 0.8
    """... and its MVS normal within this cosine of the plane normal (HelixSurf: 0.8)."""
    match_ratio: float = 0.75
    """The plane must explain at least this fraction of the supporting points (HelixSurf: 0.75)."""


def superpixels(image: Tensor, config: PlanarPriorConfig) -> Tensor:
    """Felzenszwalb superpixels of an RGB image [H, W, 3] in [0, 1]: labels [H, W] int64, 0..L-1."""
    from skimage.segmentation import felzenszwalb

    labels = felzenszwalb(image[..., :3].cpu().double().numpy(), scale=config.scale, sigma=config.sigma, min_size=config.min_size)
    return torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))


@torch.no_grad()
def planar_normals(labels: Tensor, depth: Tensor, normal: Tensor, K: Tensor, config: PlanarPriorConfig) -> Tensor:
    """The plane normal [H, W, 3] (camera frame, facing the camera) of every pixel of a planar region,
    0 elsewhere. labels: [H, W] superpixels; depth: [H, W] filtered MVS z-depth (0: none);
    normal: [H, W, 3] MVS normals (camera frame); K: [3, 3] intrinsics."""
    H, W = depth.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    pixels = torch.stack([u + 0.5, v + 0.5, torch.ones_like(u)], -1).reshape(-1, 3)
    points = (pixels @ torch.linalg.inv(K.float().cpu()).T) * depth.reshape(-1, 1)
    flat_labels, flat_depth, flat_normal = labels.reshape(-1), depth.reshape(-1), normal.reshape(-1, 3)
    out = torch.zeros(H * W, 3)
    min_pixels = config.min_pixels_fraction * H * W
    order = torch.argsort(flat_labels, stable=True)
    counts = torch.bincount(flat_labels)
    for members in torch.split(order, counts.tolist()):
        if len(members) < max(min_pixels, 1):
            continue
        support = members[flat_depth[members] > 0]
        if len(support) < max(3, config.min_support * len(members)):
            continue
        p = points[support]
        centre = p.mean(0)
        plane = torch.linalg.svd(p - centre, full_matrices=False).Vh[-1]
        if float(plane @ centre) > 0:  # face the camera (at the origin)
            plane = -plane
        distance = ((p - centre) @ plane).abs() / flat_depth[support]
        agree = (distance < config.inlier_distance) & (flat_normal[support] @ plane > config.inlier_cosine)
        if float(agree.float().mean()) >= config.match_ratio:
            out[members] = plane
    return out.reshape(H, W, 3)
