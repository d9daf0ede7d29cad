"""data/cross_sections.py: the OReX .csl reader/writer, 2-D plane frames and polygon test, mesh slicing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from data.cross_sections import (
    Contour,
    CrossSection,
    CrossSections,
    axis_planes,
    main,
    random_planes,
    read_csl,
    slice_mesh,
    thin_cylinders,
    write_csl,
)
from recon.errors import DataError
from recon.geometry.surface_metrics import points_inside


def _orex_file(shared_data: Path, name: str) -> Path:
    path = shared_data / "orex" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def _upper_bound_distance(mesh: trimesh.Trimesh, points: np.ndarray, k: int = 16) -> np.ndarray:
    """[P] an upper bound of each point's distance to the mesh surface (exact distance to the k
    triangles with the nearest centroids; no rtree needed). Enough for "within tolerance" checks."""
    tri = mesh.triangles
    _, nb = cKDTree(tri.mean(1)).query(points, k=k)
    rep = np.repeat(points, k, axis=0)
    closest = trimesh.triangles.closest_point(tri[nb.ravel()], rep)
    return np.linalg.norm(closest - rep, axis=1).reshape(-1, k).min(1)


def _random_uv(sec: CrossSection, n: int, rng: np.random.Generator, pad: float = 0.1) -> np.ndarray:
    """[n, 2] uniform points in the contours' 2-D bounding box, enlarged by ``pad`` of its size."""
    uv = sec.to_2d(sec.vertices)
    lo, hi = uv.min(0), uv.max(0)
    return rng.uniform(lo - pad * (hi - lo), hi + pad * (hi - lo), size=(n, 2))


# -- shipped OReX files ------------------------------------------------------------------------


def test_heart_simplified(shared_data: Path) -> None:
    cs = read_csl(_orex_file(shared_data, "Heart-simplified.csl"))
    assert len(cs) == 2 and cs.n_labels == 2
    assert [len(s.vertices) for s in cs.sections] == [47, 57]
    assert len(cs.all_vertices()) == 104
    expected = np.array([-0.245, 0.826, -0.507])
    expected /= np.linalg.norm(expected)
    for sec in cs.sections:
        assert len(sec.contours) == 1 and not sec.contours[0].is_hole and sec.contours[0].label == 1
        assert np.linalg.norm(sec.normal) == pytest.approx(1.0)
        assert abs(sec.normal @ expected) > 1 - 1e-5
        # The file's ABC decides the sign of the fitted normal.
        assert sec.normal @ expected > 0
        extent = np.linalg.norm(np.ptp(sec.vertices, axis=0))
        assert sec.residual() < 1e-8 * extent
        # The 2-D frame is orthonormal and right-handed about the normal, centred on the vertices.
        assert np.allclose(sec.basis @ sec.basis.T, np.eye(2))
        assert np.allclose(np.cross(sec.basis[0], sec.basis[1]), sec.normal)
        assert np.allclose(sec.to_3d(sec.to_2d(sec.vertices)), sec.vertices, atol=1e-6)
        # Shipped outer contours are counter-clockwise about the normal.
        uv = sec.contour_uv(0)
        assert np.sum(uv[:, 0] * np.roll(uv[:, 1], -1) - np.roll(uv[:, 0], -1) * uv[:, 1]) > 0
    # The given D values (2164, 1728) were right for this file: the fitted offsets are close.
    assert [s.offset for s in cs.sections] == pytest.approx([2164.0, 1728.0], abs=1.0)

    n = cs.normalized()
    v = n.all_vertices()
    assert np.abs(v).max() == pytest.approx(1 / 1.1)  # mm-scale: centred, then divided by 1.1 max|v|
    assert np.allclose(v.mean(0), 0.0, atol=1e-12)
    b = n.bounds()
    assert b.shape == (2, 3) and (b[0] >= -1).all() and (b[1] <= 1).all()
    assert np.allclose(n.to_input(v), cs.all_vertices(), rtol=0, atol=1e-9)
    assert np.allclose(n.from_input(cs.all_vertices()), v, atol=1e-12)
    t = torch.tensor(v, dtype=torch.float64)
    assert torch.allclose(n.to_input(t), torch.tensor(cs.all_vertices()))
    for a, s in zip(cs.sections, n.sections):
        assert np.allclose(a.normal, s.normal) and s.residual() < 1e-10
        # The same 2-D coordinates, up to the scale.
        assert np.allclose(a.to_2d(a.vertices) / n.normalization.scale, s.to_2d(s.vertices))
    # Normalising twice composes: still maps back to the file's units.
    nn = n.normalized()
    assert np.allclose(nn.to_input(nn.all_vertices()), cs.all_vertices(), atol=1e-9)


