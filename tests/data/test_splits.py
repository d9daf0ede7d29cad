"""Few-shot sparse points re-triangulated from the training views alone (data/splits.py), on COLMAP
models written from known points and cameras, and on fern (no keypoints: the track filter)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.parsers import ColmapParserConfig, LLFFParserConfig
from data.parsers.colmap_io import ColmapCamera, ColmapImage, ColmapPoints, write_model
from data.splits import TRIANGULATION_MAX_ERROR, TRIANGULATION_MIN_ANGLE, triangulate_tracks
from recon.cameras import Cameras, look_at
from recon.rotations import matrix_to_quaternion

WIDTH, HEIGHT, FOCAL = 120, 90, 100.0
DISTORTION = (0.05, -0.01, 0.001, -0.0005)
NOISE_PX = 0.3
"""Keypoint noise (standard deviation, pixels)."""


def distort(x: np.ndarray, y: np.ndarray, k=DISTORTION) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV k1, k2, p1, p2 on normalised coordinates (Brown-Conrady), the model COLMAP's OPENCV uses."""
    k1, k2, p1, p2 = k
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    return x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y


def project(xyz: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [P, 2] (distorted, COLMAP's corner origin) and z [P] of points in one camera."""
    cam = (xyz - c2w[:, 3]) @ c2w[:, :3]
    x, y = distort(cam[:, 0] / cam[:, 2], cam[:, 1] / cam[:, 2])
    return np.stack([FOCAL * x + WIDTH / 2, FOCAL * y + HEIGHT / 2], 1), cam[:, 2]


def colmap_scene(root: Path, ext: str = ".bin", seed: int = 0, n: int = 12, num_points: int = 400) -> dict:
    """A COLMAP model of ``num_points`` known points in [-1, 1]^3 seen by ``n`` OPENCV cameras on a
    160-degree arc of radius 4: each point is observed in a random half of the images where it is
    visible, with keypoints at its exact projection plus ``NOISE_PX`` noise; the points3D positions
    written are the truth plus noise of 0.2 per axis (the re-triangulation must not use them).
    Image i is filled with the grey level 10 i. Returns the truth."""
    rng = np.random.default_rng(seed)
    a = np.radians(np.linspace(-80, 80, n))
    eye = np.stack([4 * np.cos(a), 4 * np.sin(a), 1.5 + 0.3 * np.sin(3 * a)], -1)
    c2w = look_at(torch.tensor(eye), torch.zeros(1, 3)).numpy().astype(np.float64)
    truth = rng.uniform(-1, 1, (num_points, 3))
    cams = {1: ColmapCamera(1, "OPENCV", WIDTH, HEIGHT, np.array([FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2, *DISTORTION]))}
    images, tracks = {}, [[] for _ in range(num_points)]
    for i in range(n):
        uv, z = project(truth, c2w[i])
        seen = np.flatnonzero((z > 0) & (uv[:, 0] > 0) & (uv[:, 0] < WIDTH) & (uv[:, 1] > 0) & (uv[:, 1] < HEIGHT) & (rng.random(num_points) < 0.5))
        for k, p in enumerate(seen):
            tracks[p].append((i + 1, k))
        R = c2w[i, :, :3].T
        xys = uv[seen] + rng.normal(0, NOISE_PX, (len(seen), 2))
        images[i + 1] = ColmapImage(i + 1, matrix_to_quaternion(torch.from_numpy(R)).numpy(), -R @ c2w[i, :, 3], 1, f"img_{i:02d}.png", xys, seen.astype(np.int64))
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (WIDTH, HEIGHT), (10 * i,) * 3).save(root / "images" / f"img_{i:02d}.png")
    written = truth + rng.normal(0, 0.2, truth.shape)
    points = ColmapPoints(np.arange(num_points, dtype=np.int64), written, rng.integers(0, 256, (num_points, 3)).astype(np.uint8), np.zeros(num_points),
                          [np.array(t, dtype=np.int32).reshape(-1, 2) for t in tracks])
    write_model(root / "sparse" / "0", cams, images, points, ext=ext)
    return {"truth": truth, "written": written, "tracks": tracks, "cams": cams, "images": images, "points": points}


def expected_kept(scene: dict, frames: list[int]) -> np.ndarray:
    """Point indices at least two of ``frames`` observed (image id i + 1 = frame i)."""
    return np.array([p for p, t in enumerate(scene["tracks"]) if len({i - 1 for i, _ in t} & set(frames)) >= 2])


def to_input(out) -> np.ndarray:
    return out.transform_to_input(torch.tensor(out.points3d).double()).numpy()


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_retriangulated_points_match_the_truth_from_the_training_views_alone(tmp_path: Path, ext: str) -> None:
    scene = colmap_scene(tmp_path, ext)
    out = ColmapParserConfig(num_train_views=3).load(tmp_path)
    train = out.splits["train"]
    kept = expected_kept(scene, train)
    assert 50 < len(kept) < 400  # some points are seen by fewer than two training views
    info = out.metadata["few_shot"]["points"]
    assert info == {"kept": "re-triangulated from >= 2 training views", "count": len(kept), "of": 400}
    error = np.linalg.norm(to_input(out) - scene["truth"][kept], axis=1)
    written = np.linalg.norm(scene["written"][kept] - scene["truth"][kept], axis=1)
    # measured (3 seeds): median 0.017-0.019, max 0.072-0.090 (0 without keypoint noise); the
    # written positions are off by 0.3 (median)
    assert np.median(error) < 0.03 and error.max() < 0.15, (np.median(error), error.max())
    assert np.median(error) < 0.2 * np.median(written)
    # colours: the mean grey of the training images that observed each point (image i is 10 i)
    grey = [np.mean([10 * (i - 1) for i, _ in scene["tracks"][p] if i - 1 in train]) for p in kept]
    np.testing.assert_allclose(out.points3d_rgb, np.repeat(np.round(grey)[:, None], 3, 1), atol=0.51)
    # tracks and keypoints keep the training frames only, aligned with the new point order
    assert set(out.points3d_tracks[:, 1].tolist()) <= set(train)
    assert len(out.points3d_tracks) == sum(len({i - 1 for i, _ in scene["tracks"][p]} & set(train)) for p in kept)
    assert out.points3d_keypoints.shape == (len(out.points3d_tracks), 2)


def test_retriangulation_ignores_what_held_out_images_saw(tmp_path: Path) -> None:
    """Moving every keypoint of the non-training images, repainting them and moving the model's
    points leaves the re-triangulated points (in the input frame) and their colours unchanged."""
    scene = colmap_scene(tmp_path)
    base = ColmapParserConfig(num_train_views=3).load(tmp_path)
    train = set(base.splits["train"])
    rng = np.random.default_rng(1)
    images = {}
    for iid, im in scene["images"].items():
        if iid - 1 not in train:
            im = replace(im, xys=im.xys + rng.normal(0, 20, im.xys.shape))
            Image.new("RGB", (WIDTH, HEIGHT), (200, 30, 90)).save(tmp_path / "images" / im.name)
        images[iid] = im
    write_model(tmp_path / "sparse" / "0", scene["cams"], images, scene["points"])
    moved = ColmapParserConfig(num_train_views=3).load(tmp_path)
    np.testing.assert_array_equal(moved.points3d, base.points3d)
    np.testing.assert_array_equal(moved.points3d_rgb, base.points3d_rgb)
    points = replace(scene["points"], xyz=scene["points"].xyz + rng.normal(0, 0.2, scene["points"].xyz.shape))
    write_model(tmp_path / "sparse" / "0", scene["cams"], images, points)
    rebox = ColmapParserConfig(num_train_views=3).load(tmp_path)
    assert rebox.dataparser_scale != base.dataparser_scale  # the normalisation follows the model's points
    np.testing.assert_allclose(to_input(rebox), to_input(base), atol=1e-5)
    # the track filter, by contrast, returns the model's (moved) positions
    filtered = ColmapParserConfig(num_train_views=3, few_shot_points="train-views").load(tmp_path)
    assert filtered.metadata["few_shot"]["points"]["kept"] == "seen by >= 2 training views"
    np.testing.assert_allclose(to_input(filtered), points.xyz[expected_kept(scene, sorted(train))], atol=1e-4)


def test_keypoints_follow_downscaled_images(tmp_path: Path) -> None:
    """images_2/ at half size: intrinsics and keypoints scale together, so the points stay put."""
    colmap_scene(tmp_path)
    (tmp_path / "images_2").mkdir()
    for path in (tmp_path / "images").iterdir():
        Image.open(path).resize((WIDTH // 2, HEIGHT // 2)).save(tmp_path / "images_2" / path.name)
    full = ColmapParserConfig(num_train_views=3).load(tmp_path)
    half = ColmapParserConfig(num_train_views=3, downscale_factor=2).load(tmp_path)
    assert len(half.points3d) == len(full.points3d)
    np.testing.assert_allclose(to_input(half), to_input(full), atol=1e-4)


def two_cameras(baseline: float = 2.0, distortion=DISTORTION) -> Cameras:
    """Cameras at x = -baseline/2 and +baseline/2 looking at the origin from z = -4."""
    eye = torch.tensor([[-baseline / 2, 0.0, -4.0], [baseline / 2, 0.0, -4.0]], dtype=torch.float64)
    c2w = look_at(eye, torch.zeros(1, 3, dtype=torch.float64), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)).float()
    return Cameras(c2w, FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2, WIDTH, HEIGHT, distortion=torch.tensor([distortion] * 2))


def observations(cameras: Cameras, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tracks [2P, 2] and exact keypoints of points [P, 3] in both cameras (projected even when behind)."""
    tracks, keypoints = [], []
    for f in range(2):
        uv, _ = project(xyz, cameras.camera_to_worlds[f].double().numpy())
        tracks.append(np.stack([np.arange(len(xyz)), np.full(len(xyz), f)], 1))
        keypoints.append(uv)
    return np.concatenate(tracks), np.concatenate(keypoints)


def test_triangulate_tracks_exact_and_its_filters() -> None:
    cams = two_cameras()
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-1, 1, (50, 3))
    tracks, keypoints = observations(cams, xyz)
    ids, got = triangulate_tracks(tracks, keypoints, cams, [0, 1])
    assert ids.tolist() == list(range(50))
    np.testing.assert_allclose(got, xyz, atol=1e-4)  # float32 cameras

    # a point behind both cameras satisfies the same projective equations: dropped
    behind = np.array([[0.0, 0.2, -9.0]])
    t, k = observations(cams, np.r_[xyz[:1], behind])
    assert triangulate_tracks(t, k, cams, [0, 1])[0].tolist() == [0]
    # one keypoint 2x the reprojection limit off: dropped; within it: kept
    for shift, kept in ((2 * TRIANGULATION_MAX_ERROR, [1]), (0.5 * TRIANGULATION_MAX_ERROR, [0, 1])):
        t, k = observations(cams, xyz[:2])
        k[0, 1] += shift
        assert triangulate_tracks(t, k, cams, [0, 1])[0].tolist() == kept
    # nearly parallel rays (baseline 0.04 at distance 4: 0.57 degrees < 1.5): dropped
    near = two_cameras(baseline=0.04)
    t, k = observations(near, xyz[:5])
    assert TRIANGULATION_MIN_ANGLE > 0.6 and len(triangulate_tracks(t, k, near, [0, 1])[0]) == 0
    assert len(triangulate_tracks(t, k, near, [0, 1], min_angle=0.1)[0]) == 5
    # observed by one of the chosen frames only: dropped
    assert len(triangulate_tracks(tracks, keypoints, cams, [1])[0]) == 0


def test_fern_has_no_keypoints_and_keeps_the_track_filter(shared_data: Path) -> None:
    """fern's sparse/0 has no images.bin, so the default falls back to the points two of the 3
    RegNeRF views observed: 1407 of 10,091."""
    default = LLFFParserConfig(num_train_views=3).load(shared_data / "fern")
    tracks = LLFFParserConfig(num_train_views=3, few_shot_points="train-views").load(shared_data / "fern")
    assert default.points3d_keypoints is None
    assert default.metadata["few_shot"]["points"] == tracks.metadata["few_shot"]["points"] == {"kept": "seen by >= 2 training views", "count": 1407, "of": 10091}
    np.testing.assert_array_equal(default.points3d, tracks.points3d)

