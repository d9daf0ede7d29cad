"""PatchMatch multi-view stereo (recon.geometry.patchmatch) on the default synthetic scene and on DTU
scan 24: accuracy, completeness and time, PyTorch reference cost against the Warp kernel.

For each image scale and backend, every training view is matched (default settings; 5 x 5 patches
below 48 pixels), filtered by geometric consistency and fused. Depth: relative error of the kept
pixels against the exact depth maps (block means of whole-surface blocks at reduced scale), and
the fraction of surface pixels kept. Points: accuracy is the median distance of the fused points
to the true mesh; completeness the fraction of ground-truth surface points (the training views'
exact depth back-projected, i.e. the visible surface) within ``--tau`` of a fused point.

DTU scan 24 (``--scene dtu``: the shared MonoSDF copy, 49 views of 384 x 384 scaled by
``--scales``): the shared copy has no DTU reference points (the STL point clouds of the DTU
evaluation), so there is no ground truth. Reported instead: the fraction of all pixels (object and
background table) that survive the consistency filter, the fused points, the agreement of the two
backends' depth maps, and, with ``--reference-mesh`` (a mesh in the dataset's input frame, e.g.
bench_helixsurf's DTU mesh), the median distance of the fused points to that mesh and the fraction
within ``--tau`` (normalised units): agreement with another reconstruction, not accuracy.

    python -m benchmarks.bench_patchmatch [--scales 0.5 1.0] [--backends torch warp] [--no-record]
    python -m benchmarks.bench_patchmatch --scene dtu --scales 0.25 [--reference-mesh mesh.ply]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial import cKDTree

from benchmarks.common import append_results, shared_data
from data.datamanager import ImageDataset
from data.parsers import load_dataset
from data.synthetic import default_scene_path
from recon.geometry.patchmatch import PatchMatchConfig, depth_to_points, fuse_points, geometric_consistency, patchmatch
from recon.geometry.point_cleaning import SurfaceCleaningConfig, clean_mvs


def _ground_truth(train, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(block-mean z-depth [C, H / step, W / step] where the whole block hits, else 0; full-size depth [C, H, W])."""
    full = torch.tensor(np.stack([np.load(f) for f in train.depth_filenames])) * train.dataparser_scale
    if step == 1:
        return full, full
    hit = F.avg_pool2d((full > 0).float()[:, None], step)[:, 0] == 1.0
    return torch.where(hit, F.avg_pool2d(full[:, None], step)[:, 0], torch.zeros(())), full


def _match(scene: Path, scale: float, backend: str, clean: SurfaceCleaningConfig | None = None):
    """Match, filter (and with ``clean``, clean through a Poisson surface) and fuse every training
    view of ``scene`` at ``scale``: (training split, cameras, result, keep mask, fused points,
    PatchMatch seconds, filter + fusion seconds)."""
    outputs = load_dataset(scene)
    train = outputs.split("train")
    dataset = ImageDataset(train, image_scale=scale, load_masks=False)
    images = [dataset.image(i) for i in range(len(dataset))]
    cameras = dataset.cameras
    config = PatchMatchConfig(backend=backend, patch_radius=2 if images[0].shape[0] < 48 else 3)
    t0 = time.perf_counter()
    result = patchmatch(images, cameras, config, outputs.scene_box.aabb)
    t1 = time.perf_counter()
    keep, _ = geometric_consistency(cameras, result.depth, config)
    if clean is not None:
        keep, _ = clean_mvs(cameras, result.depth, result.normal, images, keep, config, clean)
    points, _, _ = fuse_points(cameras, result.depth * keep, result.normal * keep[..., None], images, keep, config)
    return train, cameras, result, keep, points, t1 - t0, time.perf_counter() - t1


def _mesh_points(mesh: trimesh.Trimesh, train) -> torch.Tensor:
    """400k points sampled on ``mesh`` (the input frame), mapped into the normalised frame the fused points are in."""
    R, t, s = train.dataparser_transform[:, :3].double(), train.dataparser_transform[:, 3].double(), train.dataparser_scale
    return s * (torch.tensor(trimesh.sample.sample_surface(mesh, 400_000, seed=0)[0]) @ R.T + t)


