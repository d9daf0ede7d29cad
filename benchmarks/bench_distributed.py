"""Benchmark: data-parallel training speed, 1 process vs 2 gloo processes with the same global batch.

    python -m benchmarks.bench_distributed [--cases nerf-hash-small,splat] [--steps N] [--no-record]

Every configuration trains the same global batch (nerf-hash-small: 1024 rays per step; splat: 2
whole images per step) on the built-in synthetic scene at 96x96 (16 training views; splat from
2000 random points, densification off so every configuration renders the same number of
Gaussians). Configurations: 1 process with 1 thread, 1 process with 2 threads, and 2 processes
(torchrun, gloo) with 1 thread each. Each runs in fresh processes; the first ``--warmup`` steps
are excluded. Reports steps per second and rays (or images) per second; the table is appended to
benchmarks/RESULTS.md. On a machine with C cores the fair comparison is 2 processes x C/2 threads
against 1 process x C threads: data parallelism pays only when each process gets devices (GPUs)
or cores of its own that one process could not use as well.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, append_results

CASES = {
    "nerf-hash-small": {"datamanager.train_num_rays_per_batch": 1024},
    "splat": {"datamanager.images_per_batch": 2, "model.num_random_points": 2000, "model.init": "random",
              "model.strategy.refine_start_iter": 10**6, "model.strategy.reset_every": 10**6},
}
CONFIGS = [(1, 1), (1, 2), (2, 1)]
"""(processes, threads per process)."""


def scene(root: Path) -> Path:
    from data.synthetic import SyntheticSceneConfig, generate_scene

    path = root / "scene96"
    if not (path / "transforms.json").is_file():
        generate_scene(path, SyntheticSceneConfig(width=96, height=96, num_train_views=16, num_test_views=2, supersample=1))
    return path


def child(case: str, data: Path, steps: int, warmup: int, output_dir: Path) -> None:
    """Train (one rank of) the case; rank 0 prints one JSON line of timings."""
    from recon.config import get_method, override
    from recon.engine import distributed
    from recon.engine.callbacks import Callback, Where
    from recon.engine.trainer import Trainer

    config = override(
        get_method(case).config, data=data, output_dir=output_dir, max_num_iterations=steps, steps_per_save=0, steps_per_eval_image=0,
        eval_at_end=False, device="cpu", timestamp="bench", **{"logging.progress_bar": False, "logging.tensorboard": False}, **CASES[case],
    )
    trainer = Trainer(config)
    marks: dict[int, float] = {}
    trainer.callbacks.append(Callback(lambda s, **_: marks.setdefault(s, time.perf_counter()), where=Where.BEFORE_STEP))
    trainer.train()
    end = time.perf_counter()
    if distributed.is_main():
        rate = (steps - warmup) / (end - marks[warmup])
        per_step = CASES[case].get("datamanager.train_num_rays_per_batch") or CASES[case].get("datamanager.images_per_batch")
        print(json.dumps({"steps_per_s": rate, "items_per_s": rate * per_step, "loss": trainer.history[-1][1]}))
    distributed.shutdown()


def measure(case: str, processes: int, threads: int, data: Path, steps: int, warmup: int, work: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = ["-m", "benchmarks.bench_distributed", "--child", case, str(data), str(steps), str(warmup), str(work / f"{case}-{processes}x{threads}")]
    command = [sys.executable, *args] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"bench_distributed: {case} on {processes} process(es) failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--steps", type=int, default=60, help="training steps per run (the first --warmup are not timed)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument("--child", nargs=5, metavar=("CASE", "DATA", "STEPS", "WARMUP", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        case, data, steps, warmup, out = a.child
        child(case, Path(data), int(steps), int(warmup), Path(out))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = scene(Path(tmp))
        for case in a.cases.split(","):
            if case not in CASES:
                raise SystemExit(f"bench_distributed: unknown case {case!r}; choose from {', '.join(CASES)}")
            unit = "rays" if "datamanager.train_num_rays_per_batch" in CASES[case] else "images"
            for processes, threads in CONFIGS:
                r = measure(case, processes, threads, data, a.steps, a.warmup, Path(tmp))
                rows.append({"method": case, "processes": processes, "threads_each": threads, "global_batch": f"{int(r['items_per_s'] / r['steps_per_s'])} {unit}",
                             "steps_per_s": r["steps_per_s"], "items_per_s": r["items_per_s"], "final_loss": r["loss"]})
                print(rows[-1], flush=True)
    columns = ["method", "processes", "threads_each", "global_batch", "steps_per_s", "items_per_s", "final_loss"]
    title = "Data-parallel training, 1 vs 2 processes (benchmarks/bench_distributed.py)"
    print(append_results(title, columns, rows, record=not a.no_record))


if __name__ == "__main__":
    main()
