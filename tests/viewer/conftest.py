"""Fixtures for viewer tests: a browser stand-in that speaks viser's websocket protocol."""

from __future__ import annotations

import queue
import socket
import threading
import time
from typing import Any, Callable

import pytest


class ViserClient:
    """What the viser web client does on the wire, from Python.

    Server -> client frames: 8 bytes uncompressed size, 8 bytes compressed size, a zstd-compressed
    msgpack ``{"messages": [...], ...}``, then raw binary buffers. Client -> server: one msgpack
    message per frame. The subprotocol ``viser-v<version>`` must match the server's version.
    """

    def __init__(self, port: int, host: str = "127.0.0.1"):
        import viser
        from websockets.sync.client import connect

        self.ws = connect(f"ws://{host}:{port}", subprotocols=[f"viser-v{viser.__version__}"], max_size=None, open_timeout=10)
        self.messages: list[dict[str, Any]] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        import msgspec
        import zstandard
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                raw = self.ws.recv()
                size, csize = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
                inner = zstandard.ZstdDecompressor().decompress(raw[16 : 16 + csize], max_output_size=size)
                for m in msgspec.msgpack.decode(inner)["messages"]:
                    self._queue.put(m)
        except (ConnectionClosed, OSError):
            pass

    def drain(self) -> list[dict[str, Any]]:
        while True:
            try:
                self.messages.append(self._queue.get_nowait())
            except queue.Empty:
                return self.messages

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0, after: int = 0) -> dict[str, Any]:
        """The first message (index >= ``after``) for which ``predicate`` holds, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.drain()[after:]:
                if predicate(m):
                    return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching message in {timeout} s; got types {sorted({m['type'] for m in self.messages})}")
            time.sleep(0.02)

    def send(self, message: dict[str, Any]) -> None:
        import msgspec

        self.ws.send(msgspec.msgpack.encode(message))

    def send_camera(self, wxyz, position, width: int, height: int, fov: float = 0.9) -> None:
        self.send({
            "type": "ViewerCameraMessage", "wxyz": list(wxyz), "position": list(position), "fov": fov, "near": 0.01, "far": 100.0,
            "image_height": height, "image_width": width, "look_at": [0.0, 0.0, 0.0], "up_direction": [0.0, 0.0, 1.0],
        })  # fmt: skip

    def gui_uuid(self, label: str) -> str:
        m = self.wait_for(lambda m: m["type"].startswith("Gui") and isinstance(m.get("props"), dict) and m["props"].get("label") == label, timeout=10)
        return m["uuid"]

    def click(self, label: str) -> None:
        self.send({"type": "GuiUpdateMessage", "uuid": self.gui_uuid(label), "updates": {"value": True}})

    def close(self) -> None:
        self.ws.close()
        self._thread.join(timeout=5)


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
