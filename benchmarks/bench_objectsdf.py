"""Benchmark: objectsdf (ObjectSDF++) against single-SDF volsdf and neus on the synthetic scene, at
equal steps, in one run.

    python -m benchmarks.bench_objectsdf [--steps 3000] [--methods objectsdf-small,objectsdf-small+cues,volsdf-small,neus-small]

Data: the default synthetic scene (64x64, 32 train / 8 test views, 6 instances: the ground slab
and five objects, with instance masks and a reference mesh whose faces carry instance ids).
``volsdf-small`` is ``neus-small`` with VolSDF's density and error-bounded sampler (what objectsdf
renders with, same sample counts) and no cosine annealing: the same backbone without the object
terms. ``objectsdf-small`` runs without depth/normal cues (the scene's maps are ground truth, which
the other methods do not get); ``objectsdf-small+cues`` adds them (MonoSDF's losses on ground truth).

Columns (all meshes by marching cubes at 128^3 over the scene box, in input coordinates):
- scene level: Chamfer-L1 and normal consistency against the whole reference mesh, the
  visible-surface F-score at 2 % of the scene size (recall against points the cameras saw);
- object level (objectsdf only): the visible-surface F-score of each object's own mesh against
  that instance's faces (mean and minimum over the six), and the IoU of the rendered segmentation
  against the test views' instance masks (mean over the labels, background included);
- PSNR on the test views, training time.
Writes the per-object meshes and a shaded picture of them together to --output-dir.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import trimesh

from benchmarks.bench_neus import export_mesh
from benchmarks.common import append_results, machine_description, mesh_picture, train_and_evaluate
from recon.geometry.surface_metrics import mesh_metrics, visible_surface_fscore

# volsdf-small: neus-small with VolSDF's density and objectsdf-small's error-bounded sampler (same counts)
VOLSDF_SMALL = {"model.density": "volsdf", "model.anneal_end": 0, "model.sampler": "error-bounded",
                "model.error_bound.num_init": 64, "model.error_bound.num_add": 32, "model.error_bound.max_iters": 3,
                "model.error_bound.num_final": 32, "model.error_bound.num_extra": 16}
# the synthetic scene's depth and normal maps are ground truth, not monocular cues: off unless asked
NO_CUES = {"model.mono_depth_weight": 0.0, "model.mono_normal_weight": 0.0}
VARIANTS = {"volsdf-small": ("neus-small", VOLSDF_SMALL), "objectsdf-small": ("objectsdf-small", NO_CUES),
            "objectsdf-small+cues": ("objectsdf-small", {})}


def run(method: str, steps: int, out: Path, device: str) -> dict:
    from data.synthetic import default_scene_path

    scene = default_scene_path()
    base, changes = VARIANTS.get(method, (method, {}))
    trainer, row = train_and_evaluate(base, scene, out, steps, 1, device, timestamp=method, **changes)
    row["method"] = method
    mesh, normalised, _ = export_mesh(trainer, 128)
    gt = trimesh.load(scene / "mesh.ply")
    face_ids = np.load(scene / "mesh_instances.npy")
    seen = np.asarray(trimesh.load(scene / "sparse_pc.ply").vertices)
    tau = 0.02 * float(gt.extents.max())
    full = mesh_metrics(mesh, gt, num_points=100_000, threshold=tau)
    vis = visible_surface_fscore(mesh, gt, seen, tau, num_points=100_000)
    row.update(data="synthetic 64x64", chamfer_l1=full["chamfer_l1"], normal_consistency=full.get("normal_consistency"),
               fscore_visible=vis["fscore"])
    if method.startswith("objectsdf"):
        from methods.objectsdf.evaluate import object_fscores, object_meshes, segmentation_iou

        scores = object_fscores(trainer.model, trainer.outputs, gt, face_ids, seen, tau, resolution=128)
        iou = segmentation_iou(trainer.model, trainer.datamanager.eval_dataset)
        row.update(object_fscore_mean=float(np.mean(list(scores.values()))), object_fscore_min=float(min(scores.values())),
                   object_fscores=" ".join(f"{k}:{v:.3f}" for k, v in scores.items()), mask_iou_mean=float(np.mean(list(iou.values()))))
        meshes = object_meshes(trainer.model, trainer.outputs, 128)  # input frame, as ns-export writes them
        for label, part in meshes.items():
            part.export(out / f"{method}_{trainer.model.labels.name(label)}.ply")
        # the picture: objects in the normalised frame, seen from the first training camera
        norm = [_to_normalised(trainer, m) for m in meshes.values()]
        row["picture"] = str(mesh_picture(norm, trainer.datamanager.train_dataset.cameras[0], out / f"{method}_objects.png", scale=6.0))
    else:
        row["picture"] = str(mesh_picture(normalised, trainer.datamanager.train_dataset.cameras[0], out / f"{method}_mesh.png", scale=6.0))
    return row


def _to_normalised(trainer, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """An input-frame mesh mapped back to the run's normalised frame (for pictures from its cameras)."""
    m = mesh.copy()
    m.vertices = trainer.outputs.transform_from_input(torch.as_tensor(m.vertices, dtype=torch.float64)).numpy()
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--methods", default="objectsdf-small,objectsdf-small+cues,volsdf-small,neus-small")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench_objectsdf"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods.split(","):
        rows.append(run(method, args.steps, args.output_dir, args.device))
        print({k: rows[-1].get(k) for k in ("method", "psnr", "fscore_visible", "object_fscore_mean", "mask_iou_mean", "train_s")}, flush=True)
    columns = ["method", "data", "steps", "train_s", "psnr", "chamfer_l1", "normal_consistency", "fscore_visible",
               "object_fscore_mean", "object_fscore_min", "mask_iou_mean", "object_fscores", "picture", "device"]
    print(machine_description())
    print(append_results("objectsdf vs volsdf and neus on the synthetic scene (benchmarks/bench_objectsdf.py)", columns, rows,
                         record=not args.no_record))


if __name__ == "__main__":
    main()
