"""vanilla-nerf: the trainer's test subject (loss falls, exact resume, Ctrl-C, exports, quality)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import trimesh

from recon.config import get_method, override
from recon.engine.callbacks import Callback
from recon.engine.checkpoint import find_checkpoint
from recon.engine.evaluate import evaluate_images
from recon.engine.trainer import Trainer
from recon.errors import WriteError

TINY = get_method("vanilla-nerf").test_overrides


def test_loss_falls(tiny_scene, tmp_path, quiet_config):
    trainer = Trainer(quiet_config("vanilla-nerf", tiny_scene, tmp_path, 60, **TINY))
    trainer.train()
    losses = [loss for _, loss in trainer.history]
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    out = trainer.model.render(trainer.datamanager.eval_dataset.cameras[0])
    assert out["rgb"].shape == (32, 32, 3) and out["depth"].shape == (32, 32, 1)
    assert torch.isfinite(out["depth"]).all()


def test_interrupt_then_resume_matches_uninterrupted_run(tiny_scene, tmp_path, quiet_config):
    steps, stop_at = 16, 7
    full = Trainer(quiet_config("vanilla-nerf", tiny_scene, tmp_path / "a", steps, **TINY))
    full.train()

    def interrupt(step, **_):
        signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, in the middle of a step

    first = Trainer(quiet_config("vanilla-nerf", tiny_scene, tmp_path / "b", steps, **TINY))
    first.callbacks.append(Callback(interrupt, start=stop_at - 1, every=1))
    with pytest.raises(KeyboardInterrupt):
        first.train()
    model_path, state_path = find_checkpoint(first.run_dir)
    assert model_path.name == f"step-{stop_at:09d}.safetensors" and state_path.is_file()
    state = torch.load(state_path, weights_only=True)  # optimizer + RNG state load without pickle
    assert state["step"] == stop_at

    resumed = Trainer(quiet_config("vanilla-nerf", tiny_scene, tmp_path / "b", steps, load_dir=first.run_dir, **TINY))
    assert resumed.start_step == stop_at and resumed.run_dir == first.run_dir
    resumed.train()
    expected = dict(full.history)
    for step, loss in resumed.history:
        assert loss == expected[step], f"step {step}: resumed {loss} != uninterrupted {expected[step]}"
    assert resumed.history[0][0] == stop_at
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_run_folder_and_exports(tiny_scene, tmp_path, quiet_config):
    from recon.cli.eval import EvalConfig, main as eval_main
    from recon.cli.export import PointcloudExport, TSDFExport

    cfg = quiet_config("vanilla-nerf", tiny_scene, tmp_path, 40, **TINY)
    run_dir = Trainer(cfg).train()
    assert (run_dir / "config.yml").is_file() and (run_dir / "dataparser_transforms.json").is_file()
    result = eval_main(EvalConfig(load_config=run_dir / "config.yml", render_output_path=tmp_path / "renders"))
    assert result["mean"]["num_images"] == 2 and len(list((tmp_path / "renders").glob("*.png"))) == 2
    assert json.loads((run_dir / "eval.json").read_text())["mean"]["psnr"] == result["mean"]["psnr"]
    mesh_path = TSDFExport(load_config=run_dir / "config.yml", output_dir=tmp_path / "exp", resolution=32, accumulation_threshold=0.2).run()
    assert len(trimesh.load(mesh_path).vertices) > 0
    ply = PointcloudExport(load_config=run_dir / "config.yml", output_dir=tmp_path / "exp", num_points=500, accumulation_threshold=0.2).run()
    assert len(trimesh.load(ply).vertices) > 0


def test_failed_eval_summary_write_keeps_the_previous_file(tiny_scene, tmp_path, quiet_config, monkeypatch):
    """eval_summary.json is written atomically: a write that fails half way (here: flushing it to
    disk) leaves the previous summary whole and no temporary file beside it."""
    import recon.atomic

    def config(steps, **changes):
        return override(quiet_config("vanilla-nerf", tiny_scene, tmp_path, steps, **changes, **TINY), eval_at_end=True)

    first = Trainer(config(4))
    summary = first.run_dir / "eval_summary.json"
    first.train()
    before = summary.read_bytes()
    assert json.loads(before)["step"] == 4

    flush = recon.atomic.fsync_path

    def failing_flush(path):
        if Path(path).name.startswith(".eval_summary"):
            raise OSError(28, "No space left on device")
        flush(path)

    monkeypatch.setattr(recon.atomic, "fsync_path", failing_flush)
    resumed = Trainer(config(8, load_dir=first.run_dir))
    with pytest.raises(WriteError, match="eval_summary.json: cannot write this file: no space left on device"):
        resumed.train()
    assert summary.read_bytes() == before
    assert sorted(p.name for p in first.run_dir.iterdir() if "eval_summary" in p.name) == ["eval_summary.json"]


@pytest.mark.slow
def test_quality_on_synthetic_scene(tmp_path, quiet_config):
    """A trained NeRF reproduces held-out views of the default scene; a broken renderer cannot.

    On the 8 test views, predicting the mean training colour gives 10.3 dB, the mean training
    image 13.7 dB and plain white 8.4 dB. The vanilla-nerf-small preset, on a schedule of half its
    length at half its rays (a quarter of ``make demo``'s compute), measured 22.7 dB after 1000 steps.
    """
    from data.synthetic import default_scene_path

    steps = 1000
    short = {"optimizers.fields.scheduler.max_steps": steps, "datamanager.train_num_rays_per_batch": 512}
    trainer = Trainer(quiet_config("vanilla-nerf-small", default_scene_path(), tmp_path, steps, **short))
    trainer.train()
    result = evaluate_images(trainer.model, trainer.datamanager.eval_dataset, progress=False)
    assert result["mean"]["psnr"] > 20.0, result["mean"]


def test_few_shot_flag_limits_training_views(tiny_scene, tmp_path, quiet_config):
    trainer = Trainer(quiet_config("vanilla-nerf", tiny_scene, tmp_path, 1, num_train_views=3, **TINY))
    assert len(trainer.datamanager.train_dataset) == 3


def test_llff_is_rendered_in_ndc(shared_data, tmp_path, quiet_config):
    """On a forward-facing capture ray_space auto samples NeRF's NDC space; depth comes back as a
    world z-depth between the NDC near plane and the dataset's far bound (exports rely on it)."""
    small = {**TINY, "datamanager.image_scale": 0.1}
    euclid = Trainer(quiet_config("vanilla-nerf", shared_data / "fern", tmp_path / "e", 1, num_train_views=3, **small, **{"model.ray_space": "euclidean"}))
    assert not euclid.model.ray_space.is_ndc
    trainer = Trainer(quiet_config("vanilla-nerf", shared_data / "fern", tmp_path / "n", 20, num_train_views=3, **small))
    space = trainer.model.ray_space
    assert space.is_ndc
    trainer.train()
    depth = trainer.model.render(trainer.datamanager.eval_dataset.cameras[0])["depth"]
    assert torch.isfinite(depth).all() and depth.shape == (38, 50, 1)
    assert float(depth.min()) > 0.5 * space.frame.near and float(depth.max()) <= space.far * 1.2
