"""The live viewer as a browser sees it: viser's websocket protocol on a free loopback port."""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recon.camera_paths import load_camera_path_json
from recon.engine.trainer import Trainer
from recon.rotations import matrix_to_quaternion
from viewer.render import output_image
from viewer.server import ViewerSettings
from viewer.training import attach_viewer


@pytest.fixture(scope="module")
def trained_run(scene, tiny_config, tmp_path_factory) -> Path:
    """config.yml of a tiny vanilla-nerf run trained for 60 steps."""
    torch.set_num_threads(1)
    return Trainer(tiny_config(scene, tmp_path_factory.mktemp("runs"), 60)).train() / "config.yml"


def view_of(cameras, i: int, width: int = 64, height: int = 48) -> dict:
    """The browser camera of training camera i (viser's pose convention is OpenCV, like recon's)."""
    c2w = cameras.camera_to_worlds[i]
    fov = 2 * math.atan(0.5 * float(cameras.height[i]) / float(cameras.fy[i]))
    return {"wxyz": matrix_to_quaternion(c2w[:, :3].double()).tolist(), "position": c2w[:, 3].tolist(), "width": width, "height": height, "fov": fov}


def initial_camera(client) -> dict[str, np.ndarray]:
    """The camera pose the server set up for a browser before it moves (viser's initial camera):
    position, look_at and up [3] in the world frame, and the vertical fov."""
    fields = {"SetCameraPositionMessage": ("position", "position"), "SetCameraLookAtMessage": ("look_at", "look_at"),
              "SetCameraUpDirectionMessage": ("position", "up"), "SetCameraFovMessage": ("fov", "fov")}  # fmt: skip
    out = {}
    for kind, (field, name) in fields.items():
        out[name] = np.asarray(client.wait_for(lambda m: m["type"] == kind and m.get("initial"), timeout=10)[field], dtype=np.float64)
    return out


def look_at_rotation(position: np.ndarray, look_at: np.ndarray, up: np.ndarray) -> np.ndarray:
    """[3, 3] camera-to-world rotation (OpenCV axes: x right, y down, z forward) of a camera at
    ``position`` looking at ``look_at`` with ``up`` towards the top of the picture."""
    z = (look_at - position) / np.linalg.norm(look_at - position)
    y = -(up - (up @ z) * z)
    y /= np.linalg.norm(y)
    return np.stack([np.cross(y, z), y, z], 1)


def in_view(start: dict[str, np.ndarray], points: np.ndarray) -> np.ndarray:
    """[P] whether each of ``points`` [P, 3] lies inside the cone of the initial camera's vertical
    field of view (inside the picture whatever the browser's aspect, as long as it is landscape)."""
    forward = (start["look_at"] - start["position"]) / np.linalg.norm(start["look_at"] - start["position"])
    rays = points - start["position"]
    return np.arccos(np.clip(rays @ forward / np.linalg.norm(rays, axis=1), -1, 1)) < start["fov"] / 2


def decode(message: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(message["rgb_data"])).convert("RGB"))


