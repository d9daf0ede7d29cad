"""Host-memory policy: with ``cache_freed_host_memory`` a freed large tensor's pages are reused
instead of being returned to the kernel and faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from recon.engine import host_memory

CHILD = """
import resource, sys, torch
from recon.engine.host_memory import cache_freed_host_memory
if sys.argv[1] == "cache":
    assert cache_freed_host_memory()
for _ in range(20):  # warm-up: the heap grows to its high-water mark (measured: 3 to 11 allocations)
    torch.ones(16 * 2**20).sum()  # 64 MiB: above glibc's largest mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 * 2**20).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(policy: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, policy], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy applies to glibc's malloc only")
def test_cached_policy_reuses_freed_pages():
    system, cache = _faults("system"), _faults("cache")
    # Each 64 MiB tensor is 16384 fresh 4 KiB pages under glibc's defaults (measured 163850 for 10),
    # and none once freed memory stays in the process and the heap has reached its high-water mark.
    assert system > 10 * 16384 * 0.8, system
    assert cache < system / 20, (cache, system)


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("", ""))
    called = []
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *a, **k: called.append(a))
    assert host_memory.cache_freed_host_memory() is False
    assert called == []