def run(scale: float, backend: str, tau: float, clean: SurfaceCleaningConfig | None = None) -> dict:
    scene = default_scene_path()
    train, cameras, result, keep, points, match_s, fuse_s = _match(scene, scale, backend, clean)
    step = int(round(1 / scale))
    gt, full = _ground_truth(train, step)

    surface = gt > 0
    kept = keep & surface
    # pixels whose whole block misses the object (foreground fattening when kept)
    background = F.avg_pool2d((full > 0).float()[:, None], step)[:, 0] == 0.0 if step > 1 else full == 0
    err = ((result.depth - gt).abs() / gt.clamp_min(1e-6))[kept]
    mesh_points = _mesh_points(trimesh.load(scene / "mesh.ply"), train)
    accuracy, _ = cKDTree(mesh_points.numpy()).query(points.double().numpy())
    full_cams = train.cameras
    visible = torch.cat([depth_to_points(full_cams, i, full[i])[full[i] > 0] for i in range(len(full_cams))])
    visible = visible[torch.randperm(len(visible), generator=torch.Generator().manual_seed(0))[:100_000]]
    completeness, _ = cKDTree(points.numpy()).query(visible.numpy()) if len(points) else (np.full(len(visible), np.inf), None)
    return {
        "image": f"{cameras.width[0].item()}x{cameras.height[0].item()}",
        "views": len(cameras),
        "backend": backend,
        "cleaning": f"band {clean.band}" if clean else "none",
        "patchmatch_s": match_s,
        "filter_fuse_s": fuse_s,
        "surface_kept": float(kept.sum() / surface.sum()),
        "background_kept": float((keep & background).sum() / background.sum().clamp_min(1)),
        "depth_err_median": float(err.median()),
        "within_1pct": float((err < 0.01).float().mean()),
        "within_5pct": float((err < 0.05).float().mean()),
        "points": len(points),
        "accuracy_median": float(np.median(accuracy)),
        f"completeness_{tau}": float((completeness < tau).mean()),
    }


def run_dtu(scale: float, backend: str, tau: float, reference_mesh: Path | None, depths: dict[str, torch.Tensor],
            clean: SurfaceCleaningConfig | None = None) -> dict:
    """One backend on DTU scan 24 at ``scale``; ``depths`` collects each backend's raw depth maps so
    the second backend's row can report how far it is from the first's."""
    train, cameras, result, keep, points, match_s, fuse_s = _match(shared_data() / "dtu_scan24", scale, backend, clean)
    row = {
        "image": f"{cameras.width[0].item()}x{cameras.height[0].item()}", "views": len(cameras), "backend": backend,
        "cleaning": f"band {clean.band}" if clean else "none", "patchmatch_s": match_s, "filter_fuse_s": fuse_s,
        "pixels_kept": float(keep.float().mean()), "points": len(points),
    }
    if depths:
        other = next(iter(depths.values()))
        both = (other > 0) & (result.depth > 0)
        rel = ((result.depth - other).abs() / other.clamp_min(1e-6))[both]
        row["vs_first_backend_within_1pct"] = float((rel < 0.01).float().mean())
    depths[backend] = result.depth
    if reference_mesh is not None:
        ref = _mesh_points(trimesh.load(reference_mesh), train)
        dist, _ = cKDTree(ref.numpy()).query(points.double().numpy())
        row["to_reference_median"] = float(np.median(dist))
        row[f"to_reference_within_{tau}"] = float((dist < tau).mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", choices=["synthetic", "dtu"], default="synthetic")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5], help="image scales (synthetic: 64 x 64; dtu: 384 x 384)")
    parser.add_argument("--backends", nargs="+", default=["torch", "warp"], choices=["torch", "warp"])
    parser.add_argument("--tau", type=float, default=0.05, help="completeness distance, normalised units")
    parser.add_argument("--clean-bands", type=float, nargs="*", default=[],
                        help="also run with HelixSurf's Poisson cleaning at these bands (normalised units; needs Open3D)")
    parser.add_argument("--reference-mesh", type=Path, help="dtu: a mesh (input frame) to measure the fused points against")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    cleanings = [None] + [SurfaceCleaningConfig(enabled=True, band=band) for band in args.clean_bands]
    if args.scene == "dtu":
        rows = []
        for scale in args.scales:
            depths: dict[str, torch.Tensor] = {}
            rows += [run_dtu(scale, backend, args.tau, args.reference_mesh, depths, clean) for clean in cleanings for backend in args.backends]
        where = "DTU scan 24 (no ground truth: see the docstring)"
    else:
        rows = [run(scale, backend, args.tau, clean) for scale in args.scales for clean in cleanings for backend in args.backends]
        where = "the synthetic scene"
    title = f"PatchMatch MVS on {where}, {torch.get_num_threads()} torch thread(s) (benchmarks/bench_patchmatch.py)"
    print(append_results(title, list(dict.fromkeys(k for r in rows for k in r)), rows, record=not args.no_record))


if __name__ == "__main__":
    main()
