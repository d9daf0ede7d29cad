"""End to end in a real browser: headless Chromium (software WebGL) loads the viewer page of a trained
synthetic scene; its screenshot shows the frame the server rendered. The screenshot is kept as a test
artifact in ``$RECON_ARTIFACTS`` (or the test's tmp folder), never in the repository."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.synthetic import SyntheticSceneConfig, generate_scene
from recon.config import get_method, override
from recon.engine.run import load_run
from recon.engine.trainer import Trainer
from viewer.cli import ViewerCommand


def start_chromium(chromium: str, profile: Path):
    """Headless Chromium (software WebGL) on about:blank, and a DevTools client for its page.
    The caller ends it: ``os.killpg(browser.pid, signal.SIGTERM)``."""
    args = [
        chromium, "--headless=new", "--no-sandbox", "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
        "--window-size=800,600", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank",
    ]  # fmt: skip
    browser = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (profile / "DevToolsActivePort").is_file():
            assert time.monotonic() < deadline and browser.poll() is None, "chromium did not start"
            time.sleep(0.1)
        time.sleep(0.2)
        return browser, DevTools(int((profile / "DevToolsActivePort").read_text().split()[0]))
    except BaseException:
        os.killpg(browser.pid, signal.SIGTERM)
        browser.wait(timeout=30)
        raise


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page."""

    def __init__(self, debug_port: int):
        from websockets.sync.client import connect

        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def close(self) -> None:
        self.ws.close()


def test_viewer_page_in_headless_chromium(chromium, tmp_path, free_port, one_thread):
    scene = generate_scene(tmp_path / "scene", SyntheticSceneConfig(width=32, height=32, num_train_views=8, num_test_views=2, supersample=1, num_points=500))
    spec = get_method("vanilla-nerf")
    config = override(
        spec.config, data=scene, output_dir=tmp_path / "runs", max_num_iterations=300, steps_per_save=0, steps_per_eval_image=0,
        eval_at_end=False, device="cpu", timestamp="run", **{"logging.tensorboard": False, "logging.progress_bar": False}, **spec.test_overrides,
    )  # fmt: skip
    run_dir = Trainer(config).train()
    viewer = ViewerCommand(load_config=run_dir / "config.yml", viewer_port=free_port, max_res=1024, device="cpu").open()
    browser, devtools = start_chromium(chromium, tmp_path / "chromium-profile")
    try:
        deadline = time.monotonic() + 60
        devtools.call("Page.navigate", url=f"http://127.0.0.1:{free_port}/")
        # The browser's camera reached the server and the full-resolution frame went back.
        while not (viewer._clients and all(c.rendered_full for c in viewer._clients.values())):
            assert time.monotonic() < deadline, "the page never received a full-resolution frame"
            time.sleep(0.1)
        camera = next(iter(viewer._clients.values())).handle.camera  # what the page reports of its camera
        start = {"position": camera.position.copy(), "wxyz": camera.wxyz.copy(), "fov": camera.fov}
        time.sleep(2.0)  # decode and draw
        png = base64.b64decode(devtools.call("Page.captureScreenshot", format="png")["data"])
        devtools.close()
        frame = viewer.last_frame
    finally:
        os.killpg(browser.pid, signal.SIGTERM)
        browser.wait(timeout=30)
        viewer.stop()

    # The page opened at the first training camera (nerfstudio's viewer does the same), not at
    # viser's default pose far outside the normalised scene.
    from scipy.spatial.transform import Rotation

    cameras = load_run(run_dir / "config.yml", "cpu").outputs.split("train").cameras
    c2w = cameras.camera_to_worlds[0].double().numpy()
    assert np.allclose(start["position"], c2w[:, 3], atol=1e-3), (start, c2w)
    w, x, y, z = start["wxyz"]
    assert np.allclose(Rotation.from_quat([x, y, z, w]).as_matrix(), c2w[:, :3], atol=1e-3), (start, c2w)
    assert abs(start["fov"] - 2 * np.arctan(0.5 * float(cameras.height[0]) / float(cameras.fy[0]))) < 1e-3

    artifacts = Path(os.environ.get("RECON_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot_path = artifacts / "viewer_chromium.png"
    shot_path.write_bytes(png)
    print(f"screenshot: {shot_path}")

    shot = np.asarray(Image.open(shot_path).convert("RGB"), dtype=np.float64)
    h, w = shot.shape[:2]
    expected = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR), dtype=np.float64)
    background = np.asarray(viewer_background(run_dir), dtype=np.float64)
    # Where the model rendered something other than the background, away from the GUI (the control
    # panel on the right, notifications top left) ...
    region = np.zeros((h, w), bool)
    region[int(0.3 * h) :, : int(0.55 * w)] = True
    scene_px = region & (np.abs(expected - background).sum(-1) > 60)
    assert scene_px.sum() > 500, "the rendered frame shows almost nothing but background"
    # ... the page shows the rendered scene (scene overlays such as frustums excepted: the median).
    assert np.median(np.abs(shot[scene_px] - expected[scene_px]).sum(-1)) < 40
    assert np.abs(shot[scene_px] - background).sum(-1).mean() > 40


def viewer_background(run_dir: Path) -> np.ndarray:
    """The colour the synthetic scene's renders fall back to (its RGBA background), 0-255."""
    bg = load_run(run_dir / "config.yml", "cpu").model.background
    return (bg.float() * 255).numpy()


def test_token_reaches_the_websocket_in_a_real_browser(chromium, tmp_path, free_port):
    """The page opened without the token gets 401 and no websocket; opened with ``?token=``, the
    page's own websocket (viser opens it without the query string) gets in with the cookie."""
    from viewer.server import Viewer, ViewerSettings

    viewer = Viewer(ViewerSettings(port=free_port, token="browser-test-token"), aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])).start()
    browser, devtools = start_chromium(chromium, tmp_path / "chromium-profile")
    try:
        devtools.call("Page.navigate", url=f"http://127.0.0.1:{free_port}/")
        time.sleep(2.0)
        assert viewer.guards[-1].rejected >= 1 and not viewer.server._websock_server._live_connections
        devtools.call("Page.navigate", url=f"http://127.0.0.1:{free_port}/?token=browser-test-token")
        deadline = time.monotonic() + 60
        while not viewer.server.get_clients():  # the page's camera reached the server over its websocket
            assert time.monotonic() < deadline, "the page's websocket never got in"
            time.sleep(0.1)
        devtools.close()
    finally:
        os.killpg(browser.pid, signal.SIGTERM)
        browser.wait(timeout=30)
        viewer.stop()