def next_frame(client, size: tuple[int, int], after: int, timeout: float = 30.0) -> np.ndarray:
    """The first rendered frame of ``size`` (W, H) received after message index ``after``."""
    m = client.wait_for(
        lambda m: m["type"] == "BackgroundImageMessage" and m["rgb_data"] and Image.open(io.BytesIO(m["rgb_data"])).size == size,
        timeout=timeout, after=after,
    )  # fmt: skip
    return decode(m)


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def port_is_free(port: int) -> bool:
    """Nothing listens on the port any more (a connection is refused)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def set_value(client, label: str, value) -> None:
    client.send({"type": "GuiUpdateMessage", "uuid": client.gui_uuid(label), "updates": {"value": value}})


def test_live_viewer_beside_training(scene, tiny_config, tmp_path, viser_client, free_port, one_thread):
    threads_before = set(threading.enumerate())
    trainer = Trainer(tiny_config(scene, tmp_path, 10**7))
    viewer = attach_viewer(trainer, ViewerSettings(port=free_port, max_res=64, moving_res=16, rest_delay=0.15, refresh_interval=0.3))

    def train():
        try:
            trainer.train()
        except KeyboardInterrupt:
            pass

    thread = threading.Thread(target=train)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read(4096).lower()

        client = viser_client(free_port)
        cameras = trainer.outputs.split("train").cameras
        client.send_camera(**view_of(cameras, 0))
        moving = next_frame(client, (16, 12), after=0)  # low resolution first ...
        rest = next_frame(client, (64, 48), after=0)  # ... the full size once the camera rests
        assert moving.shape == (12, 16, 3)
        assert rest.std() > 2.0, "the frame is blank"

        # A click on a training camera's frustum moves the browser's camera there.
        n = len(client.drain())
        client.send({"type": "SceneNodeClickMessage", "name": "/cameras/0003", "instance_index": None, "ray_origin": [0.0, 0.0, 0.0],
                     "ray_direction": [0.0, 0.0, 1.0], "screen_pos": [0.5, 0.5], "modifier": None, "owner": ""})
        moved = client.wait_for(lambda m: m["type"] == "SetCameraPositionMessage", after=n)
        assert np.allclose(moved["position"], cameras.camera_to_worlds[3, :, 3].numpy(), atol=1e-4)

        # Pause: the step count stops; the viewer keeps rendering, and what it sends is the model's render.
        client.click("Pause training")
        wait_until(lambda: viewer.training.held_step is not None)  # the step under way when clicked finishes first
        paused_step = trainer.step
        time.sleep(0.7)
        assert trainer.step == paused_step > 0
        n = len(client.drain())
        client.send_camera(**view_of(cameras, 3))
        frame = next_frame(client, (64, 48), after=n)
        with trainer.lock:
            trainer.model.eval()
            from viewer.render import ViewCamera, to_cameras

            v = view_of(cameras, 3)
            direct = trainer.model.render(to_cameras(ViewCamera(tuple(v["wxyz"]), tuple(v["position"]), v["fov"], 64, 48), 64))
            trainer.model.train()
        expected = output_image(direct, "rgb")
        assert np.abs(frame.astype(float) - expected.astype(float)).mean() < 6.0  # JPEG round trip

        # Another output, colour-mapped: a different picture of the same view.
        n = len(client.drain())
        set_value(client, "Output", "depth")
        depth_frame = next_frame(client, (64, 48), after=n)
        assert np.abs(depth_frame.astype(float) - frame.astype(float)).mean() > 10.0

        # "Save checkpoint now" while paused writes the paused step's checkpoint.
        client.click("Save checkpoint now")
        wait_until(lambda: (trainer.checkpoint_dir / f"step-{paused_step:09d}.safetensors").is_file())

        client.click("Pause training")  # resume
        wait_until(lambda: trainer.step > paused_step + 5)

        # A browser that goes away does not stop training.
        client.close()
        step = trainer.step
        wait_until(lambda: trainer.step > step + 5)
    finally:
        trainer.request_stop()  # what Ctrl-C does
        thread.join(timeout=60)
        viewer.stop()
    assert not thread.is_alive()
    assert port_is_free(free_port)
    wait_until(lambda: not (set(threading.enumerate()) - threads_before), timeout=10)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_ns_train_viewer_flag(scene, tmp_path, viser_client, free_port):
    """``ns-train --viewer`` prints the URL, serves frames, and Ctrl-C leaves no server or process behind."""
    cmd = [
        sys.executable, "-m", "recon.cli.train", "vanilla-nerf", "--data", str(scene), "--output-dir", str(tmp_path), "--timestamp", "t",
        "--max-num-iterations", "1000000", "--steps-per-eval-image", "0", "--device", "cpu", "--logging.no-progress-bar",
        "--model.hidden-dim", "32", "--model.num-layers", "2", "--model.skips", "--model.num-coarse-samples", "8",
        "--model.num-fine-samples", "8", "--datamanager.train-num-rays-per-batch", "128",
        "--viewer", "--viewer-port", str(free_port), "--viewer-max-res", "40",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(f"viewer at http://localhost:{free_port}" in line for line in lines), timeout=60)
        client = viser_client(free_port)
        client.send_camera(wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, -3.0), width=80, height=60)
        frame = next_frame(client, (40, 30), after=0)
        assert frame.shape == (30, 40, 3)
        # The step read-out: training has started (so Ctrl-C now is the trainer's, which saves).
        client.wait_for(lambda m: m["type"] == "GuiUpdateMessage" and re.search(r"step [1-9]\d* /", str(m["updates"].get("_markdown", ""))))
        children = _children(proc.pid)
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(timeout=5)
    assert code == 130, "".join(lines)[-2000:]
    assert any("checkpoint written" in line for line in lines), "".join(lines)[-3000:]
    assert port_is_free(free_port)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]


def test_ns_viewer_run_crop_and_camera_path(trained_run, tmp_path, viser_client, free_port, one_thread):
    """``ns-viewer --load-config``: frames of the trained model; the crop box hides what lies outside it
    and is what ``ns-export --crop-from-viewer`` uses; a recorded camera path renders with ns-render."""
    from recon.cli.export import PointcloudExport
    from recon.cli.render import CameraPathRender
    from recon.export.crop import read_viewer_crop
    from viewer.cli import ViewerCommand

    viewer = ViewerCommand(load_config=trained_run, viewer_port=free_port, max_res=48, device="cpu").open()
    run_dir = trained_run.parent
    try:
        client = viser_client(free_port)
        from recon.engine.run import load_run

        run = load_run(trained_run, "cpu")
        cameras = run.outputs.split("train").cameras

        # The browser's camera starts at the first training camera, orbiting a point on its axis.
        start = initial_camera(client)
        c2w = cameras.camera_to_worlds[0].double().numpy()
        assert np.allclose(start["position"], c2w[:, 3], atol=1e-6)
        assert np.allclose(look_at_rotation(start["position"], start["look_at"], start["up"]), c2w[:, :3], atol=1e-6)
        assert start["fov"] == pytest.approx(2 * math.atan(0.5 * float(cameras.height[0]) / float(cameras.fy[0])))
        centre = run.outputs.scene_box.aabb.double().mean(0).numpy()
        assert np.linalg.norm(start["look_at"] - centre) <= np.linalg.norm(c2w[:, 3] - centre)

        client.send_camera(**view_of(cameras, 0))
        full = next_frame(client, (48, 36), after=0)
        assert full.std() > 2.0

        # Crop to a tiny box in a corner of the scene: only the background is left.
        n = len(client.drain())
        set_value(client, "Crop center", (0.9, 0.9, 0.9))
        set_value(client, "Crop size", (0.05, 0.05, 0.05))
        set_value(client, "Crop viewport", True)
        wait_until(lambda: (run_dir / "viewer_crop.json").is_file() and json.loads((run_dir / "viewer_crop.json").read_text())["enabled"])
        lo, hi = read_viewer_crop(run_dir)
        assert torch.allclose(lo, torch.full((3,), 0.875)) and torch.allclose(hi, torch.full((3,), 0.925))
        n = len(client.drain())
        client.send_camera(**view_of(cameras, 0))
        # A frame whose render began before the crop took effect may still arrive first (a loaded
        # machine): wait for the cropped one (a viewer that never crops times out here).
        message = client.wait_for(
            lambda m: m["type"] == "BackgroundImageMessage" and m["rgb_data"] and Image.open(io.BytesIO(m["rgb_data"])).size == (48, 36)
            and decode(m).std() < 3.0, timeout=30.0, after=n,
        )  # fmt: skip
        cropped = decode(message)
        assert np.abs(cropped.astype(float) - full.astype(float)).mean() > 5.0

        # Camera path: two keyframes, 0.5 s at 4 fps, 16 px high.
        for count, i in enumerate((2, 5), 1):
            n = len(client.drain())
            client.send_camera(**view_of(cameras, i))
            next_frame(client, (48, 36), after=n)  # a frame from this camera: the server has it (a fixed sleep raced under load)
            client.click("Add keyframe")  # the server reads the camera when it handles the click: wait for that
            client.wait_for(lambda m: m["type"] == "GuiUpdateMessage" and re.search(rf"Keyframes: {count}\b", str(m["updates"].get("_markdown", ""))))
        set_value(client, "Render height", 16)
        set_value(client, "Duration (s)", 0.5)
        set_value(client, "FPS", 4.0)
        time.sleep(0.3)
        client.click("Save camera path")
        path_file = run_dir / "camera_paths" / "camera_path.json"
        wait_until(path_file.is_file)
    finally:
        viewer.stop()
    assert port_is_free(free_port)

    path = load_camera_path_json(path_file)
    assert len(path.cameras) == 2 and int(path.cameras.height[0]) == 16 and path.fps == 4.0
    assert torch.allclose(path.cameras.camera_to_worlds[0], cameras.camera_to_worlds[2], atol=1e-4), (path.cameras.camera_to_worlds, cameras.camera_to_worlds[[2, 5]])
    assert torch.allclose(path.cameras.camera_to_worlds[-1], cameras.camera_to_worlds[5], atol=1e-4)
    CameraPathRender(load_config=trained_run, camera_path_filename=path_file, output_path=tmp_path / "frames", device="cpu").run()
    frames = sorted((tmp_path / "frames").glob("*.png"))
    assert len(frames) == 2 and Image.open(frames[0]).size[1] == 16

    # ns-export --crop-from-viewer keeps only points inside the viewer's box (here: half the scene box).
    from recon.export.crop import write_viewer_crop

    lo, hi = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([1.0, 1.0, 0.0])
    write_viewer_crop(run_dir, lo, hi, enabled=True)
    common = dict(load_config=trained_run, device="cpu", accumulation_threshold=0.0, remove_outliers=False, num_points=2000)
    whole = PointcloudExport(output_dir=tmp_path / "all", **common).run()
    part = PointcloudExport(output_dir=tmp_path / "crop", crop_from_viewer=True, **common).run()
    import trimesh

    pts_all, pts_crop = (torch.as_tensor(np.asarray(trimesh.load(p).vertices), dtype=torch.float32) for p in (whole, part))
    T = run.outputs.dataparser_transform
    normalised = (pts_crop @ T[:, :3].T + T[:, 3]) * run.outputs.dataparser_scale  # inverse of transform_to_input
    assert 0 < len(pts_crop) < len(pts_all)
    assert bool(((normalised >= lo - 1e-4) & (normalised <= hi + 1e-4)).all())


SH_C0 = 0.28209479177387814
"""The degree-0 real spherical harmonic, 1 / (2 sqrt(pi)): a 3DGS file's f_dc is (colour - 0.5) / SH_C0."""


