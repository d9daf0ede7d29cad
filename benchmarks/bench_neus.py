"""Benchmark: neus-small on the synthetic scene (mesh against the ground truth) and on DTU scan 24.

    python benchmarks/bench_neus.py [--synthetic-steps 3000] [--dtu-steps 3000] [--dtu-scale 0.5] [--parts synthetic,dtu]

synthetic: the default scene (64x64, 32 train / 8 test views). The marching-cubes mesh (128^3 over
the scene box, input coordinates) is compared with the scene's ground-truth mesh: Chamfer-L1 and
F-score at 2 % of the scene size against the whole mesh, and the visible-surface F-score of
:func:`recon.geometry.surface_metrics.visible_surface_fscore` (recall against the surface the cameras
saw). PSNR on the 8 test views.
dtu: dtu_scan24 of the external datasets (docs/architecture.md, section 10: MonoSDF layout,
384x384 scaled by --dtu-scale, all 49 views train; PSNR on the RegNeRF test views, which are
training views here as in NeuS's DTU protocol). Writes the mesh (PLY) and a shaded picture of it
from the first camera to --output-dir and records the paths.

Each part prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from benchmarks.common import append_results, machine_description, mesh_picture, shared_data, train_and_evaluate
from recon.geometry.marching_cubes import extract_mesh
from recon.geometry.surface_metrics import mesh_metrics, visible_surface_fscore


def export_mesh(trainer, resolution: int) -> tuple[trimesh.Trimesh, trimesh.Trimesh, float]:
    """The model's zero level set: (mesh in input coordinates, the same in normalised ones, seconds)."""
    start = time.perf_counter()
    with torch.no_grad():
        normalised = extract_mesh(trainer.model.sdf, trainer.outputs.scene_box.aabb, resolution, device=trainer.device)
    mesh = normalised.copy()
    mesh.vertices = trainer.outputs.transform_to_input(torch.as_tensor(mesh.vertices, dtype=torch.float32)).numpy()
    return mesh, normalised, time.perf_counter() - start


def synthetic(steps: int, out: Path, device: str, method: str = "neus-small", **changes) -> dict:
    from data.synthetic import default_scene_path

    scene = default_scene_path()
    trainer, row = train_and_evaluate(method, scene, out, steps, 1, device, **changes)
    mesh, _, mesh_s = export_mesh(trainer, 128)
    gt = trimesh.load(scene / "mesh.ply")
    seen = np.asarray(trimesh.load(scene / "sparse_pc.ply").vertices)
    tau = 0.02 * float(gt.extents.max())
    full = mesh_metrics(mesh, gt, num_points=100_000, threshold=tau)
    vis = visible_surface_fscore(mesh, gt, seen, tau, num_points=100_000)
    return {
        **row, "data": "synthetic 64x64", "mesh_s": mesh_s, "chamfer_l1": full["chamfer_l1"], "fscore_2pct": full["fscore"],
        "precision": vis["precision"], "recall_visible": vis["recall"], "fscore_visible": vis["fscore"],
    }


def dtu(steps: int, scale: float, out: Path, device: str, method: str = "neus-small", return_trainer: bool = False, **changes) -> dict | tuple:
    """``method`` on DTU scan 24 at ``scale``: its row (and the trainer first, with ``return_trainer``)."""
    data = shared_data() / "dtu_scan24"
    trainer, row = train_and_evaluate(method, data, out, steps, 1, device, **{"datamanager.image_scale": scale, **changes})
    mesh, normalised, mesh_s = export_mesh(trainer, 256)
    name = f"dtu_scan24_{changes.get('timestamp', method)}"
    mesh_path = out / f"{name}_mesh.ply"
    mesh.export(mesh_path)
    # The first training camera (normalised frame, like the normalised copy of the mesh).
    # at the images' full 384 x 384 whatever the training scale, so low-scale runs stay readable
    picture = mesh_picture(normalised, trainer.datamanager.train_dataset.cameras[0], out / f"{name}_mesh.png", scale=1.0 / scale)
    row = {**row, "data": f"dtu_scan24 x{scale}", "mesh_s": mesh_s, "vertices": len(mesh.vertices), "mesh": str(mesh_path), "picture": str(picture)}
    return (trainer, row) if return_trainer else row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic-steps", type=int, default=3000)
    ap.add_argument("--dtu-steps", type=int, default=3000)
    ap.add_argument("--dtu-scale", type=float, default=0.5)
    ap.add_argument("--parts", default="synthetic,dtu")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    print(machine_description())
    parts = args.parts.split(",")
    if "synthetic" in parts:
        row = synthetic(args.synthetic_steps, args.output_dir, args.device)
        columns = ["method", "data", "steps", "train_s", "steps_per_s", "psnr", "chamfer_l1", "fscore_2pct", "precision", "recall_visible", "fscore_visible", "mesh_s", "device"]
        print(append_results("neus-small on the synthetic scene (benchmarks/bench_neus.py)", columns, [row], record=not args.no_record))
    if "dtu" in parts:
        row = dtu(args.dtu_steps, args.dtu_scale, args.output_dir, args.device)
        columns = ["method", "data", "steps", "train_s", "steps_per_s", "peak_mem_mb", "psnr", "ssim", "test_images", "mesh_s", "vertices", "picture", "device"]
        print(append_results("neus-small on DTU scan 24 (benchmarks/bench_neus.py)", columns, [row], record=not args.no_record))


if __name__ == "__main__":
    main()
