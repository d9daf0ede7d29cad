"""3dcs exports: the lossless 3DCS PLY (layout, bit-exact round trip, the similarity transform that
keeps renders, one-line errors), the convex-hull mesh, and both through ``ns-export`` on a trained run."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from recon.export.convex_mesh import convex_hull_triangles, convex_mesh
from recon.export.convex_ply import ConvexPlyError, convex_ply_properties, read_convex_ply, transform_convexes, write_convex_ply
from recon.render.convex import rasterize_convexes
from recon.rotations import quaternion_to_matrix

REPO = Path(__file__).resolve().parents[2]


def make_params(n: int, k: int, degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n, 1, 3, generator=g)
    p = {
        "points": centres + 0.1 * torch.randn(n, k, 3, generator=g),
        "delta": torch.randn(n, generator=g),
        "sigma": torch.randn(n, generator=g) - 6,
        "opacities": torch.randn(n, generator=g) * 3,
        "mask": torch.randn(n, generator=g) * 3,
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g) * 0.1,
    }
    p["points"].view(-1)[:3] = torch.tensor([1e-42, -0.0, 3.4e38])  # bits a lossy path would change
    return p


@pytest.mark.parametrize("k,degree", [(3, 0), (6, 3), (8, 1)])
def test_convex_ply_round_trip_is_bit_exact(tmp_path, k, degree):
    params = make_params(9, k, degree)
    path = write_convex_ply(tmp_path / "c.ply", params, scaling_exponent=0.5, mask_threshold=0.02, frame="normalised")
    header = path.read_bytes().split(b"end_header\n")[0].decode().splitlines()
    assert header[2] == "comment recon-3dcs K=%d scaling_exponent=0.5 mask_threshold=0.02 frame=normalised" % k
    assert [line.split()[-1] for line in header if line.startswith("property")] == convex_ply_properties(k, (degree + 1) ** 2 - 1)
    assert "element convex 9" in header
    ply = read_convex_ply(path)
    assert (ply.num_points, ply.sh_degree, ply.scaling_exponent, ply.mask_threshold, ply.frame) == (k, degree, 0.5, 0.02, "normalised")
    for key, value in params.items():
        assert ply.params[key].shape == value.shape and torch.equal(ply.params[key].view(torch.int32), value.view(torch.int32)), key


def _camera(width: int = 40, height: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    viewmat = torch.eye(4)
    viewmat[:3, :3] = quaternion_to_matrix(torch.tensor([0.98, 0.1, -0.15, 0.05]))
    viewmat[:3, 3] = torch.tensor([0.1, -0.2, 4.0])
    K = torch.tensor([[50.0, 0, width / 2], [0, 50.0, height / 2], [0, 0, 1]])
    return viewmat, K


def _render(params: dict, viewmat: torch.Tensor, K: torch.Tensor, p: float) -> torch.Tensor:
    n = len(params["points"])
    colors = torch.cat([params["sh0"], params["shN"]], 1)
    image, alpha, _ = rasterize_convexes(
        params["points"].double(), params["delta"].exp().double(), params["sigma"].exp().double(),
        torch.sigmoid(params["opacities"]).double(), colors.double(), viewmat[None].double(), K[None].double(), 40, 32,
        sh_degree=math.isqrt(colors.shape[1]) - 1, scaling_exponent=p, backend="torch", render_mode="RGB+D",
    )
    assert n > 0 and alpha.amax() > 0.5  # something is drawn
    return torch.cat([image, alpha], -1)


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_similarity_transform_keeps_the_render(p):
    """x -> s (R x + t) with the camera moved alike: the same image when delta and sigma are divided
    by s^p (the edge functions are in pixels, the depth factor is d^p) and the SH turn with R."""
    g = torch.Generator().manual_seed(3)
    params = make_params(12, 6, 2, seed=1)  # soft, half-transparent convexes: alpha spans 0 .. 0.85
    params["points"] = 1.2 * torch.rand(12, 1, 3, generator=g) - 0.6 + 0.2 * torch.randn(12, 6, 3, generator=g)
    params["delta"] = params["sigma"] = torch.full((12,), math.log(0.1))
    params["opacities"] = torch.zeros(12)
    rot = quaternion_to_matrix(torch.tensor([0.3, -0.5, 0.7, 0.2], dtype=torch.float64))
    t, s = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), 3.7
    moved = {k: v.double() for k, v in transform_convexes({k: v.double() for k, v in params.items()}, rot, t, s, p).items()}
    viewmat, K = _camera()
    V = viewmat.double()
    V2 = torch.eye(4, dtype=torch.float64)
    V2[:3, :3] = V[:3, :3] @ rot.T
    V2[:3, 3] = s * (V[:3, 3] - V[:3, :3] @ rot.T @ t)  # the camera's coordinates of each point x s
    before, after = _render({k: v.double() for k, v in params.items()}, viewmat, K, p), _render(moved, V2, K, p)
    assert torch.allclose(after[..., :3], before[..., :3], atol=1e-9)  # colour
    assert torch.allclose(after[..., 4], before[..., 4], atol=1e-9)  # alpha
    assert torch.allclose(after[..., 3], s * before[..., 3], atol=1e-9)  # depth, in the new units
    # Without the rescaling the convexes change: the test can fail.
    unscaled = dict(moved, delta=params["delta"].double(), sigma=params["sigma"].double())
    assert (_render(unscaled, V2, K, p)[..., 4] - before[..., 4]).abs().max() > 0.3


def test_sharpness_predicts_the_indicator_at_the_centre():
    """kappa = sigma delta (f R)^2: a regular hexagon seen face-on (l = R, r = 0.866 R) has
    I = sigmoid(0.866 kappa - d sigma ln 6) at its centre (``ConvexSplatModel.sharpness``)."""
    from methods.convex_splatting.model import ConvexSplatModel, ConvexSplatModelConfig
    from recon.model import SceneInfo

    R, d, f = 0.2, 4.0, 50.0
    angle = torch.arange(6) * math.pi / 3
    hexagon = torch.stack([R * torch.cos(angle), R * torch.sin(angle), torch.zeros(6)], -1)
    model = ConvexSplatModel(ConvexSplatModelConfig(init="random", num_random_points=1, sh_degree=0), SceneInfo(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), num_train_cameras=0))
    for kappa in (1.0, 3.0):
        sigma = 0.01
        delta = kappa / (sigma * (f * R) ** 2)
        params = {"points": hexagon[None], "delta": torch.tensor([math.log(delta)]), "sigma": torch.tensor([math.log(sigma)]),
                  "opacities": torch.tensor([20.0]), "mask": torch.tensor([10.0]), "sh0": torch.zeros(1, 1, 3), "shN": torch.zeros(1, 0, 3)}
        model.load_convex_parameters(params)
        assert float(model.sharpness(f)) == pytest.approx(kappa, rel=1e-5)
        viewmat = torch.eye(4)
        viewmat[2, 3] = d
        K = torch.tensor([[f, 0, 15.5], [0, f, 15.5], [0, 0, 1]])  # the centre on pixel (15, 15)'s centre
        _, alpha, _ = rasterize_convexes(hexagon[None], torch.tensor([delta]), torch.tensor([sigma]), torch.ones(1), torch.ones(1, 3), viewmat[None], K[None], 32, 32, backend="torch")
        expected = 1 / (1 + math.exp(-(math.sqrt(3) / 2 * kappa - d * sigma * math.log(6))))
        assert float(alpha[0, 15, 15, 0]) == pytest.approx(min(0.99, expected), abs=1e-4)


# ---------------------------------------------------------------------------------------- bad files
def _splat_ply(path: Path) -> Path:
    from recon.export.splat_ply import write_splat_ply

    write_splat_ply(path, {"means": torch.zeros(2, 3), "scales": torch.zeros(2, 3), "quats": torch.ones(2, 4), "opacities": torch.zeros(2), "sh0": torch.zeros(2, 1, 3)})
    return path


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _edited(tmp_path: Path, name: str, old: bytes, new: bytes) -> Path:
    good = write_convex_ply(tmp_path / "good.ply", make_params(4, 6, 1), scaling_exponent=1.0, mask_threshold=0.01)
    data = good.read_bytes()
    assert old in data
    return _file(tmp_path / name, data.replace(old, new, 1))


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d: _file(d / "text.ply", b"hello"), "not a PLY file"),
        (lambda d: _splat_ply(d / "splat.ply"), "not a 3DCS export: it is a standard 3DGS splat PLY"),
        (lambda d: _file(d / "box.ply", trimesh.creation.box().export(file_type="ply")), "not a 3DCS export: it is a mesh PLY"),
        (lambda d: _edited(d, "k9.ply", b"K=6", b"K=9"), "K=9 points per convex; 3DCS convexes have 3 to 8"),
        (lambda d: _edited(d, "k2.ply", b"K=6", b"K=2"), "K=2 points per convex"),
        (lambda d: _edited(d, "k5.ply", b"K=6", b"K=5"), "K=5 in the header, but the file has point properties up to p5"),
        (lambda d: _edited(d, "nomark.ply", b"recon-3dcs", b"something"), "not a 3DCS export: no 'recon-3dcs' header comment"),
        (lambda d: _edited(d, "nosigma.ply", b"property float sigma\n", b""), "missing convex properties sigma"),
        (lambda d: _edited(d, "nok.ply", b"K=6 ", b""), "lacks K"),
        (lambda d: _edited(d, "badp.ply", b"scaling_exponent=1.0", b"scaling_exponent=abc"), "scaling_exponent='abc'"),
        (lambda d: _file(d / "cut.ply", _edited(d, "whole.ply", b"K=6", b"K=6").read_bytes()[:-10]), "4 convex records declared, which needs at least 544 bytes, but the file has 534"),
    ],
    ids=["text", "splat", "mesh", "k9", "k2", "k-mismatch", "no-marker", "missing-property", "no-k", "bad-number", "truncated"],
)
def test_bad_convex_files_are_one_line_errors(tmp_path, make, needle):
    path = make(tmp_path)
    with pytest.raises(ConvexPlyError) as err:
        read_convex_ply(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)) and needle in message, message


# ---------------------------------------------------------------------------------------- hull mesh
@pytest.mark.parametrize("k", [4, 5, 6, 7, 8])
def test_hull_triangles_match_qhull(k):
    from scipy.spatial import ConvexHull

    rng = np.random.default_rng(k)
    pts = rng.normal(size=(300, k, 3)) * rng.uniform(1e-3, 10, size=(300, 1, 1)) + rng.normal(size=(300, 1, 3)) * 100
    faces, owner = convex_hull_triangles(pts)
    for i in range(len(pts)):
        mine = faces[owner == i] - i * k
        assert {tuple(sorted(f)) for f in mine} == {tuple(sorted(f)) for f in ConvexHull(pts[i]).simplices}
        v = pts[i][mine]
        outward = np.einsum("fd,fd->f", np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), v[:, 0] - pts[i].mean(0))
        assert (outward > 0).all()


def test_hull_special_cases():
    cube = np.array(list(itertools.product((0.0, 1.0), repeat=3)))  # square faces: Qhull's triangulation
    hexagon = np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3), np.zeros(6)], -1) @ quaternion_to_matrix(torch.tensor([0.9, 0.3, 0.2, 0.1], dtype=torch.float64)).numpy().T
    triangle = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    line = np.array([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]])
    mesh = convex_mesh(cube[None] + 5.0, np.array([[0.2, 0.4, 0.6]]))
    assert len(mesh.faces) == 12 and mesh.is_watertight and mesh.volume == pytest.approx(1.0)
    assert (mesh.visual.vertex_colors[:, :3] == np.round(np.array([0.2, 0.4, 0.6]) * 255)).all()
    flat = convex_mesh(hexagon[None], np.ones((1, 3)))
    assert len(flat.faces) == 4 and flat.area == pytest.approx(3 * math.sqrt(3) / 2)  # a fan of 4 triangles, one-sided
    faces, owner = convex_hull_triangles(np.stack([triangle, line]))
    assert faces.tolist() == [[0, 1, 2]] and owner.tolist() == [0]  # K = 3: the triangle itself; collinear points: nothing
    degenerate = np.concatenate([hexagon, hexagon[:2]])[None]  # coincident points on a flat convex
    assert len(convex_hull_triangles(degenerate)[0]) == 4


# ---------------------------------------------------------------------------------------- through ns-export
@pytest.fixture(scope="module")
def convex_run(tiny_scene, tmp_path_factory, quiet_config) -> Path:
    """config.yml of a 3dcs-small run, 20 steps on the tiny scene (densification included)."""
    from recon.config import get_method
    from recon.engine.trainer import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = get_method("3dcs-small")
        run_dir = Trainer(quiet_config("3dcs-small", tiny_scene, tmp_path_factory.mktemp("runs"), 20, **spec.test_overrides)).train()
    finally:
        torch.set_num_threads(threads)
    return run_dir / "config.yml"


@pytest.mark.parametrize("frame", ["input", "normalised"])
def test_convex_ply_export_loads_into_a_model_that_renders_the_same(convex_run, tmp_path, frame, one_thread):
    from recon.cli.export import ConvexPlyExport
    from recon.engine.run import load_run

    out = ConvexPlyExport(load_config=convex_run, output_dir=tmp_path, device="cpu", frame=frame).run()
    run = load_run(convex_run, "cpu")
    T = run.outputs.dataparser_transform.double()
    to_normalised = (T[:, :3], T[:, 3], float(run.outputs.dataparser_scale)) if frame == "input" else None
    assert not torch.allclose(T[:, :3], torch.eye(3, dtype=torch.float64)) and run.outputs.dataparser_scale != 1.0  # a real change of frame
    ply = read_convex_ply(out)
    if frame == "input":  # the file holds the input poses' coordinates
        centres = run.outputs.transform_to_input(run.model.params["points"].detach().mean(1))
        assert torch.allclose(ply.params["points"].mean(1), centres, atol=1e-5)
    fresh = run.config.model.from_convex_ply(out, "cpu", to_normalised)
    fresh.background.copy_(run.model.background)
    want, got = run.model.convex_parameters(), fresh.convex_parameters()
    assert len(want["points"]) > 300  # the run densified
    for key in want:
        if frame == "normalised":
            assert torch.equal(got[key], want[key]), key
        else:  # float32 rounding of the input-frame values, mapped back
            assert torch.allclose(got[key], want[key], rtol=1e-6, atol=1e-6), (key, (got[key] - want[key]).abs().max())
    for i in range(2):
        camera = run.outputs.split("test").cameras[i : i + 1]
        a, b = run.model.render(camera), fresh.render(camera)
        for key in ("rgb", "depth", "accumulation"):
            err = float((a[key] - b[key]).abs().max())
            assert err == 0.0 if frame == "normalised" else err < 1e-4, (key, err)


def test_convex_mesh_export(convex_run, tmp_path, one_thread):
    from scipy.spatial import cKDTree

    from recon.cli.export import ConvexMeshExport, ConvexPlyExport
    from recon.engine.run import load_run
    from recon.errors import ConfigError
    from recon.export.crop import write_viewer_crop

    run = load_run(convex_run, "cpu")
    model = run.model
    prims = model.primitives()
    out = ConvexMeshExport(load_config=convex_run, output_dir=tmp_path, device="cpu", min_opacity=0.0, min_sharpness=0.0).run()
    mesh = trimesh.load(out, process=False)
    n, K = prims["points"].shape[:2]
    expected = run.outputs.transform_to_input(prims["points"].detach().reshape(-1, 3)).numpy()
    faces, _ = convex_hull_triangles(prims["points"].detach())
    assert len(mesh.faces) == len(faces) and len(mesh.vertices) <= n * K
    # every mesh vertex is one of the convexes' points, in the input poses' frame
    assert cKDTree(expected).query(np.asarray(mesh.vertices))[0].max() < 1e-5
    # thresholds drop convexes
    opacity = prims["opacities"].detach()
    threshold = float(opacity.median())
    half = ConvexMeshExport(load_config=convex_run, output_dir=tmp_path, device="cpu", min_opacity=threshold, min_sharpness=0.0, filename="half.obj").run()
    kept = int((opacity >= threshold).sum())
    assert 0 < kept < n and len(trimesh.load(half, process=False).faces) < len(mesh.faces)
    with pytest.raises(ConfigError, match="no convex passes"):
        ConvexMeshExport(load_config=convex_run, output_dir=tmp_path, device="cpu", min_opacity=0.0, min_sharpness=1e12).run()
    # crop: only the convexes whose centre is in the viewer's box
    lo, hi = prims["means"].detach().quantile(0.25, 0), prims["means"].detach().quantile(0.75, 0)
    write_viewer_crop(convex_run.parent, lo, hi, True)
    try:
        cropped = ConvexMeshExport(load_config=convex_run, output_dir=tmp_path, device="cpu", min_opacity=0.0, min_sharpness=0.0, crop_from_viewer=True, filename="crop.ply").run()
        ply = ConvexPlyExport(load_config=convex_run, output_dir=tmp_path, device="cpu", crop_from_viewer=True, frame="normalised", filename="crop_c.ply").run()
    finally:
        (convex_run.parent / "viewer_crop.json").unlink()
    inside = ((prims["means"] >= lo) & (prims["means"] <= hi)).all(-1)
    assert len(read_convex_ply(ply).params["points"]) == int(inside.sum()) > 0
    assert 0 < len(trimesh.load(cropped, process=False).faces) < len(mesh.faces)


def test_convex_mesh_bad_threshold_is_one_line(convex_run, tmp_path):
    """Through the console script: one line, exit 2, nothing written. (A non-3DCS PLY given to
    ``ns-viewer --convex``: tests/viewer/test_viewer.py::test_ns_viewer_bad_input_one_line.)"""
    proc = subprocess.run([sys.executable, "-m", "recon.cli.export", "convex-mesh", "--load-config", str(convex_run), "--output-dir", str(tmp_path / "x"),
                           "--min-opacity", "2"], capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0] == "error: --min-opacity must be in [0, 1], got 2.0", proc.stderr
    assert not (tmp_path / "x").exists()
