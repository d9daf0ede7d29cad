"""Dataset parsers: the real test datasets (lego, fern, dtu_scan24), synthetic COLMAP / nerfstudio /
IDR / sdfstudio datasets written here, few-shot selection and every kind of bad input.

Only image headers of the real datasets are read (plus a handful of pixels), so this stays fast.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.images import composite, load_image
from data.parsers import (
    PARSERS,
    AutoParserConfig,
    BlenderParserConfig,
    ColmapParserConfig,
    IDRParserConfig,
    LLFFParserConfig,
    MonoSDFParserConfig,
    NerfstudioParserConfig,
    detect_format,
)
from data.parsers.colmap_io import CAMERA_MODELS, ColmapCamera, ColmapImage, ColmapPoints, read_model, read_points3d, write_model
from recon.cameras import look_at
from recon.errors import ConfigError, DataError
from recon.rotations import matrix_to_quaternion


# -- helpers ---------------------------------------------------------------------------------
def _ring(n: int, radius: float = 4.0, height: float = 2.0, seed: int = 0) -> np.ndarray:
    """OpenCV c2w [n, 3, 4] on a jittered ring around the origin, looking at it."""
    rng = np.random.default_rng(seed)
    a = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(-0.1, 0.1, n)
    eye = np.stack([radius * np.cos(a), radius * np.sin(a), height + rng.uniform(-0.3, 0.3, n)], -1)
    target = rng.uniform(-0.2, 0.2, (n, 3))
    return look_at(torch.tensor(eye), torch.tensor(target)).numpy()


def _to_input(out, points: torch.Tensor) -> np.ndarray:
    return out.transform_to_input(points.double()).numpy()


def _input_rotations(out) -> np.ndarray:
    """Camera rotations [N, 3, 3] mapped back to the input frame."""
    R = out.dataparser_transform[:, :3].double()
    return (R.T @ out.cameras.camera_to_worlds[:, :, :3].double()).numpy()


def _write_png(path: Path, w: int, h: int, value: int = 128, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), value if mode != "RGB" else (value, value // 2, 255 - value)).save(path)


def _angles_to(out, target: torch.Tensor) -> torch.Tensor:
    """Degrees between each camera's optical axis and the direction to ``target`` [3]."""
    c2w = out.cameras.camera_to_worlds.double()
    d = target.double() - c2w[:, :, 3]
    d = d / d.norm(dim=-1, keepdim=True)
    return torch.rad2deg(torch.acos((d * c2w[:, :, 2]).sum(-1).clamp(-1, 1)))


# -- real datasets ---------------------------------------------------------------------------
def test_lego_is_blender(shared_data: Path) -> None:
    data = shared_data / "lego"
    assert isinstance(detect_format(data), BlenderParserConfig)
    out = AutoParserConfig().load(data)
    assert {k: len(v) for k, v in out.splits.items()} == {"train": 100, "val": 25, "test": 200}
    cams = out.cameras
    assert (cams.width == 400).all() and (cams.height == 400).all()
    assert float(cams.fx[0]) == pytest.approx(555.555, abs=1e-2)
    assert float(cams.fy[0]) == pytest.approx(555.555, abs=1e-2)
    assert float(cams.cx[0]) == 200.0 and float(cams.cy[0]) == 200.0
    assert out.alpha_color.tolist() == [1.0, 1.0, 1.0]
    assert out.image_filenames[0].name == "r_0.png" and out.image_filenames[100].parent.name == "val"
    # [-1.5, 1.5]^3 -> [-1, 1]^3; near/far 2, 6 scaled alike
    assert out.dataparser_scale == pytest.approx(1 / 1.5)
    np.testing.assert_allclose(out.scene_box.aabb.numpy(), [[-1.0] * 3, [1.0] * 3])
    assert out.near == pytest.approx(2 / 1.5) and out.far == pytest.approx(4.0)
    # every camera looks at the scene centre, from outside the box
    assert float(_angles_to(out, out.scene_box.center).max()) < 25.0
    assert (cams.camera_to_worlds[:, :, 3].abs().max(-1).values > 1.0).all()
    # the object's silhouette lies inside the projected scene box (a few views only)
    corners = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
    for i in (0, 37, 150):
        rgba = load_image(out.image_filenames[i])
        assert rgba.shape == (400, 400, 4)
        ys, xs = np.nonzero(rgba[..., 3] > 0)
        uv, z = cams.project(corners, i)
        assert (z > 0).all()
        assert xs.min() >= float(uv[:, 0].min()) - 1 and xs.max() <= float(uv[:, 0].max()) + 1
        assert ys.min() >= float(uv[:, 1].min()) - 1 and ys.max() <= float(uv[:, 1].max()) + 1
        # transparent background composites to white
        rgb = composite(rgba, out.alpha_color)
        assert np.allclose(rgb[rgba[..., 3] == 0], 1.0)


