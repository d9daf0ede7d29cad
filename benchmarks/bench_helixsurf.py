"""Benchmark: helixsurf-small against neus-small (and volsdf-small) on the synthetic scene at equal
steps, in one run.

    python -m benchmarks.bench_helixsurf [--steps 3000] [--methods helixsurf-small,neus-small,volsdf-small] [--parts synthetic,dtu]

Data: the default synthetic scene (64x64, 32 train / 8 test views). helixsurf-small trains on
neus-small's networks and sampler, plus PatchMatch MVS depth and normals (round 0 from random
planes before the first step, later rounds from the SDF); its helix schedule (rounds, loss decay,
normal gate) is scaled with ``--steps`` the way the optimizer schedules are (the preset's is for
3000 steps). ``volsdf-small`` is bench_objectsdf's. Columns: Chamfer-L1, F-score at 2 % of the scene
size and normal consistency of the marching-cubes mesh (128^3) against the reference mesh, the
visible-surface F-score, test PSNR, training time, and for helixsurf the seconds and kept fraction
of its PatchMatch rounds.

``--parts dtu``: the same methods on DTU scan 24 (the shared MonoSDF copy, 384 x 384 scaled by
``--dtu-scale``, all 49 views train, bench_neus's protocol): PSNR on the RegNeRF test views (training
views, as in NeuS's DTU protocol), the mesh (256^3, PLY) and a shaded picture of it from the first
camera. There are no surface metrics: the shared copy has no DTU reference points.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import trimesh

from benchmarks.bench_neus import dtu, export_mesh
from benchmarks.bench_objectsdf import VOLSDF_SMALL
from benchmarks.common import append_results, machine_description, parse_sets, train_and_evaluate
from recon.geometry.surface_metrics import mesh_metrics, visible_surface_fscore


def helix_schedule(steps: int) -> dict:
    """helixsurf-small's round length, loss-decay steps and normal gate for a run of ``steps`` (the
    preset: rounds every 1000 of 3000 steps, decay at 1250 / 1875)."""
    from methods.helixsurf import SMALL_ROUND, SMALL_STEPS

    scale = steps / SMALL_STEPS
    round_steps = max(1, round(SMALL_ROUND * scale))
    return {"model.helix.refresh_every": round_steps, "model.normal_gate_steps": round_steps,
            "model.decay_steps": (round(1250 * scale), round(1875 * scale))}


def surface_row(trainer, scene: Path) -> dict:
    mesh, _, _ = export_mesh(trainer, 128)
    gt = trimesh.load(scene / "mesh.ply")
    seen = np.asarray(trimesh.load(scene / "sparse_pc.ply").vertices)
    tau = 0.02 * float(gt.extents.max())
    full = mesh_metrics(mesh, gt, num_points=100_000, threshold=tau)
    vis = visible_surface_fscore(mesh, gt, seen, tau, num_points=100_000)
    return {"chamfer_l1": full["chamfer_l1"], "fscore_2pct": full["fscore"], "normal_consistency": full.get("normal_consistency"),
            "fscore_visible": vis["fscore"]}


def run(method: str, steps: int, out: Path, device: str, dtu_scale: float | None = None, sets: dict | None = None) -> dict:
    """One method on the synthetic scene, or on DTU scan 24 at ``dtu_scale`` when given; ``sets``:
    config changes of this method's run (``--set``)."""
    from data.synthetic import default_scene_path

    changes = {"volsdf-small": VOLSDF_SMALL}.get(method, {})
    base = "neus-small" if method == "volsdf-small" else method
    if base.startswith("helixsurf"):
        changes = helix_schedule(steps)
    changes = {**changes, **(sets or {})}
    start = time.perf_counter()
    if dtu_scale is not None:
        trainer, row = dtu(steps, dtu_scale, out, device, base, timestamp=method, return_trainer=True, **changes)
    else:
        scene = default_scene_path()
        trainer, row = train_and_evaluate(base, scene, out, steps, 1, device, timestamp=method, **changes)
        row.update(data="synthetic 64x64", **surface_row(trainer, scene))
    label = ", ".join(f"{k}={v}" for k, v in (sets or {}).items())
    row["method"] = f"{method} ({label})" if label else method
    rounds = getattr(trainer.model, "helix_rounds", [])
    if rounds:
        row["mvs_rounds"] = len(rounds)
        row["mvs_s_per_round"] = float(np.mean([r["mvs_patchmatch_s"] + r["mvs_filter_s"] + r["mvs_render_s"] for r in rounds]))
        row["mvs_kept"] = ", ".join(f"{r['mvs_kept']:.2f}" for r in rounds)
    row["wall_s"] = time.perf_counter() - start
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--methods", default="helixsurf-small,neus-small,volsdf-small")
    ap.add_argument("--parts", default="synthetic", help="comma-separated: synthetic, dtu")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="change one config value of one method's runs (repeatable), e.g. helixsurf-small:model.helix.clean.enabled=True")
    ap.add_argument("--dtu-scale", type=float, default=0.25, help="DTU image scale (384 x 384 at 1)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    print(machine_description())
    methods, parts, sets = args.methods.split(","), args.parts.split(","), parse_sets(args.set)
    mvs = ["mvs_rounds", "mvs_s_per_round", "mvs_kept", "device"]
    if "synthetic" in parts:
        rows = [run(m, args.steps, args.output_dir, args.device, sets=sets.get(m)) for m in methods]
        columns = ["method", "data", "steps", "train_s", "psnr", "chamfer_l1", "fscore_2pct", "normal_consistency", "fscore_visible", *mvs]
        print(append_results("helixsurf vs neus / volsdf at equal steps on the synthetic scene (benchmarks/bench_helixsurf.py)", columns, rows,
                             record=not args.no_record))
    if "dtu" in parts:
        rows = [run(m, args.steps, args.output_dir, args.device, dtu_scale=args.dtu_scale, sets=sets.get(m)) for m in methods]
        columns = ["method", "data", "steps", "train_s", "psnr", "ssim", "test_images", "vertices", "picture", "mesh", *mvs]
        print(append_results("helixsurf vs neus / volsdf at equal steps on DTU scan 24 (benchmarks/bench_helixsurf.py)", columns, rows,
                             record=not args.no_record))


if __name__ == "__main__":
    main()
