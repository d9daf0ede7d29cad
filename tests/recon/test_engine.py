"""Engine pieces: schedules, hook objects, checkpoint files."""

import math

import pytest
import torch

from recon.engine.callbacks import Callback, Where, run_callbacks
from recon.engine.checkpoint import find_checkpoint, list_checkpoints, load_model_state, load_train_state, save_checkpoint
from recon.engine.optim import OptimizerConfig, Optimizers, SchedulerConfig
from recon.errors import CheckpointError, ConfigError


def test_exponential_schedule_end_points_and_log_linearity():
    s = SchedulerConfig("exponential", lr_final=1e-4, max_steps=100)
    assert math.isclose(s.lr_at(1e-2, 0), 1e-2)
    assert math.isclose(s.lr_at(1e-2, 100), 1e-4) and math.isclose(s.lr_at(1e-2, 1000), 1e-4)
    assert math.isclose(s.lr_at(1e-2, 50), 1e-3, rel_tol=1e-9)


def test_warmup_and_cosine():
    s = SchedulerConfig("cosine", cosine_alpha=0.1, max_steps=110, warmup_steps=10, lr_pre_warmup=0.0)
    assert s.lr_at(1.0, 0) == 0.0 and math.isclose(s.lr_at(1.0, 5), 0.5)
    assert math.isclose(s.lr_at(1.0, 10), 1.0) and math.isclose(s.lr_at(1.0, 60), 0.55) and math.isclose(s.lr_at(1.0, 110), 0.1)
    assert SchedulerConfig().lr_at(0.3, 12345) == 0.3


def test_optimizers_apply_schedule_per_group_and_require_every_group():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opts = Optimizers(
        {"a": OptimizerConfig(lr=1.0, scheduler=SchedulerConfig("exponential", lr_final=0.01, max_steps=2)), "b": OptimizerConfig(lr=0.5)},
        {"a": [a], "b": [b]},
    )
    (a.sum() + b.sum()).backward()
    opts.step(2)
    assert opts.learning_rates() == pytest.approx({"a": 0.01, "b": 0.5})
    with pytest.raises(ConfigError, match="c"):
        Optimizers({"a": OptimizerConfig()}, {"a": [a], "c": [b]})


def test_callback_schedule():
    calls = []
    cbs = [Callback(lambda s, **_: calls.append(("a", s)), every=3, start=2, stop=9), Callback(lambda s, **_: calls.append(("b", s)), where=Where.BEFORE_STEP)]
    for step in range(12):
        run_callbacks(cbs, Where.AFTER_STEP, step)
    assert calls == [("a", 2), ("a", 5), ("a", 8)]
    run_callbacks(cbs, Where.BEFORE_STEP, 7)
    assert calls[-1] == ("b", 7)


def test_checkpoint_files(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(1)}
    for step in (10, 20):
        save_checkpoint(tmp_path, step, state, {"optimizers": {}, "note": torch.tensor([step])}, "m", keep_only_latest=False)
    assert list_checkpoints(tmp_path) == [10, 20]
    model_path, state_path = find_checkpoint(tmp_path)
    loaded, step = load_model_state(model_path, "m")
    assert step == 20 and torch.equal(loaded["w"], state["w"])
    assert int(load_train_state(state_path)["note"]) == 20
    with pytest.raises(CheckpointError, match="method 'm', not 'other'"):
        load_model_state(model_path, "other")
    with pytest.raises(CheckpointError, match="no checkpoint for step 15"):
        find_checkpoint(tmp_path, 15)
    save_checkpoint(tmp_path, 30, state, {}, "m", keep_only_latest=True)
    assert list_checkpoints(tmp_path) == [30] and sorted(p.name for p in tmp_path.iterdir()) == ["step-000000030.safetensors", "step-000000030.state.pt"]


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    state = {"w": torch.ones(2)}
    save_checkpoint(tmp_path, 1, state, {}, "m", keep_only_latest=True)
    import recon.engine.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, state, {}, "m", keep_only_latest=True)
    assert list_checkpoints(tmp_path) == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000001.safetensors", "step-000000001.state.pt"]


def test_cyclic_schedule_matches_torch_cyclic_lr_triangular2():
    import torch

    from recon.engine.optim import SchedulerConfig

    sched = SchedulerConfig("cyclic", cyclic_min_lr=1e-6, cyclic_step_size_up=10)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-4)
    ref = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=1e-6, max_lr=1e-4, step_size_up=10, mode="triangular2", cycle_momentum=False)
    for step in range(70):
        assert abs(sched.lr_at(1e-4, step) - opt.param_groups[0]["lr"]) < 1e-12, step
        opt.step()
        ref.step()


class _Payload:
    """Unpickling this runs ``exec`` (writes a marker file): what a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_checkpoint_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    from recon.engine.checkpoint import FORMAT

    marker = tmp_path / "ran.txt"
    state_path = tmp_path / "step-000000001.state.pt"
    torch.save({"format": FORMAT, "step": 1, "optimizers": {}, "extra": _Payload(marker)}, state_path)
    with pytest.raises(CheckpointError, match="training state is corrupt or not a recon file") as err:
        load_train_state(state_path)
    assert str(err.value).startswith(str(state_path)) and "\n" not in str(err.value)
    assert not marker.exists()
