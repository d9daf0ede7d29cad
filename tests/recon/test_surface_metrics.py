"""Geometry metrics (recon.geometry.surface_metrics): Chamfer / F-score / normal consistency / IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from recon.geometry.surface_metrics import mesh_metrics, point_metrics, points_inside, volumetric_iou

N = 50_000  # points per surface: enough for the bounds below, fast on 2 cores


@pytest.fixture(scope="module")
def sphere():
    return trimesh.creation.icosphere(subdivisions=4, radius=0.5)


def sampling_floor(mesh: trimesh.Trimesh, n: int = N) -> float:
    # Mean nearest-neighbour distance of a uniform 2-D sample is 0.5 * sqrt(area / n); allow 2x.
    return math.sqrt(mesh.area / n)


def test_point_metrics_by_hand():
    pred = np.array([[0.0, 0, 0], [1, 0, 0], [5, 0, 0]])
    gt = np.array([[0.0, 0, 0], [1.1, 0, 0]])
    m = point_metrics(pred, torch.tensor(gt), threshold=0.5)
    assert m["accuracy"] == pytest.approx((0 + 0.1 + 3.9) / 3)
    assert m["completeness"] == pytest.approx((0 + 0.1) / 2)
    assert m["chamfer_l1"] == pytest.approx((m["accuracy"] + m["completeness"]) / 2)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["fscore"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert m["hausdorff"] == pytest.approx(3.9)
    assert "normal_consistency" not in m
    # DTU-style outlier rule: the 3.9 distance leaves the accuracy mean only.
    m = point_metrics(pred, gt, threshold=0.5, max_dist=1.0)
    assert m["accuracy"] == pytest.approx(0.05) and m["hausdorff"] == pytest.approx(3.9)


def test_point_metrics_empty_and_zero_fscore():
    m = point_metrics(np.zeros((0, 3)), np.ones((4, 3)), threshold=0.1)
    assert m["accuracy"] == math.inf and m["fscore"] == 0.0 and m["recall"] == 0.0
    m = point_metrics(np.zeros((1, 3)), np.ones((1, 3)), threshold=0.1)
    assert m["precision"] == m["recall"] == m["fscore"] == 0.0
    with pytest.raises(ValueError):
        point_metrics(np.zeros((1, 3)), np.ones((1, 3)), threshold=0.0)


def test_identical_meshes(sphere):
    m = mesh_metrics(sphere, sphere, num_points=N, threshold=0.02)
    floor = sampling_floor(sphere)
    assert m["chamfer_l1"] < floor and m["accuracy"] < floor and m["completeness"] < floor
    assert m["precision"] == m["recall"] == m["fscore"] == 1.0
    assert m["normal_consistency"] > 0.995
    # Default threshold: 1 % of the reference's bounding-box diagonal.
    assert mesh_metrics(sphere, sphere, num_points=1000)["threshold"] == pytest.approx(0.01 * math.sqrt(3), rel=0.02)


def test_offset_spheres(sphere):
    bigger = trimesh.creation.icosphere(subdivisions=4, radius=0.52)
    near = mesh_metrics(sphere, bigger, num_points=N, threshold=0.01)
    assert near["accuracy"] == pytest.approx(0.02, abs=0.002)
    assert near["completeness"] == pytest.approx(0.02, abs=0.002)
    assert near["precision"] == near["recall"] == near["fscore"] == 0.0
    far = mesh_metrics(sphere, bigger, num_points=N, threshold=0.03)
    assert far["precision"] == far["recall"] == far["fscore"] == 1.0
    assert far["hausdorff"] < 0.03


def test_half_coverage(sphere):
    upper = sphere.copy()
    upper.update_faces(sphere.triangles_center[:, 2] > 0)
    upper.remove_unreferenced_vertices()
    m = mesh_metrics(upper, sphere, num_points=N, threshold=0.015)
    assert m["precision"] > 0.999
    # Half of the reference plus the thin band of the lower half within the threshold.
    assert m["recall"] == pytest.approx(0.5, abs=0.04)
    assert m["fscore"] == pytest.approx(2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"]))


def test_normal_consistency_drops_with_noise(sphere):
    noisy = sphere.copy()
    rng = np.random.default_rng(0)
    noisy.vertices = sphere.vertices + rng.normal(scale=0.01, size=sphere.vertices.shape)
    m = mesh_metrics(noisy, sphere, num_points=N, threshold=0.02)
    assert 0.5 < m["normal_consistency"] < 0.98
    # Flipped winding does not matter (absolute dot product).
    flipped = sphere.copy()
    flipped.invert()
    assert mesh_metrics(flipped, sphere, num_points=N, threshold=0.02)["normal_consistency"] > 0.995


def test_points_inside_sphere_and_box(sphere):
    rng = np.random.default_rng(1)
    p = rng.uniform(-0.6, 0.6, (50_000, 3))
    ins = points_inside(sphere, p)
    r = np.linalg.norm(p, axis=1)
    # Exact away from the surface; the icosphere's faces lie at most ~0.002 inside radius 0.5.
    assert np.all(ins[r < 0.49]) and not np.any(ins[r > 0.5])

    box = trimesh.creation.box(extents=[1.0, 0.8, 0.6])
    p = rng.uniform(-0.7, 0.7, (50_000, 3))
    expect = np.all(np.abs(p) < [0.5, 0.4, 0.3], axis=1)
    np.testing.assert_array_equal(points_inside(box, p), expect)
    # Parity ignores winding: a mesh with half its faces flipped classifies the same.
    mixed = trimesh.Trimesh(
        box.vertices, np.where((np.arange(12) % 2 == 0)[:, None], box.faces, box.faces[:, ::-1]), process=False
    )
    np.testing.assert_array_equal(points_inside(mixed, p), expect)
    # Rays through a shared edge (the diagonal of the x faces, in yz) are counted once.
    on_diag = np.array([[0.0, 0.08, 0.06], [0.0, -0.08, 0.06], [0.0, 0.08, -0.06]])
    assert points_inside(box, on_diag).all()
    assert not points_inside(box, on_diag + [2.0, 0, 0]).any()


def test_volumetric_iou(sphere):
    assert volumetric_iou(sphere, sphere) == 1.0
    a = trimesh.creation.box(bounds=[[0, 0, 0], [1, 1, 1]])
    b = trimesh.creation.box(bounds=[[0.5, 0, 0], [1.5, 1, 1]])
    assert volumetric_iou(a, b) == pytest.approx(1 / 3, abs=0.02)  # 0.5 / 1.5
    far = trimesh.creation.box(bounds=[[3, 3, 3], [4, 4, 4]])
    assert volumetric_iou(a, far, num_points=10_000) == 0.0
    # Sphere in its bounding box: pi / 6 by volume.
    cube = trimesh.creation.box(extents=[1.0, 1.0, 1.0])
    assert volumetric_iou(sphere, cube) == pytest.approx(sphere.volume / cube.volume, abs=0.01)


def test_visible_surface_fscore_scores_only_what_cameras_saw():
    """Reference: a unit cube of which only the top face was seen. A prediction of just that face
    is perfect; shifted by 3 thresholds it gets nothing; with an equally large floater far away
    its precision halves while its recall stays."""
    from recon.geometry.surface_metrics import visible_surface_fscore

    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    top = trimesh.creation.box(extents=(1.0, 1.0, 1e-4))
    top.apply_translation((0, 0, 0.5))
    rng = np.random.default_rng(0)
    seen = np.concatenate([rng.uniform(-0.45, 0.45, (2000, 2)), np.full((2000, 1), 0.5)], 1)
    tau = 0.02
    exact = visible_surface_fscore(top, cube, seen, tau, num_points=50_000)
    assert exact["precision"] > 0.99 and exact["recall"] > 0.99 and exact["fscore"] > 0.99
    # Plain recall against the whole cube would be about 1/6 for the same prediction.
    assert mesh_metrics(top, cube, num_points=50_000, threshold=tau)["recall"] < 0.3
    shifted = top.copy()
    shifted.apply_translation((0, 0, 3 * tau))
    assert visible_surface_fscore(shifted, cube, seen, tau, num_points=50_000)["fscore"] < 0.05
    floater = top.copy()
    floater.apply_translation((0, 0, 2.0))
    both = trimesh.util.concatenate([top, floater])
    r = visible_surface_fscore(both, cube, seen, tau, num_points=50_000)
    assert abs(r["precision"] - 0.5) < 0.03 and r["recall"] > 0.99
