"""Benchmark: OReX on eight_15.csl against its reference mesh, with the paper's ablation.

Rows: the ``orex-small`` preset; the same schedule with the paper's network (T = 10, float64);
and a plain MLP occupancy field (T = 1, no gradient hinge), the ablation the paper argues from.
Metrics in the input's units: volumetric IoU, Chamfer L1, Hausdorff, F-score at 1% of the
reference diagonal; training and meshing time.

    python -m benchmarks.bench_orex [--resolution 96] [--no-record]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import trimesh

from benchmarks.common import append_results, machine_description, shared_data
from recon.config import get_method, override
from recon.engine.trainer import Trainer
from recon.geometry.marching_cubes import extract_mesh
from recon.geometry.surface_metrics import mesh_metrics, volumetric_iou

VARIANTS = {  # name -> (run folder, config changes)
    "orex-small": ("small", {}),
    "orex-small, paper network (T=10, float64)": ("paper-network", {"model.num_iterations": 10, "model.float64": True}),
    "plain MLP (T=1, no hinge)": ("plain-mlp", {"model.num_iterations": 1, "model.gradient_hinge_weight": 0.0}),
}


def run(name: str, resolution: int, out: Path) -> dict:
    folder, changes = VARIANTS[name]
    data = shared_data() / "orex"
    cfg = override(
        get_method("orex-small").config, data=data / "eight_15.csl", output_dir=out, steps_per_save=0, device="cpu",
        timestamp=folder, **{"logging.progress_bar": False, "logging.tensorboard": False}, **changes,
    )
    trainer = Trainer(cfg)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        mesh = extract_mesh(trainer.model.sdf, trainer.outputs.scene_box.aabb, resolution)
    mesh_s = time.perf_counter() - start
    mesh.vertices = trainer.outputs.transform_to_input(torch.as_tensor(mesh.vertices)).numpy()
    reference = trimesh.load(data / "eight_15_scaled.stl")
    m = mesh_metrics(mesh, reference, num_points=100_000)
    return {
        "variant": name,
        "steps": cfg.max_num_iterations,
        "train_s": train_s,
        "mesh_s": mesh_s,
        "iou": volumetric_iou(mesh, reference, num_points=100_000),
        "chamfer_l1": m["chamfer_l1"],
        "hausdorff": m["hausdorff"],
        "fscore@1%": m["fscore"],
        "watertight": bool(mesh.is_watertight),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--variants", default=",".join(str(i) for i in range(len(VARIANTS))), help="indices of the variants to run")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    names = list(VARIANTS)
    rows = [run(names[int(i)], args.resolution, args.output_dir) for i in args.variants.split(",")]
    columns = ["variant", "steps", "train_s", "mesh_s", "iou", "chamfer_l1", "hausdorff", "fscore@1%", "watertight"]
    title = f"OReX on eight_15.csl vs eight_15_scaled.stl, marching cubes at {args.resolution}^3 (benchmarks/bench_orex.py)"
    table = append_results(title, columns, rows, record=not args.no_record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
