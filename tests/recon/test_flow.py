"""recon.geometry.flow: DIS flow and its forward-backward masks on a pair with known motion, the
warp convention, and triangulation on a plane with known depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.geometry.flow import backward_warp, fill_depth, forward_backward_consistency, optical_flow, triangulate_flow

SHIFT = (5, 3)
"""Known motion of the pair: image 1 is image 0 moved by 5 px right and 3 px down."""


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (blurred noise at two scales), uint8 [h, w, 3]."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.random((h // 8, w // 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.5)
    img = 0.6 * coarse + 0.8 * (fine - fine.mean())
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shifted_pair():
    big = textured(120, 140)
    dx, dy = SHIFT
    h, w = 96, 112
    image0 = big[10 : 10 + h, 10 : 10 + w]
    image1 = big[10 - dy : 10 - dy + h, 10 - dx : 10 - dx + w]  # content moves by (+dx, +dy)
    return image0, image1


def test_dis_flow_and_consistency_masks_on_known_motion(shifted_pair):
    image0, image1 = shifted_pair
    f01 = torch.from_numpy(optical_flow(image0, image1, "dis"))
    f10 = torch.from_numpy(optical_flow(image1, image0, "dis"))
    h, w = f01.shape[:2]
    dx, dy = SHIFT
    # Pixels whose match stays inside image 1 (away from the patch-size border) move by the shift.
    interior = (slice(8, h - 8 - dy), slice(8, w - 8 - dx))
    err = (f01[interior] - torch.tensor([dx, dy], dtype=torch.float32)).norm(dim=-1)
    assert float(err.median()) < 0.1 and float((err < 0.5).float().mean()) > 0.95

    weight = forward_backward_consistency(f01, f10, erosion=5)
    mask = weight > 0.5
    assert float(mask[interior].float().mean()) > 0.95
    # Pixels whose match leaves image 1 (the last dx columns and dy rows) are masked out.
    assert not mask[:, w - dx + 1 :].any() and not mask[h - dy + 1 :, :].any()

    # A flow that disagrees with the backward flow by a few pixels gets a weight near 0.
    wrong = forward_backward_consistency(f01 + torch.tensor([4.0, 0.0]), f10, erosion=1)
    assert float((wrong[interior] > 0.5).float().mean()) < 0.02


def test_erosion_is_a_minimum_filter():
    f = torch.zeros(20, 20, 2)
    w_plain = forward_backward_consistency(f, f, erosion=1)
    bad = f.clone()
    bad[10, 10] = torch.tensor([3.0, 0.0])
    w_eroded = forward_backward_consistency(bad, f, erosion=5)
    assert float(w_plain[10, 10]) == pytest.approx(1.0, abs=1e-6)
    assert float(w_eroded[8:13, 8:13].max()) < 0.5  # the bad pixel spreads over its 5x5 neighbourhood
    assert float(w_eroded[2, 2]) == pytest.approx(1.0, abs=1e-6)


def test_backward_warp_uses_pixel_centres():
    src = torch.arange(12.0).reshape(1, 1, 3, 4)
    flow = torch.zeros(1, 3, 4, 2)
    flow[..., 0] = 1.0  # sample one pixel to the right
    out, inside = backward_warp(src, flow)
    assert torch.allclose(out[0, 0, :, :3], src[0, 0, :, 1:], atol=1e-5)
    assert inside[0, :, :3].all() and not inside[0, :, 3].any()
    half, _ = backward_warp(src, flow * 0.5)
    assert torch.allclose(half[0, 0, :, :3], src[0, 0, :, :3] + 0.5, atol=1e-5)


def test_triangulation_recovers_a_plane_and_rejects_parallel_rays():
    h, w, f, depth, baseline = 24, 32, 30.0, 2.0, 0.3
    K = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    c2w_a = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)
    c2w_b = torch.cat([torch.eye(3), torch.tensor([[baseline], [0.0], [0.0]])], 1)
    flow = torch.zeros(h, w, 2)
    flow[..., 0] = -f * baseline / depth  # a fronto-parallel plane at z = 2 seen after moving right
    z, ok = triangulate_flow(flow, K, c2w_a, K, c2w_b)
    assert ok.all() and torch.allclose(z, torch.full_like(z, depth), atol=1e-5)
    z_far, ok_far = triangulate_flow(torch.zeros(h, w, 2), K, c2w_a, K, c2w_b)  # zero flow: at infinity
    assert not ok_far.any()


def test_fill_depth_takes_the_nearest_valid_value():
    depth = np.zeros((6, 6), dtype=np.float32)
    valid = np.zeros((6, 6), dtype=bool)
    depth[:, :3], depth[:, 3:] = 1.0, 2.0
    valid[:, 0], valid[:, 5] = True, True
    out = fill_depth(depth, valid, median=0)
    assert (out[:, :3] == 1.0).all() and (out[:, 3:] == 2.0).all()
    with pytest.raises(ValueError):
        fill_depth(depth, np.zeros_like(valid))
