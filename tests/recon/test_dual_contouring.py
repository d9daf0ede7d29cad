"""Dual contouring (recon.geometry.dual_contouring) against closed forms and marching cubes."""

import math

import numpy as np
import torch

from recon.geometry.dual_contouring import dual_contour
from recon.geometry.marching_cubes import extract_mesh

BOX = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]


def _rotation() -> torch.Tensor:
    c, s = math.cos(0.3), math.sin(0.3)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def test_sphere_closed_outward_on_the_surface_and_same_in_the_narrow_band():
    sphere = lambda p: p.norm(dim=-1) - 0.6  # noqa: E731
    mesh = dual_contour(sphere, BOX, 41)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals
    true = 4 / 3 * math.pi * 0.6**3
    assert abs(mesh.volume - true) / true < 0.003  # measured 0.0007 (marching cubes: 0.004)
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radius - 0.6).max() < 0.005  # a tenth of a cell (0.05); measured 0.0013
    band = dual_contour(sphere, BOX, 41, coarse_stride=2)
    assert np.array_equal(band.faces, mesh.faces) and np.allclose(band.vertices, mesh.vertices, atol=1e-6)


def test_sharp_cube_is_closer_to_the_truth_than_marching_cubes():
    """A rotated cube (half-size 0.4567, off the grid): dual contouring keeps its edges, marching
    cubes chamfers them. Measured at 21 samples (0.1 cells): volume 0.7562 vs marching cubes'
    0.7445 (true 0.7620); worst corner 0.026 vs 0.081 from the nearest vertex."""
    rot, half = _rotation(), 0.4567
    cube = lambda p: ((p @ rot).abs() - half).max(-1).values  # noqa: E731
    corners = (torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32) * half) @ rot.T
    true = (2 * half) ** 3
    dc, mc = dual_contour(cube, BOX, 21), extract_mesh(cube, BOX, 21)
    assert dc.is_watertight and dc.volume > 0
    assert abs(dc.volume - true) < 0.5 * abs(mc.volume - true)
    miss = lambda m: np.linalg.norm(m.vertices[None] - corners.numpy()[:, None], axis=-1).min(1).max()  # noqa: E731
    assert miss(dc) < 0.04 < 0.06 < miss(mc)


def test_occupancy_orientation_and_empty_field():
    logit = lambda p: 0.5 - p.norm(dim=-1)  # noqa: E731  positive inside (occupancy-like)
    mesh = dual_contour(logit, BOX, 21, inside_negative=False)
    assert mesh.is_watertight and mesh.volume > 0
    assert len(dual_contour(lambda p: p.norm(dim=-1) + 1.0, BOX, 11).faces) == 0
