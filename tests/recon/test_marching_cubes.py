"""Marching-cubes mesh extraction from analytic fields (recon.geometry.marching_cubes)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from recon.errors import ReconError
from recon.geometry.marching_cubes import crop, extract_mesh, largest_connected_component, simplify

CENTER = torch.tensor([0.1, -0.05, 0.2])
RADIUS = 0.5
# Deliberately not centred on the sphere and not cubic, so axis mix-ups would show.
AABB = [[-0.6, -0.7, -0.5], [0.8, 0.65, 0.9]]


def sphere_sdf(p: torch.Tensor) -> torch.Tensor:
    return (p - CENTER).norm(dim=-1) - RADIUS


BOX_HALF = torch.tensor([0.33, 0.27, 0.41])


def box_sdf(p: torch.Tensor, half: torch.Tensor = BOX_HALF) -> torch.Tensor:
    # Exact box SDF (Quilez): outside distance plus the (negative) inside distance.
    q = p.abs() - half
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)


@pytest.fixture(scope="module")
def sphere_mesh():
    return extract_mesh(sphere_sdf, AABB, 64)


def test_sphere_geometry(sphere_mesh):
    m = sphere_mesh
    r = np.linalg.norm(m.vertices - CENTER.numpy(), axis=1)
    assert np.all(np.abs(r - RADIUS) < 0.01 * RADIUS)
    np.testing.assert_allclose(m.vertices.mean(0), CENTER.numpy(), atol=2e-3)
    assert m.is_watertight
    assert m.volume > 0  # outward normals
    assert m.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.02)
    # Every face normal points away from the centre.
    assert np.all(np.einsum("ij,ij->i", m.face_normals, m.triangles_center - CENTER.numpy()) > 0)
    assert np.all(m.area_faces > 0)


def test_box():
    m = extract_mesh(box_sdf, [[-0.5] * 3, [0.5] * 3], 48)
    assert m.is_watertight and m.volume > 0
    # Marching cubes bevels the box's edges and corners: slightly less than the exact volume.
    exact = 8 * 0.33 * 0.27 * 0.41
    assert 0.95 * exact < m.volume <= exact * 1.001
    np.testing.assert_allclose(m.bounds, [[-0.33, -0.27, -0.41], [0.33, 0.27, 0.41]], atol=1e-3)


def test_samples_exactly_on_the_level():
    # Box faces on sample planes: skimage emits coincident vertices and zero-area faces there,
    # which must be welded away without opening the mesh.
    half = torch.tensor([0.25, 0.25, 0.25])
    m = extract_mesh(lambda p: box_sdf(p, half), [[-0.5] * 3, [0.5] * 3], 33)
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume == pytest.approx(0.125, rel=1e-6)
    assert np.all(m.area_faces > 0)


def test_chunking_is_exact(sphere_mesh):
    m = extract_mesh(sphere_sdf, AABB, 64, chunk=777)
    np.testing.assert_array_equal(m.vertices, sphere_mesh.vertices)
    np.testing.assert_array_equal(m.faces, sphere_mesh.faces)


def test_slabs_match_single_pass(sphere_mesh):
    m = extract_mesh(sphere_sdf, AABB, 64, slab_size=7)
    assert m.is_watertight
    assert len(m.faces) == len(sphere_mesh.faces) and len(m.vertices) == len(sphere_mesh.vertices)
    # skimage returns float32 index coordinates, so slab-local vs global differ by round-off only.
    d, _ = cKDTree(sphere_mesh.vertices).query(m.vertices)
    assert d.max() < 1e-6
    assert m.volume == pytest.approx(sphere_mesh.volume, rel=1e-6)


def test_occupancy_convention_and_level(sphere_mesh):
    # Inside-positive field (like occupancy) with a non-zero level: same surface, still outward.
    m = extract_mesh(lambda p: 1.0 - sphere_sdf(p), AABB, 64, level=1.0, inside_negative=False)
    assert m.volume > 0
    assert m.volume == pytest.approx(sphere_mesh.volume, rel=1e-4)


def test_empty_and_bad_output():
    m = extract_mesh(lambda p: p.norm(dim=-1) + 1.0, [[-1] * 3, [1] * 3], 8)
    assert len(m.faces) == 0
    with pytest.raises(ValueError):
        extract_mesh(lambda p: p, [[-1] * 3, [1] * 3], 8)


def test_largest_component():
    other = torch.tensor([-0.55, 0.0, -0.3])  # clear of the big sphere

    def two_spheres(p):
        return torch.minimum(sphere_sdf(p), (p - other).norm(dim=-1) - 0.12)

    aabb = [[-0.7, -0.7, -0.5], [0.8, 0.65, 0.9]]
    both = extract_mesh(two_spheres, aabb, 48)
    one = extract_mesh(two_spheres, aabb, 48, largest_component=True)
    assert len(one.faces) < len(both.faces)
    assert one.is_watertight
    r = np.linalg.norm(one.vertices - CENTER.numpy(), axis=1)
    assert np.all(np.abs(r - RADIUS) < 0.01)
    assert len(largest_connected_component(one).faces) == len(one.faces)


def test_crop(sphere_mesh):
    box = np.array([[-1.0, -1.0, 0.2], [1.0, 1.0, 1.0]])  # upper half of the sphere
    c = crop(sphere_mesh, box)
    assert 0 < len(c.faces) < len(sphere_mesh.faces)
    assert np.all(c.vertices[:, 2] >= 0.2)
    # Every face fully inside the box is kept.
    inside = (sphere_mesh.vertices[sphere_mesh.faces][..., 2] >= 0.2).all(1)
    assert len(c.faces) == int(inside.sum())
    assert c.area == pytest.approx(sphere_mesh.area_faces[inside].sum())
    assert len(crop(sphere_mesh, torch.tensor([[5.0] * 3, [6.0] * 3])).faces) == 0


def test_simplify(sphere_mesh):
    if importlib.util.find_spec("fast_simplification") is None:
        with pytest.raises(ReconError, match="fast-simplification"):
            simplify(sphere_mesh, 1000)
    else:
        s = simplify(sphere_mesh, 1000)
        assert len(s.faces) <= 1100
    # At or below the target there is nothing to do, with or without the package.
    assert len(simplify(sphere_mesh, 10**7).faces) == len(sphere_mesh.faces)


def test_coarse_to_fine_evaluation_gives_the_dense_mesh_for_fewer_field_calls():
    """``coarse_stride``: the field sampled at every n-th sample first, at full resolution only in the
    coarse cells that straddle the level (dilated by one): the same mesh as the dense grid where the
    coarse grid sees the surface, for a fraction of the field evaluations; a rod thinner than the
    coarse spacing that no coarse sample falls into is lost (the documented limit)."""
    calls = []

    def counted(fn):
        def f(p):
            calls.append(len(p))
            return fn(p)
        return f

    def two_spheres(p):  # two blobs, one off-centre: the surface is far from any grid symmetry
        return torch.minimum((p - torch.tensor([0.2, 0.1, 0.0])).norm(dim=-1) - 0.45, (p + 0.5).norm(dim=-1) - 0.2)

    aabb = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
    dense = extract_mesh(counted(two_spheres), aabb, 97)
    dense_calls, calls[:] = sum(calls), []
    for stride in (2, 4):
        sparse = extract_mesh(counted(two_spheres), aabb, 97, coarse_stride=stride)
        assert sum(calls) < 0.35 * dense_calls, (stride, sum(calls), dense_calls)
        calls.clear()
        assert len(sparse.faces) == len(dense.faces) and sparse.is_watertight
        np.testing.assert_allclose(np.sort(sparse.vertices, 0), np.sort(dense.vertices, 0), atol=1e-9)

    def rod(p):  # radius 0.8 cells, along z, between the stride-4 samples in x and y
        return torch.maximum((p[:, :2] - 0.021).norm(dim=-1) - 0.017, p[:, 2].abs() - 0.5)

    assert len(extract_mesh(rod, aabb, 97).faces) > 0
    assert len(extract_mesh(rod, aabb, 97, coarse_stride=4).faces) == 0


def test_coarse_to_fine_treats_non_finite_values_as_the_dense_grid_does():
    """NaN samples count as outside in the dense grid; cells with a non-finite coarse corner are
    evaluated exactly, so the narrow band gives the same mesh."""

    def holed(p):  # a sphere whose values are NaN in a slab through it
        v = p.norm(dim=-1) - 0.6
        return torch.where(p[:, 0].abs() < 0.1, torch.full_like(v, float("nan")), v)

    aabb = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
    dense, sparse = extract_mesh(holed, aabb, 65), extract_mesh(holed, aabb, 65, coarse_stride=2)
    assert len(dense.faces) > 0 and len(sparse.faces) == len(dense.faces)
    np.testing.assert_allclose(np.sort(sparse.vertices, 0), np.sort(dense.vertices, 0), atol=1e-9)
