"""Training that survives faults: non-finite steps, a full disk, ``kill -9`` (issue "Reliability").

The kill campaign here is the CI tier (a few kills); ``make faults`` runs the long one
(benchmarks/bench_faults.py) and records its figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recon.engine.callbacks import Callback, Where
from recon.engine.checkpoint import find_checkpoint, list_checkpoints, load_model_state
from recon.engine.trainer import Trainer
from recon.errors import TrainingError

METHOD = "nerf-hash-small"


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _poison_loss(trainer: Trainer, term: str, steps: set[int], value: float = float("nan")) -> None:
    """Make loss term ``term`` non-finite at ``steps`` (as a real bug would: through the graph)."""
    loss_dict = trainer.model.loss_dict

    def poisoned(batch, outputs, step):
        losses = loss_dict(batch, outputs, step)
        if step in steps:
            losses[term] = losses[term] * value
        return losses

    trainer.model.loss_dict = poisoned  # type: ignore[method-assign]


def _record_states(trainer: Trainer) -> dict[int, dict[str, torch.Tensor]]:
    """The model's state before each step (a BEFORE_STEP hook), by step."""
    states: dict[int, dict[str, torch.Tensor]] = {}
    trainer.callbacks.insert(0, Callback(lambda s, **_: states.__setitem__(s, _snapshot(trainer.model)), where=Where.BEFORE_STEP))
    return states


def test_nonfinite_loss_is_skipped_and_changes_nothing(tiny_scene, tmp_path, quiet_config, capsys):
    trainer = Trainer(quiet_config(METHOD, tiny_scene, tmp_path, 12))
    _poison_loss(trainer, "rgb", {5, 6})
    states = _record_states(trainer)
    trainer.train()
    assert _same(states[5], states[6]) and _same(states[6], states[7]), "a non-finite step changed the model"
    assert not _same(states[4], states[5]) and not _same(states[7], states[8]), "finite steps must train"
    assert trainer.nonfinite_steps == 2 and trainer.step == 12
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())
    err = capsys.readouterr().err
    assert "step 5: non-finite loss term rgb = nan" in err and "skipped" in err


def test_nonfinite_stop_keeps_the_last_good_state(tiny_scene, tmp_path, quiet_config):
    trainer = Trainer(quiet_config(METHOD, tiny_scene, tmp_path, 12, on_nonfinite="stop"))
    _poison_loss(trainer, "rgb", {7}, float("inf"))
    states = _record_states(trainer)
    with pytest.raises(TrainingError, match=r"step 7: non-finite loss term rgb = (inf|nan).*--on-nonfinite stop.*step-000000007"):
        trainer.train()
    weights, step = load_model_state(find_checkpoint(trainer.run_dir)[0], METHOD)
    assert step == 7 and _same(weights, states[7])


def test_nonfinite_gradient_names_the_parameter_group(tiny_scene, tmp_path, quiet_config):
    trainer = Trainer(quiet_config(METHOD, tiny_scene, tmp_path, 10, on_nonfinite="skip", max_nonfinite_steps=2))
    group, params = next((name, ps) for name, ps in trainer.model.param_groups().items() if ps)
    bad_from = 4
    params[0].register_hook(lambda g: g * float("nan") if trainer.history and trainer.history[-1][0] >= bad_from - 1 else g)
    with pytest.raises(TrainingError, match=rf"step 6: non-finite gradient of parameter group {group}.*3 steps in a row"):
        trainer.train()
    assert trainer.nonfinite_steps == 3 and list_checkpoints(trainer.checkpoint_dir) == [6]


# -- a full disk ----------------------------------------------------------------------------------


def test_full_disk_during_checkpoint_keeps_the_previous_one(tiny_scene, small_disk, quiet_config):
    trainer = Trainer(quiet_config(METHOD, tiny_scene, small_disk.path / "outputs", 9, steps_per_save=3, **{"logging.tensorboard": True}))
    trainer.callbacks.append(Callback(lambda s, **_: small_disk.fill(), start=4, every=100))
    before = {}
    trainer.callbacks.append(Callback(lambda s, **_: before.update(_snapshot(trainer.model)), where=Where.BEFORE_STEP, start=3, every=100))
    with pytest.raises(TrainingError, match=r"cannot write this file: no space left on device.*training stopped at step 6; the last complete checkpoint, step 3, is intact"):
        trainer.train()
    assert list_checkpoints(trainer.checkpoint_dir) == [3]
    assert sorted(p.name for p in trainer.checkpoint_dir.iterdir()) == ["step-000000003.safetensors", "step-000000003.state.pt"], "temporary files left"
    weights, step = load_model_state(find_checkpoint(trainer.run_dir)[0], METHOD)
    assert step == 3 and _same(weights, before)
    small_disk.free()
    resumed = Trainer(quiet_config(METHOD, tiny_scene, small_disk.path / "outputs", 9, load_dir=trainer.run_dir))
    resumed.train()
    assert resumed.step == 9 and list_checkpoints(resumed.checkpoint_dir) == [9]


