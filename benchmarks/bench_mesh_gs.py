"""Benchmark: ``mesh-gs`` (mesh-bound Gaussians, Gao et al. 2024) against ``splat`` at equal steps, and
the cost of mesh-driven deformation (deformed rendering, ARAP solves) per proxy face count.

    python -m benchmarks.bench_mesh_gs [--parts quality,deform] [--scenes synthetic,lego] [--steps 300]
        [--refine-every 100] [--faces 2000] [--min-gaussians 1000] [--lego-scale 0.5] [--auto-steps 500]
        [--face-counts 1000,5000,20000] [--size 256]

quality: both methods' 30k-step schedules compressed to ``--steps`` (every step-numbered event x
steps / 30000, the optimizers' decays rescaled by the harness) except the refinement interval,
``--refine-every`` for both (see :func:`schedule`); one image per step.
- ``synthetic``: recon's default scene (64x64, 32 training and 8 test views); mesh-gs's proxy is the
  scene's ground-truth mesh decimated to ``--faces`` (vertex clustering), subdivided to at least
  ``--min-gaussians``; splat starts from the scene's SfM-like points.
- ``lego``: the shared NeRF-synthetic lego at ``--lego-scale`` (0.5: 200x200), white background, every
  8th test view; mesh-gs's proxy is the automatic one (``--auto-steps`` steps of splat, TSDF, clean-up,
  15k faces); splat starts from 20k random points. The automatic mesh's time is reported apart.

deform: a mesh-gs model on the synthetic ground-truth mesh decimated to each of ``--face-counts``
(one Gaussian per face, subdivided once: 4 per face; untrained, opaque -- the cost does not depend on
the values). Per face count: the time of a frame at rest, the time to set a deformation (per-face deformation gradients, polar
decompositions and the per-Gaussian SH rotation, once per new mesh pose), the time of one deformed
frame (deformed means and covariances + rasterization at ``--size`` pixels), the frames per second
of a drag (both per frame), and an ARAP solve (factorisation once per handle set; 10 iterations
per drag update) with 5% of the vertices as handles. The paper reports about 65 FPS on a GPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import append_results, machine_description, shared_data, train_and_evaluate

OFFICIAL_STEPS = 30_000


def _scaled(value: int, r: float) -> int:
    return max(1, round(value * r))


def schedule(steps: int, refine_every: int) -> dict:
    """The official event schedule (both methods: refinement in (500, 15000), SH degree every 1000,
    opacity resets every 3000) compressed to ``steps``, with one refinement interval for both: the
    compressed official ones (200 / 100 steps x steps / 30000) would refine every few steps on a short
    run, on statistics of a few views, and face splits then multiply the count every time."""
    r = steps / OFFICIAL_STEPS
    return {
        "model.sh_degree_interval": _scaled(1000, r), "model.strategy.refine_start_iter": _scaled(500, r),
        "model.strategy.refine_stop_iter": _scaled(15_000, r), "model.strategy.refine_every": refine_every,
        "model.strategy.reset_every": _scaled(3000, r),
    }


def quality(args) -> list[dict]:
    from data.synthetic import default_scene_path

    rows = []
    for scene in args.scenes.split(","):
        data = default_scene_path() if scene == "synthetic" else shared_data() / scene
        for method in ("mesh-gs", "splat"):
            changes = {**schedule(args.steps, args.refine_every), "timestamp": f"{scene}-{method}"}
            if scene == "lego":
                changes["datamanager.image_scale"] = args.lego_scale
            extra = {}
            if method == "mesh-gs":
                changes.update({"model.max_dataset_mesh_faces": args.faces, "model.init_min_gaussians": args.min_gaussians,
                                "model.auto_mesh.steps": args.auto_steps})
                if scene == "lego":  # the automatic proxy first, timed apart (cached for the training run)
                    extra["auto_mesh_s"] = auto_mesh_seconds(data, changes)
            else:
                changes["model.num_random_points"] = 20_000
            trainer, row = train_and_evaluate(method, data, args.output_dir, args.steps, 8 if scene == "lego" else 1, args.device, **changes)
            cams = trainer.datamanager.train_dataset.cameras
            row.update(extra, data=f"{scene} {int(cams.width[0])}x{int(cams.height[0])}", primitives=trainer.model.num_primitives)
            print({k: row.get(k) for k in ("method", "data", "psnr", "ssim", "primitives", "train_s", "auto_mesh_s")}, flush=True)
            rows.append(row)
    return rows


def auto_mesh_seconds(data: Path, changes: dict) -> float:
    """Build the mesh-gs model once (its automatic proxy is made and cached); the seconds it took."""
    from recon.config import get_method, override
    from recon.engine.trainer import load_dataset, scene_info

    config = override(get_method("mesh-gs").config, data=data, **{k: v for k, v in changes.items() if k.startswith(("model.", "datamanager."))})
    outputs = load_dataset(config)
    datamanager = config.datamanager.setup(outputs=outputs, device=torch.device("cpu"), seed=config.seed)
    model = config.model.setup(scene=scene_info(outputs))
    start = time.perf_counter()
    model.initialize_from_data(datamanager)
    return time.perf_counter() - start


def deformation_cost(args) -> list[dict]:
    from data.synthetic import default_scene_path
    from methods.mesh_gs.model import MeshGSModel, MeshGSModelConfig
    from recon.cameras import Cameras, look_at
    from recon.export.mesh_io import read_mesh
    from recon.geometry.arap import ArapSolver
    from recon.geometry.mesh import cluster_decimate
    from recon.model import SceneInfo

    vertices, faces = read_mesh(default_scene_path() / "mesh.ply")
    camera = Cameras(look_at(torch.tensor([[2.2, -1.6, 1.4]]), torch.tensor([[0.0, 0.0, -0.2]])), 0.9 * args.size, 0.9 * args.size,
                     args.size / 2, args.size / 2, args.size, args.size)
    rows = []
    for count in (int(c) for c in args.face_counts.split(",")):
        v, f = cluster_decimate(vertices, faces, count)
        model = MeshGSModel(MeshGSModelConfig(init_min_gaussians=2 * len(f), sh_degree=3),
                            SceneInfo(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), num_train_cameras=1))
        model.set_proxy_mesh(torch.tensor(v, dtype=torch.float32), torch.tensor(f))
        with torch.no_grad():
            model.params["opacities"].fill_(3.0)
        model.active_sh_degree.fill_(3)
        model.eval()
        rest = model.mesh_vertices
        bend = lambda t: rest + t * torch.stack([0.2 * rest[:, 2], torch.zeros_like(rest[:, 0]), 0.1 * rest[:, 0]], -1)  # noqa: E731
        rest_ms = []
        for _ in range(3):
            start = time.perf_counter()
            model.render(camera)
            rest_ms.append(1000 * (time.perf_counter() - start))
        set_ms, frame_ms = [], []
        for k in range(4):
            start = time.perf_counter()
            model.set_deformed_vertices(bend(0.25 * (k + 1)))
            set_ms.append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            model.render(camera)
            frame_ms.append(1000 * (time.perf_counter() - start))
        handles = np.argsort(v[:, 0])[-max(1, len(v) // 20):]
        start = time.perf_counter()
        solver = ArapSolver(v, f, handles)
        factor_ms = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        solver.solve(v[solver.handles] + [0.0, 0.0, 0.2], iterations=10)
        solve_ms = 1000 * (time.perf_counter() - start)
        per_frame = np.median(set_ms[1:]) + np.median(frame_ms[1:])
        row = {
            "faces": len(f), "vertices": len(v), "gaussians": model.num_primitives, "image": f"{args.size}x{args.size}",
            "rest_frame_ms": float(np.median(rest_ms[1:])), "set_deformation_ms": float(np.median(set_ms[1:])), "deformed_frame_ms": float(np.median(frame_ms[1:])),
            "drag_fps": 1000.0 / per_frame, "arap_factor_ms": factor_ms, "arap_solve10_ms": solve_ms,
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="quality,deform")
    ap.add_argument("--scenes", default="synthetic")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--refine-every", type=int, default=100)
    ap.add_argument("--faces", type=int, default=2000)
    ap.add_argument("--min-gaussians", type=int, default=1000)
    ap.add_argument("--lego-scale", type=float, default=0.5)
    ap.add_argument("--auto-steps", type=int, default=500)
    ap.add_argument("--face-counts", default="1000,5000,20000")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench_mesh_gs"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if "quality" in parts:
        rows = quality(args)
        columns = ["method", "data", "steps", "train_s", "steps_per_s", "primitives", "peak_mem_mb", "psnr", "ssim", "test_images",
                   "auto_mesh_s", "device"]
        print(append_results("mesh-gs vs splat at equal steps (benchmarks/bench_mesh_gs.py)", columns, rows, record=not args.no_record))
    if "deform" in parts:
        rows = deformation_cost(args)
        columns = ["faces", "vertices", "gaussians", "image", "rest_frame_ms", "set_deformation_ms", "deformed_frame_ms", "drag_fps", "arap_factor_ms",
                   "arap_solve10_ms"]
        print(append_results("mesh-gs deformation cost per proxy face count (benchmarks/bench_mesh_gs.py)", columns, rows,
                             record=not args.no_record))
    print(machine_description())


if __name__ == "__main__":
    main()
