"""Depth-guided inverse warping between views, with its validity and occlusion masks.

A pixel p of a target view with rendered distance D(p) along its ray (o, d) is the world point
``X = o + D(p) d``; projecting X into a source camera and sampling the source image there gives
the source's colour for p (inverse warping: every target pixel gets a value, no holes). The warp
is only meaningful where X projects inside the source image, in front of it, and is not hidden
from the source by something nearer (GeCoNeRF, Kwak, Song & Kim, "GeCoNeRF: Few-shot Neural
Radiance Fields via Geometric Consistency", ICML 2023, sec. 3.2-3.3). Every camera uses its own
intrinsics through :meth:`recon.cameras.Cameras.project` (pixel centres at +0.5).

Shapes: P points (target pixels), H and W of the source image, C channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.cameras import Cameras


def backproject(origins: Tensor, directions: Tensor, distance: Tensor) -> Tensor:
    """World points [P, 3] at ``distance`` [P] along rays (origins, unit directions [P, 3])."""
    return origins + distance[:, None] * directions


def sample_image(image: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples [P, C] of ``image`` [H, W, C] at pixel coordinates uv [P, 2] (x right,
    y down; pixel centres at +0.5; outside the image: the border value)."""
    h, w = image.shape[:2]
    grid = torch.stack([2.0 * uv[:, 0] / w - 1.0, 2.0 * uv[:, 1] / h - 1.0], -1)
    out = F.grid_sample(image.permute(2, 0, 1)[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T


def inverse_warp(image: Tensor, camera: Cameras, points: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The source view ``image`` [H, W, C] of ``camera`` (one camera) seen at world ``points`` [P, 3].

    Returns the warped values [P, C], the source pixel coordinates uv [P, 2], the points' z-depth
    in the source camera [P], and ``inside`` [P] bool: in front of the camera and projecting at
    least half a pixel inside the border (GeCoNeRF's 0 < u < W - 1 in its centre-at-0 pixels), so
    every bilinear tap is a real pixel.
    """
    uv, z = camera.project(points, 0)
    h, w = image.shape[:2]
    inside = (z > 1e-6) & (uv[:, 0] > 0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] > 0.5) & (uv[:, 1] < h - 0.5)
    return sample_image(image, uv), uv, z, inside


def occlusion_mask(rendered_distance: Tensor, point_distance: Tensor, threshold: float | Tensor) -> Tensor:
    """Which warped points the source camera sees [P] bool: the distance the source renders along
    its ray towards each point, ``rendered_distance`` [P], agrees with the point's own distance from
    the source camera ``point_distance`` [P] within ``threshold`` (GeCoNeRF's left-right consistency
    check, compared as distances along the same source ray)."""
    return (rendered_distance - point_distance).abs() <= threshold