def test_fern_is_llff(shared_data: Path) -> None:
    data = shared_data / "fern"
    # fern also has an incomplete sparse/0 (no images.bin): LLFF must win
    assert isinstance(detect_format(data), LLFFParserConfig)
    out = AutoParserConfig().load(data)
    assert len(out) == 20 and out.image_filenames[0].parent.name == "images_8"
    assert out.splits["test"] == [0, 8, 16] and out.splits["val"] == [0, 8, 16]
    assert len(out.splits["train"]) == 17
    cams = out.cameras
    assert (cams.width == 504).all() and (cams.height == 378).all()
    focal = float(np.load(data / "poses_bounds.npy")[0, 14])
    assert focal == pytest.approx(3260.53, abs=0.01)
    assert float(cams.fx[0]) == pytest.approx(504 / 4032 * focal, rel=1e-5)
    assert float(cams.fy[0]) == pytest.approx(378 / 3024 * focal, rel=1e-5)
    assert float(cams.cx[0]) == 252.0 and float(cams.cy[0]) == 189.0
    # forward-facing: all optical axes roughly parallel ...
    axes = cams.camera_to_worlds[:, :, 2].double()
    mean_axis = axes.mean(0) / axes.mean(0).norm()
    assert float(torch.rad2deg(torch.acos((axes @ mean_axis).clamp(-1, 1))).max()) < 15.0
    # ... pointing at the content (sparse COLMAP points, same world as the poses) ...
    pts = torch.tensor(out.points3d, dtype=torch.float64)
    assert len(pts) == 10091
    assert float(_angles_to(out, pts.median(0).values).max()) < 25.0
    # ... which lies inside the unit box, in front of every camera, within near/far
    assert float((pts.abs() <= 1.0).all(-1).double().mean()) > 0.99
    assert (cams.camera_to_worlds[:, :, 3].abs() <= 1.0 + 1e-5).all()
    z = ((pts[None] - cams.camera_to_worlds[:, None, :, 3].double()) * axes[:, None]).sum(-1)
    assert float((z > 0).double().mean()) > 0.999
    assert out.near < float(z.quantile(0.01)) and float(z.quantile(0.99)) < out.far
    assert out.points3d_rgb.shape == (10091, 3) and out.points3d_rgb.dtype == np.uint8


def test_dtu_scan24_is_monosdf(shared_data: Path) -> None:
    data = shared_data / "dtu_scan24"
    assert isinstance(detect_format(data), MonoSDFParserConfig)
    out = AutoParserConfig().load(data)
    assert len(out) == 49
    cams = out.cameras
    assert (cams.width == 384).all() and (cams.height == 384).all()
    assert out.metadata["dtu_center_crop"] is True
    # world_mat intrinsics are DTU's 1600x1200 ones: fx ~ 2892, cx ~ 823 -> crop 200 px, scale 0.32
    assert float(cams.fx[0]) == pytest.approx(2892 * 0.32, rel=2e-3)
    assert float(cams.cx[0]) == pytest.approx((823 - 200) * 0.32, rel=2e-3)
    assert float(cams.cy[0]) == pytest.approx(619 * 0.32, rel=2e-3)
    assert ((cams.cx > 150) & (cams.cx < 234) & (cams.cy > 150) & (cams.cy < 234)).all()
    assert out.depth_is_relative and len(out.depth_filenames) == 49 and len(out.normal_filenames) == 49
    assert out.depth_filenames[7].name == "000007_depth.npy" and out.normal_filenames[7].name == "000007_normal.npy"
    # scale_mat's unit sphere -> unit sphere, box [-1, 1]^3; cameras outside it, all looking at it
    np.testing.assert_allclose(out.scene_box.aabb.numpy(), [[-1.0] * 3, [1.0] * 3])
    radius = cams.camera_to_worlds[:, :, 3].norm(dim=-1)
    assert (radius > 1.5).all() and (radius < 5).all()
    assert float(_angles_to(out, out.scene_box.center).max()) < 25.0
    assert 0 < out.near < float(radius.min()) - 1 + 1e-6 and out.far > float(radius.max())
    # splits: all views train; RegNeRF test views are test
    assert out.splits["train"] == list(range(49))
    assert out.splits["test"] == [i for i in range(49) if i not in {25, 22, 28, 40, 44, 48, 0, 8, 13, 3, 4, 5, 6, 7, *range(16, 22), 36, 37, 38, 39}]


