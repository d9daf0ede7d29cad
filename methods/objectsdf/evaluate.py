"""Object-level evaluation of an objectsdf model against ground truth with instance ids: the
F-score of each object's mesh against that instance's part of the reference mesh, and the IoU of
the rendered segmentation against instance masks. Used by the quality test and the benchmark."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from recon.geometry.marching_cubes import extract_mesh
from recon.geometry.surface_metrics import visible_surface_fscore


def instance_of_points(gt: trimesh.Trimesh, face_ids: np.ndarray, points: np.ndarray, samples: int = 400_000) -> np.ndarray:
    """The instance id [P] of the reference surface nearest each point (via dense surface samples)."""
    surface, faces = trimesh.sample.sample_surface(gt, samples, seed=0)
    return np.asarray(face_ids)[faces][cKDTree(surface).query(points)[1]]


def object_meshes(model: Any, outputs: Any, resolution: int) -> dict[int, trimesh.Trimesh]:
    """Marching-cubes mesh (input coordinates) of every object label's channel; empty channels are skipped."""
    meshes = {}
    for label in range(1, model.labels.num_labels):
        with torch.no_grad():
            mesh = extract_mesh(model.object_sdf(label), outputs.scene_box.aabb, resolution)
        if len(mesh.faces):
            mesh.vertices = outputs.transform_to_input(torch.as_tensor(mesh.vertices, dtype=torch.float32)).numpy()
            meshes[label] = mesh
    return meshes


def object_fscores(
    model: Any, outputs: Any, gt: trimesh.Trimesh, face_ids: np.ndarray, visible: np.ndarray, threshold: float,
    resolution: int = 96, num_points: int = 20_000,
) -> dict[int, float]:
    """Raw instance id -> visible-surface F-score (:func:`visible_surface_fscore`) of that object's
    mesh against the reference faces with that id, recall over the ``visible`` points [V, 3] on it.
    An object whose channel has no surface scores 0."""
    visible_ids = instance_of_points(gt, face_ids, visible)
    meshes = object_meshes(model, outputs, resolution)
    scores = {}
    for label in range(1, model.labels.num_labels):
        raw = model.labels.raw_ids[label]
        part = gt.submesh([np.nonzero(face_ids == raw)[0]], append=True)
        seen = visible[visible_ids == raw]
        if label not in meshes or len(seen) == 0:
            scores[raw] = 0.0
            continue
        scores[raw] = visible_surface_fscore(meshes[label], part, seen, threshold, num_points=num_points)["fscore"]
    return scores


def segmentation_iou(model: Any, dataset: Any) -> dict[int, float]:
    """Label -> IoU of the rendered segmentation (argmax of the ``instance`` output) with the
    dataset's instance labels, over all its images (``dataset.instances``: contiguous labels)."""
    inter = np.zeros(model.labels.num_labels)
    union = np.zeros(model.labels.num_labels)
    for i in range(len(dataset)):
        with torch.no_grad():
            pred = model.render(dataset.cameras[i : i + 1])["instance"].argmax(-1).cpu().numpy()
        true = dataset.instances[i].numpy()
        for label in range(model.labels.num_labels):
            p, t = pred == label, true == label
            inter[label] += np.logical_and(p, t).sum()
            union[label] += np.logical_or(p, t).sum()
    return {label: float(inter[label] / union[label]) for label in range(model.labels.num_labels) if union[label] > 0}
