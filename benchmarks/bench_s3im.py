"""Benchmark: the S3IM loss on and off at equal steps, in the same run.

    python benchmarks/bench_s3im.py [--parts lego-sparse,lego-all,neus-synthetic,neus-dtu] [--weights 1.0] ...

- lego-sparse / lego-all: nerf-hash-small on NeRF-synthetic lego at 100x100 with 10 training views
  (sparse, where the paper reports its largest gains) and with all 100; PSNR/SSIM on every 8th test view.
- neus-synthetic: neus-small on the default synthetic scene; PSNR and the mesh against the ground
  truth (Chamfer-L1, F-score at 2 % with visible-surface recall), as bench_neus.py.
- neus-dtu: neus-small on dtu_scan24 of the external datasets (docs/architecture.md, section 10),
  scaled by --dtu-scale; PSNR on the RegNeRF test views.

The CPU presets stand in for nerf-hash / neus (the full presets do not train on 2 CPU cores in a
benchmark's time). Every row uses the same seed; only ``model.s3im.weight`` differs. Each part
prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.bench_neus import dtu, synthetic
from benchmarks.common import append_results, machine_description, shared_data, train_and_evaluate


def lego(views: int | None, steps: int, weights: list[float], out: Path, device: str) -> list[dict]:
    rows = []
    for weight in [0.0, *weights]:
        changes = {"datamanager.image_scale": 0.25, "model.s3im.weight": weight, "timestamp": f"s3im-{weight}-{views}"}
        if views is not None:
            changes["num_train_views"] = views
        _, row = train_and_evaluate("nerf-hash-small", shared_data() / "lego", out, steps, 8, device, **changes)
        rows.append({**row, "data": f"lego 100x100, {views or 100} views", "s3im_weight": weight})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="lego-sparse,lego-all,neus-synthetic,neus-dtu")
    ap.add_argument("--weights", default="1.0", help="comma-separated S3IM weights compared with 0")
    ap.add_argument("--lego-steps", type=int, default=850)
    ap.add_argument("--neus-steps", type=int, default=1000)
    ap.add_argument("--dtu-scale", type=float, default=0.5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    parts, record = args.parts.split(","), not args.no_record
    print(machine_description())
    columns = ["method", "data", "s3im_weight", "steps", "train_s", "psnr", "ssim", "test_images", "device"]
    for part, views in (("lego-sparse", 10), ("lego-all", None)):
        if part in parts:
            rows = lego(views, args.lego_steps, weights, args.output_dir, args.device)
            print(append_results(f"S3IM on nerf-hash-small, {part} (benchmarks/bench_s3im.py)", columns, rows, record=record))
    if "neus-synthetic" in parts:
        rows = [
            {**synthetic(args.neus_steps, args.output_dir, args.device, **{"model.s3im.weight": w, "timestamp": f"s3im-{w}"}), "s3im_weight": w}
            for w in [0.0, *weights]
        ]
        cols = [*columns[:-2], "chamfer_l1", "fscore_2pct", "fscore_visible", "device"]
        print(append_results("S3IM on neus-small, synthetic scene (benchmarks/bench_s3im.py)", cols, rows, record=record))
    if "neus-dtu" in parts:
        rows = [
            {**dtu(args.neus_steps, args.dtu_scale, args.output_dir, args.device, **{"model.s3im.weight": w, "timestamp": f"s3im-{w}"}), "s3im_weight": w}
            for w in [0.0, *weights]
        ]
        print(append_results("S3IM on neus-small, DTU scan 24 (benchmarks/bench_s3im.py)", columns, rows, record=record))


if __name__ == "__main__":
    main()
