"""An automatic proxy mesh for mesh-gs when the user gives none: a short reconstruction with another
registered method (found by name in the registry; default ``splat``), its rendered depth at the
training views fused by TSDF (:func:`recon.geometry.tsdf.tsdf_from_render`), cleaned (vertices
merged, degenerate and duplicate faces dropped, connected components smaller than
``min_component`` of the faces removed, simple holes filled with trimesh) and decimated by vertex
clustering to at most ``max_faces`` faces. The official code asks the user for a mesh (NeuS via
instant-nsr-pl, simplified in MeshLab to 10-20k faces, repaired with MeshFix); this is the same
pipeline with recon's own pieces.

The mesh is written, in the input poses' frame, under ``$RECON_CACHE_DIR/proxy_meshes/`` keyed by
the training images (paths, sizes, modification times), the normalisation and the settings, so
resuming a run or building the model again reuses it instead of reconstructing again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from recon.config import get_method, override
from recon.engine.logging import console
from recon.errors import ConfigError
from recon.export.mesh_io import write_mesh
from recon.geometry.mesh import cluster_decimate


@dataclass
class AutoProxyMeshConfig:
    """How the automatic proxy mesh is made (when neither a mesh path nor a dataset mesh is given)."""

    method: str = "splat"
    """Registered method that reconstructs the scene briefly (its preset; every learning-rate
    schedule compressed to the steps below)."""
    steps: int = 1000
    """Training steps of that reconstruction."""
    random_points: int = 20_000
    """For a method that starts from random points when the data has no sparse points (splat's
    ``num_random_points``, 100k in its preset): this many, for a quicker reconstruction."""
    resolution: int = 128
    """TSDF voxels along the longest side of the scene box."""
    accumulation_threshold: float = 0.5
    """Rendered pixels less opaque than this are not fused."""
    max_faces: int = 15_000
    """Face budget after clean-up (the authors recommend 10-20k)."""
    min_component: float = 0.01
    """Connected components with fewer than this share of the faces are removed."""

    def cache_key(self, outputs: Any, image_scale: float = 1.0) -> str:
        """What the mesh depends on: the training images and their scale, the normalisation, these settings."""
        images = []
        for name in outputs.image_filenames:
            stat = Path(name).stat()
            images.append([str(name), stat.st_size, stat.st_mtime_ns])
        record = {
            "images": images, "transform": outputs.dataparser_transform.tolist(), "scale": float(outputs.dataparser_scale),
            "settings": [image_scale, self.method, self.steps, self.random_points, self.resolution, self.accumulation_threshold,
                         self.max_faces, self.min_component],
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def clean_mesh(mesh: trimesh.Trimesh, min_component: float) -> trimesh.Trimesh:
    """Merged vertices, no degenerate or duplicate faces, no component with fewer than
    ``min_component`` of the faces, simple holes filled."""
    mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    parts = mesh.split(only_watertight=False)
    if len(parts) > 1:
        keep = [p for p in parts if len(p.faces) >= min_component * len(mesh.faces)]
        mesh = trimesh.util.concatenate(keep or [max(parts, key=lambda p: len(p.faces))])
    trimesh.repair.fill_holes(mesh)
    return mesh


def auto_proxy_mesh(config: AutoProxyMeshConfig, outputs: Any, device: torch.device, cache: Path, image_scale: float = 1.0) -> Path:
    """The automatic proxy mesh of the training data ``outputs`` (module docstring), reconstructed
    at ``image_scale`` of the images (the mesh-gs run's): its cached file, made first when missing.
    A one-line error when the reconstruction sees no surface."""
    from recon.engine.trainer import fit
    from recon.geometry.tsdf import tsdf_from_render

    path = cache / f"{config.cache_key(outputs, image_scale)}.ply"
    if path.is_file():
        return path
    spec = get_method(config.method)
    changes = {f"optimizers.{name}.scheduler.max_steps": config.steps for name, opt in spec.config.optimizers.items() if opt.scheduler.max_steps}
    if hasattr(spec.config.datamanager, "image_scale"):
        changes["datamanager.image_scale"] = image_scale
    if hasattr(spec.config.model, "num_random_points"):
        changes["model.num_random_points"] = config.random_points
    console.print(f"mesh-gs: no proxy mesh given; reconstructing one with {config.method} ({config.steps} steps, then TSDF fusion)")
    model = fit(override(spec.config, **changes), outputs, device, config.steps)
    with torch.no_grad():
        mesh = tsdf_from_render(
            model.render, (outputs.cameras.scaled(image_scale) if image_scale != 1.0 else outputs.cameras).to(device),
            outputs.scene_box.aabb, config.resolution,
            accumulation_threshold=config.accumulation_threshold, progress=False,
        )
    if len(mesh.faces) == 0:
        raise ConfigError(f"the automatic proxy mesh ({config.method}, {config.steps} steps) found no surface; pass --model.mesh-path")
    mesh = clean_mesh(mesh, config.min_component)
    vertices, faces = cluster_decimate(np.asarray(mesh.vertices), np.asarray(mesh.faces), config.max_faces)
    vertices = outputs.transform_to_input(torch.from_numpy(vertices)).numpy()
    cache.mkdir(parents=True, exist_ok=True)
    write_mesh(trimesh.Trimesh(vertices, faces, process=False), path)
    console.print(f"mesh-gs: automatic proxy mesh with {len(faces)} faces written to {path}")
    return path