def write_ply(path: Path, columns: dict[str, np.ndarray]) -> None:
    """A binary little-endian PLY with one float property per column (in the given order)."""
    names = list(columns)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(columns[names[0]])}", *(f"property float {n}" for n in names), "end_header"]
    body = np.stack([np.asarray(columns[n], "<f4") for n in names], 1)
    path.write_bytes(("\n".join(header) + "\n").encode() + body.tobytes())


def test_ns_viewer_mesh_and_splat_files(tmp_path, viser_client, free_port):
    """``ns-viewer --mesh --splat``: the mesh's triangles and the splat file's Gaussians (centres,
    colours, opacities and covariances, in the file's own frame) reach the browser, whose camera
    starts outside both, looking at them, with both in view."""
    import trimesh
    from scipy.spatial.transform import Rotation

    from viewer.cli import ViewerCommand

    mesh_path = tmp_path / "box.ply"
    trimesh.creation.box().export(mesh_path)
    n = 60
    rng = np.random.default_rng(0)
    means = (rng.normal(size=(n, 3)) * 0.5).astype(np.float32)
    log_scales = np.log(rng.uniform(0.05, 0.4, size=(n, 3)))  # anisotropic: a wrong rotation changes the covariance
    wxyz = rng.normal(size=(n, 4)) * 3.0  # unnormalised, as files carry them
    logits = rng.normal(size=n) * 2.0
    f_dc = rng.normal(size=(n, 3)) * 0.6  # some colours leave [0, 1] and are clipped
    columns = {"x": means[:, 0], "y": means[:, 1], "z": means[:, 2], **{f"n{a}": np.zeros(n) for a in "xyz"},
               **{f"f_dc_{i}": f_dc[:, i] for i in range(3)}, "opacity": logits, **{f"scale_{i}": log_scales[:, i] for i in range(3)},
               **{f"rot_{i}": wxyz[:, i] for i in range(4)}}  # fmt: skip
    splat_path = tmp_path / "splat.ply"
    write_ply(splat_path, columns)
    # What the file means, from the 3DGS definitions (not from recon's reader).
    f32 = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in columns.items()}
    R = Rotation.from_quat(np.stack([f32["rot_1"], f32["rot_2"], f32["rot_3"], f32["rot_0"]], 1)).as_matrix()
    variances = np.exp(2 * np.stack([f32[f"scale_{i}"] for i in range(3)], 1))
    expected_cov = np.einsum("nij,nj,nkj->nik", R, variances, R)
    expected_rgb = np.clip(0.5 + SH_C0 * np.stack([f32[f"f_dc_{i}"] for i in range(3)], 1), 0, 1)
    expected_alpha = 1 / (1 + np.exp(-f32["opacity"]))

    viewer = ViewerCommand(mesh=mesh_path, splat=splat_path, viewer_port=free_port).open()
    try:
        client = viser_client(free_port)
        client.send_camera(wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, -3.0), width=64, height=48)
        glb = client.wait_for(lambda m: m["type"] == "GlbMessage")
        loaded = trimesh.load(io.BytesIO(glb["props"]["glb_data"]), file_type="glb", force="mesh")
        assert len(loaded.faces) == 12
        splats = client.wait_for(lambda m: m["type"] == "GaussianSplatsMessage" and m["name"] == "/splat")
        start = initial_camera(client)
        poses = [m for m in client.drain() if m.get("name") == "/splat" and m["type"] in ("SetPositionMessage", "SetOrientationMessage")]
    finally:
        viewer.stop()
    assert port_is_free(free_port)

    # viser's splat buffer, per Gaussian 32 bytes: centre (3 float32), 4 spare bytes, the covariance's
    # upper triangle xx xy xz yy yz zz (6 float16), colour and opacity (4 uint8).
    rows = np.asarray(splats["props"]["buffer"]).view(np.uint8).reshape(n, 32)
    # Shown in the file's own frame: no scale, and the node's pose (if sent at all) is the identity.
    assert splats["props"]["scale"] == 1.0
    assert all(np.allclose(m.get("position", (0, 0, 0)), 0) and np.allclose(m.get("wxyz", (1, 0, 0, 0)), (1, 0, 0, 0)) for m in poses), poses
    assert np.array_equal(rows[:, :12].copy().view("<f4"), means)
    cov = rows[:, 16:28].copy().view("<f2").astype(np.float64)
    triu = expected_cov[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    assert np.allclose(cov, triu, rtol=2e-3, atol=1e-4), np.abs(cov - triu).max()
    assert np.abs(rows[:, 28:31] - 255 * expected_rgb).max() <= 1.0 + 1e-6
    assert np.abs(rows[:, 31] - 255 * expected_alpha).max() <= 1.0 + 1e-6

    # The first view frames the box and the bulk of the splats from outside.
    assert np.all(np.abs(start["look_at"]) < 0.5) and np.linalg.norm(start["position"]) > 2.0
    assert in_view(start, np.asarray(trimesh.creation.box().vertices)).all()
    assert in_view(start, means.astype(np.float64)).mean() >= 0.95


def test_ns_viewer_convex_file(tmp_path, viser_client, free_port, one_thread):
    """``ns-viewer --convex``: a 3DCS PLY rendered by the server, in the file's frame, as the 3dcs
    model built from the file renders it; the first view frames the convexes."""
    from recon.export.convex_ply import write_convex_ply
    from viewer.cli import ViewerCommand, load_convexes
    from viewer.render import ViewCamera, to_cameras

    g = torch.Generator().manual_seed(0)
    n = 20
    centres = torch.rand(n, 1, 3, generator=g) * 2 + torch.tensor([10.0, -5.0, 3.0])  # far from the origin: the view must find them
    params = {"points": centres + 0.3 * torch.randn(n, 6, 3, generator=g), "delta": torch.full((n,), 2.0), "sigma": torch.full((n,), 0.0),
              "opacities": torch.full((n,), 3.0), "mask": torch.full((n,), 5.0), "sh0": torch.randn(n, 1, 3, generator=g), "shN": torch.zeros(n, 3, 3)}
    path = write_convex_ply(tmp_path / "convexes.ply", params, scaling_exponent=1.0, mask_threshold=0.01)
    viewer = ViewerCommand(convex=path, viewer_port=free_port, max_res=48, device="cpu").open()
    try:
        client = viser_client(free_port)
        start = initial_camera(client)
        assert in_view(start, centres[:, 0].numpy().astype(np.float64)).mean() >= 0.9
        wxyz = matrix_to_quaternion(torch.from_numpy(look_at_rotation(start["position"], start["look_at"], start["up"]))).tolist()
        client.send_camera(wxyz=wxyz, position=start["position"].tolist(), fov=float(start["fov"]), width=64, height=48)
        frame = next_frame(client, (48, 36), after=0)
    finally:
        viewer.stop()
    model = load_convexes(path, "cpu")
    assert model.num_primitives == n and torch.equal(model.params["points"], params["points"])
    camera = to_cameras(ViewCamera(tuple(wxyz), tuple(start["position"].tolist()), float(start["fov"]), 64, 48), 48)
    expected = output_image(model.render(camera), "rgb")
    luma = [np.asarray(Image.fromarray(im).convert("L"), dtype=np.float64) for im in (frame, expected)]  # JPEG halves the chroma
    assert luma[1].std() > 10.0 and np.corrcoef(luma[0].ravel(), luma[1].ravel())[0, 1] > 0.97


def test_run_without_cameras_opens_framing_its_scene_box(viser_client, free_port):
    """Cross-section runs have no camera to start at: the browser starts outside the scene box, seeing all of it."""
    from viewer.server import Viewer

    aabb = torch.tensor([[-0.5, -1.0, 0.0], [1.5, 1.0, 0.5]])
    viewer = Viewer(ViewerSettings(port=free_port), aabb=aabb).start()
    try:
        start = initial_camera(viser_client(free_port))
    finally:
        viewer.stop()
    corners = np.array([[x, y, z] for x in (-0.5, 1.5) for y in (-1.0, 1.0) for z in (0.0, 0.5)])
    assert np.allclose(start["look_at"], corners.mean(0)) and in_view(start, corners).all()
    assert np.linalg.norm(start["position"] - corners.mean(0)) > np.linalg.norm(corners[0] - corners.mean(0))


def test_ns_viewer_orex_run_draws_contours_and_slice(tiny_config, tmp_path, viser_client, free_port, one_thread):
    """``ns-viewer --load-config`` of an OReX run (cross-sections, no images): its "Cross-sections"
    panel sends the contours, frames arrive (the background: OReX renders no image, the panel's 3D
    objects are drawn over it) and "Show slice" sends the field's slice."""
    import trimesh

    from data.cross_sections import axis_planes, slice_mesh, write_csl
    from viewer.cli import ViewerCommand

    torus = trimesh.creation.torus(major_radius=0.5, minor_radius=0.2, major_sections=32, minor_sections=16)
    path = tmp_path / "torus.csl"
    write_csl(slice_mesh(torus, axis_planes(torus, axis=2, count=4)), path)
    run_dir = Trainer(tiny_config(path, tmp_path, 20, method="orex-small")).train()
    viewer = ViewerCommand(load_config=run_dir / "config.yml", viewer_port=free_port, max_res=48, device="cpu").open()
    try:
        client = viser_client(free_port)
        contours = client.wait_for(lambda m: m["type"] == "LineSegmentsMessage" and m["name"] == "/orex/contours", timeout=20)
        assert np.asarray(contours["props"]["points"]).size > 0
        start = initial_camera(client)
        client.send_camera(matrix_to_quaternion(torch.from_numpy(look_at_rotation(start["position"], start["look_at"], start["up"]))).tolist(),
                           start["position"].tolist(), 64, 48, float(start["fov"]))
        frame = next_frame(client, (48, 36), after=0)
        assert frame.std() < 3.0  # the background colour, no error
        n = len(client.drain())
        set_value(client, "Show slice", True)
        client.wait_for(lambda m: m["type"] == "PointCloudMessage" and m["name"] == "/orex/slice", timeout=20, after=n)
    finally:
        viewer.stop()


@pytest.mark.parametrize(
    "args,needle",
    [([], "nothing to show"), (["--mesh", "missing.ply"], "file not found"), (["--splat", "bad.ply"], "bad.ply"), (["--splat", "empty.ply"], "no Gaussians"),
     (["--convex", "empty.ply"], "empty.ply: not a 3DCS export: it is a standard 3DGS splat PLY"), (["--convex", "bad.ply"], "bad.ply: not a PLY file"),
     (["--convex", "bad.ply", "--load-config", "bad.ply"], "give one of them")],
)
def test_ns_viewer_bad_input_one_line(tmp_path, args, needle):
    from recon.export.splat_ply import write_splat_ply

    (tmp_path / "bad.ply").write_text("not a ply")
    write_splat_ply(tmp_path / "empty.ply", {"means": torch.zeros(0, 3), "scales": torch.zeros(0, 3), "quats": torch.ones(0, 4),
                                             "opacities": torch.zeros(0), "sh0": torch.zeros(0, 1, 3), "shN": torch.zeros(0, 3, 3)})
    proc = subprocess.run([sys.executable, "-m", "viewer.cli", *args, "--viewer-port", "0"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


def test_method_panel_api(scene, tiny_config, tmp_path, viser_client, free_port, one_thread):
    """A method's panel (``Model.viewer_panels``) adds a control to the viewer and changes the frames."""
    from recon.panel_api import Panel

    class InvertPanel(Panel):
        title = "Invert"

        def __init__(self):
            self.on = False

        def populate(self, context):
            box = context.gui.add_checkbox("Invert colours", initial_value=False)

            @box.on_update
            def _(_):
                self.on = bool(box.value)
                context.rerender()

        def process_outputs(self, camera, outputs):
            return {**outputs, "rgb": 1.0 - outputs["rgb"]} if self.on else outputs

    trainer = Trainer(tiny_config(scene, tmp_path, 10))
    trainer.model.viewer_panels = lambda: [InvertPanel()]
    viewer = attach_viewer(trainer, ViewerSettings(port=free_port, max_res=32, moving_res=32, rest_delay=0.0))
    try:
        client = viser_client(free_port)
        client.send_camera(**view_of(trainer.outputs.split("train").cameras, 1, 32, 24))
        client.wait_for(lambda m: m["type"] == "GuiFolderMessage" and m["props"]["label"] == "Invert")
        plain = next_frame(client, (32, 24), after=0)
        n = len(client.drain())
        set_value(client, "Invert colours", True)
        inverted = next_frame(client, (32, 24), after=n)
    finally:
        viewer.stop()
    assert np.abs(inverted.astype(float) - (255.0 - plain.astype(float))).mean() < 6.0


def test_3dcs_live_and_ns_viewer_with_the_convex_panel(scene, tiny_config, tmp_path, viser_client, free_port, one_thread):
    """3dcs in the viewer: the frame of a paused live training and of the finished run
    (``ns-viewer --load-config``) is the model's render; the "3D convexes" panel's controls
    (``ConvexSplatModel.viewer_panels``) change the frames and leave the model alone."""
    from recon.engine.run import load_run
    from viewer.cli import ViewerCommand
    from viewer.render import ViewCamera, to_cameras

    def direct_render(model, v) -> np.ndarray:
        model.eval()
        return output_image(model.render(to_cameras(ViewCamera(tuple(v["wxyz"]), tuple(v["position"]), v["fov"], 48, 36), 48)), "rgb")

    trainer = Trainer(tiny_config(scene, tmp_path, 10**7, method="3dcs-small"))
    viewer = attach_viewer(trainer, ViewerSettings(port=free_port, max_res=48, moving_res=48, rest_delay=0.0))
    thread = threading.Thread(target=lambda: pytest.raises(KeyboardInterrupt, trainer.train))
    thread.start()
    try:
        client = viser_client(free_port)
        client.wait_for(lambda m: m["type"] == "GuiFolderMessage" and m["props"]["label"] == "3D convexes")
        cameras = trainer.outputs.split("train").cameras
        client.send_camera(**view_of(cameras, 0))
        next_frame(client, (48, 36), after=0)  # the server handles a browser's clicks once it has its camera
        wait_until(lambda: trainer.step >= 3)
        client.click("Pause training")
        wait_until(lambda: viewer.training.held_step is not None)
        with trainer.lock:
            expected = direct_render(trainer.model, view_of(cameras, 3)).astype(float)
            trainer.model.train()
        assert expected.std() > 2.0, "the render is blank"
        n = len(client.drain())
        client.send_camera(**view_of(cameras, 3))
        # A refresh of the first view may still be on its way: wait for this view's frame.
        client.wait_for(lambda m: m["type"] == "BackgroundImageMessage" and m["rgb_data"] and decode(m).shape == (36, 48, 3)
                        and np.abs(decode(m).astype(float) - expected).mean() < 6.0, after=n)  # fmt: skip  (JPEG round trip)
    finally:
        trainer.request_stop()  # what Ctrl-C does: a checkpoint of the paused step
        thread.join(timeout=60)
        viewer.stop()
    assert not thread.is_alive()

    config = trainer.run_dir / "config.yml"
    viewer = ViewerCommand(load_config=config, viewer_port=free_port, max_res=48, device="cpu").open()
    try:
        client = viser_client(free_port)
        panel = next(p for p in viewer.panels if p.title == "3D convexes")
        v = view_of(cameras, 3)
        client.send_camera(**v)
        plain = next_frame(client, (48, 36), after=0)
        run = load_run(config, "cpu")
        assert np.abs(plain.astype(float) - direct_render(run.model, v).astype(float)).mean() < 6.0
        before = {k: t.detach().clone() for k, t in viewer.model.params.items()}
        frames = {}
        for label, value in (("Sharpness (log2)", -2.0), ("Show hulls", True)):
            n = len(client.drain())
            set_value(client, label, value)
            frames[label] = next_frame(client, (48, 36), after=n)
        assert np.abs(frames["Sharpness (log2)"].astype(float) - plain.astype(float)).mean() > 1.0  # softer convexes
        assert panel.hulls_drawn > 0 and np.abs(frames["Show hulls"].astype(float) - frames["Sharpness (log2)"].astype(float)).max() > 100
        assert all(torch.equal(before[k], t) for k, t in viewer.model.params.items())
    finally:
        viewer.stop()
    assert port_is_free(free_port)


@pytest.mark.parametrize("flag,value,needle", [("--viewer-port", "70000", "not a port number"), ("--viewer-host", "203.0.113.7", "cannot serve the viewer"),
                                               ("--viewer-token", "short", "viewer token must be 8 to 256")])
def test_ns_train_bad_viewer_flags_one_line(scene, tmp_path, flag, value, needle):
    proc = subprocess.run([sys.executable, "-m", "recon.cli.train", "vanilla-nerf", "--data", str(scene), "--output-dir", str(tmp_path),
                           "--device", "cpu", "--viewer", flag, value], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not any(tmp_path.iterdir()), "nothing is written for a bad flag"
