"""data/normalize.py and data/splits.py: orientation, content boxes, consistent transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.base import DataparserOutputs, SceneBox
from data.normalize import (
    apply_normalization,
    auto_orient_and_center,
    content_box_from_cameras,
    content_box_from_frustums,
    content_box_from_points,
    fit_box,
    focus_point,
    normalize_to_box,
    transform_poses,
)
from data.splits import DTU_TRAIN_IDS, apply_few_shot, dtu_splits, interval_splits
from recon.cameras import Cameras, look_at
from recon.errors import ConfigError


def _random_rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _ring(n: int = 12, radius: float = 4.0, height: float = 1.5, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """OpenCV c2w [n, 3, 4] on a ring around +z, looking at ``target``."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    eye = torch.tensor(np.stack([radius * np.cos(a), radius * np.sin(a), np.full(n, height)], -1), dtype=torch.float64)
    return look_at(eye, torch.tensor([target], dtype=torch.float64)).numpy()


def _outputs(c2w: np.ndarray, points: np.ndarray | None = None) -> DataparserOutputs:
    n = len(c2w)
    cams = Cameras(torch.tensor(c2w).float(), fx=50.0, fy=50.0, cx=32.0, cy=24.0, width=64, height=48)
    return DataparserOutputs(
        image_filenames=[f"{i}.png" for i in range(n)],  # type: ignore[misc]
        cameras=cams,
        splits=interval_splits(n),
        scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])),
        points3d=None if points is None else points.astype(np.float32),
        near=2.0,
        far=6.0,
    )


def test_up_orientation_maps_mean_up_to_z() -> None:
    rot = _random_rotation(3)
    c2w = transform_poses(np.concatenate([rot, np.array([[1.0], [2.0], [3.0]])], 1), _ring())
    T = auto_orient_and_center(c2w, "up", "poses")
    out = transform_poses(T, c2w)
    up = -out[:, :, 1].mean(0)
    np.testing.assert_allclose(up / np.linalg.norm(up), [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(out[:, :, 3].mean(0), 0, atol=1e-9)
    # "none"/"none" is the identity
    np.testing.assert_allclose(auto_orient_and_center(c2w, "none", "none"), np.eye(4)[:3])


def test_align_orientation_and_focus() -> None:
    # forward-facing rig: cameras on a small grid looking along +x with up +y... in a rotated frame
    rot = _random_rotation(5)
    eyes = np.stack(np.meshgrid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3)), -1).reshape(-1, 2)
    eye = torch.tensor(np.c_[eyes[:, 0], np.zeros(9), eyes[:, 1]], dtype=torch.float64)
    c2w = look_at(eye, eye + torch.tensor([0.0, 10.0, 0.0], dtype=torch.float64)).numpy()
    c2w = transform_poses(np.c_[rot, np.zeros(3)], c2w)
    T = auto_orient_and_center(c2w, "align", "poses")
    out = transform_poses(T, c2w)
    np.testing.assert_allclose(out[:, :, 2].mean(0), [0, 1, 0], atol=1e-9)  # views along +y
    np.testing.assert_allclose(-out[:, :, 1].mean(0), [0, 0, 1], atol=1e-9)  # up is +z
    # focus: cameras on a ring around a point look at it
    target = np.array([0.3, -0.2, 0.5])
    np.testing.assert_allclose(focus_point(_ring(target=tuple(target))), target, atol=1e-6)


def test_content_boxes() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-2, 2, size=(2000, 3))
    pts[:5] = 1e6  # stray far points must not inflate the box
    box = content_box_from_points(pts)
    assert (box[0] > -2.5).all() and (box[1] < 2.5).all() and (box[0] < -1.7).all()
    c2w = _ring(radius=3.0, height=0.0)
    np.testing.assert_allclose(content_box_from_cameras(c2w), [[-3.0] * 3, [3.0] * 3], atol=1e-9)
    # frustum box holds everything the cameras see before their far bound
    fb = content_box_from_frustums(c2w, 50.0, 50.0, 32.0, 24.0, 64, 48, np.full(len(c2w), 5.0))
    assert (fb[0] <= c2w[:, :, 3].min(0)).all() and (fb[1] >= c2w[:, :, 3].max(0)).all()
    assert (fb[1] - fb[0]).max() > 6.0


