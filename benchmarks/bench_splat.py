"""Benchmark: ``splat`` (3DGS) on NeRF-synthetic lego at 200x200 (100 train views, 200 test views).

    python -m benchmarks.bench_splat [--steps 7000] [--test-every 1] [--num-random-points 20000]

3DGS's protocol for the synthetic scenes (Kerbl et al. 2023): random initial Gaussians in the
scene box (3DGS: 100k; default here 20k: 0.12-0.2 s per early step on 2 cores instead of 4.4 s),
white background (the dataset's), L1 + 0.2 D-SSIM, the standard learning rates; images
downscaled to 200x200 (the shared copy of lego is 400x400). The 30k-step schedule is compressed
to ``--steps`` (the defaults gave 32.6 dB in 31 minutes on 2 cores): the optimizers' decay is
rescaled by the benchmark harness; densification runs from steps / 10 (at most 500) to 3/4 of the
run every ``--refine-every`` steps; the opacity reset stays every 3000 steps; the SH degree rises
every steps / 4. Test PSNR / SSIM over every ``--test-every``-th test view,
number of Gaussians, training time; printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import append_results, machine_description, shared_data, train_and_evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--refine-every", type=int, default=100)
    ap.add_argument("--test-every", type=int, default=1)
    ap.add_argument("--image-scale", type=float, default=0.5)  # the shared lego is 400x400
    ap.add_argument("--num-random-points", type=int, default=20_000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (shows progress; 0: none)")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    steps = args.steps
    changes = {
        "datamanager.image_scale": args.image_scale,
        "model.num_random_points": args.num_random_points,
        "model.sh_degree_interval": max(1, steps // 4),
        "model.strategy.refine_start_iter": min(500, steps // 10),
        "model.strategy.refine_every": args.refine_every,
        "model.strategy.refine_stop_iter": 3 * steps // 4,
        "steps_per_save": args.save_every,
    }
    trainer, row = train_and_evaluate("splat", shared_data() / "lego", args.output_dir, steps, args.test_every, args.device, **changes)
    size = trainer.datamanager.train_dataset.cameras
    row.update(
        data=f"lego {int(size.width[0])}x{int(size.height[0])}",
        train_views=len(trainer.datamanager.train_dataset),
        gaussians=trainer.model.num_primitives,
        init_gaussians=args.num_random_points,
    )
    columns = ["method", "data", "train_views", "steps", "train_s", "steps_per_s", "init_gaussians", "gaussians",
               "peak_mem_mb", "psnr", "ssim", "test_images", "device"]
    table = append_results("splat (3DGS) on lego (benchmarks/bench_splat.py)", columns, [row], record=not args.no_record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
