"""Block-partitioned training (recon.blocks, ns-train-blocks): the partition's coverage, overlap and
balance; the merge keeps each Gaussian in its own cell; the merged run opens wherever a run does;
Ray and the process pool give the same merged model; resume, --only-block, retries and errors."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from data import synthetic
from recon.blocks.partition import parse_grid, partition_scene
from recon.blocks.runner import run_tasks
from recon.cli.train_blocks import BlocksOptions, parse_args, train_blocks
from recon.errors import ConfigError, TrainingError

STEPS = 30
TRAIN = ["--max-num-iterations", str(STEPS), "--model.sh-degree", "1", "--logging.no-tensorboard", "--steps-per-eval-image", "0"]


# -- the partition (pure geometry) -----------------------------------------------------------------
def downward_cameras(xy: np.ndarray, height: float = 1.0, size: int = 64, focal: float = 32.0) -> tuple[np.ndarray, np.ndarray]:
    """Cameras at ``xy`` [C, 2], ``height`` above the ground, looking straight down (OpenCV c2w [C, 3, 4])."""
    c2w = np.zeros((len(xy), 3, 4))
    c2w[:, :, :3] = np.diag([1.0, -1.0, -1.0])
    c2w[:, :2, 3], c2w[:, 2, 3] = xy, height
    intrinsics = np.tile([focal, focal, size / 2, size / 2, size, size], (len(xy), 1)).astype(np.float64)
    return c2w, intrinsics


def scene(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        xy, pts = rng.uniform(-1, 1, (60, 2)), rng.uniform(-1, 1, (3000, 2))
    elif kind == "clustered":  # most of everything in one corner, a few far outliers
        xy = np.concatenate([rng.normal(0.7, 0.05, (50, 2)), rng.uniform(-5, 5, (10, 2))])
        pts = np.concatenate([rng.normal(0.7, 0.05, (2800, 2)), rng.uniform(-20, 20, (200, 2))])
    else:  # a long street: 20 long, cameras within 0.3 of its middle, facades 1 from it
        xy, pts = np.stack([rng.uniform(-10, 10, 60), rng.normal(0, 0.3, 60)], 1), np.stack([rng.uniform(-10, 10, 3000), rng.normal(0, 1, 3000)], 1)
    c2w, intrinsics = downward_cameras(xy)
    points = np.concatenate([pts, rng.uniform(0, 0.1, (len(pts), 1))], 1)
    return c2w, intrinsics, points


@pytest.mark.parametrize("kind", ["uniform", "clustered", "street"])
@pytest.mark.parametrize("grid", [(2, 2), (3, 1), (3, 3)])
def test_partition_covers_every_camera_and_point_with_the_overlap(kind, grid):
    c2w, intrinsics, points = scene(kind)
    p = partition_scene(c2w, intrinsics, points, grid, overlap=0.2, visibility=None)
    assert len(p) == grid[0] * grid[1] and p.up == 2 and p.ground == (0, 1)
    own = p.cell_of(points)
    assert (own.sum(1) == 1).all(), "the cells tile the plane: each point in exactly one"
    assert (p.cell_of(c2w[:, :, 3]).sum(1) == 1).all()
    assert set().union(*map(set, p.cameras)) == set(range(len(c2w)))
    assert set().union(*map(set, p.points)) == set(range(len(points)))
    # The expanded cell: each finite side moved out by 0.2 x the cell's size (open cells measured to the data).
    everything = np.concatenate([c2w[:, :2, 3], points[:, :2]])
    for b in range(len(p)):
        lo, hi = np.maximum(p.cells[b, 0], everything.min(0)), np.minimum(p.cells[b, 1], everything.max(0))
        want = np.stack([p.cells[b, 0] - 0.2 * (hi - lo), p.cells[b, 1] + 0.2 * (hi - lo)])
        np.testing.assert_allclose(p.expanded[b], want)
        g = points[:, :2]
        inside = ((g >= want[0]) & (g <= want[1])).all(1)
        assert np.array_equal(p.points[b], np.flatnonzero(inside)), "a block's points are exactly those in its expanded cell"
        assert set(np.flatnonzero(own[:, b])) <= set(p.points[b])
    # Overlap shares points: a point just across a boundary belongs to both neighbours.
    if kind == "uniform":
        assert sum(len(x) for x in p.points) > 1.2 * len(points)
        assert sum(len(x) for x in partition_scene(c2w, intrinsics, points, grid, overlap=0.0, visibility=None).points) == len(points)


@pytest.mark.parametrize("kind", ["uniform", "clustered", "street"])
def test_partition_balances_cameras_or_points(kind):
    c2w, intrinsics, points = scene(kind, seed=1)
    per_cell = lambda p, xyz: p.cell_of(xyz).sum(0)  # noqa: E731
    cams = partition_scene(c2w, intrinsics, points, (2, 2), visibility=None)
    assert np.ptp(per_cell(cams, c2w[:, :, 3])) <= 2, per_cell(cams, c2w[:, :, 3])  # 60 cameras, 15 each
    pts = partition_scene(c2w, intrinsics, points, (2, 2), balance="points", visibility=None)
    counts = per_cell(pts, points)
    assert counts.max() <= 1.02 * counts.min(), counts
    if kind == "clustered":  # equal-width cells would put nearly everything in one block
        assert counts.min() > 600


def test_visibility_adds_cameras_that_look_into_a_block():
    """Two cameras high above block 0 (x < 0) see mostly block 1 when turned towards it."""
    c2w, intrinsics, points = scene("uniform", seed=2)
    p0 = partition_scene(c2w, intrinsics, points, (2, 1), overlap=0.0, visibility=None)
    far = np.flatnonzero(c2w[:, 0, 3] < p0.cells[0, 1, 0] - 0.5)[:2]
    # Look along +x and down 45 degrees: OpenCV camera axes x right, y down, z forward.
    forward, right = np.array([1.0, 0.0, -1.0]) / np.sqrt(2), np.array([0.0, -1.0, 0.0])
    c2w[far, :, :3] = np.stack([right, np.cross(forward, right), forward], 1)
    with_vis = partition_scene(c2w, intrinsics, points, (2, 1), overlap=0.0, visibility=0.5)
    without = partition_scene(c2w, intrinsics, points, (2, 1), overlap=0.0, visibility=None)
    assert not set(far) & set(without.cameras[1])
    assert set(far) <= set(with_vis.cameras[1]) and set(far) <= set(with_vis.cameras[0])


def test_up_axis_is_the_flattest():
    c2w, intrinsics, points = scene("uniform")
    swap = [0, 2, 1]  # the same scene with y up
    c2w_y, points_y = c2w[:, swap], points[:, swap]
    p = partition_scene(c2w_y, intrinsics, points_y, (2, 2), visibility=None)
    assert p.up == 1 and p.ground == (0, 2)
    assert partition_scene(c2w, intrinsics, points, (2, 2), up="x", visibility=None).up == 0


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda c, i, p: partition_scene(c[:3], i[:3], p, (2, 2)), "makes 4 blocks but there are only 3 training cameras"),
        (lambda c, i, p: partition_scene(c, i, p, (2, 2), overlap=-0.1), "--overlap"),
        (lambda c, i, p: partition_scene(c, i, p, (2, 2), visibility=1.5), "--visibility"),
        (lambda c, i, p: partition_scene(c, i, None, (2, 2), balance="points"), "has none"),
        (lambda c, i, p: parse_grid("2by2"), "COLUMNSxROWS"),
        (lambda c, i, p: parse_grid("0x2"), "COLUMNSxROWS"),
    ],
)
def test_partition_errors_are_one_line(call, needle):
    c2w, intrinsics, points = scene("uniform")
    with pytest.raises(ConfigError, match=needle) as err:
        call(c2w, intrinsics, points)
    assert "\n" not in str(err.value)


def test_failed_tasks_are_retried_then_reported():
    """run_tasks resubmits a failed block (here on thread pools; the real ones are Ray or processes)."""
    tries: dict[int, int] = {}
    lock = threading.Lock()

    def flaky(payload):
        with lock:
            tries[payload["index"]] = tries.get(payload["index"], 0) + 1
            n = tries[payload["index"]]
        if payload["index"] == 1 and n == 1 or payload["index"] == 2:
            raise RuntimeError(f"block {payload['index']} broke")
        return {"index": payload["index"], "try": n}

    events = []
    results, errors = run_tasks(flaky, [{"index": i} for i in range(3)], lambda: cf.ThreadPoolExecutor(2), retries=2, report=events.append)
    assert results == {0: {"index": 0, "try": 1}, 1: {"index": 1, "try": 2}}
    assert errors == {2: "RuntimeError: block 2 broke"} and tries == {0: 1, 1: 2, 2: 3}
    assert [(e.kind, e.index) for e in events if e.kind == "retry"] == [("retry", 1), ("retry", 2), ("retry", 2)]


# -- training, merging, loading --------------------------------------------------------------------
@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    config = synthetic.city_scene_config(num_views=16, size=32, blocks=2, supersample=1, num_points=400, mesh_resolution=0.04)
    return synthetic.generate_scene(tmp_path_factory.mktemp("city") / "city", config)


def blocks_args(city: Path, out: Path, stamp: str, *extra: str) -> list[str]:
    return ["splat", "--data", str(city), "--blocks", "2x1", "--output-dir", str(out), "--timestamp", stamp, "--max-workers", "2", *TRAIN, *extra]


@pytest.fixture(scope="module")
def pool_run(city, tmp_path_factory) -> Path:
    config, options = parse_args(blocks_args(city, tmp_path_factory.mktemp("out"), "pool", "--executor", "pool"))
    return train_blocks(config, options, log=lambda line: None)


def merged_state(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (ckpt,) = (run / "checkpoints").glob("step-*.safetensors")
    return load_file(str(ckpt))


def test_merge_keeps_each_gaussian_in_its_own_cell(pool_run):
    from recon.engine.run import load_run

    state = json.loads((pool_run / "blocks.json").read_text())
    merged = merged_state(pool_run)
    cells = [np.array(b["cell"], dtype=np.float64) for b in state["partition"]["blocks"]]  # "inf" strings parse as floats
    total = 0
    for b, info in enumerate(state["merged"]["blocks"]):
        block = load_run(pool_run / "blocks" / "splat" / f"block-{b:02d}" / "config.yml", device="cpu").model.splat_parameters()
        xy = block["means"][:, :2].double().numpy()
        inside = torch.from_numpy(((xy >= cells[b][0]) & (xy < cells[b][1])).all(1))
        assert info["trained"] == len(xy) and info["kept"] == int(inside.sum()) and info["offset"] == total
        assert 0 < info["kept"] < info["trained"], "the overlap trained Gaussians that the merge drops"
        rows = slice(total, total + info["kept"])
        for key in ("means", "scales", "quats", "opacities", "sh0", "shN"):
            assert torch.equal(merged[f"params.{key}"][rows], block[key][inside]), key
        total += info["kept"]
    assert merged["params.means"].shape[0] == total == state["merged"]["count"]


def test_merged_run_loads_everywhere_a_run_does(pool_run, tmp_path):
    from recon.cli.eval import EvalConfig, main as eval_main
    from recon.cli.render import DatasetRender
    from recon.engine.run import load_run
    from recon.export.splat_ply import read_splat_ply

    run = load_run(pool_run / "config.yml", device="cpu")
    assert run.config.method_name == "splat" and run.config.dataparser.train_views is None
    assert len(run.outputs.splits["train"]) == 16, "the merged run sees the whole dataset"
    out = run.model.render(run.outputs.split("test").cameras[0:1])
    assert out["rgb"].shape == (32, 32, 3) and torch.isfinite(out["rgb"]).all() and out["accumulation"].mean() > 0.5
    payload = eval_main(EvalConfig(load_config=pool_run / "config.yml", output_path=tmp_path / "eval.json", device="cpu"))
    assert np.isfinite(payload["mean"]["psnr"]) and payload["mean"]["psnr"] > 10 and 0 < payload["mean"]["ssim"] <= 1
    summary = json.loads((pool_run / "eval_summary.json").read_text())
    assert summary["psnr"] == pytest.approx(payload["mean"]["psnr"], abs=1e-4)
    ply = read_splat_ply(pool_run / "splat.ply")
    assert 0 < len(ply["means"]) <= merged_state(pool_run)["params.means"].shape[0] and ply["shN"].shape[1] == 3
    frames = DatasetRender(load_config=pool_run / "config.yml", output_path=tmp_path / "frames", device="cpu").run()
    assert len(list(Path(frames).glob("*.png"))) == len(run.outputs.splits["test"]) > 0
    from viewer.cli import ViewerCommand

    viewer = ViewerCommand(load_config=pool_run / "config.yml", device="cpu", viewer_port=0).open()
    viewer.stop()


def test_ray_and_pool_give_the_same_merged_model(pool_run, city, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'recon[distributed]')")
    config, options = parse_args(blocks_args(city, tmp_path, "ray", "--executor", "ray"))
    lines: list[str] = []
    ray_run = train_blocks(config, options, log=lines.append)
    assert any("on Ray (local)" in line for line in lines)
    a, b = merged_state(pool_run), merged_state(ray_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_skips_finished_blocks_and_only_block_trains_one(pool_run):
    ckpts = sorted((pool_run / "blocks").glob("splat/block-*/checkpoints/*.safetensors"))
    before = [p.stat().st_mtime_ns for p in ckpts]
    config, options = parse_args(["splat", "--load-dir", str(pool_run), "--executor", "pool"])
    lines: list[str] = []
    assert train_blocks(config, options, log=lines.append) == pool_run
    assert sum("already finished: skipped" in line for line in lines) == 2 and not any("queued" in line for line in lines)
    assert [p.stat().st_mtime_ns for p in ckpts] == before
    merged = merged_state(pool_run)
    config, options = parse_args(["splat", "--load-dir", str(pool_run), "--only-block", "1", "--executor", "pool"])
    lines.clear()
    train_blocks(config, options, log=lines.append)
    assert [line for line in lines if "queued" in line] == ["[block-01] queued (try 1 of 2)"]
    assert ckpts[0].stat().st_mtime_ns == before[0] and ckpts[1].stat().st_mtime_ns != before[1], "block 1 alone trained again"
    again = merged_state(pool_run)
    assert all(torch.equal(merged[k], again[k]) for k in merged), "a block trains deterministically"
    config, options = parse_args(["splat", "--load-dir", str(pool_run), "--only-block", "2"])
    with pytest.raises(ConfigError, match=r"--only-block 2 is out of range: this run has blocks 0 to 1"):
        train_blocks(config, options, log=lambda line: None)
    config, options = parse_args(["3dcs-small", "--load-dir", str(pool_run)])
    with pytest.raises(ConfigError, match="this block run trains 'splat', not '3dcs-small'"):
        train_blocks(config, options, log=lambda line: None)


def test_command_line_errors(city, tmp_path):
    config, options = parse_args(["nerf-hash-small", "--data", str(city), "--output-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="Gaussian-family"):
        train_blocks(config, options)
    config, options = parse_args(blocks_args(city, tmp_path, "x", "--blocks", "5x4"))
    with pytest.raises(ConfigError, match="makes 20 blocks but there are only 16 training cameras"):
        train_blocks(config, options)
    config, options = parse_args(["splat", "--load-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="not a block run"):
        train_blocks(config, options)
    assert not any(tmp_path.iterdir()), "errors leave no run folder"
    with pytest.raises(SystemExit):
        parse_args(["splat", "--executor", "mpi"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the block fails for want of CUDA")
def test_a_block_that_keeps_failing_is_retried_and_names_the_rerun(city, tmp_path):
    """The partition needs no device; each block's trainer asks for CUDA, which is not there."""
    config, options = parse_args(blocks_args(city, tmp_path, "f", "--executor", "pool", "--retries", "1", "--device", "cuda"))
    lines: list[str] = []
    with pytest.raises(TrainingError, match=r"2 block\(s\) failed after 2 tries \(block 0: .*CUDA is not available.*--load-dir .*--only-block K"):
        train_blocks(config, options, log=lines.append)
    assert sum("retry 1 of 1" in line for line in lines) == 2 and sum("failed: " in line for line in lines) == 4
    state = json.loads((tmp_path / "city" / "splat" / "f" / "blocks.json").read_text())
    assert state["results"]["0"]["status"] == "failed" and "CUDA" in state["results"]["0"]["error"]


