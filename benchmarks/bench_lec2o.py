"""Benchmark: lec2o-small (learned occupancy, Mi & Xu 2024) against the same scene network sampled
through an occupancy grid and through the proposal sampler, plus lec2o's three ablations.

The scene network is nerf-hash-small's in every run (8 levels to 256, T = 2^15, bounded box):
``lec2o-small``; ``instant-ngp`` sized by ``INSTANT_NGP_CPU`` (a 32^3 grid); ``nerf-hash-small``
(one proposal network, 32 + 16 samples). At equal steps every run trains ``--steps``; with
``--equal-time`` the grid and proposal runs train again for lec2o's training time, each on its own
full schedule: as many steps as it trained in that time at equal steps (capped at 1.1x the time). Ablations
(``--ablations``): no occupancy loss, no density loss, one network instead of two, the empty
network's density scaled by Switch-NeRF's g_emp instead of g_occ. ``--lec2o-only``: only lec2o's rows.

    python -m benchmarks.bench_lec2o [--data city|synthetic|lego|fern] [--steps 3000] [--equal-time]
        [--ablations] [--lec2o-only] [--estimators grid,proposal] [--city-views 200] [--size 64] [--test-every 8] [--threads 1] [--no-record]

Data: ``city`` is the procedural city block of ``data.synthetic.city_scene_config`` (generated and
cached on first use), ``synthetic`` the default scene, ``lego`` (at 100x100) and ``fern`` come from
the shared data folder. Prints a table (run, steps, train time, PSNR/SSIM on every
``--test-every``-th test view, samples per ray evaluated by the scene network on the first test
view, estimator memory, time to render that view) and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import append_results, machine_description, shared_data, train_and_evaluate
from data.synthetic import city_scene_config, default_scene_path
from methods.nerf_hash import INSTANT_NGP_CPU

EQUAL_STEPS = [
    ("grid", "occupancy grid (instant-ngp, CPU size)", "instant-ngp", INSTANT_NGP_CPU),
    ("proposal", "proposal (nerf-hash-small)", "nerf-hash-small", {}),
]
"""The estimators lec2o is compared with: key (for ``--estimators``), row name, preset, changes."""

ABLATIONS = {
    "lec2o-small, no occupancy loss": {"model.occupancy_loss_mult": 0.0},
    "lec2o-small, no density loss": {"model.density_loss_mult": 0.0},
    "lec2o-small, one network": {"model.empty_network": False},
    "lec2o-small, empty density scaled by g_emp": {"model.empty_density_scale": "g_emp"},
}


def _bytes(*parts: nn.Module | torch.Tensor) -> int:
    tensors = [t for p in parts for t in ([p] if isinstance(p, torch.Tensor) else [*p.parameters(), *p.buffers()])]
    return sum(t.numel() * t.element_size() for t in tensors)


def probe(model: Any, camera: Any) -> dict[str, float]:
    """Scene-network samples per ray, estimator memory (MB) and render time (s) on one view."""
    model.eval()
    rays = camera.generate_rays(0).to(model.device)
    key = "num_large" if hasattr(model, "occupancy") else "num_samples"
    chunk = int(getattr(model.config, "eval_num_rays_per_chunk", 4096))
    with torch.no_grad():
        # in the model's evaluation chunks: one 504x378 view at once took more than 15 GB
        counts = [model.render_rays(rays[i : i + chunk]).get(key) for i in range(0, len(rays), chunk)]
        start = time.perf_counter()
        model.render(camera)
        render_s = time.perf_counter() - start
    if hasattr(model, "occupancy"):
        samples, memory = float(torch.cat(counts).float().mean()), _bytes(model.occupancy.gate)
    elif getattr(model.config, "sampler", None) == "occupancy":
        samples, memory = float(torch.cat(counts).float().mean()), _bytes(model.grid.density, model.grid.binary)
    else:
        samples, memory = float(model.config.num_nerf_samples), _bytes(model.proposals)
    return {"field_samples_per_ray": samples, "estimator_mb": memory / 2**20, "render_s": render_s}


def dataset(name: str, city_views: int, size: int) -> tuple[Path, dict[str, Any], str]:
    if name == "city":
        return default_scene_path(city_scene_config(num_views=city_views, size=size)), {}, f"city {city_views} views {size}x{size}"
    if name == "synthetic":
        return default_scene_path(), {}, "synthetic 64x64"
    if name == "lego":
        return shared_data() / "lego", {"datamanager.image_scale": 0.25}, "lego 100x100"
    return shared_data() / "fern", {}, "fern 504x378"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("city", "synthetic", "lego", "fern"), default="city")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--equal-time", action="store_true", help="also train the grid and proposal runs for lec2o's time")
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--lec2o-only", action="store_true", help="only the lec2o rows (with --ablations, its ablations too)")
    ap.add_argument("--estimators", default="grid,proposal", help="which of grid, proposal to compare with (comma-separated)")
    ap.add_argument("--city-views", type=int, default=200)
    ap.add_argument("--size", type=int, default=64, help="city image size")
    ap.add_argument("--test-every", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data, data_changes, label = dataset(args.data, args.city_views, args.size)

    def run(name: str, method: str, steps: int, budget: float | None = None, **changes: Any) -> dict[str, Any]:
        trainer, row = train_and_evaluate(method, data, args.output_dir, steps, args.test_every, args.device, time_budget_s=budget, **data_changes, **changes)
        row = {**row, **probe(trainer.model, trainer.datamanager.eval_dataset.cameras[0]), "method": name, "data": label}
        print(row, flush=True)
        return row

    lec2o = run("lec2o-small", "lec2o-small", args.steps)
    rows = [lec2o]
    others = [] if args.lec2o_only else [e for e in EQUAL_STEPS if e[0] in args.estimators.split(",")]
    equal = [run(name, method, args.steps, **changes) for _, name, method, changes in others]
    rows += equal
    if args.equal_time:
        # Each estimator trains for lec2o's time on its own full schedule: its step count is that time
        # at its equal-steps rate (the budget also caps it, should the machine slow down).
        budget = lec2o["train_s"]
        for (key, name, method, changes), row in zip(others, equal):
            steps = max(1, round(budget * row["steps"] / row["train_s"]))
            rows.append(run(f"{name.split(' (')[0]}, lec2o's time", method, steps, 1.1 * budget, **changes))
    if args.ablations:
        rows += [run(name, "lec2o-small", args.steps, **changes) for name, changes in ABLATIONS.items()]
    columns = ["method", "data", "steps", "train_s", "psnr", "ssim", "field_samples_per_ray", "estimator_mb", "render_s", "peak_mem_mb", "test_images", "device"]
    table = append_results(f"lec2o vs occupancy grid vs proposal sampler on {label} (benchmarks/bench_lec2o.py)", columns, rows, record=not args.no_record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
