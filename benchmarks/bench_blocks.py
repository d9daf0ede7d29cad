"""Benchmark: one ``splat`` model against the same scene trained as blocks and merged
(``ns-train-blocks``; VastGaussian, Lin et al. CVPR 2024; CityGaussian, Liu et al. ECCV 2024), at
equal total steps: the one model trains ``--steps``, each of the B blocks ``--steps / B``.

    python -m benchmarks.bench_blocks [--views 120] [--size 64] [--steps 2000] [--blocks 2x2]
        [--overlap 0.2] [--workers 2] [--executor pool] [--threads 1] [--no-record]

Data: the procedural city block of ``data.synthetic.city_scene_config`` (``--views`` training views,
a tenth more for testing, ``--size`` pixels square; generated and cached on first use). A reduced
setting so that the whole benchmark takes minutes on a CPU: small images and few steps, far from
a converged 3DGS. Every run, the one model included, uses bench_splat's short-run recipe scaled to
its own length (optimizer decay over its steps, densification from steps / 10 to 3/4 of the run
every steps / 20, SH degree up every steps / 4). Each run, and each block, trains in its own fresh
process (the process pool of ``recon.blocks.runner``), so "peak memory" is that process's peak
resident set; blocks train ``--workers`` at a time. Wall time: from submitting to the trained (and,
for blocks, merged) model, evaluation excluded. PSNR / SSIM over every test view of the whole scene
(the merged model for blocks). Prints a table (and one row per block) and appends it to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import append_results
from data.synthetic import city_scene_config, default_scene_path
from recon.blocks.partition import parse_grid
from recon.blocks.runner import executor_factory, payload, run_tasks, train_block
from recon.cli.train_blocks import BlocksOptions, train_blocks
from recon.config import get_method, override
from recon.engine.evaluate import evaluate_images
from recon.engine.run import load_run


def short_run(data: Path, output_dir: Path, steps: int, stamp: str) -> Any:
    """The ``splat`` preset for a run of ``steps`` (bench_splat's recipe), quiet, no evaluation."""
    base = get_method("splat").config
    changes = {
        "data": data, "output_dir": output_dir, "timestamp": stamp, "max_num_iterations": steps, "steps_per_save": 0,
        "steps_per_eval_image": 0, "eval_at_end": False, "logging.tensorboard": False, "logging.progress_bar": False,
        "model.sh_degree_interval": max(1, steps // 4), "model.strategy.refine_start_iter": min(500, steps // 10),
        "model.strategy.refine_every": max(10, steps // 20), "model.strategy.refine_stop_iter": 3 * steps // 4,
        **{f"optimizers.{name}.scheduler.max_steps": steps for name in base.optimizers},
    }
    return override(base, **changes)


def evaluate(run_dir: Path) -> dict[str, Any]:
    run = load_run(run_dir / "config.yml", device="cpu")
    dataset = run.config.datamanager.dataset(run.outputs.split("test"))
    mean = evaluate_images(run.model, dataset, with_lpips=False, progress=False)["mean"]
    return {"psnr": mean["psnr"], "ssim": mean["ssim"], "test_images": mean["num_images"], "gaussians": int(run.model.num_primitives)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=120)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000, help="total steps: the one model's, split evenly over the blocks")
    ap.add_argument("--blocks", default="2x2")
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--workers", type=int, default=2, help="blocks trained at once")
    ap.add_argument("--executor", choices=("pool", "ray"), default="pool")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--output-dir", type=Path, default=None)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    columns_, rows_ = parse_grid(args.blocks)
    num_blocks = columns_ * rows_
    data = default_scene_path(city_scene_config(num_views=args.views, size=args.size))
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="bench_blocks_"))
    print(f"city scene {data} ({args.views} views, {args.size}x{args.size}); runs in {out}")

    single = short_run(data, out, args.steps, "one-model")
    start = time.perf_counter()
    results, errors = run_tasks(train_block, [payload(single, 0, args.threads)], executor_factory("pool", 1, args.threads, None))
    if errors:
        raise SystemExit(f"the one-model run failed: {errors[0]}")
    one = {"run": "one model", "processes": 1, "steps_per_process": args.steps, "views_per_process": args.views,
           "wall_s": time.perf_counter() - start, "peak_rss_mib": results[0]["peak_rss_mib"], **evaluate(Path(results[0]["run_dir"]))}

    per_block = args.steps // num_blocks
    config = short_run(data, out, per_block, "blocks")
    options = BlocksOptions(blocks=args.blocks, overlap=args.overlap, executor=args.executor, max_workers=args.workers, threads_per_block=args.threads)
    start = time.perf_counter()
    parent = train_blocks(config, options)
    wall = time.perf_counter() - start
    state = json.loads((parent / "blocks.json").read_text())
    blocks = [state["results"][str(b)] for b in range(num_blocks)]
    merged = {"run": f"{args.blocks} blocks, merged", "processes": num_blocks, "steps_per_process": per_block,
              "views_per_process": max(len(b["cameras"]) for b in state["partition"]["blocks"]),
              "wall_s": wall, "peak_rss_mib": max(b["peak_rss_mib"] for b in blocks), **evaluate(parent)}
    detail = [
        {"run": f"block {b}", "processes": 1, "steps_per_process": per_block, "views_per_process": len(info["cameras"]),
         "wall_s": blocks[b]["wall_s"], "peak_rss_mib": blocks[b]["peak_rss_mib"],
         "gaussians": f"{state['merged']['blocks'][b]['kept']} kept of {state['merged']['blocks'][b]['trained']}"}
        for b, info in enumerate(state["partition"]["blocks"])
    ]
    columns = ["run", "processes", "steps_per_process", "views_per_process", "wall_s", "peak_rss_mib", "gaussians", "psnr", "ssim", "test_images"]
    title = (f"Blocks: city {args.views} views {args.size}x{args.size}, one splat model vs {args.blocks} blocks (overlap {args.overlap:g}) at "
             f"{args.steps} total steps, {args.workers} blocks at a time ({args.executor}), {args.threads} thread(s) per process")
    print(append_results(title, columns, [one, merged, *detail], record=not args.no_record))


if __name__ == "__main__":
    main()