def test_eight_15_against_reference(shared_data: Path) -> None:
    cs = read_csl(_orex_file(shared_data, "eight_15.csl"))
    ref = trimesh.load(_orex_file(shared_data, "eight_15_scaled.stl"), force="mesh")
    assert len(cs) == 15
    assert len(cs.all_vertices()) == 2028
    assert sum(len(s.contours) for s in cs.sections) == 21
    for sec in cs.sections:
        assert np.allclose(sec.normal, [0, 0, 1], atol=1e-9)  # the file's +z chooses the sign
        assert sec.residual() < 1e-12
    heights = np.array([-s.offset for s in cs.sections])
    assert heights[0] == pytest.approx(0.8636363636) and (np.diff(heights) < 0).all()

    # Already inside [-1, 1]: normalising only centres (scale 1).
    n = cs.normalized()
    assert n.normalization.scale == 1.0
    assert np.allclose(n.normalization.center, cs.all_vertices().mean(0))
    assert cs.normalized(center=False).normalization.scale == 1.0

    # Every vertex lies on the reference surface (checked on a subset for speed).
    sub = cs.all_vertices()[::7]
    assert _upper_bound_distance(ref, sub).max() < 1e-3

    # The polygon test agrees with the reference solid on the planes (measured: 100 % of 20k).
    rng = np.random.default_rng(0)
    agree = []
    for k in (0, 2, 5, 7, 12):
        sec = cs.sections[k]
        uv = _random_uv(sec, 4000, rng)
        agree.append(np.mean(sec.contains(uv) == points_inside(ref, sec.to_3d(uv))))
    assert min(agree) >= 0.99, agree


# -- malformed files ---------------------------------------------------------------------------

# One plane z = 0.5, an outer square (side 2) with a square hole (side 1). Line numbers matter.
_VALID = """CSLC
1 2

1 8 2 0 0 1 -0.5

-1 -1 0.5
1 -1 0.5
1 1 0.5
-1 1 0.5
-0.5 -0.5 0.5
-0.5 0.5 0.5
0.5 0.5 0.5
0.5 -0.5 0.5

4 1 0 1 2 3
4h0 2 4 5 6 7
"""


def _with_line(n: int, text: str | None) -> str:
    """_VALID with 1-based line ``n`` replaced (or, for None, the file cut after line n)."""
    lines = _VALID.splitlines()
    if text is None:
        return "\n".join(lines[:n]) + "\n"
    lines[n - 1] = text
    return "\n".join(lines) + "\n"


def test_small_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "square.csl"
    path.write_text(_VALID)
    cs = read_csl(path)
    (sec,) = cs.sections
    assert cs.source == path
    assert np.allclose(sec.normal, [0, 0, 1]) and sec.offset == pytest.approx(-0.5)
    outer, hole = sec.contours
    assert outer.parent is None and outer.label == 1 and outer.indices.tolist() == [0, 1, 2, 3]
    assert hole.parent == 0 and hole.label == 2 and hole.is_hole
    assert sec.edges().shape == (8, 2)
    pts = np.array([[0, 0, 0.5], [0.75, 0, 0.5], [0, -0.9, 0.5], [2, 0, 0.5], [0.3, 0.3, 0.5]])
    assert sec.contains(sec.to_2d(pts)).tolist() == [False, True, True, False, False]