# -- kill -9 --------------------------------------------------------------------------------------


def _train_cmd(scene: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recon.cli.train", METHOD, "--data", str(scene), "--output-dir", str(out), "--timestamp", "run",
            "--max-num-iterations", str(steps), "--steps-per-save", "2", "--steps-per-eval-image", "0", "--no-eval-at-end",
            "--device", "cpu", "--logging.no-progress-bar", "--logging.steps-per-log", "1", *extra]


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> str | None:
    """Read the process's stderr until a line contains ``needle``; the line, or None at exit/timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            return None
        if needle in line:
            return line
    return None


def _incomplete(ckpt_dir: Path) -> bool:
    """Whether a checkpoint write is under way (or was cut): a temporary file, or a training-state
    file without its weights file."""
    names = {p.name for p in ckpt_dir.iterdir()} if ckpt_dir.is_dir() else set()
    return any(n.startswith(".") or (n.endswith(".state.pt") and n.replace(".state.pt", ".safetensors") not in names) for n in names)


def _wait_for_checkpoint_write(ckpt_dir: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not _incomplete(ckpt_dir):
        time.sleep(0.0005)


def kill_campaign(scene: Path, out: Path, steps: int, kills: int, seed: int) -> dict[str, int]:
    """Train ``steps`` steps while killing the process (SIGKILL) ``kills`` times, resuming each time
    from the run folder: odd kills at a random moment after training started, even ones as soon as
    a checkpoint write is seen under way. Checks that every resume starts at the newest complete
    checkpoint. Returns counts: kills, and kills that left a cut checkpoint write behind."""
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    run_dir = out / scene.name / METHOD / "run"
    ckpt_dir = run_dir / "checkpoints"
    counts = {"kills": 0, "cut_checkpoint_writes": 0, "resumes": 0}
    while True:
        newest = list_checkpoints(ckpt_dir)
        assert not newest or newest[-1] < steps or counts["kills"] == kills, "the run finished before the planned kills: raise steps"
        extra = ["--load-dir", str(run_dir)] if newest else []
        proc = subprocess.Popen(_train_cmd(scene, out, steps, *extra), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        try:
            if newest:
                counts["resumes"] += 1
                line = _wait_for_line(proc, "resuming at step", 120)
                assert line is not None and f"resuming at step {newest[-1]} " in line, f"resume did not start at the newest checkpoint {newest[-1]}: {line!r}"
            else:
                assert _wait_for_line(proc, "run folder", 120) is not None, "training did not start"
            if counts["kills"] == kills:
                assert proc.wait(300) == 0, proc.stderr.read()
                return counts
            if counts["kills"] % 2:
                time.sleep(rng.uniform(0.0, 1.2))
            else:
                time.sleep(rng.uniform(0.0, 0.3))
                _wait_for_checkpoint_write(ckpt_dir, proc, 30)
            assert proc.poll() is None, f"training ended by itself (exit {proc.returncode}): {proc.stderr.read()}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
        counts["kills"] += 1
        counts["cut_checkpoint_writes"] += _incomplete(ckpt_dir)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_exact_resume(tiny_scene, tmp_path):
    """``kill -9`` during training (and, by chance, during checkpoint writes: one every 2 steps),
    resumed each time: the final model equals an uninterrupted run's, bit for bit. CI runs a few
    kills; ``make faults`` (RECON_KILLS=25) the long campaign."""
    kills = int(os.environ.get("RECON_KILLS", "2"))
    steps = 20 + 8 * kills
    reference = subprocess.run(_train_cmd(tiny_scene, tmp_path / "ref", steps), capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert reference.returncode == 0, reference.stderr
    counts = kill_campaign(tiny_scene, tmp_path / "killed", steps, kills, seed=int(os.environ.get("RECON_KILL_SEED", "0")))
    print(f"kill campaign: {counts}")
    final, step = load_model_state(find_checkpoint(tmp_path / "killed" / tiny_scene.name / METHOD / "run")[0], METHOD)
    expected, _ = load_model_state(find_checkpoint(tmp_path / "ref" / tiny_scene.name / METHOD / "run")[0], METHOD)
    assert step == steps and counts["kills"] == kills and counts["cut_checkpoint_writes"] >= 1
    assert _same(final, expected), "the resumed model differs from the uninterrupted one"
