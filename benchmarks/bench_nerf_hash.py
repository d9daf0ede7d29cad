"""Benchmark: nerf-hash-small against vanilla-nerf (small) on NeRF-synthetic lego at 100x100, in one run.

The goal of issue 4: nerf-hash-small reaches a higher test PSNR than vanilla-nerf in a fifth of the
time. Both train with their presets; vanilla-nerf uses the CPU-sized network of
bench_vanilla_nerf.py (``small``); every schedule is rescaled to the step budget.

    python benchmarks/bench_nerf_hash.py [--hash-steps 850] [--vanilla-steps 3000] [--test-every 8]

Prints a table (method, steps, time, steps/s, peak memory, PSNR/SSIM on every 8th of the 200 test
views) plus the time ratio, and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.bench_vanilla_nerf import run
from benchmarks.common import append_results, machine_description, shared_data, train_and_evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hash-steps", type=int, default=850)
    ap.add_argument("--vanilla-steps", type=int, default=3000)
    ap.add_argument("--test-every", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    rows = [run("small", args.vanilla_steps, args.test_every, args.device, args.output_dir)]
    changes = {"datamanager.image_scale": 0.25}
    _, row = train_and_evaluate("nerf-hash-small", shared_data() / "lego", args.output_dir, args.hash_steps, args.test_every, args.device, **changes)
    rows.append({**row, "data": "lego 100x100"})
    rows[1]["time_vs_vanilla"] = rows[1]["train_s"] / rows[0]["train_s"]
    columns = ["method", "data", "steps", "train_s", "time_vs_vanilla", "steps_per_s", "peak_mem_mb", "psnr", "ssim", "test_images", "device"]
    table = append_results("nerf-hash-small vs vanilla-nerf on lego (benchmarks/bench_nerf_hash.py)", columns, rows, record=not args.no_record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