@pytest.mark.parametrize(
    "content, line, words",
    [
        ("CSL\n" + _VALID.split("\n", 1)[1], 1, "header"),
        ("\n\nCSLX\n" + _VALID.split("\n", 1)[1], 3, "header"),
        (_with_line(9, None), 9, "truncated"),  # 4 of the 8 vertices
        (_with_line(15, None), 15, "truncated"),  # the hole component is missing
        (_with_line(7, "1 -l 0.5"), 7, "number"),
        (_with_line(7, "1 nan 0.5"), 7, "non-finite"),
        (_with_line(4, "1 8 two 0 0 1 -0.5"), 4, "integer"),
        (_with_line(16, "4h0 2 4 5 6 8"), 16, "out of range"),
        (_with_line(16, "4h0 2 4 5\n6 -1"), 17, "out of range"),
        (_with_line(15, "2 1 0 1 2 3"), 15, "at least 3"),
        (_with_line(16, "4h5 2 4 5 6 7"), 16, "parent"),
        (_with_line(16, "4h1 2 4 5 6 7"), 16, "parent"),  # its own index
        (_with_line(16, "4x0 2 4 5 6 7"), 16, "vertex count"),
        (_with_line(2, "0 2"), 4, "plane count"),
        (_with_line(2, "2 2"), 16, "truncated"),
        (_with_line(8, "1 1 0.9"), 4, "not coplanar"),
    ],
)
def test_malformed_files(tmp_path: Path, content: str, line: int, words: str) -> None:
    path = tmp_path / "broken_input.csl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        read_csl(path)
    message = str(info.value)
    assert "broken_input.csl" in message and f"line {line}:" in message and words in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_csl(tmp_path / "absent.csl")


def test_plane_fit_ignores_bad_abcd(tmp_path: Path) -> None:
    # Wrong-sign D and a non-unit normal (as in the shipped rose.csl / Horsers.csl) are harmless;
    # a degenerate normal falls back to "largest component positive".
    for line, normal in (("1 8 2 0 0 14 7", [0, 0, 1]), ("1 8 2 0 0 -3 0.5", [0, 0, -1]), ("1 8 2 0 0 0 9", [0, 0, 1])):
        path = tmp_path / "abcd.csl"
        path.write_text(_with_line(4, line))
        (sec,) = read_csl(path).sections
        assert np.allclose(sec.normal, normal) and sec.offset == pytest.approx(-0.5 * normal[2])
        assert sec.residual() < 1e-12


# -- slicing meshes ----------------------------------------------------------------------------


def _torus_inside(x: np.ndarray, major: float, minor: float) -> np.ndarray:
    return (np.hypot(x[:, 0], x[:, 1]) - major) ** 2 + x[:, 2] ** 2 < minor**2


def _ccw(uv: np.ndarray) -> bool:
    return np.sum(uv[:, 0] * np.roll(uv[:, 1], -1) - np.roll(uv[:, 0], -1) * uv[:, 1]) > 0


def _assert_same(a: CrossSections, b: CrossSections) -> None:
    assert len(a) == len(b) and a.n_labels == b.n_labels
    for s, t in zip(a.sections, b.sections):
        assert np.array_equal(s.vertices, t.vertices)  # positional shortest-repr floats are exact
        assert np.allclose(s.normal, t.normal, atol=1e-12) and s.offset == pytest.approx(t.offset, abs=1e-12)
        assert np.allclose(s.basis, t.basis, atol=1e-9) and np.allclose(s.origin, t.origin, atol=1e-12)
        assert len(s.contours) == len(t.contours)
        for c, d in zip(s.contours, t.contours):
            assert np.array_equal(c.indices, d.indices) and c.label == d.label and c.parent == d.parent


def test_slice_sphere(tmp_path: Path) -> None:
    radius = 0.7
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    planes = axis_planes(sphere, axis=2, count=7)  # the middle one, z = 0, runs through mesh vertices
    assert np.allclose(planes[:, 3], -np.linspace(-0.63, 0.63, 7))
    cs = slice_mesh(sphere, planes)
    assert len(cs) == 7
    for sec in cs.sections:
        z = -sec.offset
        (contour,) = sec.contours
        assert contour.label == 1 and contour.parent is None and len(contour) > 40
        assert len(np.unique(contour.indices)) == len(contour)
        assert np.allclose(sec.normal, [0, 0, 1]) and sec.residual() < 1e-12
        r = np.linalg.norm(sec.vertices[:, :2], axis=1)
        # Vertices lie on the inscribed mesh: at most the sphere's radius, and less by < 2e-3 here.
        expected = np.sqrt(radius**2 - z**2)
        assert (r <= expected + 1e-9).all() and (r >= expected - 2e-3).all()
        assert _ccw(sec.contour_uv(0))
        uv = _random_uv(sec, 2000, np.random.default_rng(1))
        x = sec.to_3d(uv)
        agree = np.mean(sec.contains(uv) == (np.linalg.norm(x, axis=1) < radius))
        assert agree >= 0.98, agree
    path = tmp_path / "sphere.csl"
    write_csl(cs, path)
    _assert_same(cs, read_csl(path))


