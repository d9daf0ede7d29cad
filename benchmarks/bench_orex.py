"""Benchmark: OReX on every shape with a reference mesh, with the paper's ablation.

Shapes: ``eight_15``, ``Elephant``, ``balloondog``, ``lamp004_fixed`` (``<name>.csl`` beside
``<name>_scaled.stl`` in the shared ``orex`` folder; shapes whose files are missing are skipped
with a message), and ``thin-cylinders``: :func:`data.cross_sections.thin_cylinders` (seven disjoint
tilted cylinders of radius 0.015-0.05) cut by 12 z planes, written to the output folder.

Variants: the ``orex`` preset (the paper's network with T = 3 refinement steps, 9000 steps),
``orex-small`` (the same in 3000 steps), a plain MLP occupancy field (``orex-small`` with T = 1 and
no gradient hinge), the ablation the paper argues from, the paper's T = 10 on ``orex-small``'s
schedule, and, on request only, ``orex-official`` (the official 7800-step float64 schedule: hours
on a CPU). ``--steps-scale`` multiplies every level's steps (and the
learning-rate schedule's length).

Metrics, in the input's units: volumetric IoU against the reference (Monte-Carlo, 100k points),
Chamfer L1, Hausdorff, F-score at 1 % of the reference diagonal, and the **on-plane IoU** (issue
32): on each input plane, the IoU of the mesh's inside with the input contours' inside on a 256^2
grid (:meth:`data.cross_sections.CrossSections.plane_iou`), its mean and its worst plane; the
input is those contours, so a faithful reconstruction is near 1 there whatever it does between
planes. Marching cubes at ``--resolution``^3 (the field evaluated near its surface only:
``--coarse-stride``). Training time (wall clock, and the process's CPU time: with one thread, the CPU seconds the
training needed, which other processes on the machine do not inflate as much), meshing time. ``--extractors mc,dc``: every metric for the marching-cubes mesh and,
in the ``dc_`` columns, for the dual-contouring mesh of the same field (the official code's
extractor; :mod:`recon.geometry.dual_contouring`).

    python -m benchmarks.bench_orex [--shapes eight_15,thin-cylinders] [--variants 0,1,2] [--resolution 192] [--no-record]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from benchmarks.common import append_results, machine_description, shared_data
from data.cross_sections import axis_planes, slice_mesh, thin_cylinders, write_csl
from recon.config import get_method, override
from recon.engine.trainer import Trainer
from recon.geometry.dual_contouring import dual_contour
from recon.geometry.marching_cubes import extract_mesh
from recon.geometry.surface_metrics import mesh_metrics, points_inside, volumetric_iou

VARIANTS = {  # name -> (preset, run folder, config changes)
    "orex": ("orex", "orex", {}),
    "orex-small": ("orex-small", "small", {}),
    "plain MLP (orex-small, T=1, no hinge)": ("orex-small", "plain-mlp", {"model.num_iterations": 1, "model.gradient_hinge_weight": 0.0}),
    "paper's T=10 (orex-small, T=10)": ("orex-small", "t10", {"model.num_iterations": 10}),
    "orex-official (7800 steps, float64)": ("orex-official", "official", {}),
}
SHAPES = ("eight_15", "Elephant", "balloondog", "lamp004_fixed", "thin-cylinders")


def shape_files(name: str, out: Path) -> tuple[Path, Path] | None:
    """(.csl, reference mesh) of a shape, or None when its files are missing."""
    if name == "thin-cylinders":
        out.mkdir(parents=True, exist_ok=True)
        mesh = thin_cylinders()
        csl, ref = out / "thin-cylinders.csl", out / "thin-cylinders.stl"
        write_csl(slice_mesh(mesh, axis_planes(mesh, 2, 12)), csl)
        mesh.export(ref)
        return csl, ref
    folder = shared_data() / "orex"
    csl, ref = folder / f"{name}.csl", folder / f"{name}_scaled.stl"
    return (csl, ref) if csl.is_file() and ref.is_file() else None


def run(shape: str, csl: Path, ref: Path, name: str, resolution: int, out: Path, steps_scale: float, coarse_stride: int = 2,
        extractors: tuple[str, ...] = ("mc",)) -> dict:
    preset, folder, changes = VARIANTS[name]
    base = get_method(preset).config
    steps = tuple(max(1, round(s * steps_scale)) for s in base.datamanager.steps_per_level)
    cfg = override(
        base, data=csl, output_dir=out, steps_per_save=0, device="cpu", timestamp=folder, max_num_iterations=sum(steps),
        **{"logging.progress_bar": False, "logging.tensorboard": False, "datamanager.steps_per_level": steps,
           "optimizers.fields.scheduler.max_steps": sum(steps)}, **changes,
    )
    trainer = Trainer(cfg)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    train_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    row = {"shape": shape, "variant": name, "steps": cfg.max_num_iterations, "train_s": train_s, "train_cpu_s": cpu_s}
    for extractor in extractors:
        start = time.perf_counter()
        with torch.no_grad():
            if extractor == "dc":
                mesh = dual_contour(trainer.model.sdf, trainer.outputs.scene_box.aabb, resolution, coarse_stride=coarse_stride)
            else:
                mesh = extract_mesh(trainer.model.sdf, trainer.outputs.scene_box.aabb, resolution, coarse_stride=coarse_stride)
        mesh_s = time.perf_counter() - start
        # On-plane IoU in the normalised frame of the sections the model was trained on.
        planes = trainer.datamanager.sections.plane_iou(lambda p: points_inside(mesh, p))
        mesh.vertices = trainer.outputs.transform_to_input(torch.as_tensor(mesh.vertices)).numpy()
        reference = trimesh.load(ref)
        m = mesh_metrics(mesh, reference, num_points=100_000)
        pre = "" if extractor == "mc" else "dc_"
        row.update({
            f"{pre}mesh_s": mesh_s,
            f"{pre}iou": volumetric_iou(mesh, reference, num_points=100_000),
            f"{pre}plane_iou": float(np.nanmean(planes)),
            f"{pre}plane_iou_min": float(np.nanmin(planes)),
            f"{pre}chamfer_l1": m["chamfer_l1"],
            f"{pre}hausdorff": m["hausdorff"],
            f"{pre}fscore@1%": m["fscore"],
            f"{pre}watertight": bool(mesh.is_watertight),
        })
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--resolution", type=int, default=192)
    ap.add_argument("--variants", default="0,1,2", help="indices of the variants to run (0 orex, 1 orex-small, 2 plain MLP, 3 T=10, 4 orex-official: hours)")
    ap.add_argument("--coarse-stride", type=int, default=2, help="marching cubes evaluates the field at every n-th sample first (1: dense)")
    ap.add_argument("--extractors", default="mc,dc", help="mc (marching cubes) and/or dc (dual contouring), comma-separated")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every level's steps by this")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench_orex"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    names = list(VARIANTS)
    rows = []
    for shape in args.shapes.split(","):
        files = shape_files(shape, args.output_dir / "shapes")
        if files is None:
            print(f"skipping {shape}: {shape}.csl / {shape}_scaled.stl not in {shared_data() / 'orex'}")
            continue
        for i in args.variants.split(","):
            row = run(shape, *files, names[int(i)], args.resolution, args.output_dir / shape, args.steps_scale, args.coarse_stride,
                      tuple(args.extractors.split(",")))
            print({k: row[k] for k in ("shape", "variant", "iou", "plane_iou", "plane_iou_min", "dc_iou", "dc_plane_iou", "train_s") if k in row}, flush=True)
            rows.append(row)
    metrics = ["mesh_s", "iou", "plane_iou", "plane_iou_min", "chamfer_l1", "hausdorff", "fscore@1%", "watertight"]
    columns = ["shape", "variant", "steps", "train_s", "train_cpu_s"] + [f"{pre}{m}" for e, pre in (("mc", ""), ("dc", "dc_")) if e in args.extractors.split(",") for m in metrics]
    title = f"OReX against reference meshes, marching cubes at {args.resolution}^3, coarse stride {args.coarse_stride} (benchmarks/bench_orex.py)"
    table = append_results(title, columns, rows, record=not args.no_record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
