"""Shared pytest fixtures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The small real test datasets (lego, fern, dtu_scan24, ...; docs/architecture.md, section 10):
    ``$RECON_SHARED_DATA`` if set, else ``../shared/data`` next to the repository. Tests that need
    them are skipped without them."""
    env = os.environ.get("RECON_SHARED_DATA")
    path = Path(env) if env else (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (set RECON_SHARED_DATA to its folder)")
    return path


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: for tiny tensors it is as fast, and far faster on a busy
    shared machine (two spinning OpenMP threads competing with other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def garden_view(shared_data):
    """``garden_view(width, stride)``: every ``stride``-th point of ``garden_points.npz`` (points
    [N, 3] float32, colours [N, 3] in [0, 1]) and its first camera scaled to ``width`` pixels
    (view matrix [1, 4, 4], intrinsics [1, 3, 3], width, height)."""
    import numpy as np
    import torch

    data = np.load(shared_data / "garden_points.npz")

    def view(width: int, stride: int):
        pts = torch.from_numpy(data["means3d"][::stride].astype(np.float32))
        rgb = torch.from_numpy(data["colors"][::stride].astype(np.float32) / 255.0)
        viewmat = torch.from_numpy(data["viewmats"][:1].astype(np.float32))
        K = torch.from_numpy(data["Ks"][:1].astype(np.float32)).clone()
        full_w, full_h = int(data["width"]), int(data["height"])
        K[:, :2] *= width / full_w
        return pts, rgb, viewmat, K, width, round(full_h * width / full_w)

    return view


class StandInWidget:
    """A viser GUI or scene handle for panel tests without a server: a value, other properties, and
    the callbacks registered on it (``on_update``, ``on_click``), run by :meth:`fire`."""

    def __init__(self, value=None, **props):
        self.value, self.callbacks = value, []
        self.__dict__.update(props)

    def on_update(self, cb):
        self.callbacks.append(cb)
        return cb

    on_click = on_update

    def fire(self):
        for cb in self.callbacks:
            cb(None)


@pytest.fixture(scope="session")
def stand_in_widget():
    """:class:`StandInWidget`, for tests of viewer panels against stand-in widgets."""
    return StandInWidget


class SmallDisk:
    """A 64 MiB tmpfs at ``path`` that :meth:`fill` leaves without a free block."""

    def __init__(self, path: Path):
        self.path = path

    def fill(self) -> None:
        with open(self.path / "filler", "wb", buffering=0) as f:
            for chunk in (1 << 20, 4096):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass

    def free(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path):
    """A small file system to run out of space on: a tmpfs, mounted for the test (root only;
    skipped elsewhere) and unmounted after it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield SmallDisk(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)