def test_slice_torus_holes_and_round_trip(tmp_path: Path) -> None:
    major, minor = 0.5, 0.2
    torus = trimesh.creation.torus(major, minor, major_sections=64, minor_sections=32)
    assert torus.is_watertight
    planes = [([0, 0, 1], 0.0), ([1, 0, 0], 0.0), ([0, 0, 2], -0.2), ([0, 1, 0.3], 0.05)]
    cs = slice_mesh(torus, planes)
    assert len(cs) == 4

    flat, vertical, flat_high, oblique = cs.sections
    # Horizontal plane through the centre: one outer ring and its hole.
    outer, hole = sorted(flat.contours, key=lambda c: c.is_hole)
    assert outer.parent is None and outer.label == 1
    assert hole.parent == flat.contours.index(outer) and hole.label == 2
    assert _ccw(flat.to_2d(flat.vertices[outer.indices])) and not _ccw(flat.to_2d(flat.vertices[hole.indices]))
    r_out = np.linalg.norm(flat.vertices[outer.indices, :2], axis=1)
    r_in = np.linalg.norm(flat.vertices[hole.indices, :2], axis=1)
    assert np.allclose(r_out, major + minor, atol=5e-3) and np.allclose(r_in, major - minor, atol=5e-3)
    # z = 0.1 (normal (0, 0, 2) with offset -0.2 is normalised): again outer + hole.
    assert sorted(c.is_hole for c in flat_high.contours) == [False, True]
    assert np.allclose(flat_high.vertices[:, 2], 0.1)
    # Vertical and oblique planes through the centre: two separate discs, no holes.
    for sec in (vertical, oblique):
        assert len(sec.contours) == 2 and not any(c.is_hole for c in sec.contours)
        assert all(_ccw(sec.contour_uv(i)) for i in range(2))

    rng = np.random.default_rng(2)
    for sec in cs.sections:
        uv = _random_uv(sec, 3000, rng)
        agree = np.mean(sec.contains(uv) == _torus_inside(sec.to_3d(uv), major, minor))
        assert agree >= 0.98, agree

    path = tmp_path / "torus.csl"
    write_csl(cs, path)
    back = read_csl(path)
    _assert_same(cs, back)
    # Normalisation survives too (a file written normalised reads back normalised).
    write_csl(cs.normalized(), path)
    _assert_same(cs.normalized(), _with_normalization(read_csl(path), cs.normalized()))


def _with_normalization(a: CrossSections, b: CrossSections) -> CrossSections:
    """``a`` carrying ``b``'s normalisation (files do not store it)."""
    a.normalization = b.normalization
    return a


def test_nested_rings_parents() -> None:
    # Two concentric tori: the plane z = 0 shows 4 nested circles (depths 0..3).
    big = trimesh.creation.torus(0.5, 0.1, major_sections=64, minor_sections=16)
    small = trimesh.creation.torus(0.2, 0.05, major_sections=48, minor_sections=16)
    mesh = trimesh.util.concatenate([big, small])
    (sec,) = slice_mesh(mesh, np.array([[0, 0, 1, 0]])).sections
    radius = [np.linalg.norm(sec.vertices[c.indices, :2], axis=1).mean() for c in sec.contours]
    order = np.argsort(radius)[::-1]  # outermost first: 0.6, 0.4, 0.25, 0.15
    assert np.allclose(np.array(radius)[order], [0.6, 0.4, 0.25, 0.15], atol=5e-3)
    c = [sec.contours[i] for i in order]
    assert [x.is_hole for x in c] == [False, True, False, True]
    assert c[1].parent == order[0] and c[3].parent == order[2]  # the smallest enclosing loop
    # OReX's rule: the island (depth 2) lies inside the big ring's hole, so it counts as outside.
    uv = sec.to_2d(np.array([[0.55, 0, 0], [0.3, 0, 0], [0.22, 0, 0], [0.0, 0, 0]]))
    assert sec.contains(uv).tolist() == [True, False, False, False]


