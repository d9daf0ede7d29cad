"""``ns-process-data images|video`` as a user runs it: renders of the synthetic scene to posed
datasets that ns-train reads, and one clear line (with no output folder left) for every bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.parsers.nerfstudio import NerfstudioParserConfig
from data.process.inputs import copy_images, list_input_images, select_frames
from data.process.output import camera_fields, opengl_c2w, staged_output
from data.process.poses import pose_errors, umeyama
from data.synthetic import SyntheticScene, SyntheticSceneConfig, make_cameras
from recon.cameras import Cameras
from recon.errors import DataError

SIZE = 256
"""SIFT finds 700-1000 features per render at 256 px (about 250 at 64 px, too few to register)."""
NUM_VIEWS = 40
MAX_ROTATION_DEG = 2.0
MAX_POSITION = 0.03
"""Pose thresholds. Measured on the 40 renders: rotation error mean 0.15, max 0.54 degrees;
camera-centre error mean 0.26 %, max 0.71 % of the capture's size (RMS camera distance from the
centroid)."""
TRAIN_STEPS = 400
PSNR_THRESHOLD = 18.0
"""nerf-hash-small, 400 steps on images_2 (128 px), PSNR on the 5 held-out frames (every 8th).
Measured 19.84 dB on the processed dataset and 20.38 dB with the same images and the renderer's
true poses and intrinsics; predicting the mean training colour scores 9.7 dB, the mean training
image 13.8 dB."""


class NoiseTexturedScene(SyntheticScene):
    """The synthetic scene with its albedo modulated by smooth 3D value noise (3 cm cells).

    The built-in textures are checkers and stripes: every corner looks like every other, SIFT's
    ratio test rejects such matches, and only 2 of 52 renders registered (measured). Noise fixed
    to the surface gives each spot its own look, as real surfaces do."""

    def __init__(self, config: SyntheticSceneConfig):
        super().__init__(config)
        self.lo, self.hi = torch.tensor([-1.2, -1.2, -0.7]), torch.tensor([1.2, 1.2, 0.5])
        cells = ((self.hi - self.lo) / 0.03).ceil().long() + 1
        generator = torch.Generator().manual_seed(1)
        self.noise = torch.rand(1, 1, *cells.flip(0).tolist(), generator=generator)

    def color(self, points, normals=None, instances=None):
        q = (points - self.lo) / (self.hi - self.lo) * 2 - 1
        value = torch.nn.functional.grid_sample(self.noise, q.reshape(1, -1, 1, 1, 3), align_corners=True).reshape(-1, 1)
        return (super().color(points, normals, instances) * (0.45 + 0.8 * value)).clamp(0, 1)


def run_cli(module: str, *args, threads: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def process(*args) -> subprocess.CompletedProcess:
    return run_cli("data.process.cli", *args)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_no_output(output_dir: Path) -> None:
    """Neither the output folder nor a temporary sibling of it exists."""
    assert not output_dir.exists()
    if output_dir.parent.exists():
        assert not [p for p in output_dir.parent.iterdir() if p.name.startswith(f".{output_dir.name}.")]


@pytest.fixture(scope="module")
def renders(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """Renders [N, H, W, 4] uint8 (RGBA, straight alpha) and true camera-to-worlds [N, 3, 4]
    (OpenCV axes) of NUM_VIEWS views around the noise-textured scene."""
    config = SyntheticSceneConfig(width=SIZE, height=SIZE, num_train_views=NUM_VIEWS - 4, num_test_views=4, supersample=1)
    cams = make_cameras(config)
    cameras = Cameras.cat([cams["train"], cams["test"]])
    out = NoiseTexturedScene(config).render(cameras)
    rgba = torch.cat([out["rgb"], out["alpha"][..., None]], -1)
    return (rgba.clamp(0, 1) * 255 + 0.5).byte().numpy(), cameras.camera_to_worlds.double().numpy()


def on_white(rgba: np.ndarray) -> np.ndarray:
    """[..., 4] uint8 RGBA composited onto white, [..., 3] uint8: what a camera would record."""
    alpha = rgba[..., 3:].astype(np.float64) / 255
    return (rgba[..., :3] * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(renders, tmp_path_factory) -> Path:
    """The renders as a folder of photos named IMG_1.png .. IMG_40.png (natural order matters), and
    two photos of noise that cannot register (noise_00.png, noise_01.png, sorted last). The renders
    keep their alpha, so that nerf-hash-small knows the background colour (white, the parser's
    default); COLMAP reads them as grey images."""
    folder = tmp_path_factory.mktemp("capture") / "photos"
    folder.mkdir()
    for i, image in enumerate(renders[0]):
        Image.fromarray(image).save(folder / f"IMG_{i + 1}.png")
    _noise_images(folder, 2)
    return folder


@pytest.fixture(scope="module")
def processed(photos) -> tuple[Path, subprocess.CompletedProcess]:
    out = photos.parent / "dataset"
    return out, process("images", "--data", photos, "--output-dir", out)


def _colmap_c2w(model: Path) -> dict[str, np.ndarray]:
    """Image name -> camera-to-world [3, 4] (OpenCV axes) of a COLMAP model."""
    import pycolmap

    rec = pycolmap.Reconstruction(model)
    out = {}
    for image in rec.images.values():
        w2c = image.cam_from_world().matrix()
        out[image.name] = np.concatenate([w2c[:, :3].T, -w2c[:, :3].T @ w2c[:, 3:]], 1)
    return out


@pytest.mark.slow
def test_images_recover_the_poses(processed, renders):
    """All 40 renders register and the two noise photos are named as not registered; after a
    similarity alignment the poses are within MAX_ROTATION_DEG and MAX_POSITION of the truth;
    recon's nerfstudio parser reads the dataset back with exactly the COLMAP model's poses,
    intrinsics and distortion; images_2/_4/_8 hold the downscaled images."""
    out, proc = processed
    assert proc.returncode == 0, proc.stderr
    assert f"{NUM_VIEWS} of {NUM_VIEWS + 2} images registered" in proc.stderr
    assert "not registered (left out of transforms.json): noise_00.png, noise_01.png" in proc.stderr
    for stage in ("inputs", "features", "matching", "mapping", "output"):
        assert f"{stage} " in proc.stderr
    assert not list(out.parent.glob(".dataset.*"))

    parsed = NerfstudioParserConfig().load(out)
    assert [p.name for p in parsed.image_filenames] == [f"frame_{i:05d}.png" for i in range(1, NUM_VIEWS + 1)]
    c2w = parsed.cameras.camera_to_worlds.double().numpy()
    errors = pose_errors(c2w, renders[1])
    assert errors.rotation_deg.max() < MAX_ROTATION_DEG and errors.position.max() < MAX_POSITION, (
        errors.rotation_deg.mean(), errors.rotation_deg.max(), errors.position.mean(), errors.position.max())

    colmap = _colmap_c2w(out / "colmap" / "sparse" / "0")
    same = pose_errors(c2w, np.stack([colmap[p.name] for p in parsed.image_filenames]))
    assert same.rotation_deg.max() < 1e-4 and same.position.max() < 1e-6
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["camera_model"] == "SIMPLE_RADIAL" and meta["ply_file_path"] == "sparse_pc.ply"
    assert torch.allclose(parsed.cameras.fx, torch.tensor(meta["fl_x"], dtype=parsed.cameras.fx.dtype))
    # the renderer's focal length: 128 / tan(22.5 deg) = 309.02 px
    assert abs(meta["fl_x"] - SIZE / 2 / math.tan(math.radians(22.5))) < 0.01 * meta["fl_x"]
    assert parsed.points3d is not None and len(parsed.points3d) > 500

    for factor in (2, 4, 8):
        with Image.open(out / f"images_{factor}" / "frame_00001.png") as small:
            assert small.size == (SIZE // factor, SIZE // factor)
    assert not (out / "colmap" / "work").exists()


@pytest.mark.slow
def test_nerf_hash_small_trains_on_the_result(processed, tmp_path):
    """``ns-train nerf-hash-small`` reads the processed folder as it is and reaches PSNR_THRESHOLD."""
    out, proc = processed
    assert proc.returncode == 0, proc.stderr
    steps = str(TRAIN_STEPS)
    train = run_cli(
        "recon.cli.train", "nerf-hash-small", "--data", out, "--output-dir", tmp_path, "--timestamp", "t",
        "--max-num-iterations", steps, "--steps-per-save", "0", "--steps-per-eval-image", "0", "--device", "cpu",
        "--logging.no-progress-bar", "--logging.no-tensorboard", "--optimizers.fields.scheduler.max-steps", steps,
        "--optimizers.proposal-networks.scheduler.max-steps", steps, "nerfstudio-data", "--downscale-factor", "2",
        threads=1,  # tiny tensors: one thread is as fast, and far faster on a busy machine
    )
    assert train.returncode == 0, train.stderr
    summary = json.loads((tmp_path / "dataset" / "nerf-hash-small" / "t" / "eval_summary.json").read_text())
    assert summary["num_images"] == 5 and summary["psnr"] > PSNR_THRESHOLD, summary


@pytest.mark.slow
def test_video_skips_blurry_frames_and_recovers_the_poses(renders, tmp_path):
    """A clip of the renders ordered by azimuth, three frames each (two sharp, one blurred), except
    three views shown only blurred: with --num-frames-target 40 every part keeps a sharp frame,
    the three blurred-only parts are skipped, and the 37 frames register with accurate poses."""
    import cv2

    from recon.export.video import write_video

    images, c2w = on_white(renders[0]), renders[1]
    order = np.argsort(np.arctan2(c2w[:, 1, 3], c2w[:, 0, 3]))
    blurred_only = set(order[[5, 18, 31]].tolist())
    blur = lambda im: cv2.GaussianBlur(im, (0, 0), 3.0)  # noqa: E731
    frames = []
    for i in order:
        frames += [blur(images[i])] * 3 if i in blurred_only else [images[i], images[i], blur(images[i])]
    clip = write_video(frames, tmp_path / "orbit.mp4", fps=10, quality=10)
    out = tmp_path / "from_video"
    proc = process("video", "--data", clip, "--output-dir", out, "--num-frames-target", NUM_VIEWS)
    assert proc.returncode == 0, proc.stderr
    assert f"video: {3 * NUM_VIEWS} frames; took the sharpest of each of {NUM_VIEWS} equal parts, skipped 3" in proc.stderr
    assert "37 of 37 images registered" in proc.stderr
    kept = [i for i in order if i not in blurred_only]
    parsed = NerfstudioParserConfig().load(out)
    errors = pose_errors(parsed.cameras.camera_to_worlds.double().numpy(), c2w[kept])
    assert errors.rotation_deg.max() < MAX_ROTATION_DEG and errors.position.max() < MAX_POSITION, (
        errors.rotation_deg.max(), errors.position.max())


@pytest.mark.slow
def test_ctrl_c_during_structure_from_motion_leaves_nothing(photos, tmp_path):
    """Ctrl-C while COLMAP works: it is cancelled (the process exits promptly with 130, without
    COLMAP aborting the interpreter) and neither the output folder nor its temporary sibling stays."""
    out = tmp_path / "dataset"
    # As from a terminal: SIGINT at its default disposition. A child inherits an ignored SIGINT (a
    # test run started as a background job of a non-interactive shell has one), and Python then
    # installs no KeyboardInterrupt handler: the Ctrl-C below would be dropped.
    proc = subprocess.Popen([sys.executable, "-m", "data.process.cli", "images", "--data", str(photos), "--output-dir", str(out)],
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".dataset.tmp-*/colmap/work/database.db")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into feature extraction
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().endswith("interrupted"), err
    assert "Traceback" not in err and "Aborted" not in err and "terminate" not in err
    assert_no_output(out)


def _noise_images(folder: Path, count: int, start: int = 0) -> None:
    rng = np.random.default_rng(start)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"noise_{i:02d}.png")


def _bad_capture(tmp_path: Path, kind: str, renders) -> tuple[list, tuple[str, ...]]:
    """Command-line arguments and expected words of the error for one kind of bad input."""
    photos = tmp_path / "in"
    photos.mkdir()
    if kind == "empty folder":
        return ["images", "--data", photos], ("no images found",)
    if kind == "missing folder":
        return ["images", "--data", tmp_path / "nowhere"], ("input folder does not exist",)
    if kind == "one image":
        Image.fromarray(renders[0][0]).save(photos / "a.png")
        return ["images", "--data", photos], ("found only 1 image",)
    if kind == "unreadable image":
        for i in range(3):
            Image.fromarray(renders[0][i]).save(photos / f"img_{i}.png")
        (photos / "img_1.png").write_bytes(b"not a png")
        return ["images", "--data", photos], ("img_1.png", "cannot read image")
    if kind == "mixed sizes":
        Image.fromarray(renders[0][0]).save(photos / "a.png")
        Image.fromarray(renders[0][1][:200]).save(photos / "b.png")
        return ["images", "--data", photos], ("b.png", "size 256x200 differs", "--no-single-camera")
    if kind == "video without frames":
        import imageio_ffmpeg

        clip = photos / "sound.mp4"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc", "-t", "1", str(clip)], check=True)
        return ["video", "--data", clip], ("sound.mp4", "no video stream")
    if kind == "not a video":
        (photos / "clip.mp4").write_text("hello")
        return ["video", "--data", photos / "clip.mp4"], ("clip.mp4", "cannot read video")
    if kind == "nothing registers":
        _noise_images(photos, 6)
        return ["images", "--data", photos], ("could not reconstruct any of the 6 images", "too little overlap or texture")
    if kind == "fewer than half register":
        c2w = renders[1]
        for i in np.argsort(np.arctan2(c2w[:, 1, 3], c2w[:, 0, 3]))[:8]:  # neighbours in azimuth: these register
            Image.fromarray(on_white(renders[0][i])).save(photos / f"view_{i}.png")
        _noise_images(photos, 10)
        return ["images", "--data", photos], ("of 18 images registered", "noise_00.png", "too little overlap")
    raise AssertionError(kind)


BAD_INPUTS = ["empty folder", "missing folder", "one image", "unreadable image", "mixed sizes", "video without frames",
              "not a video", "nothing registers", "fewer than half register"]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_inputs_give_one_line_and_no_output(kind, renders, tmp_path):
    args, needles = _bad_capture(tmp_path, kind, renders)
    out = tmp_path / "new" / "dataset"  # its parent does not exist either: neither may be left behind
    assert_one_line_error(process(*args, "--output-dir", out), *needles)
    assert_no_output(out.parent)


def test_existing_output_is_kept_without_overwrite(photos, tmp_path):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(process("images", "--data", photos, "--output-dir", out), "exists and is not empty", "--overwrite")
    assert_one_line_error(process("images", "--data", photos, "--output-dir", photos, "--overwrite"), "must not be or contain the input")
    assert (out / "keep.txt").read_text() == "mine"


def test_staged_output_removes_everything_on_failure_and_ctrl_c(tmp_path):
    for exc in (DataError("bad"), KeyboardInterrupt()):
        out = tmp_path / "a" / "b" / "dataset"
        with pytest.raises(type(exc)):
            with staged_output(out) as tmp:
                (tmp / "images").mkdir()
                (tmp / "images" / "x.png").write_bytes(b"x")
                raise exc
        assert list(tmp_path.iterdir()) == []
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_output(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"] and [p.name for p in out.iterdir()] == ["new.txt"]


def test_copy_turns_exif_rotated_photos_upright(tmp_path):
    """A phone's portrait photo: landscape pixels with EXIF orientation 6 (rotate 90 degrees
    clockwise to view). The copy is portrait, upright, and without the tag."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:10, :10] = 255  # a white block at the stored image's top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(pixels).save(src / "IMG_10.jpg", exif=exif, quality=100)
    Image.fromarray(pixels).save(src / "IMG_9.jpg", quality=100)
    names = copy_images(list_input_images(src), tmp_path / "images", same_size=False)
    assert names == ["frame_00001.jpg", "frame_00002.jpg"]  # natural order: IMG_9 before IMG_10
    with Image.open(tmp_path / "images" / "frame_00002.jpg") as upright:
        assert upright.size == (40, 60) and upright.getexif().get(0x0112, 1) == 1
        arr = np.asarray(upright.convert("L"))
    # rotating 90 degrees clockwise moves the top-left corner to the top-right
    assert arr[:10, -10:].mean() > 200 and arr[:10, :10].mean() < 50
    assert (tmp_path / "images" / "frame_00001.jpg").read_bytes() == (src / "IMG_9.jpg").read_bytes()


