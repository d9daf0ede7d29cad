"""Benchmark: ``ns-process-data images`` on NeRF-synthetic lego (400x400): time per stage and pose
error against lego's ground truth, for 30, 100 and 200 photos.

The photos are lego's renders composited onto white (what a camera would record; COLMAP reads
grey and ignores alpha): 30 evenly spaced training views, all 100 training views, and those plus
every other of the 200 test views. Matching is what ``auto`` chooses (exhaustive up to 200
images) unless ``--matching-method`` says otherwise. Pose error: after the similarity that best
maps the recovered camera centres onto the true ones (Umeyama 1991), the rotation angle and the
centre distance as a fraction of the cameras' RMS distance from their centroid (lego's cameras
orbit at radius 4, so 1 % is 0.04 units).

    python -m benchmarks.bench_process_data [--counts 30 100 200] [--matching-method auto]

Prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import data.process.cli as process_cli
from benchmarks.common import append_results, shared_data
from data.process.cli import ImagesConfig
from data.process.poses import pose_errors

STAGES = ("inputs", "features", "matching", "mapping", "output")


def lego_views(lego: Path, count: int) -> list[tuple[Path, np.ndarray]]:
    """(image path, OpenGL camera-to-world [4, 4]) of ``count`` lego views (see the module docstring)."""
    def split(name: str) -> list[tuple[Path, np.ndarray]]:
        meta = json.loads((lego / f"transforms_{name}.json").read_text())
        return [(lego / f"{f['file_path']}.png", np.array(f["transform_matrix"])) for f in meta["frames"]]

    train = split("train")
    if count <= len(train):
        return [train[i] for i in np.round(np.linspace(0, len(train) - 1, count)).astype(int)]
    extra = split("test")[::2][: count - len(train)]
    if len(train) + len(extra) < count:
        raise SystemExit(f"lego has {len(train) + len(extra)} usable views, asked for {count}")
    return train + extra


def run(lego: Path, count: int, matching: str, work: Path) -> dict:
    views = lego_views(lego, count)
    photos = work / f"photos_{count}"
    photos.mkdir()
    for i, (path, _) in enumerate(views):
        with Image.open(path) as rgba:
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            white.alpha_composite(rgba.convert("RGBA"))
            white.convert("RGB").save(photos / f"IMG_{i + 1:04d}.png")
    t0 = time.perf_counter()
    result = ImagesConfig(data=photos, output_dir=work / f"out_{count}", matching_method=matching).run()
    total = time.perf_counter() - t0
    meta = json.loads((result.output_dir / "transforms.json").read_text())
    index = {f"IMG_{i + 1:04d}.png": i for i in range(count)}
    sources = {f"images/frame_{i + 1:05d}.png": f"IMG_{i + 1:04d}.png" for i in range(count)}
    est = np.stack([np.array(f["transform_matrix"]) for f in meta["frames"]])
    ref = np.stack([views[index[sources[f["file_path"]]]][1] for f in meta["frames"]])
    errors = pose_errors(est, ref)
    worst = np.argsort(errors.rotation_deg)[::-1][:3]
    print("largest rotation errors:", [(sources[meta["frames"][i]["file_path"]], round(float(errors.rotation_deg[i]), 2)) for i in worst])
    fov = 2 * np.degrees(np.arctan(meta["w"] / 2 / meta["fl_x"]))
    return {
        "images": count, "matching": result.matching, "registered": len(result.registered),
        **{f"{stage}_s": result.timings[stage] for stage in STAGES}, "total_s": total,
        "rot_median_deg": float(np.median(errors.rotation_deg)), "rot_max_deg": float(errors.rotation_deg.max()),
        "pos_median_pct": 100 * float(np.median(errors.position)), "pos_max_pct": 100 * float(errors.position.max()),
        "off_5deg": int((errors.rotation_deg > 5).sum()),
        "fov_deg": float(fov), "points": result.num_points, "reproj_px": result.reprojection_error,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[30, 100, 200])
    ap.add_argument("--matching-method", default="auto", choices=["auto", "exhaustive", "sequential"])
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the photos and datasets here (default: a temporary folder)")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    lego = shared_data() / "lego"
    # Measure captures the command would refuse (fewer than half registered) too; the table says so.
    process_cli.MIN_REGISTERED_FRACTION = 0.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for count in args.counts:
            rows.append(run(lego, count, args.matching_method, work))
            print(rows[-1], flush=True)
    columns = ["images", "matching", "registered", *(f"{s}_s" for s in STAGES), "total_s", "rot_median_deg", "rot_max_deg",
               "pos_median_pct", "pos_max_pct", "off_5deg", "fov_deg", "points", "reproj_px"]
    print(append_results("ns-process-data on lego 400x400: time per stage and pose error (benchmarks/bench_process_data.py)",
                         columns, rows, record=not args.no_record))


if __name__ == "__main__":
    main()