def test_few_shot_real(shared_data: Path) -> None:
    fern = LLFFParserConfig(num_train_views=3).load(shared_data / "fern")
    assert fern.splits["train"] == [1, 10, 19] and fern.splits["test"] == [0, 8, 16]
    dtu = AutoParserConfig(num_train_views=3).load(shared_data / "dtu_scan24")
    assert dtu.splits["train"] == [22, 25, 28]
    assert dtu.metadata["few_shot"]["views"] == [25, 22, 28]  # protocol order: first 3 of the list
    assert 25 not in dtu.splits["test"] and len(dtu.splits["test"]) == 25
    # SfM points: only those that two or more of the 3 training views observed (tracks read from
    # points3D.bin, image id i + 1 = frame i); the rest of the 10,091 carry held-out views' evidence.
    raw = read_points3d(shared_data / "fern" / "sparse" / "0" / "points3D.bin", with_tracks=True)
    seen = np.array([len({int(i) - 1 for i in t[:, 0]} & {1, 10, 19}) >= 2 for t in raw.tracks])
    assert 0 < seen.sum() < len(raw) // 2
    np.testing.assert_allclose(_to_input(fern, torch.tensor(fern.points3d)), raw.xyz[seen], atol=1e-3)
    np.testing.assert_array_equal(fern.points3d_rgb, raw.rgb[seen])
    assert fern.metadata["few_shot"]["points"] == {"kept": "seen by >= 2 training views", "count": int(seen.sum()), "of": len(raw)}
    every = LLFFParserConfig(num_train_views=3, few_shot_points="all").load(shared_data / "fern")
    assert len(every.points3d) == len(raw) and LLFFParserConfig().load(shared_data / "fern").points3d_tracks is None
    with pytest.raises(ConfigError, match="num_train_views"):
        LLFFParserConfig(num_train_views=18).load(shared_data / "fern")
    with pytest.raises(ConfigError, match="num_train_views"):
        LLFFParserConfig(num_train_views=0).load(shared_data / "fern")
    with pytest.raises(ConfigError, match="num_train_views"):
        AutoParserConfig(num_train_views=10).load(shared_data / "dtu_scan24")
    with pytest.raises(DataError, match=r"images_4/ not found \(image folders present: images_8\)"):
        LLFFParserConfig(downscale_factor=4).load(shared_data / "fern")


def test_few_shot_blender_uses_the_per_scene_3_view_lists(shared_data: Path, tmp_path: Path) -> None:
    lego = BlenderParserConfig(num_train_views=3).load(shared_data / "lego")
    assert lego.splits["train"] == [4, 16, 99] and lego.metadata["few_shot"]["protocol"] == "blender"
    assert lego.metadata["few_shot"]["train_split"] == list(range(100))
    # Another count, or a scene the lists do not name, falls back to evenly spaced views.
    assert BlenderParserConfig(num_train_views=4).load(shared_data / "lego").splits["train"] == [0, 33, 66, 99]
    renamed = tmp_path / "my_lego"
    renamed.symlink_to(shared_data / "lego", target_is_directory=True)
    other = BlenderParserConfig(num_train_views=3).load(renamed)
    assert other.splits["train"] == [0, 50, 99] and other.metadata["few_shot"]["protocol"] == "even"


