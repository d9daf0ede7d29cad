"""Host-memory allocation policy for training on the CPU.

glibc's malloc serves every block above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh ``mmap``
and returns it with ``munmap`` when freed. A CPU training step allocates and frees many tensors of
tens to hundreds of MB (activations, gradients, per-Gaussian buffers), so each step pages the same
memory in again: the kernel zeroes every 4 KiB page on its first touch. On CoherentGS at fern's
504x378 (571k Gaussians) that was 220k page faults per second and a quarter to a third of the CPU time in the
kernel (benchmarks/bench_host_memory.py). Keeping freed blocks in the process, as PyTorch's CUDA
caching allocator does for device memory and as the jemalloc/tcmalloc ``LD_PRELOAD`` of PyTorch's
CPU tuning guide does for host memory, removes that cost at the price of a higher resident size:
the process keeps its high-water mark instead of returning it to the system, and the heap takes a
few steps to settle into a layout where freed blocks fit the next requests (18 % more peak resident
memory on that CoherentGS run; none on splat at lego 200x200, which did not page-fault much anyway).
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1
"""glibc ``mallopt`` parameter: free memory at the top of the heap above this many bytes is returned."""
M_MMAP_MAX = -4
"""glibc ``mallopt`` parameter: the most blocks served by ``mmap`` at once (0: none, all from the heap)."""
_NEVER_TRIM = 2**31 - 1


def cache_freed_host_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel
    (``mallopt(M_MMAP_MAX, 0)`` and a trim threshold of 2 GiB). Process-wide and not undone.

    Returns True when applied; False (nothing changed) on a C library other than glibc (macOS,
    Windows, musl), where the system allocator is left as it is."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM))
