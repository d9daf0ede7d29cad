"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The small real test datasets (lego, fern, dtu_scan24, ...): ``$RECON_SHARED_DATA`` if set,
    else ``../shared/data`` next to the repository. Tests that need them are skipped without them."""
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
