"""Benchmark: ``3dcs`` (3D Convex Splatting) against ``splat`` (3DGS) in one run, at equal steps and
at an equal primitive budget, on NeRF-synthetic lego and on LLFF fern.

    python -m benchmarks.bench_3dcs [--scenes lego,fern] [--steps 3000] [--modes steps,budget]
        [--lego-scale 0.5] [--fern-scale 0.5] [--random-points 20000] [--test-every 1] [--time-budget S]
        [--set 3dcs:optimizers.opacities.lr=0.05 ...]

Data: lego at ``--lego-scale`` of the shared 400x400 copy (0.5: the issue's 200x200; white
background; every test view); fern with its LLFF hold-out (every 8th of the 20 photos is a test
view, 3 of them), at ``--fern-scale`` of the shared 504x378.

Schedules: both methods' official 30k-step schedules compressed uniformly to ``--steps`` (every
step-numbered event -- refinement start / stop / interval, opacity resets, SH degree steps,
post-refinement pruning -- multiplied by steps / 30000, as ``3dcs-small`` does; the optimizers'
decays rescaled by the harness), except that the start of refinement and the intervals between
refinements, opacity resets and late prunings are multiplied by at most ``--interval-floor``
(default 1/4): compressed 30x, 3dcs would refine every 7 steps from step 17 of 1000, when 84 % of
lego's random convexes are over the split threshold (the model has not settled) and the children,
at half their parent's opacity, have no time to regain it before the next split prunes them (fern
at 1000 steps: 30k -> 111k -> 46k convexes between steps 21 and 28). Splat's interval is half of
3dcs's in both schedules, so the floor keeps their ratio. ``3dcs`` runs its default (indoor) preset with
``delta_reference_width`` 1000 (its initial smoothness is set for 1000-pixel images; without it a
convex at 200 px covers the whole image), ``splat`` 3DGS's defaults.

Modes:
- ``steps``: each method with its own densification from the same start (lego: ``--random-points``
  random primitives in the scene box; fern: the SfM points): equal steps, whatever count each grows to.
- ``budget``: densification, pruning and opacity resets off for both, from the same start: an equal,
  fixed primitive budget, so the comparison is of the primitives themselves.

``--set METHOD:KEY=VALUE`` (repeatable) changes one config value of one method's runs (the value
read as a Python literal, else a string); such rows name the change in ``method``.

Columns: PSNR / SSIM over the test views, final primitive count, peak resident memory of the
process (the runs share one process: the peak is the largest so far, so read memory from the
first row of a scene or run one method per process with ``--methods``), training time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import append_results, machine_description, parse_sets, shared_data, train_and_evaluate

OFFICIAL_STEPS = 30_000


def _scaled(value: int, r: float, floor: int = 1) -> int:
    return max(floor, round(value * r))


def schedule(method: str, steps: int, mode: str, interval_floor: float = 0.25) -> dict:
    """Config changes that compress ``method``'s official event schedule to ``steps`` (module docstring).
    The start of refinement and the intervals between refinements, resets and late prunings are
    compressed by max(steps / 30000, ``interval_floor``), the rest by steps / 30000."""
    r = steps / OFFICIAL_STEPS
    ri = max(r, interval_floor)
    if method == "splat":
        changes = {
            "model.sh_degree_interval": _scaled(1000, r),
            "model.strategy.refine_start_iter": _scaled(500, ri),
            "model.strategy.refine_stop_iter": _scaled(15_000, r),
            "model.strategy.refine_every": _scaled(100, ri),
            "model.strategy.reset_every": _scaled(3000, ri),
        }
        if mode == "budget":  # no refinement (growth, pruning) and no reset: DefaultStrategy does both only before refine_stop_iter
            changes["model.strategy.refine_stop_iter"] = 0
        return changes
    changes = {
        "model.sh_degree_interval": _scaled(1000, r),
        "model.strategy.refine_start_iter": _scaled(500, ri),
        "model.strategy.refine_stop_iter": _scaled(9500, r),
        "model.strategy.refine_every": _scaled(200, ri),
        "model.strategy.prune_every_after": _scaled(1000, ri),
        "model.strategy.reset_every": _scaled(3000, ri),
        "model.strategy.reset_until": _scaled(9000, r),
        "model.delta_reference_width": 1000.0,
    }
    if mode == "budget":
        changes.update({
            "model.strategy.refine_stop_iter": 0, "model.strategy.reset_until": 0,
            "model.strategy.prune_every_after": 10 * steps + 1,
        })
    return changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default="lego,fern")
    ap.add_argument("--methods", default="3dcs,splat")
    ap.add_argument("--modes", default="steps,budget")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lego-scale", type=float, default=0.5)
    ap.add_argument("--fern-scale", type=float, default=0.5)
    ap.add_argument("--random-points", type=int, default=20_000)
    ap.add_argument("--test-every", type=int, default=1)
    ap.add_argument("--interval-floor", type=float, default=0.25,
                    help="compress the start of refinement and the intervals between events by at most this factor (see Schedules)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="end a run's training after this many seconds (the row's steps then say how far it got)")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="change one config value of one method's runs (repeatable)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench_3dcs"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    sets = parse_sets(args.set)
    rows = []
    for scene in args.scenes.split(","):
        if scene not in ("lego", "fern"):
            raise SystemExit(f"unknown scene {scene!r} (lego, fern)")
        for mode in args.modes.split(","):
            for method in args.methods.split(","):
                changes = {
                    **schedule(method, args.steps, mode, args.interval_floor),
                    "datamanager.image_scale": args.lego_scale if scene == "lego" else args.fern_scale,
                    "model.num_random_points": args.random_points,
                    "timestamp": f"{scene}-{mode}",
                    **sets.get(method, {}),
                }
                trainer, row = train_and_evaluate(
                    method, shared_data() / scene, args.output_dir, args.steps, args.test_every, args.device,
                    time_budget_s=args.time_budget, **changes,
                )
                cams = trainer.datamanager.train_dataset.cameras
                label = ", ".join(f"{k}={v}" for k, v in sets.get(method, {}).items())
                row.update(
                    method=f"{method} ({label})" if label else method, mode=mode, data=f"{scene} {int(cams.width[0])}x{int(cams.height[0])}",
                    train_views=len(trainer.datamanager.train_dataset), primitives=trainer.model.num_primitives,
                )
                print({k: row[k] for k in ("method", "mode", "data", "psnr", "ssim", "primitives", "train_s")}, flush=True)
                rows.append(row)
    columns = ["method", "mode", "data", "train_views", "steps", "train_s", "steps_per_s", "primitives", "peak_mem_mb",
               "psnr", "ssim", "test_images", "device"]
    table = append_results("3dcs vs splat at equal steps and equal primitive budget (benchmarks/bench_3dcs.py)", columns, rows,
                           record=not args.no_record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
