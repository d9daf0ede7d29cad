"""Fixtures for viewer tests: a browser stand-in that speaks viser's websocket protocol, a tiny
synthetic scene and the configs that train on it in seconds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from data.synthetic import SyntheticSceneConfig, generate_scene
from recon.config import get_method, override

from viewer.protocol import ViserClient


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    cfg = SyntheticSceneConfig(width=32, height=32, num_train_views=8, num_test_views=2, supersample=1, num_points=500)
    return generate_scene(tmp_path_factory.mktemp("viewer") / "scene", cfg)


def _tiny_config(scene: Path, out: Path, steps: int, method: str = "vanilla-nerf", **changes):
    spec = get_method(method)
    return override(
        spec.config, data=scene, output_dir=out, max_num_iterations=steps, steps_per_save=0, steps_per_eval_image=0, eval_at_end=False,
        device="cpu", timestamp="run", **{"logging.tensorboard": False, "logging.progress_bar": False}, **spec.test_overrides, **changes,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(scene, out, steps, method="vanilla-nerf", **changes)``: the method's preset with
    its test overrides, on CPU, without logging, saves or evaluation."""
    return _tiny_config


@pytest.fixture
def viser_client():
    """``viser_client(port)`` opens a :class:`ViserClient`; all are closed after the test."""
    opened: list[ViserClient] = []

    def open_client(port: int) -> ViserClient:
        opened.append(ViserClient(port))
        return opened[-1]

    yield open_client
    for client in opened:
        client.close()


@pytest.fixture
def free_port() -> int:
    """A currently free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium binary (Debian's ``chromium``). ``make install-test`` installs it; when
    it is missing here it is installed with apt (as root), and the test is skipped only when that
    is impossible."""
    import os
    import shutil
    import subprocess

    path = shutil.which("chromium")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True, env=env, timeout=1200)
        path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed and apt-get cannot install it here (not root or no apt)")
    return path
