"""Browsers that misbehave, from Python: a load for a running viewer (tests and benchmarks).

    python -m viewer.load_clients --port 7007 [--token T] [--seconds 6] [--clients 20]

Runs in its own process (as browsers do), so that what it costs in Python is not charged to the
viewer's process. Of every ten clients:

* 4 **viewers**: one connection each, a camera update every 0.1 s, counting the frames they get;
* 2 **droppers**: connect, send a camera, drop the TCP connection without a close handshake
  (half of the time in the middle of a frame), and again;
* 2 **malformed**: connect, send one malformed message (not msgpack, a text frame, a list, no or
  an unknown message type, a camera of the wrong types or absurd values, an update of an unknown
  widget, or of "Max res" to 10^9 and of "Train/render time" to NaN), close or drop, and again;
* 2 **oversized**: send a 4 MiB message (over :data:`viewer.access.MAX_MESSAGE_BYTES`; the
  server closes with 1009) or one of garbage just under the limit, and again (every kind pauses
  :data:`PAUSE` between connections).

Prints "connected" once the viewers have their first frame, then, after ``--seconds``, one JSON
line: frames per viewer, connections per kind, the close codes the oversized clients got.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable

import msgspec

from viewer.access import MAX_MESSAGE_BYTES
from viewer.protocol import ViserClient


def camera_message(i: int, width: int = 64, height: int = 48) -> bytes:
    return msgspec.msgpack.encode({
        "type": "ViewerCameraMessage", "wxyz": [1.0, 0.0, 0.0, 0.0], "position": [0.01 * (i % 100), 0.0, -3.0], "fov": 0.9, "near": 0.01,
        "far": 100.0, "image_height": height, "image_width": width, "look_at": [0.0, 0.0, 0.0], "up_direction": [0.0, 0.0, 1.0],
    })  # fmt: skip


MALFORMED: list[bytes | str] = [
    b"\x00\x01\x02 not msgpack at all",
    "a text frame",
    msgspec.msgpack.encode([1, 2, 3]),
    msgspec.msgpack.encode({"no": "type"}),
    msgspec.msgpack.encode({"type": "NoSuchMessage", "x": 1}),
    msgspec.msgpack.encode({"type": "ViewerCameraMessage", "wxyz": "abc"}),
    msgspec.msgpack.encode({"type": "ViewerCameraMessage", "wxyz": [0, 0, 0, 0], "position": [1e308, -1e308, float("nan")], "fov": -1.0,
                            "near": 0.0, "far": 0.0, "image_height": 10**9, "image_width": -5, "look_at": [0, 0, 0], "up_direction": [0, 0, 0]}),
    msgspec.msgpack.encode({"type": "GuiUpdateMessage", "uuid": "no-such-widget", "updates": {"value": 1}}),
]  # fmt: skip
OVERSIZED, UNDER_LIMIT = os.urandom(4 << 20), b"\x81" + os.urandom(MAX_MESSAGE_BYTES - 1024)
PAUSE = 0.2
"""Seconds between the connections of one dropping, malformed or oversized client: enough churn to
find leaks, little enough that this process (on the viewer's machine in tests) does not take the
CPU the step-rate measurement is about."""
FORGED_GUI = {"Max res": 10**9, "Train/render time": float("nan")}
"""Values a browser's GUI would never send (viser leaves a widget's range to the browser)."""


def _abort(client: ViserClient) -> None:
    """Drop the TCP connection without a websocket close handshake (an RST)."""
    try:
        client.ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:  # the server closed it already
        pass
    client.ws.socket.close()


class Load:
    def __init__(self, port: int, token: str | None, clients: int):
        self.port, self.token = port, token
        self.stop = threading.Event()
        self.frames: dict[int, int] = {}
        self.connections: dict[str, int] = {}
        self.close_codes: list[int] = []
        self.errors: list[str] = []
        kinds: list[Callable[[int], None]] = []
        for i in range(clients):
            kinds.append((self.viewer, self.viewer, self.viewer, self.viewer, self.dropper, self.dropper, self.malformed, self.malformed,
                          self.oversized, self.oversized)[i % 10])  # fmt: skip
        self.kinds = kinds
        self.viewers_ready = threading.Semaphore(0)

    def connect(self, kind: str) -> ViserClient:
        self.connections[kind] = self.connections.get(kind, 0) + 1
        return ViserClient(self.port, token=self.token)

    def viewer(self, i: int) -> None:
        client = self.connect("viewer")
        try:
            k, ready = 0, False
            while not self.stop.is_set():
                client.ws.send(camera_message(i * 1000 + k))
                k += 1
                frames = sum(1 for m in client.drain() if m["type"] == "BackgroundImageMessage" and m["rgb_data"])
                client.messages.clear()
                self.frames[i] = self.frames.get(i, 0) + frames
                if frames and not ready:
                    ready = True
                    self.viewers_ready.release()
                time.sleep(0.1)
        finally:
            client.close()

    def dropper(self, i: int) -> None:
        k = 0
        while not self.stop.is_set():
            client = self.connect("dropper")
            client.ws.send(camera_message(i))
            time.sleep(0.05 + 0.02 * (k % 5))
            if k % 2:
                client.ws.socket.sendall(b"\x82\xfe\x10\x00\x00\x00")  # a binary frame header announcing 4096 bytes, then nothing
            _abort(client)
            k += 1
            time.sleep(PAUSE)

    def malformed(self, i: int) -> None:
        k = 0
        while not self.stop.is_set():
            client = self.connect("malformed")
            try:
                client.ws.send(camera_message(i))
                if k % (len(MALFORMED) + 1) == len(MALFORMED):
                    for label, value in FORGED_GUI.items():
                        client.send({"type": "GuiUpdateMessage", "uuid": client.gui_uuid(label), "updates": {"value": value}})
                else:
                    client.ws.send(MALFORMED[k % (len(MALFORMED) + 1)])
                time.sleep(0.1)
            except Exception:  # the server closed the connection: what it should do
                pass
            finally:
                _abort(client) if k % 3 == 0 else client.close()
            k += 1
            time.sleep(PAUSE)

    def oversized(self, i: int) -> None:
        k = 0
        while not self.stop.is_set():
            client = self.connect("oversized")
            try:
                client.ws.send(OVERSIZED if k % 2 == 0 else UNDER_LIMIT)  # under the limit: garbage, closed as malformed
                client._thread.join(timeout=5)  # the server closes the connection
            except Exception:
                pass
            finally:
                if k % 2 == 0 and client.ws.close_code is not None:
                    self.close_codes.append(client.ws.close_code)
                client.close()
            k += 1
            time.sleep(PAUSE)

    def run(self, seconds: float, out: Any = sys.stdout) -> dict[str, Any]:
        def guarded(kind: Callable[[int], None], i: int) -> None:
            try:
                kind(i)
            except Exception as exc:
                self.errors.append(f"{kind.__name__} {i}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=guarded, args=(kind, i), daemon=True) for i, kind in enumerate(self.kinds)]
        for t in threads:
            t.start()
        for _ in range(sum(k == self.viewer for k in self.kinds)):
            self.viewers_ready.acquire(timeout=60)
        print("connected", file=out, flush=True)
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join(timeout=20)
        return {"frames": self.frames, "connections": self.connections, "close_codes": self.close_codes, "errors": self.errors,
                "alive": sum(t.is_alive() for t in threads)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default=None)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args(argv)
    result = Load(args.port, args.token, args.clients).run(args.seconds)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
