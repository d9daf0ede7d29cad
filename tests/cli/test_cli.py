"""The console scripts as a user runs them: happy path, and one clear line for every mistake."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from data.synthetic import SyntheticSceneConfig, generate_scene

TINY_FLAGS = [
    "--model.hidden-dim", "32", "--model.num-layers", "2", "--model.skips", "--model.color-hidden-dim", "16",
    "--model.num-coarse-samples", "8", "--model.num-fine-samples", "8", "--model.position-frequencies", "4",
    "--datamanager.train-num-rays-per-batch", "128", "--device", "cpu", "--logging.no-progress-bar",
]


def run(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", f"recon.cli.{module}", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    cfg = SyntheticSceneConfig(width=24, height=24, num_train_views=6, num_test_views=2, supersample=1, num_points=300)
    return generate_scene(tmp_path_factory.mktemp("cli") / "scene", cfg)


@pytest.fixture(scope="module")
def trained(scene, tmp_path_factory) -> Path:
    """A run trained through ns-train: its config.yml."""
    out = tmp_path_factory.mktemp("runs")
    proc = run("train", "vanilla-nerf", "--data", scene, "--output-dir", out, "--timestamp", "t",
               "--max-num-iterations", "30", "--steps-per-save", "20", *TINY_FLAGS)
    assert proc.returncode == 0, proc.stderr
    config = out / "scene" / "vanilla-nerf" / "t" / "config.yml"
    assert config.is_file()
    return config


def test_train_eval_render_export(trained, tmp_path):
    run_dir = trained.parent
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    assert summary["step"] == 30 and math.isfinite(summary["psnr"])
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step-000000030.safetensors", "step-000000030.state.pt"]  # only the latest is kept
    assert list(run_dir.glob("events.out.tfevents.*"))

    proc = run("eval", "--load-config", trained, "--output-path", tmp_path / "eval.json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert len(result["images"]) == 2 and {"psnr", "ssim"} <= set(result["mean"])

    proc = run("render", "dataset", "--load-config", trained, "--output-path", tmp_path / "test.mp4", "--rendered-output-names", "rgb", "depth")
    assert proc.returncode == 0, proc.stderr
    import imageio.v3 as iio

    frames = iio.imread(tmp_path / "test.mp4")
    assert frames.shape[0] == 2 and frames.shape[2] >= 48  # rgb and depth side by side

    proc = run("render", "spiral", "--load-config", trained, "--output-path", tmp_path / "frames", "--num-frames", "3")
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "frames").glob("*.png"))) == 3

    proc = run("export", "tsdf", "--load-config", trained, "--output-dir", tmp_path / "exp", "--resolution", "24", "--filename", "mesh.glb",
               "--accumulation-threshold", "0.1")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "exp" / "mesh.glb").stat().st_size > 0


def test_export_to_a_full_disk_is_one_line_and_leaves_nothing(trained, small_disk):
    """Issue "Reliability": a full disk during an export gives a clear error; no partial file."""
    out = small_disk.path / "exp"
    out.mkdir()
    (out / "mesh.ply").write_bytes(b"the previous export")
    small_disk.fill()
    proc = run("export", "tsdf", "--load-config", trained, "--output-dir", out, "--resolution", "24", "--filename", "mesh.ply", "--accumulation-threshold", "0.1")
    assert_one_line_error(proc, "mesh.ply", "no space left on device", "unchanged")
    assert sorted(p.name for p in out.iterdir()) == ["mesh.ply"] and (out / "mesh.ply").read_bytes() == b"the previous export"


@pytest.mark.parametrize(
    "args,needles",
    [
        (["marching-cubes", "--image-scale", "0.5"], ["--image-scale", "marching-cubes"]),
        (["gaussian-splat", "--image-scale", "0.5"], ["--image-scale", "gaussian-splat"]),
        (["tsdf", "--image-scale", "0"], ["--image-scale must be positive"]),
    ],
)
def test_export_image_scale_only_where_views_are_rendered(trained, tmp_path, args, needles):
    """marching-cubes and gaussian-splat read the model, not renders: --image-scale is refused there."""
    out = tmp_path / "exp"
    proc = run("export", *args, "--load-config", trained, "--output-dir", out)
    assert proc.returncode == 2
    assert_one_line_error(proc, *needles)
    assert not out.exists()


def test_help_lists_methods():
    proc = run("train", "--help")
    assert proc.returncode == 0 and "vanilla-nerf" in proc.stdout


@pytest.mark.parametrize(
    "args,needles",
    [
        (["nope"], ["unknown method 'nope'"]),
        (["vanilla-nerf", "--no-such-flag", "3"], ["--no-such-flag"]),
        (["vanilla-nerf", "--max-num-iterations", "abc"], ["--max-num-iterations"]),
        (["vanilla-nerf", "--device", "gpu"], ["--device"]),
    ],
)
def test_bad_command_lines(args, needles):
    assert_one_line_error(run("train", *args), *needles)


def test_image_method_refuses_cross_sections(tmp_path):
    from data.cross_sections import axis_planes, slice_mesh, write_csl
    import trimesh

    box = trimesh.creation.box(extents=(1.0, 0.6, 0.8))
    csl = tmp_path / "box-sections.csl"
    write_csl(slice_mesh(box, axis_planes(box, axis=2, count=3)), csl)
    assert_one_line_error(run("train", "vanilla-nerf", "--data", csl), "posed images", "box-sections.csl")


def test_viewer_is_found_through_its_entry_point(monkeypatch):
    """``--viewer`` reaches the viewer package only through the ``recon.viewers`` entry points."""
    from importlib.metadata import EntryPoint

    import recon.cli.train as train
    from recon.errors import ConfigError
    from viewer.training import train_with_viewer

    assert train.load_viewer() is train_with_viewer
    with pytest.raises(ConfigError, match=r"--viewer: no viewer 'nope' is registered in the entry-point group recon\.viewers"):
        train.load_viewer("nope")
    broken = EntryPoint(name="viser", value="no_such_viewer_module:run", group=train.VIEWER_GROUP)
    monkeypatch.setattr(train, "entry_points", lambda group: [broken] if group == train.VIEWER_GROUP else [])
    with pytest.raises(ConfigError, match="--viewer: the viewer 'viser' .* failed to load: ModuleNotFoundError"):
        train.load_viewer()


def test_orex_needs_cross_sections(scene):
    assert_one_line_error(run("train", "orex-small", "--data", scene, "--max-num-iterations", "1"), "cross-sections")


def _copy(scene: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(scene, dst)
    return dst


def _edit_transforms(root: Path, fn) -> None:
    meta = json.loads((root / "transforms.json").read_text())
    fn(meta)
    (root / "transforms.json").write_text(json.dumps(meta))


def _bad_pose_shape(meta):
    meta["frames"][1]["transform_matrix"] = [row[:3] for row in meta["frames"][1]["transform_matrix"][:3]]  # 3x3


def _nan_pose(meta):
    meta["frames"][2]["transform_matrix"][0][3] = float("nan")


@pytest.mark.parametrize(
    "make,needles",
    [
        (lambda root: root / "missing", ["does not exist"]),
        (lambda root: (root / "empty").mkdir() or root / "empty", ["empty"]),
        (lambda root: (root / "transforms.json").write_text("{ nope") and root, ["transforms.json", "JSON"]),
        (lambda root: _edit_transforms(root, _bad_pose_shape) or root, ["transforms.json"]),
        (lambda root: _edit_transforms(root, _nan_pose) or root, ["transforms.json"]),
        (lambda root: (root / "images" / "frame_00001.png").write_bytes((root / "images" / "frame_00001.png").read_bytes()[:200]) and root,
         ["frame_00001.png"]),
    ],
    ids=["missing", "empty", "malformed-json", "pose-shape", "nan-pose", "truncated-image"],
)
def test_bad_datasets_leave_no_output(scene, tmp_path, make, needles):
    data = make(_copy(scene, tmp_path))
    out = tmp_path / "out"
    proc = run("train", "vanilla-nerf", "--data", data, "--output-dir", out, "--max-num-iterations", "2", *TINY_FLAGS)
    assert_one_line_error(proc, *needles)
    assert not out.exists()


def test_bad_checkpoints(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained.parent, run_dir)
    ckpt = next((run_dir / "checkpoints").glob("*.safetensors"))

    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    assert_one_line_error(run("eval", "--load-config", run_dir / "config.yml"), ckpt.name)

    save_file({"w": torch.zeros(3)}, str(ckpt))  # a safetensors file, but not ours
    assert_one_line_error(run("eval", "--load-config", run_dir / "config.yml"), ckpt.name, "not a recon checkpoint")

    shutil.copy(next(trained.parent.glob("checkpoints/*.safetensors")), ckpt)
    config = (run_dir / "config.yml").read_text().replace("hidden_dim: 32", "hidden_dim: 48")
    (run_dir / "config.yml").write_text(config)  # a checkpoint of another model size
    assert_one_line_error(run("eval", "--load-config", run_dir / "config.yml"), ckpt.name, "does not fit")

    state = next((run_dir / "checkpoints").glob("*.state.pt"))
    state.write_bytes(b"\x00" * 64)
    proc = run("train", "vanilla-nerf", "--load-dir", run_dir, "--max-num-iterations", "40", *TINY_FLAGS)
    assert_one_line_error(proc, state.name)


def test_mixed_image_sizes_error_names_the_file(scene, tmp_path):
    from data.datamanager import ImageDataset
    from data.parsers import load_dataset
    from PIL import Image
    from recon.errors import DataError

    data = _copy(scene, tmp_path)
    img = data / "images" / "frame_00003.png"
    Image.open(img).resize((20, 24)).save(img)
    _edit_transforms(data, lambda meta: meta["frames"][3].update({"w": 20, "cx": 10.0}))
    ds = ImageDataset(load_dataset(data).split("train"))
    with pytest.raises(DataError, match="frame_00003.png"):
        ds.require_single_size("this method")
    assert np.isfinite(ds.image(0).numpy()).all()


def test_third_party_plugin_and_marching_cubes_export(scene, tmp_path):
    """A method from outside the package registers by RECON_METHODS, trains, and exports its SDF
    as a mesh in the input coordinates (the dataset normalisation undone)."""
    from data.parsers import load_dataset
    import trimesh

    plugins = Path(__file__).resolve().parents[1] / "plugins"
    env = {**os.environ, "RECON_METHODS": "test-sphere=sphere_sdf_method:spec", "PYTHONPATH": f"{plugins}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def cli(module, *args):
        return subprocess.run([sys.executable, "-m", f"recon.cli.{module}", *map(str, args)], capture_output=True, text=True, env=env, timeout=300)

    proc = cli("train", "test-sphere", "--data", scene, "--output-dir", tmp_path, "--timestamp", "t", "--device", "cpu", "--logging.no-progress-bar")
    assert proc.returncode == 0, proc.stderr
    config = tmp_path / "scene" / "test-sphere" / "t" / "config.yml"
    proc = cli("export", "marching-cubes", "--load-config", config, "--output-dir", tmp_path / "exp", "--resolution", "48",
               "--bounding-box-min", "-0.8", "-0.8", "-0.8", "--bounding-box-max", "0.8", "0.8", "0.8")
    assert proc.returncode == 0, proc.stderr
    mesh = trimesh.load(tmp_path / "exp" / "mesh.ply")
    assert mesh.is_watertight
    outputs = load_dataset(scene)
    centre = outputs.transform_to_input(torch.zeros(1, 3)).numpy()[0]
    radii = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert np.allclose(radii, 0.5 / outputs.dataparser_scale, rtol=0.02)

    proc = cli("export", "tsdf", "--load-config", config, "--output-dir", tmp_path / "exp")
    assert_one_line_error(proc, "cannot export tsdf")
