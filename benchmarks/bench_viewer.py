"""Viewer latency and frame rate on CPU: vanilla-nerf and splat, through viser's websocket protocol.

A Python client (:class:`viewer.protocol.ViserClient`, what the browser does on the wire) talks to
a viewer over loopback:

* latency: camera update sent -> rendered frame received, at rest (full resolution), median of
  several updates, per frame size;
* fps while moving: the client streams camera updates at 30 Hz (a browser's rate while dragging)
  for a few seconds; frames received per second at the moving resolution;
* training share: training steps/s of a run with the viewer attached, without a browser and with
  one streaming camera updates (``--viewer-train-render-ratio`` at its default, 3).

Models, untrained (the rendering cost of a NeRF does not depend on training; a splat model's
changes with its number of Gaussians):

* ``vanilla-nerf`` preset: 256-wide 8-layer MLPs, 64 + 128 samples per ray (latency only, at a
  small frame: it is a GPU configuration);
* ``vanilla-nerf (demo)``: the size ``make demo`` trains on CPU (64-wide 3-layer MLPs, 24 + 24
  samples, 1024 rays per step);
* ``splat`` preset: 3DGS defaults, initialised from the synthetic scene's 20k points.

    python -m benchmarks.bench_viewer [--no-record]
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import append_results
from data.synthetic import SyntheticSceneConfig, generate_scene
from recon.rotations import matrix_to_quaternion
from recon.config import get_method, override
from recon.engine.trainer import Trainer
from viewer.protocol import ViserClient
from viewer.server import Viewer, ViewerSettings
from viewer.training import attach_viewer


def _view(cameras, i: int, width: int, height: int, turn: float = 0.0) -> dict:
    """Training camera i, rotated by ``turn`` radians about the world z axis (an orbit step)."""
    c2w = cameras.camera_to_worlds[i].double()
    rz = torch.tensor([[math.cos(turn), -math.sin(turn), 0], [math.sin(turn), math.cos(turn), 0], [0, 0, 1]], dtype=torch.float64)
    R, t = rz @ c2w[:, :3], rz @ c2w[:, 3]
    fov = 2 * math.atan(0.5 * float(cameras.height[i]) / float(cameras.fy[i]))
    return {"wxyz": matrix_to_quaternion(R).tolist(), "position": t.tolist(), "width": width, "height": height, "fov": fov}


def _is_frame(size):
    def check(m):
        return m["type"] == "BackgroundImageMessage" and m["rgb_data"] and Image.open(io.BytesIO(m["rgb_data"])).size == size

    return check


def measure(viewer: Viewer, cameras, sizes: list[int], moving_res: int, repeats: int, stream_seconds: float) -> list[dict]:
    client = ViserClient(viewer.port)
    rows = []
    try:
        client.send_camera(**_view(cameras, 0, 64, 48))
        client.wait_for(lambda m: m["type"] == "BackgroundImageMessage" and bool(m["rgb_data"]), timeout=600)
        for long_side in sizes:
            w, h = long_side, round(long_side * 3 / 4)
            viewer.settings.rest_delay = 0.0  # every update is rendered at full resolution
            viewer.max_res_slider.value = long_side
            times = []
            for r in range(repeats):
                n = len(client.drain())
                start = time.perf_counter()
                client.send_camera(**_view(cameras, 0, w, h, turn=0.05 * (r + 1)))
                client.wait_for(_is_frame((w, h)), timeout=600, after=n)
                times.append(time.perf_counter() - start)
            rows.append({"frame": f"{w}x{h}", "latency_ms": 1000 * statistics.median(times), "fps": 1.0 / statistics.median(times)})
        # Streaming: 30 camera updates per second; frames arrive at the moving resolution.
        viewer.settings.rest_delay = 10.0
        viewer.max_res_slider.value = 1024
        w, h = 4 * moving_res, 3 * moving_res  # a 4:3 canvas; frames are moving_res wide
        n = len(client.drain())
        start = time.perf_counter()
        k = 0
        while time.perf_counter() - start < stream_seconds:
            client.send_camera(**_view(cameras, 0, w, h, turn=0.01 * k))
            k += 1
            time.sleep(1 / 30)
        elapsed = time.perf_counter() - start
        frames = sum(1 for m in client.drain()[n:] if m["type"] == "BackgroundImageMessage" and m["rgb_data"])
        mw, mh = moving_res, round(moving_res * 3 / 4)
        rows.append({"frame": f"{mw}x{mh} moving", "latency_ms": "", "fps": frames / elapsed})
    finally:
        client.close()
    return rows


def training_share(config, seconds: float) -> list[dict]:
    """Training steps/s with the viewer attached: no browser (before and after, averaged), and a
    browser streaming its camera at 30 Hz (frames at 32x24) in between."""
    trainer = Trainer(config)
    viewer = attach_viewer(trainer, ViewerSettings(port=0, max_res=64, moving_res=32))
    thread = threading.Thread(target=lambda: _train_quietly(trainer))
    thread.start()

    def rate(window):
        s0, t0 = trainer.step, time.perf_counter()
        extra = window()
        return (trainer.step - s0) / (time.perf_counter() - t0), extra

    try:
        while trainer.step < 30:  # warm-up: the first steps of a run are slower
            time.sleep(0.1)
        alone_before, _ = rate(lambda: time.sleep(seconds))
        client = ViserClient(viewer.port)
        cams = trainer.outputs.split("train").cameras

        def stream():
            frames0, t0, k = viewer.frames_sent, time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                client.send_camera(**_view(cams, 0, 128, 96, turn=0.01 * k))
                k += 1
                time.sleep(1 / 30)
            return (viewer.frames_sent - frames0) / (time.perf_counter() - t0)

        with_browser, fps = rate(stream)
        client.close()
        alone_after, _ = rate(lambda: time.sleep(seconds))
    finally:
        trainer.request_stop()
        thread.join()
        viewer.stop()
    return [
        {"frame": "training, no browser", "steps_per_s": (alone_before + alone_after) / 2},
        {"frame": "training, browser moving (32x24)", "steps_per_s": with_browser, "fps": fps},
    ]


def _train_quietly(trainer: Trainer) -> None:
    try:
        trainer.train()
    except KeyboardInterrupt:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-record", action="store_true", help="print the table without appending it to RESULTS.md")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    scene = generate_scene(tmp / "scene", SyntheticSceneConfig(width=64, height=64, num_train_views=8, num_test_views=2, num_points=20_000))
    rows = []
    demo = {"model.hidden_dim": 64, "model.num_layers": 3, "model.skips": (), "model.color_hidden_dim": 32, "model.num_coarse_samples": 24,
            "model.num_fine_samples": 24, "model.position_frequencies": 6, "datamanager.train_num_rays_per_batch": 1024}  # the Makefile's demo
    # (label, method, overrides, frame sizes, moving resolution, measure training share)
    setups = [("vanilla-nerf", "vanilla-nerf", {}, [32], 24, False), ("vanilla-nerf (demo)", "vanilla-nerf", demo, [64, 128], 48, True),
              ("splat", "splat", {}, [64, 128, 256, 512], 96, True)]
    for label, method, changes, sizes, moving_res, share in setups:
        config = override(get_method(method).config, data=scene, output_dir=tmp / "runs", device="cpu", timestamp=label, max_num_iterations=10**7,
                          steps_per_save=0, steps_per_eval_image=0, eval_at_end=False, **{"logging.tensorboard": False, "logging.progress_bar": False},
                          **changes)
        trainer = Trainer(config)
        cameras = trainer.outputs.split("train").cameras
        viewer = Viewer(ViewerSettings(port=0, moving_res=moving_res), model=trainer.model.eval(), cameras=cameras, aabb=trainer.outputs.scene_box.aabb).start()
        try:
            for row in measure(viewer, cameras, sizes, moving_res=moving_res, repeats=3, stream_seconds=args.seconds):
                rows.append({"method": label, **row})
        finally:
            viewer.stop()
        if share:
            rows += [{"method": label, **row} for row in training_share(config, args.seconds)]
    columns = ["method", "frame", "latency_ms", "fps", "steps_per_s"]
    print(append_results("Viewer latency and frame rate on CPU (benchmarks/bench_viewer.py)", columns, rows, record=not args.no_record))


if __name__ == "__main__":
    main()
