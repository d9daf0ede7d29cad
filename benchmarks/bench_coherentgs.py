"""Benchmark: CoherentGS against splat (3DGS) with the same sparse views of LLFF fern (issue 6).

    python benchmarks/bench_coherentgs.py [--views 3] [--steps 200] [--image-scale 0.25] [--lr-factors 1,5] [--methods splat-sfm,splat-random,coherentgs]
    python benchmarks/bench_coherentgs.py --steps 13000 --splat-steps 30000 --multisample-max 4 --eval-every 1000   # each method's own schedule, with learning curves

LLFF protocol: every 8th image (0, 8, 16) is a test view; the K training views are
``round(linspace(0, n_train - 1, K))`` over the other 17 (RegNeRF; K = 3 gives images 1, 10, 19);
images_8 (504x378) times ``--image-scale``. Both methods train the same steps with the same seed
(or splat ``--splat-steps``: the paper compares against 3DGS's own 30k-step schedule); coherentgs uses :func:`methods.coherentgs.short_schedule` (its 13k-step schedule compressed to
``--steps``, learning rates times each ``--lr-factor``). PSNR/SSIM on every test view; the table is
appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import append_results, machine_description, shared_data, train_and_evaluate


SPLAT_BASELINES = (
    ("splat-sfm", "sfm", "train-views", "splat (sfm init, train-view points)"),
    ("splat-sfm-all", "sfm", "all", "splat (sfm init, all points)"),
    ("splat-random", "random", "train-views", "splat (random init)"),
)
"""(--methods name, model.init, few_shot_points, table label) of the 3DGS baselines."""


def _printer(name: str, views: int):
    """Print each learning-curve point as it is measured (a run cut short still reports its curve)."""

    def show(p: dict) -> None:
        extra = f", {p['gaussians']} Gaussians" if "gaussians" in p else ""
        print(f"[curve] {name}, {views} views, step {p['step']}: test {p['psnr']:.2f} dB / {p['ssim']:.3f}, train {p['train_psnr']:.2f} dB{extra}", flush=True)

    return show


def _resumed(changes: dict, output_dir: Path, method: str, resume: bool) -> dict:
    """``changes`` plus ``load_dir`` when ``resume`` and the run (``output_dir``/fern/method/timestamp) has a checkpoint."""
    from recon.engine.checkpoint import list_checkpoints

    run = output_dir / "fern" / method / changes["timestamp"]
    steps = list_checkpoints(run / "checkpoints") if resume else []
    if not steps:
        return changes
    print(f"resuming {run} from step {steps[-1]} (train_s counts the steps after it)", flush=True)
    return {**changes, "load_dir": run}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", default="3", help="comma-separated numbers of training views")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--splat-steps", type=int, default=0, help="steps of the splat baselines (0: --steps); splat's own schedule is 30000")
    ap.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: none), to evaluate a long run that is cut short")
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate test and training views every N steps (a learning-curve table)")
    ap.add_argument("--image-scale", type=float, default=0.25, help="scale of images_8 (1 = the full 504x378 protocol)")
    ap.add_argument("--lr-factors", default="1", help="comma-separated learning-rate factors of coherentgs")
    ap.add_argument("--multisample-max", type=int, default=2, help="largest supersampling factor of coherentgs (official 4)")
    ap.add_argument(
        "--methods",
        default="splat-sfm,splat-random,coherentgs",
        help="splat-sfm: 3DGS from the COLMAP points seen by >= 2 training views; splat-sfm-all: from all of them (made from all 20 images,"
        " test views included); splat-random: 3DGS from random points",
    )
    ap.add_argument(
        "--splat-refine-every",
        type=int,
        default=0,
        help="compress splat's densification into the run (from steps/10 to 3/4 of it, every N steps, as bench_splat does); 0: splat's defaults (none before step 500)",
    )
    ap.add_argument(
        "--splat-global-scale",
        type=float,
        default=1.0,
        help="splat's model.global_scale (factor on the camera extent behind its size thresholds); 1: 3DGS as the paper runs it,"
        " 10: the scale that keeps 3 close cameras from collapsing it (RESULTS.md)",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue each run from its latest checkpoint in --output-dir (with --save-every: a long run in pieces, e.g. on a device"
        " that limits each command to 10 minutes); curves then start at the resumed step",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    from methods.coherentgs import short_schedule

    print(machine_description())
    data = shared_data() / "fern"
    rows = []
    for views in (int(v) for v in args.views.split(",")):
        common = {"num_train_views": views, "datamanager.image_scale": args.image_scale, "steps_per_save": args.save_every}
        splat_steps = args.splat_steps or args.steps
        label = f"fern images_8 x{args.image_scale:g}, {views} views"
        for name, init, points, title in SPLAT_BASELINES:
            if name in args.methods.split(","):
                changes = {**common, "model.init": init, "dataparser.few_shot_points": points, "timestamp": f"{name}-{views}"}
                if args.splat_global_scale != 1.0:
                    changes["model.global_scale"] = args.splat_global_scale
                if args.splat_refine_every:
                    changes.update({
                        "model.strategy.refine_start_iter": min(500, splat_steps // 10),
                        "model.strategy.refine_every": args.splat_refine_every,
                        "model.strategy.refine_stop_iter": 3 * splat_steps // 4,
                    })
                changes = _resumed(changes, args.output_dir, "splat", args.resume)
                trainer, row = train_and_evaluate(
                    "splat", data, args.output_dir, splat_steps, 1, args.device, args.eval_every, on_point=_printer(name, views), **changes
                )
                refine = f", densify every {args.splat_refine_every}" if args.splat_refine_every else ""
                if args.splat_global_scale != 1.0:
                    refine += f", global_scale {args.splat_global_scale:g}"
                rows.append({**row, "method": title + refine, "data": label, "lr_factor": "", "gaussians": trainer.model.num_primitives})
                print(rows[-1], flush=True)
        if "coherentgs" in args.methods:
            for factor in (float(f) for f in args.lr_factors.split(",")):
                changes = {**common, **short_schedule(args.steps, factor), "model.multisample_max": args.multisample_max, "timestamp": f"coherentgs-{views}-{factor:g}"}
                changes = _resumed(changes, args.output_dir, "coherentgs", args.resume)
                trainer, row = train_and_evaluate(
                    "coherentgs", data, args.output_dir, args.steps, 1, args.device, args.eval_every,
                    on_point=_printer(f"coherentgs lr x{factor:g}", views), **changes,
                )
                rows.append({**row, "data": label, "lr_factor": factor, "gaussians": trainer.model.num_primitives})
                print(rows[-1], flush=True)
    columns = ["method", "data", "steps", "lr_factor", "train_s", "psnr", "ssim", "test_images", "gaussians", "device"]
    print(append_results("CoherentGS vs splat, LLFF fern sparse views (benchmarks/bench_coherentgs.py)", columns, rows, record=not args.no_record))
    if args.eval_every:
        curve = [{"method": r["method"], "data": r["data"], "lr_factor": r["lr_factor"], "of_steps": r["steps"], **p} for r in rows for p in r["curve"]]
        columns = ["method", "data", "lr_factor", "step", "of_steps", "psnr", "ssim", "train_psnr", "gaussians"]
        print(append_results("CoherentGS vs splat, fern learning curves (benchmarks/bench_coherentgs.py --eval-every)", columns, curve, record=not args.no_record))


if __name__ == "__main__":
    main()