def test_another_gaussian_method_merges_into_a_splat_run(city, tmp_path):
    """3D Convex Splatting blocks: their one-Gaussian-per-convex approximations make a `splat` run."""
    from recon.engine.run import load_run

    args = ["3dcs-small", "--data", str(city), "--blocks", "2x1", "--output-dir", str(tmp_path), "--timestamp", "c", "--executor", "pool",
            "--max-workers", "2", "--max-num-iterations", "10", "--logging.no-tensorboard", "--steps-per-eval-image", "0", "--no-eval-at-end"]
    run_dir = train_blocks(*parse_args(args), log=lambda line: None)
    assert (run_dir / "blocks" / "3dcs-small" / "block-01" / "config.yml").is_file() and not (run_dir / "eval_summary.json").exists()
    block = load_run(run_dir / "blocks" / "3dcs-small" / "block-00" / "config.yml", device="cpu")
    run = load_run(run_dir / "config.yml", device="cpu")
    assert run.config.method_name == "splat" and run.model.num_primitives == json.loads((run_dir / "blocks.json").read_text())["merged"]["count"]
    assert run.model.params["shN"].shape[1] == block.model.splat_parameters()["shN"].shape[1]
    out = run.model.render(run.outputs.split("test").cameras[0:1])
    assert torch.isfinite(out["rgb"]).all() and out["accumulation"].mean() > 0.1  # 0.29 measured after 10 steps