# -- COLMAP ------------------------------------------------------------------------------------
def _colmap_scene(root: Path, ext: str, model: str = "OPENCV") -> dict:
    rng = np.random.default_rng(4)
    n = 10
    c2w = _ring(n, radius=5.0, seed=1)
    # an arbitrary world frame, as COLMAP gives
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    offset = np.array([3.0, -7.0, 2.0])
    c2w[:, :, :3] = q @ c2w[:, :, :3]
    c2w[:, :, 3] = c2w[:, :, 3] @ q.T + offset
    xyz = rng.uniform(-1, 1, (300, 3)) @ q.T + offset
    cams = {
        1: ColmapCamera(1, "PINHOLE", 64, 48, np.array([60.0, 58.0, 31.5, 24.5])),
        2: ColmapCamera(2, model, 80, 60, np.r_[70.0, 71.0, 40.0, 30.0, 0.01, -0.002, 0.001, 0.0005, [0.0] * 8][: CAMERA_MODELS[model][1]]),
        3: ColmapCamera(3, "SIMPLE_RADIAL", 64, 48, np.array([55.0, 32.0, 24.0, 0.03])),
    }
    images = {}
    for i in range(n):
        R = c2w[i, :, :3].T
        t = -R @ c2w[i, :, 3]
        ids = rng.choice(300, 5, replace=False)
        images[i + 1] = ColmapImage(i + 1, matrix_to_quaternion(torch.from_numpy(R)).numpy(), t, 1 + i % 3, f"img_{i:02d}.png", rng.uniform(0, 48, (5, 2)), ids.astype(np.int64))
        w, h = cams[1 + i % 3].width, cams[1 + i % 3].height
        _write_png(root / "images" / f"img_{i:02d}.png", w, h)
    tracks = [np.array([[1 + j % n, j % 5]], dtype=np.int32) for j in range(300)]
    points = ColmapPoints(np.arange(300, dtype=np.int64), xyz, rng.integers(0, 256, (300, 3)).astype(np.uint8), rng.uniform(0, 1, 300), tracks)
    write_model(root / "sparse" / "0", cams, images, points, ext=ext)
    return {"c2w": c2w, "cams": cams, "images": images, "points": points}


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_colmap_round_trip_and_parse(tmp_path: Path, ext: str) -> None:
    scene = _colmap_scene(tmp_path, ext)
    cams, images, points = read_model(tmp_path / "sparse" / "0", with_tracks=True)
    for cid, cam in scene["cams"].items():
        assert cams[cid].model == cam.model and (cams[cid].width, cams[cid].height) == (cam.width, cam.height)
        np.testing.assert_allclose(cams[cid].params, cam.params)
    for iid, im in scene["images"].items():
        got = images[iid]
        assert got.name == im.name and got.camera_id == im.camera_id
        np.testing.assert_allclose(got.qvec, im.qvec)
        np.testing.assert_allclose(got.tvec, im.tvec)
        np.testing.assert_allclose(got.xys, im.xys)
        np.testing.assert_array_equal(got.point3d_ids, im.point3d_ids)
    np.testing.assert_allclose(points.xyz, scene["points"].xyz)
    np.testing.assert_array_equal(points.rgb, scene["points"].rgb)
    np.testing.assert_allclose(points.error, scene["points"].error)
    assert all(np.array_equal(a, b) for a, b in zip(points.tracks, scene["points"].tracks))

    assert isinstance(detect_format(tmp_path), ColmapParserConfig)
    out = AutoParserConfig().load(tmp_path)
    assert [p.name for p in out.image_filenames] == [f"img_{i:02d}.png" for i in range(10)]
    assert out.splits["test"] == [0, 8] and out.splits["val"] == [0, 8] and len(out.splits["train"]) == 8
    c = out.cameras
    assert c.fx.tolist()[:3] == pytest.approx([60.0, 70.0, 55.0]) and c.fy.tolist()[:3] == pytest.approx([58.0, 71.0, 55.0])
    assert c.cx.tolist()[:3] == pytest.approx([31.5, 40.0, 32.0]) and c.width.tolist()[:3] == [64, 80, 64]
    np.testing.assert_allclose(c.distortion[1].numpy(), [0.01, -0.002, 0.001, 0.0005, 0, 0, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(c.distortion[2].numpy(), [0.03, 0, 0, 0, 0, 0, 0, 0], rtol=1e-5)
    assert not c.distortion[0].any() and not c.camera_model.any()
    # poses and points match what was written, once mapped back to the input frame
    np.testing.assert_allclose(_to_input(out, c.camera_to_worlds[:, :, 3]), scene["c2w"][:, :, 3], atol=1e-4)
    np.testing.assert_allclose(_input_rotations(out), scene["c2w"][:, :, :3], atol=1e-5)
    np.testing.assert_allclose(_to_input(out, torch.tensor(out.points3d)), scene["points"].xyz, atol=1e-4)
    np.testing.assert_array_equal(out.points3d_rgb, scene["points"].rgb)
    # content (points) fills the unit box, up is +z
    pts = torch.tensor(out.points3d)
    assert float((pts.abs() <= 1).all(-1).float().mean()) > 0.97
    assert float(pts.abs().max()) > 0.8
    up = -c.camera_to_worlds[:, :, 1].mean(0)
    assert float(up[2] / up.norm()) > 0.99


def test_colmap_few_shot_keeps_points_the_chosen_views_saw(tmp_path: Path) -> None:
    scene = _colmap_scene(tmp_path, ".bin")
    # points seen by 1-3 images each; img_05 missing on disk, so image id 7 is frame 5, etc.
    tracks = [np.array(sorted({(1 + (j * m) % 10, 0) for m in (1, 3, 7)[: 1 + j % 3]}), dtype=np.int32) for j in range(300)]
    points = replace(scene["points"], tracks=tracks)
    write_model(tmp_path / "sparse" / "0", scene["cams"], scene["images"], points, ext=".bin")
    (tmp_path / "images" / "img_05.png").unlink()
    frame = {i + 1: i - (i > 5) for i in range(10) if i != 5}
    with pytest.warns(UserWarning, match="img_05.png"):  # the track filter (the keypoints here are random)
        out = ColmapParserConfig(num_train_views=3, few_shot_points="train-views").load(tmp_path)
    chosen = set(out.splits["train"])
    assert len(chosen) == 3
    expect = np.array([len({frame[int(i)] for i in t[:, 0] if int(i) in frame} & chosen) >= 2 for t in tracks])
    assert 0 < expect.sum() < 300
    np.testing.assert_allclose(_to_input(out, torch.tensor(out.points3d)), scene["points"].xyz[expect], atol=1e-4)
    kept_tracks = {(int(p), int(f)) for p, f in out.points3d_tracks}
    want = {(int(expect[:k].sum()), frame[int(i)]) for k in np.flatnonzero(expect) for i in tracks[k][:, 0] if int(i) in frame}
    assert kept_tracks == want
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(ColmapParserConfig(num_train_views=3, few_shot_points="all").load(tmp_path).points3d) == 300
        assert len(ColmapParserConfig().load(tmp_path).points3d) == 300


@pytest.mark.parametrize(
    "model, distortion, fisheye",
    [
        ("FULL_OPENCV", [0.01, -0.002, 0.001, 0.0005, 0, 0, 0, 0], False),
        ("OPENCV_FISHEYE", [0.01, -0.002, 0.001, 0.0005, 0, 0, 0, 0], True),
        ("RADIAL_FISHEYE", [30.0, 0.01, 0, 0, 0, 0, 0, 0], True),  # the same numbers read as f, cx, cy, k1, k2
    ],
)
def test_colmap_rational_and_fisheye_models(tmp_path: Path, model: str, distortion: list[float], fisheye: bool) -> None:
    _colmap_scene(tmp_path, ".txt", model=model)
    c = ColmapParserConfig().load(tmp_path).cameras
    np.testing.assert_allclose(c.distortion[1].numpy(), distortion, rtol=1e-5)
    assert c.camera_model.tolist()[:3] == [0, int(fisheye), 0]
    assert c.fx.tolist()[1] == pytest.approx(70.0)


def test_nerfstudio_fisheye_and_k3(tmp_path: Path) -> None:
    _ns_dataset(tmp_path, n=3, missing=(), k3=-0.001)
    c = NerfstudioParserConfig().load(tmp_path).cameras
    np.testing.assert_allclose(c.distortion[0].numpy(), [0.01, 0, 0, 0.002, -0.001, 0, 0, 0], rtol=1e-5)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta.update(camera_model="OPENCV_FISHEYE", k1=0.02, k2=-0.01, k3=0.003, k4=-0.001, p2=0.0)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    c = NerfstudioParserConfig().load(tmp_path).cameras
    assert c.camera_model.tolist() == [1, 1, 1]
    np.testing.assert_allclose(c.distortion[0].numpy(), [0.02, -0.01, 0.003, -0.001, 0, 0, 0, 0], rtol=1e-5)


@pytest.mark.parametrize("model", ["FOV", "THIN_PRISM_FISHEYE"])
def test_colmap_unsupported_model(tmp_path: Path, model: str) -> None:
    _colmap_scene(tmp_path, ".bin", model=model)
    with pytest.raises(DataError, match=f"unsupported COLMAP camera model {model}") as exc:
        ColmapParserConfig().load(tmp_path)
    assert "sparse/0" in str(exc.value)


def test_colmap_missing_images_dir_and_truncated_file(tmp_path: Path) -> None:
    _colmap_scene(tmp_path, ".bin")
    raw = (tmp_path / "sparse" / "0" / "images.bin").read_bytes()
    (tmp_path / "sparse" / "0" / "images.bin").write_bytes(raw[:100])
    with pytest.raises(DataError, match="images.bin"):
        ColmapParserConfig().load(tmp_path)


# -- nerfstudio ------------------------------------------------------------------------------
def _opengl(c2w: np.ndarray) -> list:
    m = np.eye(4)
    m[:3] = c2w
    m[:3, 1:3] *= -1
    return m.tolist()


def _ns_dataset(root: Path, n: int = 9, missing: tuple[int, ...] = (4,), **extra) -> dict:
    c2w = _ring(n, seed=2)
    frames = []
    for i in range(n):
        name = f"images/frame_{i:05d}.png"
        w, h = (80, 40) if i == 2 else (64, 48)
        if i not in missing:
            _write_png(root / name, w, h)
        _write_png(root / f"masks/mask_{i:05d}.png", w, h, 255, mode="L")
        depth = root / f"depths/depth_{i:05d}.png"
        depth.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w), 2500, dtype=np.uint16)).save(depth)
        frame = {
            "file_path": name,
            "transform_matrix": _opengl(c2w[i]),
            "mask_path": f"masks/mask_{i:05d}.png",
            "depth_file_path": f"depths/depth_{i:05d}.png",
        }
        if i == 2:  # per-frame intrinsics override the global ones
            frame.update({"fl_x": 70.0, "fl_y": 71.0, "cx": 40.0, "cy": 20.0, "w": 80, "h": 40})
        frames.append(frame)
    meta = {"camera_model": "OPENCV", "fl_x": 60.0, "fl_y": 58.0, "cx": 32.0, "cy": 24.0, "w": 64, "h": 48, "k1": 0.01, "p2": 0.002, **extra}
    meta["frames"] = frames[::-1]  # file order must not matter: frames are sorted by file_path
    (root / "transforms.json").write_text(json.dumps(meta))
    return {"c2w": c2w, "meta": meta}


