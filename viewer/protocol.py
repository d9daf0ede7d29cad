"""A Python stand-in for the viewer's browser, speaking viser's websocket protocol.

For tests, benchmarks and scripts that drive a running viewer without a browser: it connects like
the web client (subprotocol ``viser-v<version>``, which must equal the server's viser version),
decodes what the server sends and sends camera and GUI messages as the browser would.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable


def _with_arrays(value: Any, buffers: list[bytes]) -> Any:
    """``value`` with every binary placeholder replaced by its buffer as a numpy array."""
    if isinstance(value, dict):
        if "__binary_index" in value and "dtype" in value:
            import numpy as np

            return np.frombuffer(buffers[value["__binary_index"]], dtype=np.dtype(value["dtype"]))
        return {k: _with_arrays(v, buffers) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_arrays(v, buffers) for v in value]
    return value


class ViserClient:
    """What the viser web client does on the wire, from Python.

    Server -> client frames: 8 bytes uncompressed size, 8 bytes compressed size, a zstd-compressed
    msgpack ``{"messages": [...], "binaryBufferLengths": [...], ...}``, then the raw binary buffers
    (each starting at a multiple of 8 bytes) that stand for numpy arrays in the messages; the
    messages hold ``{"__binary_index": i, "dtype": "<f4"}`` in their place, which this client turns
    back into 1-D numpy arrays. Client -> server: one msgpack message per frame. The subprotocol
    ``viser-v<version>`` must match the server's version. ``token``: the viewer's access token
    (``?token=`` in the websocket URL), where it requires one.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", token: str | None = None):
        import viser
        from websockets.sync.client import connect

        query = f"/?token={token}" if token else ""
        self.ws = connect(f"ws://{host}:{port}{query}", subprotocols=[f"viser-v{viser.__version__}"], max_size=None, open_timeout=10)
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
                inner = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(raw[16 : 16 + csize], max_output_size=size))
                buffers, offset = [], 16 + csize
                for length in inner.get("binaryBufferLengths", ()):
                    offset += -offset % 8
                    buffers.append(raw[offset : offset + length])
                    offset += length
                for m in inner["messages"]:
                    self._queue.put(_with_arrays(m, buffers))
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