def test_apply_normalization_is_consistent() -> None:
    rng = np.random.default_rng(2)
    c2w = transform_poses(np.c_[_random_rotation(7), [5.0, -3.0, 10.0]], _ring(), 20.0)
    pts = rng.uniform(-1, 1, (50, 3)) * 20.0 @ _random_rotation(7).T + [5.0, -3.0, 10.0]
    raw = _outputs(c2w, pts)
    orient = auto_orient_and_center(c2w, "up", "poses")
    box = content_box_from_points(pts, orient)
    T, s, nbox = fit_box(orient, box)
    out = apply_normalization(raw, T, s, scene_box=nbox)
    assert out.dataparser_scale == pytest.approx(s)
    assert float((out.scene_box.size).max()) == pytest.approx(2.0, abs=1e-5)
    assert out.near == pytest.approx(2.0 * s) and out.far == pytest.approx(6.0 * s)
    # points map back to the input, and project to the same pixels as before
    back = out.transform_to_input(torch.tensor(out.points3d, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(back, pts, rtol=1e-5, atol=1e-3)
    uv_in, z_in = raw.cameras.project(torch.tensor(pts).float(), 3)
    uv_out, z_out = out.cameras.project(torch.tensor(out.points3d), 3)
    np.testing.assert_allclose(uv_out.numpy(), uv_in.numpy(), atol=2e-2)
    np.testing.assert_allclose(z_out.numpy(), z_in.numpy() * s, rtol=1e-4)
    # applying in two steps composes to the same record
    half = apply_normalization(raw, orient, 0.5)
    T2 = np.c_[np.eye(3), (T[:, 3] - orient[:, 3]) * 0.5]  # remaining translation, in half-scaled units
    two = apply_normalization(half, T2, s / 0.5)
    np.testing.assert_allclose(two.dataparser_transform.numpy(), out.dataparser_transform.numpy(), atol=1e-5)
    assert two.dataparser_scale == pytest.approx(out.dataparser_scale)
    np.testing.assert_allclose(two.cameras.camera_to_worlds.numpy(), out.cameras.camera_to_worlds.numpy(), atol=1e-5)
    with pytest.raises(ValueError):
        apply_normalization(raw, np.c_[2 * np.eye(3), np.zeros(3)], 1.0)


def test_cameras_only_rule_matches_nerfstudio() -> None:
    c2w = _ring(radius=7.0, height=2.0)
    orient = auto_orient_and_center(c2w)
    out = normalize_to_box(_outputs(c2w), orient, content_box_from_cameras(c2w, orient))
    t = out.cameras.camera_to_worlds[:, :, 3]
    assert float(t.abs().max()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(out.scene_box.aabb.numpy(), [[-1.0] * 3, [1.0] * 3], atol=1e-6)


def test_few_shot_protocols() -> None:
    c2w = _ring(n=20)
    out = _outputs(c2w)
    assert out.splits["test"] == [0, 8, 16]
    llff = apply_few_shot(out, 3, "llff")
    assert llff.splits["train"] == [1, 10, 19] and llff.splits["test"] == [0, 8, 16]
    dtu = _outputs(_ring(n=49))
    dtu.splits = dtu_splits(list(range(49)))
    assert len(dtu.splits["test"]) == 49 - 9 - 15 and 25 not in dtu.splits["test"]
    picked = apply_few_shot(dtu, 3, "dtu")
    assert picked.splits["train"] == sorted(DTU_TRAIN_IDS[:3])
    assert picked.metadata["few_shot"]["views"] == [25, 22, 28]
    assert apply_few_shot(out, 4, "even").splits["train"] == [1, 6, 13, 19]
    for bad in (0, 18):
        with pytest.raises(ConfigError, match="num_train_views"):
            apply_few_shot(out, bad, "llff")
    with pytest.raises(ConfigError):
        apply_few_shot(dtu, 10, "dtu")


def test_large_coordinates_keep_precision() -> None:
    # geo-registered inputs: coordinates ~1e6, scene ~10 wide; float32 alone would lose ~0.1 units
    c2w = _ring(radius=5.0)
    c2w[:, :, 3] += [4.0e6, -2.5e6, 300.0]
    pts = np.random.default_rng(0).uniform(-1, 1, (100, 3)) + [4.0e6, -2.5e6, 300.0]
    raw = _outputs(c2w, None)
    raw.points3d = pts  # float64 until normalised
    orient = auto_orient_and_center(c2w, "up", "poses")
    out = normalize_to_box(raw, orient, content_box_from_points(pts, orient), c2w=c2w)
    assert out.points3d.dtype == np.float32
    T, s, _ = fit_box(orient, content_box_from_points(pts, orient))
    ref = transform_poses(T, c2w, s)
    np.testing.assert_allclose(out.cameras.camera_to_worlds.numpy(), ref, atol=1e-5)
    uv_out, _ = out.cameras.project(torch.tensor(out.points3d), 0)
    R = c2w[0, :, :3].T
    pc = (pts - c2w[0, :, 3]) @ R.T
    uv_ref = np.stack([pc[:, 0] / pc[:, 2] * 50 + 32, pc[:, 1] / pc[:, 2] * 50 + 24], -1)
    np.testing.assert_allclose(uv_out.numpy(), uv_ref, atol=1e-2)
