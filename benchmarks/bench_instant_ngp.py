"""Benchmark: instant-ngp (occupancy-grid sampling) against nerf-hash-small (proposal sampling) on
NeRF-synthetic lego at 100x100, at equal training time.

nerf-hash-small trains its preset schedule (3000 steps); its training time T is every other run's
budget. instant-ngp runs twice in T: with its published settings as ``ns-train instant-ngp`` would
(learning-rate schedule to 200k steps, so nearly constant here), and sized like nerf-hash-small
(``INSTANT_NGP_CPU``). The CPU-sized run's schedule must end where the budget does: a first
run in T counts the steps it reaches (its schedule set far away) and is reported as well; the
second uses that count.

    python -m benchmarks.bench_instant_ngp [--small-steps 3000] [--test-every 8] [--threads 1]

Prints a table (method, steps, time, steps/s, samples per ray on the first test view, peak memory,
PSNR/SSIM on every 8th of the 200 test views) and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import append_results, machine_description, shared_data, train_and_evaluate
from methods.nerf_hash import INSTANT_NGP_CPU

LEGO_100 = {"datamanager.image_scale": 0.25}
FAR_AWAY = 1_000_000
"""A schedule length no budgeted run reaches: the learning rate stays near its start."""


def samples_per_ray(trainer: Any) -> float:
    """Mean samples per ray of the trained model on the first test view (occupancy sampler only)."""
    model = trainer.model.eval()
    rays = trainer.datamanager.eval_dataset.cameras[0].generate_rays(0).to(model.device)
    with torch.no_grad():
        return float(torch.cat([model.render_rays(rays[i : i + 4096])["num_samples"] for i in range(0, len(rays), 4096)]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-steps", type=int, default=3000, help="nerf-hash-small's schedule (its preset: 3000)")
    ap.add_argument("--test-every", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lego, out = shared_data() / "lego", args.output_dir

    def run(label: str, method: str, steps: int, budget: float | None, **changes: Any) -> dict[str, Any]:
        trainer, row = train_and_evaluate(method, lego, out, steps, args.test_every, args.device, time_budget_s=budget, **LEGO_100, **changes)
        if trainer.model.config.sampler == "occupancy":
            row["samples_per_ray"] = samples_per_ray(trainer)
        row = {**row, "method": label, "data": "lego 100x100"}
        print(row, flush=True)
        return row

    rows = [run("nerf-hash-small", "nerf-hash-small", args.small_steps, None)]
    budget = rows[0]["train_s"]
    rows.append(run("instant-ngp (published settings)", "instant-ngp", FAR_AWAY, budget, **{"optimizers.fields.scheduler.max_steps": 200_000}))
    rows.append(run("instant-ngp, CPU-sized, schedule to 1M steps", "instant-ngp", FAR_AWAY, budget, **INSTANT_NGP_CPU))
    reached = rows[-1]["steps"]
    rows.append(run(f"instant-ngp, CPU-sized, schedule to {reached} steps", "instant-ngp", reached, budget, **INSTANT_NGP_CPU))
    columns = ["method", "data", "steps", "train_s", "steps_per_s", "samples_per_ray", "peak_mem_mb", "psnr", "ssim", "test_images", "device"]
    title = "instant-ngp vs nerf-hash-small on lego 100x100 at equal training time (benchmarks/bench_instant_ngp.py)"
    table = append_results(title, columns, rows, record=not args.no_record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
