"""``ns-mvs --data SCENE --output-dir OUT`` (or ``python -m data.mvs``): PatchMatch multi-view
stereo (:mod:`recon.geometry.patchmatch`) on a dataset's training views.

The command lives in ``data`` because it reads datasets through the parsers; the algorithm is
the engine's. Everything is in the dataset's normalised frame, the one methods train in; the
output folder holds ``dataparser_transforms.json`` to map it back to the input poses' frame.

Output folder::

    depth/<frame>.npy     float32 [H, W] z-depth (OpenCV camera z), normalised units; 0 where the
                          pixel failed the cost or the geometric-consistency check
    normals/<frame>.npy   float32 [H, W, 3] unit normals in the view's OpenCV camera frame, 0 likewise
    cost/<frame>.npy      float32 [H, W] final PatchMatch cost (1 - NCC), before any filtering
    fused.ply             oriented, coloured point cloud (x y z nx ny nz red green blue), normalised frame
    surface.ply           with --clean.enabled: the trimmed Poisson surface the maps were cleaned with
    mvs.json              settings, source views per frame, counts and seconds
    dataparser_transforms.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro

from data.datamanager import ImageDataset
from data.parsers import load_dataset
from data.process.output import check_output_dir, staged_output
from recon.atomic import atomic_write_bytes
from recon.cli import parse_cli, run_main
from recon.engine.logging import console
from recon.errors import ConfigError, DataError
from recon.export.mesh_io import write_mesh, write_pointcloud
from recon.geometry.patchmatch import PatchMatchConfig, fuse_points, geometric_consistency, patchmatch
from recon.geometry.point_cleaning import SurfaceCleaningConfig, clean_mvs


@dataclass
class MvsConfig:
    """PatchMatch depth and normal maps and a fused point cloud for a dataset."""

    data: Path
    """Dataset folder (any format the parsers detect)."""
    output_dir: Path
    """Folder to create for the depth/normal/cost maps and the fused point cloud."""
    split: str = "train"
    """Which split's views to match (the others are not used)."""
    image_scale: float = 1.0
    """Resize the images (and cameras) by this factor first; 0.5 runs about five times faster."""
    overwrite: bool = False
    """Replace a non-empty --output-dir."""
    patchmatch: PatchMatchConfig = field(default_factory=PatchMatchConfig)
    """PatchMatch, consistency and fusion settings."""
    clean: SurfaceCleaningConfig = field(default_factory=SurfaceCleaningConfig)
    """HelixSurf's cleaning through a Poisson surface of the fused points (needs Open3D)."""

    def run(self) -> Path:
        if not 0 < self.image_scale <= 4:
            raise ConfigError(f"--image-scale must be in (0, 4], got {self.image_scale}")
        if self.patchmatch.top_k < 1 or self.patchmatch.num_source_views < 1:
            raise ConfigError("--patchmatch.top-k and --patchmatch.num-source-views must be at least 1")
        self.clean.check("--clean")
        if not self.data.exists():
            raise DataError("no such dataset folder", self.data)
        output_dir = check_output_dir(self.output_dir, self.data, self.overwrite)
        outputs = load_dataset(self.data)
        views = outputs.split(self.split)
        if len(views) < 2:
            raise DataError(f"PatchMatch needs at least two views, the {self.split!r} split has {len(views)}", self.data)
        if views.cameras.has_distortion:
            raise DataError("PatchMatch needs pinhole cameras; this dataset's lenses are distorted (undistort it first)", self.data)
        dataset = ImageDataset(views, image_scale=self.image_scale, load_masks=False)
        dataset.require_single_size("PatchMatch")
        images = [dataset.image(i) for i in range(len(dataset))]
        cameras = dataset.cameras
        config = self.patchmatch

        start = time.perf_counter()
        with console.status(f"PatchMatch on {len(images)} views"):
            points = None if views.points3d is None else torch.as_tensor(views.points3d, dtype=torch.float32)
            result = patchmatch(images, cameras, config, views.scene_box.aabb, points=points)
        matched = time.perf_counter()
        keep, _ = geometric_consistency(cameras, result.depth, config)
        surface = None
        if self.clean.enabled:
            with console.status("Poisson surface and cleaning"):
                keep, surface = clean_mvs(cameras, result.depth, result.normal, images, keep, config, self.clean)
        depth = result.depth * keep
        normal = result.normal * keep[..., None]
        points, normals, colours = fuse_points(cameras, depth, normal, images, keep, config)
        fused = time.perf_counter()

        with staged_output(output_dir) as tmp:
            for sub in ("depth", "normals", "cost"):
                (tmp / sub).mkdir()
            for i, path in enumerate(dataset.filenames):
                name = Path(path).stem
                np.save(tmp / "depth" / f"{name}.npy", depth[i].numpy().astype(np.float32))
                np.save(tmp / "normals" / f"{name}.npy", normal[i].numpy().astype(np.float32))
                np.save(tmp / "cost" / f"{name}.npy", result.cost[i].numpy().astype(np.float32))
            write_pointcloud(points, colours, normals, tmp / "fused.ply")
            if surface is not None:
                write_mesh(surface, tmp / "surface.ply")
            views.save_transforms(tmp / "dataparser_transforms.json")
            summary = {
                "data": str(self.data),
                "split": self.split,
                "image_scale": self.image_scale,
                "patchmatch": dataclasses.asdict(config),
                "clean": dataclasses.asdict(self.clean),
                "frames": [Path(p).name for p in dataset.filenames],
                "source_views": result.source_views,
                "kept_fraction": float(keep.float().mean()),
                "num_points": len(points),
                "seconds": {"patchmatch": matched - start, "filter_and_fuse": fused - matched},
            }
            atomic_write_bytes(tmp / "mvs.json", json.dumps(summary, indent=2).encode())
        console.print(f"wrote {output_dir}: {len(points)} points, {100 * summary['kept_fraction']:.1f} % of pixels kept, "
                      f"{matched - start:.1f} s PatchMatch")
        return output_dir


def entrypoint() -> None:
    cfg = parse_cli(
        lambda: tyro.cli(MvsConfig, args=sys.argv[1:], prog="ns-mvs",
                         description="PatchMatch multi-view stereo: depth and normal maps and a fused point cloud."),
        "ns-mvs",
    )
    run_main(cfg.run)


if __name__ == "__main__":
    entrypoint()