def test_nerfstudio_dataset(tmp_path: Path) -> None:
    scene = _ns_dataset(tmp_path)
    assert isinstance(detect_format(tmp_path), NerfstudioParserConfig)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = AutoParserConfig().load(tmp_path)
    relevant = [w for w in caught if "missing" in str(w.message)]
    assert len(relevant) == 1 and "frame_00004.png" in str(relevant[0].message)
    keep = [i for i in range(9) if i != 4]
    assert [p.name for p in out.image_filenames] == [f"frame_{i:05d}.png" for i in keep]
    assert [p.name for p in out.mask_filenames] == [f"mask_{i:05d}.png" for i in keep]
    assert [p.name for p in out.depth_filenames] == [f"depth_{i:05d}.png" for i in keep]
    assert out.depth_unit_scale_factor == pytest.approx(1e-3)
    assert out.alpha_color is None  # RGB images
    assert out.splits["test"] == [0] and out.splits["val"] == [0] and out.splits["train"] == list(range(1, 8))
    c = out.cameras
    assert c.fx.tolist()[:3] == pytest.approx([60.0, 60.0, 70.0])
    assert c.fy.tolist()[2] == pytest.approx(71.0) and c.cy.tolist()[2] == pytest.approx(20.0)
    assert c.width.tolist()[:3] == [64, 64, 80] and c.height.tolist()[:3] == [48, 48, 40]
    np.testing.assert_allclose(c.distortion[0].numpy(), [0.01, 0, 0, 0.002, 0, 0, 0, 0], rtol=1e-5)
    # OpenGL -> OpenCV and normalisation undo to the written poses
    np.testing.assert_allclose(_to_input(out, c.camera_to_worlds[:, :, 3]), scene["c2w"][keep, :, 3], atol=1e-4)
    np.testing.assert_allclose(_input_rotations(out), scene["c2w"][keep, :, :3], atol=1e-5)
    # cameras-only rule: centred, max |t| = 1, box [-1, 1]^3, up +z
    assert float(c.camera_to_worlds[:, :, 3].abs().max()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(out.scene_box.aabb.numpy(), [[-1.0] * 3, [1.0] * 3], atol=1e-6)
    # one depth file through the loader: 2500 mm
    from data.images import load_depth

    assert float(load_depth(out.depth_filenames[0], out.depth_unit_scale_factor).mean()) == pytest.approx(2.5)
    # images_2/: half-size copies; intrinsics follow the real size
    for i in keep:
        w, h = (40, 20) if i == 2 else (32, 24)
        _write_png(tmp_path / "images_2" / f"frame_{i:05d}.png", w, h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = NerfstudioParserConfig(downscale_factor=2).load(tmp_path)
    assert half.image_filenames[0].parent.name == "images_2"
    assert half.cameras.width.tolist()[:3] == [32, 32, 40] and half.cameras.fx.tolist()[:3] == pytest.approx([30.0, 30.0, 35.0])
    assert half.cameras.cy.tolist()[2] == pytest.approx(10.0)


def test_nerfstudio_split_lists_and_ply(tmp_path: Path) -> None:
    import trimesh

    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (500, 3)) * [1.0, 0.5, 0.25] + [0.2, 0.1, 0.0]
    colors = rng.integers(0, 256, (500, 4)).astype(np.uint8)
    trimesh.PointCloud(pts, colors=colors).export(tmp_path / "sparse_pc.ply")
    extra = {
        "ply_file_path": "sparse_pc.ply",
        "train_filenames": [f"images/frame_{i:05d}.png" for i in (0, 1, 2, 3)],
        "test_filenames": [f"./images/frame_{i:05d}.png" for i in (5, 6)],
        "depth_unit_scale_factor": 0.5,
    }
    _ns_dataset(tmp_path, n=7, missing=(), **extra)
    out = NerfstudioParserConfig().load(tmp_path)
    assert out.splits == {"train": [0, 1, 2, 3], "val": [5, 6], "test": [5, 6]}
    assert out.depth_unit_scale_factor == 0.5
    assert NerfstudioParserConfig(depth_unit_scale_factor=1.0).load(tmp_path).depth_unit_scale_factor == 1.0
    # .npy depth without a scale key (data/synthetic.py's layout) is in scene units: factor 1
    meta = json.loads((tmp_path / "transforms.json").read_text())
    del meta["depth_unit_scale_factor"]
    meta["mesh_file_path"] = "mesh.ply"
    for f in meta["frames"]:
        np.save(tmp_path / f["depth_file_path"].replace(".png", ".npy"), np.ones((48, 64), np.float32))
        f["depth_file_path"] = f["depth_file_path"].replace(".png", ".npy")
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    npy = NerfstudioParserConfig().load(tmp_path)
    assert npy.depth_unit_scale_factor == 1.0 and npy.depth_filenames[0].suffix == ".npy"
    assert npy.metadata["ground_truth_mesh"] == tmp_path / "mesh.ply" and npy.metadata["normal_frame"] == "world"
    np.testing.assert_allclose(_to_input(out, torch.tensor(out.points3d)), pts, atol=1e-4)
    np.testing.assert_array_equal(out.points3d_rgb, colors[:, :3])
    inside = (np.abs(out.points3d) <= 1.0).all(1).mean()
    assert inside > 0.97 and float(np.abs(out.points3d).max()) > 0.85


def test_nerfstudio_bad_inputs(tmp_path: Path) -> None:
    _ns_dataset(tmp_path, n=3, missing=())
    path = tmp_path / "transforms.json"
    meta = json.loads(path.read_text())

    def expect(change, match: str) -> None:
        m = json.loads(json.dumps(meta))
        change(m)
        path.write_text(json.dumps(m))
        with pytest.raises(DataError, match=match) as exc:
            NerfstudioParserConfig().load(tmp_path)
        assert "transforms.json" in str(exc.value)

    expect(lambda m: m["frames"][1].update(transform_matrix=np.eye(3).tolist()), r"frame 1: transform_matrix must be 4x4")
    expect(lambda m: m["frames"][2].__setitem__("transform_matrix", [[float("nan")] * 4] * 4), r"frame 2: .*NaN")
    expect(lambda m: m.update(k4=0.01), "k4 with camera_model OPENCV")
    expect(lambda m: m.update(camera_model="OPENCV_FISHEYE"), "OPENCV_FISHEYE has no tangential terms")
    expect(lambda m: m.update(k1="strong"), "k1 must be a number")
    expect(lambda m: m.update(camera_model="EQUIRECTANGULAR"), "unsupported camera_model EQUIRECTANGULAR")
    expect(lambda m: (m.pop("fl_x"), m.pop("fl_y")), "missing intrinsics")
    expect(lambda m: m.update(frames=[]), "no frames")
    expect(lambda m: [f.update(file_path="nope/" + f["file_path"]) for f in m["frames"]], "none of the 3 images")
    expect(lambda m: m["frames"][0].pop("mask_path"), "mask_path is given for 2 of 3 frames")
    path.write_text('{"frames": [ {"file_path": "a.png",, } ]}')
    with pytest.raises(DataError, match="invalid JSON") as exc:
        AutoParserConfig().load(tmp_path)
    assert "transforms.json" in str(exc.value)


# -- IDR / DTU layout and sdfstudio ----------------------------------------------------------
def test_idr_layout_decomposes_world_mats(tmp_path: Path) -> None:
    n = 6
    c2w = _ring(n, radius=300.0, height=100.0, seed=3)
    c2w[:, :, 3] += [40.0, -20.0, 600.0]  # DTU-like millimetre world, object near (40, -20, 600)
    K = np.array([[500.0, 0.0, 62.0], [0.0, 505.0, 49.0], [0.0, 0.0, 1.0]])
    s, centre = 200.0, np.array([40.0, -20.0, 600.0])
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= s
    scale_mat[:3, 3] = centre
    npz = {}
    for i in range(n):
        R = c2w[i, :, :3].T
        P = np.eye(4)
        P[:3] = K @ np.c_[R, -R @ c2w[i, :, 3]] * (-2.5 if i % 2 else 1.0)  # P is defined up to scale and sign
        npz[f"world_mat_{i}"] = P
        npz[f"scale_mat_{i}"] = scale_mat
        _write_png(tmp_path / "image" / f"{i:06d}.png", 128, 96)
        _write_png(tmp_path / "mask" / f"{i:03d}.png", 128, 96, 255, mode="L")
    np.savez(tmp_path / "cameras_sphere.npz", **npz)
    assert isinstance(detect_format(tmp_path), IDRParserConfig)
    out = AutoParserConfig().load(tmp_path)
    c = out.cameras
    np.testing.assert_allclose(c.fx.numpy(), 500.0, rtol=1e-5)
    np.testing.assert_allclose(c.fy.numpy(), 505.0, rtol=1e-5)
    np.testing.assert_allclose(c.cx.numpy(), 62.0, atol=1e-3)
    np.testing.assert_allclose(c.cy.numpy(), 49.0, atol=1e-3)
    assert out.metadata["dtu_center_crop"] is False
    np.testing.assert_allclose(c.camera_to_worlds[:, :, 3].numpy(), (c2w[:, :, 3] - centre) / s, atol=1e-4)
    np.testing.assert_allclose(c.camera_to_worlds[:, :, :3].numpy(), c2w[:, :, :3], atol=1e-5)
    np.testing.assert_allclose(_to_input(out, c.camera_to_worlds[:, :, 3]), c2w[:, :, 3], atol=1e-2)
    assert out.dataparser_scale == pytest.approx(1 / s)
    assert [p.name for p in out.mask_filenames] == [f"{i:03d}.png" for i in range(n)]
    assert out.splits["test"] == [1, 2] and out.splits["train"] == list(range(n))


def test_sdfstudio_meta_data(tmp_path: Path) -> None:
    n = 4
    c2w = _ring(n, radius=2.5, seed=5)
    frames = []
    for i in range(n):
        _write_png(tmp_path / f"{i:06d}_rgb.png", 32, 24)
        np.save(tmp_path / f"{i:06d}_depth.npy", np.ones((24, 32), np.float32))
        np.save(tmp_path / f"{i:06d}_normal.npy", np.full((3, 24, 32), 0.5, np.float32))
        m = np.eye(4)
        m[:3] = c2w[i]
        frames.append({
            "rgb_path": f"{i:06d}_rgb.png", "camtoworld": m.tolist(),
            "intrinsics": [[30.0, 0, 16.0, 0], [0, 31.0, 12.0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
            "mono_depth_path": f"{i:06d}_depth.npy", "mono_normal_path": f"{i:06d}_normal.npy",
        })
    meta = {"camera_model": "OPENCV", "height": 24, "width": 32, "has_mono_prior": True,
            "scene_box": {"aabb": [[-2, -2, -2], [2, 2, 2]], "near": 0.5, "far": 4.5, "radius": 2.0},
            "worldtogt": np.eye(4).tolist(), "frames": frames}
    (tmp_path / "meta_data.json").write_text(json.dumps(meta))
    assert isinstance(detect_format(tmp_path), MonoSDFParserConfig)
    out = AutoParserConfig().load(tmp_path)
    assert out.dataparser_scale == pytest.approx(0.5)
    np.testing.assert_allclose(out.cameras.camera_to_worlds[:, :, 3].numpy(), c2w[:, :, 3] * 0.5, atol=1e-5)
    assert out.near == pytest.approx(0.25) and out.far == pytest.approx(2.25)
    assert float(out.cameras.fx[0]) == 30.0 and len(out.normal_filenames) == n and out.depth_is_relative


def test_objectsdf_layouts_carry_instance_masks(tmp_path: Path) -> None:
    """ObjectSDF++'s layout (NNNNNN_rgb.png, cameras.npz, segs/NNNNNN_segs.png, instance_mapping.txt)
    and sdfstudio's meta_data.json with a per-frame instance_path give instance_filenames; a segs/
    folder that misses a frame is a one-line error."""
    from data.instances import instance_labels

    n = 3
    c2w = _ring(n, radius=2.5, seed=7)
    K = np.array([[30.0, 0.0, 16.0], [0.0, 30.0, 12.0], [0.0, 0.0, 1.0]])
    root = tmp_path / "scan1"
    npz = {}
    for i in range(n):
        R = c2w[i, :, :3].T
        P = np.eye(4)
        P[:3] = K @ np.c_[R, -R @ c2w[i, :, 3]]
        npz[f"world_mat_{i}"], npz[f"scale_mat_{i}"] = P, np.eye(4)
        _write_png(root / f"{i:06d}_rgb.png", 32, 24)
        (root / "segs").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 32), 1000 + i, np.uint16)).save(root / "segs" / f"{i:06d}_segs.png")
    np.savez(root / "cameras.npz", **npz)
    (root / "instance_mapping.txt").write_text("0,0,0\n1000,3,3001\n1001,3,3001\n1002,4,4001\n")
    out = AutoParserConfig().load(root)
    assert [p.name for p in out.instance_filenames] == [f"{i:06d}_segs.png" for i in range(n)]
    assert instance_labels(out.instance_filenames).raw_ids == (0, 3001, 4001)
    (root / "segs" / "000001_segs.png").unlink()
    with pytest.raises(DataError, match="segs/\\*_segs.png instance files exist for 2 of 3 frames"):
        AutoParserConfig().load(root)

    frames = []
    for i in range(n):
        m = np.eye(4)
        m[:3] = c2w[i]
        frames.append({"rgb_path": f"{i:06d}_rgb.png", "camtoworld": m.tolist(), "intrinsics": K.tolist(),
                       "instance_path": f"segs/{i:06d}_segs.png"})
    Image.fromarray(np.full((24, 32), 1001, np.uint16)).save(root / "segs" / "000001_segs.png")
    (root / "meta_data.json").write_text(json.dumps({"camera_model": "OPENCV", "has_mono_prior": False, "frames": frames}))
    out = AutoParserConfig().load(root)
    assert [p.name for p in out.instance_filenames] == [f"{i:06d}_segs.png" for i in range(n)]