def test_planes_helpers() -> None:
    torus = trimesh.creation.torus(0.5, 0.2)
    p = axis_planes(torus.bounds, axis=0, count=3, margin=0.0)
    assert np.allclose(p, [[1, 0, 0, 0.7], [1, 0, 0, 0], [1, 0, 0, -0.7]])
    assert np.allclose(axis_planes(torus, axis=1, count=1), [[0, 1, 0, 0]])

    r = random_planes(12, seed=3, mesh_or_bounds=torus)
    assert r.shape == (12, 4) and np.allclose(np.linalg.norm(r[:, :3], axis=1), 1)
    assert np.array_equal(r, random_planes(12, seed=3, mesh_or_bounds=torus))
    side = torus.vertices @ r[:, :3].T + r[:, 3]
    assert ((side.min(0) < 0) & (side.max(0) > 0)).all()  # every plane cuts the mesh
    cs = slice_mesh(torus, r)
    assert len(cs) == 12 and all(s.contours for s in cs.sections)
    # Without a mesh: OReX's distances, |d| <= 1.
    assert (np.abs(random_planes(50, seed=0)[:, 3]) <= 1).all()
    # A plane that misses the mesh is skipped, or kept empty on request.
    miss = [([0, 0, 1], -5.0)]
    assert len(slice_mesh(torus, miss)) == 0
    (empty,) = slice_mesh(torus, miss, keep_empty=True).sections
    assert empty.contours == [] and empty.offset == pytest.approx(-5.0)
    assert not empty.contains(np.zeros((3, 2))).any()


def test_empty_plane_round_trip(tmp_path: Path) -> None:
    sec = CrossSection.from_vertices(np.zeros((0, 3)), [], normal=[0, 0, 2], offset=1.0)
    full = CrossSection.from_vertices(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]]), [Contour(np.array([0, 1, 2]))])
    cs = CrossSections(sections=[sec, full])
    path = tmp_path / "empty.csl"
    write_csl(cs, path)
    _assert_same(cs, read_csl(path))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mesh_path = tmp_path / "torus.stl"
    trimesh.creation.torus(0.5, 0.2).export(mesh_path)
    out = tmp_path / "out" / "torus.csl"
    main([str(mesh_path), str(out), "--axis", "x", "--count", "5"])
    cs = read_csl(out)
    assert len(cs) == 5 and all(np.allclose(s.normal, [1, 0, 0]) for s in cs.sections)
    assert "5 planes" in capsys.readouterr().out
    main([str(mesh_path), str(out), "--random", "6", "--normalize", "--mesh-out", str(tmp_path / "ref.stl")])
    assert len(read_csl(out)) == 6 and (tmp_path / "ref.stl").is_file()


def test_plane_iou_and_thin_cylinders() -> None:
    """On-plane IoU (issue 32): the sliced mesh itself scores ~1 on every plane; the same mesh moved
    by half the thinnest radius scores lower on every plane; dropping one cylinder lowers each
    plane by that cylinder's share; a solid empty everywhere scores 0."""
    mesh = thin_cylinders()
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 7
    sections = slice_mesh(mesh, axis_planes(mesh, 2, 6))
    assert [len(s.contours) for s in sections.sections] == [7] * 6
    same = sections.plane_iou(lambda p: points_inside(mesh, p), resolution=200)
    assert same.shape == (6,) and same.min() > 0.97, same
    moved = mesh.copy()
    moved.apply_translation([0.0075, 0.0, 0.0])
    shifted = sections.plane_iou(lambda p: points_inside(moved, p), resolution=200)
    assert (shifted < same - 0.1).all(), (shifted, same)
    six = trimesh.util.concatenate(mesh.split(only_watertight=False)[1:])
    fewer = sections.plane_iou(lambda p: points_inside(six, p), resolution=200)
    assert (fewer < same - 0.01).all() and (fewer > 0.5).all(), fewer
    assert (sections.plane_iou(lambda p: np.zeros(len(p), bool), resolution=50) == 0).all()
