"""Benchmark: forward and forward+backward time of the PyTorch hash-grid encoding.

Prints a table (config, points, forward ms, forward+backward ms, points/s, peak memory) and appends
it, with the machine description, to benchmarks/RESULTS.md (not with ``--quick`` or ``--no-record``).

    python benchmarks/bench_hash_grid.py [--points 262144] [--repeats 5] [--configs nerfacto,proposal]
    python benchmarks/bench_hash_grid.py --quick      # a few seconds: smoke test, never recorded

Configs: ``nerfacto`` is the instant-ngp / nerfacto field (16 levels x 2 features, T = 2^19,
resolution 16..2048); ``proposal`` is nerfacto's proposal network grid (5 levels, T = 2^17, 16..128).
The loss is sum(out^2) so that the backward produces non-trivial table gradients; the time is the
median of ``--repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import append_results, machine_description, peak_memory_mb, reset_peak_memory
from recon.fields.hash_grid import HashGridEncoding

CONFIGS = {
    "nerfacto": {"num_levels": 16, "features_per_level": 2, "log2_hashmap_size": 19, "min_res": 16, "max_res": 2048},
    "proposal": {"num_levels": 5, "features_per_level": 2, "log2_hashmap_size": 17, "min_res": 16, "max_res": 128},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(config: str, points: int, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    enc = HashGridEncoding(**CONFIGS[config]).to(device)
    x = torch.rand(points, 3, device=device)
    fwd, both = [], []
    reset_peak_memory(device)
    for i in range(repeats + 1):  # the first run is a warm-up (allocator, caches)
        enc.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        out = enc(x)
        _sync(device)
        t1 = time.perf_counter()
        out.square().sum().backward()
        _sync(device)
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            both.append(t2 - t0)
    fwd_s, both_s = statistics.median(fwd), statistics.median(both)
    return {
        "config": config,
        "points": points,
        "out_dim": enc.out_dim,
        "params_M": enc.table.numel() / 1e6,
        "fwd_ms": fwd_s * 1e3,
        "fwd_bwd_ms": both_s * 1e3,
        "fwd_Mpts_per_s": points / fwd_s / 1e6,
        "fwd_bwd_Mpts_per_s": points / both_s / 1e6,
        "peak_mem_mb": peak_memory_mb(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=2**18)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--configs", default="nerfacto,proposal")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ap.add_argument("--quick", action="store_true", help="2^14 points, 1 repeat, not recorded")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    if args.quick:
        args.points, args.repeats = 2**14, 1
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    rows = [run(c, args.points, args.repeats, device) for c in args.configs.split(",")]
    columns = ["config", "points", "out_dim", "params_M", "fwd_ms", "fwd_bwd_ms", "fwd_Mpts_per_s", "fwd_bwd_Mpts_per_s", "peak_mem_mb", "device", "threads"]
    record = not (args.quick or args.no_record)
    table = append_results("torch hash-grid encoding (benchmarks/bench_hash_grid.py)", columns, rows, record=record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