# -- generic errors and registry -------------------------------------------------------------
def test_missing_empty_and_unknown_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as exc:
        AutoParserConfig().load(tmp_path / "no_such_scene")
    assert "no_such_scene" in str(exc.value)
    empty = tmp_path / "empty_scene"
    empty.mkdir()
    with pytest.raises(DataError, match="empty") as exc:
        AutoParserConfig().load(empty)
    assert "empty_scene" in str(exc.value)
    odd = tmp_path / "odd_scene"
    odd.mkdir()
    (odd / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown dataset format; looked for transforms.json") as exc:
        AutoParserConfig().load(odd)
    assert "odd_scene" in str(exc.value)
    for name, cls in PARSERS.items():
        if name != "auto":
            with pytest.raises(DataError, match="odd_scene"):
                cls().load(odd)


def test_registry_configs_work_with_tyro(capsys: pytest.CaptureFixture) -> None:
    import tyro

    assert list(PARSERS) == ["auto", "nerfstudio-data", "blender-data", "llff-data", "colmap", "dtu-data", "monosdf-data", "csl"]
    for name, cls in PARSERS.items():
        assert cls.name == name
        assert isinstance(tyro.cli(cls, args=[]), cls)
    with pytest.raises(SystemExit):
        tyro.cli(BlenderParserConfig, args=["--help"])
    help_text = capsys.readouterr().out
    assert "Colour the RGBA images are composited onto" in help_text and "num-train-views" in help_text
    assert math.isfinite(BlenderParserConfig().scene_bound)