def test_select_frames_takes_the_sharpest_of_each_part_and_skips_blurry_parts():
    scores = np.array([5.0, 9.0, 1.0, 1.0, 8.0, 7.0, 1.0, 1.0, 2.0, 6.0, 9.0, 8.0])
    keep, blurry, threshold = select_frames(scores, 6, 0.5)
    # parts of two frames: [5 9] [1 1] [8 7] [1 1] [2 6] [9 8]; median 5.5, threshold 2.75
    assert keep == [1, 4, 9, 10] and blurry == 2 and threshold == pytest.approx(2.75)
    assert select_frames(scores, 100, 0.0)[0] == list(range(12))


def test_umeyama_and_pose_errors_undo_a_similarity():
    rng = np.random.default_rng(0)
    c2w = np.zeros((10, 3, 4))
    for i in range(10):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        c2w[i, :, :3] = q * np.sign(np.linalg.det(q))
        c2w[i, :, 3] = rng.normal(size=3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R = q * np.sign(np.linalg.det(q))
    moved = np.concatenate([R @ c2w[:, :, :3], (2.5 * c2w[:, :, 3] @ R.T + [1.0, -2.0, 0.5])[..., None]], -1)
    s, R_est, t = umeyama(c2w[:, :, 3], moved[:, :, 3])
    assert s == pytest.approx(2.5) and np.allclose(R_est, R) and np.allclose(t, [1.0, -2.0, 0.5])
    errors = pose_errors(c2w, moved)
    assert errors.rotation_deg.max() < 1e-5 and errors.position.max() < 1e-9
    moved[0, :, :3] = moved[0, :, :3] @ np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # 90 degrees about x
    assert pose_errors(c2w, moved).rotation_deg[0] == pytest.approx(90.0, abs=1e-6)


def test_fisheye_camera_fields_read_back_through_the_nerfstudio_parser(tmp_path):
    """An OPENCV_FISHEYE camera is written with k1..k4 (no p1/p2), which the parser maps onto recon's
    fisheye model, so a fisheye capture from ns-process-data trains without editing transforms.json."""
    from recon.cameras import FISHEYE

    fields = camera_fields("OPENCV_FISHEYE", [100.0, 101.0, 64.0, 48.0, 0.05, -0.01, 0.002, -0.0003], 128, 96)
    assert fields["camera_model"] == "OPENCV_FISHEYE" and (fields["k3"], fields["k4"]) == (0.002, -0.0003)
    images = tmp_path / "images"
    images.mkdir()
    frames = []
    for i in range(3):
        Image.new("RGB", (128, 96), (i * 40, 80, 120)).save(images / f"f{i}.png")
        c2w = np.eye(4)
        c2w[0, 3] = 0.3 * i
        frames.append({"file_path": f"images/f{i}.png", "transform_matrix": c2w.tolist()})
    (tmp_path / "transforms.json").write_text(json.dumps({**fields, "frames": frames}))
    cams = NerfstudioParserConfig().load(tmp_path).cameras
    assert bool((cams.camera_model == FISHEYE).all())
    assert torch.allclose(cams.distortion[0, :4], torch.tensor([0.05, -0.01, 0.002, -0.0003]))


def test_camera_fields_and_opengl_poses():
    assert camera_fields("SIMPLE_RADIAL", [300.0, 64.0, 48.0, -0.1], 128, 96) == {
        "camera_model": "SIMPLE_RADIAL", "fl_x": 300.0, "fl_y": 300.0, "cx": 64.0, "cy": 48.0, "w": 128, "h": 96,
        "k1": -0.1, "k2": 0.0, "p1": 0.0, "p2": 0.0,
    }
    opencv = camera_fields("OPENCV", [300.0, 310.0, 64.0, 48.0, -0.1, 0.02, 0.001, -0.002], 128, 96)
    assert (opencv["fl_y"], opencv["k2"], opencv["p1"], opencv["p2"]) == (310.0, 0.02, 0.001, -0.002)
    # A camera at (0, 0, 5) looking at the origin: COLMAP's world-to-camera has +z forward.
    w2c = np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 5]])
    c2w = opengl_c2w(w2c)
    assert np.allclose(c2w[:3, 3], [0, 0, 5]) and np.allclose(c2w[:3, 2], [0, 0, 1]) and np.allclose(c2w[:3, 1], [0, 1, 0])
