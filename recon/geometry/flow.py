"""Weight-free optical flow between posed images, its consistency masks, warping and triangulation.

Conventions: images [H, W, 3] uint8 (numpy) or [B, C, H, W] float (torch); a flow F_{a->b} [H, W, 2]
(x, y in pixels) says that the pixel centred at p = (u + 0.5, v + 0.5) of image a shows the point
seen at p + F_{a->b}(p) in image b. Every sampler here uses the same pixel-centre convention
(``grid_sample`` with ``align_corners=False``), for flow generation, checking and warping alike
(the official CoherentGS code, avinashpaliwal/CoherentGS ``data_preparation_scripts/backwarp.py``,
maps pixel index x to 2 x / W - 1 under that same ``grid_sample`` setting: a half-pixel shift).

Optical flow is OpenCV's DIS (Kroeger, Timofte, Dai & Van Gool 2016, "Fast Optical Flow using Dense
Inverse Search", ECCV) or Farneback (2003, "Two-frame motion estimation based on polynomial
expansion"); TV-L1 needs opencv-contrib, which the headless wheel lacks. Depth from flow is the
midpoint triangulation of the two viewing rays with the known poses (Hartley & Sturm 1997,
"Triangulation", CVIU).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FlowMethod = Literal["dis", "farneback"]
DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


def optical_flow(image0: np.ndarray, image1: np.ndarray, method: FlowMethod = "dis", preset: str = "medium") -> np.ndarray:
    """Dense flow F_{0->1} [H, W, 2] float32 from uint8 RGB images [H, W, 3] of one size.

    ``method`` "dis" (``preset`` ultrafast / fast / medium) or "farneback"; both run coarse to fine
    over the whole image, which the wide baselines of sparse views need.
    """
    import cv2

    if image0.shape != image1.shape:
        raise ValueError(f"flow needs images of one size, got {image0.shape} and {image1.shape}")
    g0 = cv2.cvtColor(np.ascontiguousarray(image0[..., :3]), cv2.COLOR_RGB2GRAY)
    g1 = cv2.cvtColor(np.ascontiguousarray(image1[..., :3]), cv2.COLOR_RGB2GRAY)
    if method == "dis":
        if preset not in DIS_PRESETS:
            raise ValueError(f"DIS preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        flow = dis.calc(g0, g1, None)
    elif method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(g0, g1, None, 0.5, 5, 15, 5, 7, 1.5, 0)
    else:
        raise ValueError(f"flow method must be 'dis' or 'farneback', got {method!r}")
    return np.asarray(flow, dtype=np.float32)


def pixel_grid(height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Pixel centres [H, W, 2] (x, y) = (u + 0.5, v + 0.5)."""
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([u, v], -1) + 0.5


def backward_warp(source: Tensor, flow: Tensor, padding_mode: str = "zeros") -> tuple[Tensor, Tensor]:
    """Sample ``source`` [B, C, H', W'] at p + flow(p) for every pixel p of the flow [B, H, W, 2].

    Bilinear, pixel centres at +0.5. Returns the warped image [B, C, H, W] and a mask [B, H, W]
    of the pixels whose sample point lies between the source's outermost pixel centres (where the
    bilinear sample does not blend in the padding).
    """
    b, _, hs, ws = source.shape
    pos = pixel_grid(flow.shape[1], flow.shape[2], flow.device, flow.dtype)[None] + flow
    size = torch.tensor([ws, hs], device=flow.device, dtype=flow.dtype)
    grid = 2.0 * pos / size - 1.0
    out = F.grid_sample(source, grid.to(source.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=False)
    inside = (pos[..., 0] >= 0.5) & (pos[..., 0] <= ws - 0.5) & (pos[..., 1] >= 0.5) & (pos[..., 1] <= hs - 0.5)
    return out, inside


def forward_backward_consistency(flow_ab: Tensor, flow_ba: Tensor, erosion: int = 5) -> Tensor:
    """Consistency weight of F_{a->b}: w(p) = exp(-0.5 |F_{b->a}(p + F_{a->b}(p)) + F_{a->b}(p)|_1)
    (L1 over the two components), then a ``erosion`` x ``erosion`` minimum filter (CoherentGS's
    ``data_preparation_scripts/gen_flow.py``); 0 where p + F_{a->b}(p) leaves image b.

    flow_ab [H, W, 2], flow_ba [H', W', 2] -> w [H, W] in (0, 1].
    """
    back, inside = backward_warp(flow_ba.permute(2, 0, 1)[None], flow_ab[None])
    residual = (back[0].permute(1, 2, 0) + flow_ab).abs().sum(-1)
    w = torch.exp(-0.5 * residual) * inside[0].to(residual.dtype)
    if erosion > 1:
        pad = erosion // 2
        w = -F.max_pool2d(-w[None, None], erosion, stride=1, padding=pad)[0, 0]
    return w


def triangulate_flow(
    flow: Tensor, K_a: Tensor, c2w_a: Tensor, K_b: Tensor, c2w_b: Tensor, min_angle_deg: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Depth of every pixel of view a from its flow to view b and the known poses.

    flow [H, W, 2] = F_{a->b}; K [3, 3]; c2w [3, 4] (OpenCV). The two viewing rays are intersected
    in the least-squares sense (midpoint). Returns z-depth in camera a [H, W] and a validity mask
    [H, W]: both ray parameters positive and rays at least ``min_angle_deg`` apart.
    """
    h, w = flow.shape[:2]
    dtype = torch.float64
    pa = pixel_grid(h, w, flow.device, dtype)
    pb = pa + flow.to(dtype)

    def rays(p: Tensor, K: Tensor, c2w: Tensor) -> Tensor:
        K, c2w = K.to(dtype), c2w.to(dtype)
        cam = torch.stack([(p[..., 0] - K[0, 2]) / K[0, 0], (p[..., 1] - K[1, 2]) / K[1, 1], torch.ones_like(p[..., 0])], -1)
        return cam @ c2w[:3, :3].T  # camera z = 1: the ray parameter is the z-depth

    da, db = rays(pa, K_a, c2w_a), rays(pb, K_b, c2w_b)
    oa, ob = c2w_a[:3, 3].to(dtype), c2w_b[:3, 3].to(dtype)
    w0 = oa - ob
    a, b, c = (da * da).sum(-1), (da * db).sum(-1), (db * db).sum(-1)
    d, e = (da * w0).sum(-1), (db * w0).sum(-1)
    denom = a * c - b * b
    safe = torch.where(denom.abs() < 1e-20, torch.full_like(denom, 1e-20), denom)
    t = (b * e - c * d) / safe
    s = (a * e - b * d) / safe
    sin2 = denom / (a * c)  # sin^2 of the angle between the rays
    valid = (t > 0) & (s > 0) & (sin2 > np.sin(np.deg2rad(min_angle_deg)) ** 2)
    return t.to(flow.dtype), valid


def fill_depth(depth: np.ndarray, valid: np.ndarray, median: int = 5) -> np.ndarray:
    """Fill the invalid pixels of a depth map [H, W] with the nearest valid depth, then smooth with a
    ``median`` x ``median`` median filter (3 or 5; 0 or 1 skips it). All-invalid maps raise."""
    from scipy import ndimage

    if not valid.any():
        raise ValueError("no valid depth to fill from")
    _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
    filled = depth[iy, ix].astype(np.float32)
    if median > 1:
        import cv2

        filled = cv2.medianBlur(filled, median)
    return filled


__all__ = ["backward_warp", "fill_depth", "forward_backward_consistency", "optical_flow", "pixel_grid", "triangulate_flow"]
