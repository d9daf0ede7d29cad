"""Benchmark: training speed on the CPU with each host-memory policy (``--host-memory cache|system``).

    python -m benchmarks.bench_host_memory [--cases coherentgs-fern,splat-lego] [--steps N]

Each (case, policy) trains in its own process, because the policy (glibc ``mallopt``, see
recon/engine/host_memory.py) is process-wide. Reports seconds per step, minor page faults, the CPU
time spent in the kernel and the peak resident size; the table is appended to benchmarks/RESULTS.md.
Cases: ``coherentgs-fern``: CoherentGS on fern images_8 at 504x378 (3 views, 571k Gaussians; the
benchmark schedule of bench_coherentgs compressed to 300 steps, so 2x multisampling starts at step 5);
``splat-lego``: splat on lego at 200x200 from 20k random points (no densification in these steps).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from benchmarks.common import REPO, append_results, machine_description, shared_data

CASES = {"coherentgs-fern": 12, "splat-lego": 200}
"""Case name: its default number of steps."""


def _changes(case: str) -> tuple[str, Path, dict]:
    if case == "coherentgs-fern":
        from methods.coherentgs import short_schedule

        schedule = {k: v for k, v in short_schedule(300, 10).items() if k != "max_num_iterations"}
        return "coherentgs", shared_data() / "fern", {"num_train_views": 3, "datamanager.image_scale": 1.0, **schedule}
    if case == "splat-lego":
        return "splat", shared_data() / "lego", {"datamanager.image_scale": 0.5, "model.num_random_points": 20_000}
    raise SystemExit(f"bench_host_memory: unknown case {case!r}; choose from {', '.join(CASES)}")


def child(case: str, policy: str, steps: int, output_dir: Path) -> None:
    """Train ``steps`` steps and print one JSON line of measurements (run in a fresh process)."""
    from benchmarks.common import train_and_evaluate

    method, data, changes = _changes(case)
    before = resource.getrusage(resource.RUSAGE_SELF)
    _, row = train_and_evaluate(method, data, output_dir, steps, 8, "cpu", host_memory=policy, timestamp=f"{case}-{policy}", **changes)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "s_per_step": row["train_s"] / steps, "minflt": after.ru_minflt - before.ru_minflt,
        "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
        "peak_rss_mb": after.ru_maxrss / 1024, "psnr": row["psnr"],
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--steps", type=int, default=0, help="training steps of every case (0: each case's default, " + ", ".join(f"{k} {v}" for k, v in CASES.items()) + ")")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "POLICY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.steps, args.output_dir)
        return
    print(machine_description())
    rows = []
    for case in args.cases.split(","):
        _changes(case)  # an unknown case fails before any run
        steps = args.steps or CASES[case]
        for policy in ("system", "cache"):
            cmd = [sys.executable, "-m", "benchmarks.bench_host_memory", "--child", case, policy, "--steps", str(steps), "--output-dir", str(args.output_dir)]
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"bench_host_memory: {case} with {policy} failed:\n{done.stderr[-2000:]}")
            row = {"case": case, "host_memory": policy, "steps": steps, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(row, flush=True)
    columns = ["case", "host_memory", "steps", "s_per_step", "minflt", "user_s", "sys_s", "peak_rss_mb", "psnr"]
    print(append_results("Host-memory policy on the CPU (benchmarks/bench_host_memory.py)", columns, rows, record=not args.no_record))


if __name__ == "__main__":
    main()
