"""Fixtures for viewer tests: a browser stand-in that speaks viser's websocket protocol."""

from __future__ import annotations

import socket

import pytest

from viewer.protocol import ViserClient


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
