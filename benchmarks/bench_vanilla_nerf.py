"""Benchmark: vanilla-nerf on NeRF-synthetic lego at 100x100 for a fixed step budget.

Prints a table (preset, steps, steps/s, peak memory, test PSNR/SSIM) and appends it, with the
machine description, to benchmarks/RESULTS.md.

    python benchmarks/bench_vanilla_nerf.py [--steps 3000] [--presets small,paper] [--test-every 8]

Presets: ``paper`` is the published architecture and sampling (8x256 MLP, 64 + 128 samples,
1024 rays); ``small`` is a CPU-sized network (3x64, 24 + 24 samples, softplus density, 512 rays).
Test views: every ``--test-every``-th image of the 200-image test split (all with 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import append_results, machine_description, shared_data, train_and_evaluate
from recon.config import get_method

PRESETS = {
    "paper": {},
    "small": {
        "model.hidden_dim": 64,
        "model.num_layers": 3,
        "model.skips": (),
        "model.color_hidden_dim": 32,
        "model.num_coarse_samples": 24,
        "model.num_fine_samples": 24,
        "model.position_frequencies": 6,
        "model.density_activation": "softplus",
        "datamanager.train_num_rays_per_batch": 512,
        "optimizers.fields.lr": 5e-3,
    },
}


def run(preset: str, steps: int, test_every: int, device: str, out: Path) -> dict:
    lr = PRESETS[preset].get("optimizers.fields.lr", get_method("vanilla-nerf").config.optimizers["fields"].lr)
    changes = {"datamanager.image_scale": 0.25, "optimizers.fields.scheduler.lr_final": lr / 10, "timestamp": preset, **PRESETS[preset]}
    _, row = train_and_evaluate("vanilla-nerf", shared_data() / "lego", out, steps, test_every, device, **changes)
    return {**row, "method": f"vanilla-nerf ({preset})", "data": "lego 100x100"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--presets", default="small")
    ap.add_argument("--test-every", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    rows = [run(p, args.steps, args.test_every, args.device, args.output_dir) for p in args.presets.split(",")]
    columns = ["method", "data", "steps", "train_s", "steps_per_s", "peak_mem_mb", "psnr", "ssim", "test_images", "device"]
    table = append_results("vanilla-nerf on lego (benchmarks/bench_vanilla_nerf.py)", columns, rows, record=not args.no_record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
