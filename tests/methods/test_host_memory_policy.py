"""The trainer applies its ``host_memory`` policy when it trains on the CPU."""

from __future__ import annotations

import pytest

from recon.config import get_method
from recon.engine import trainer as trainer_module

TINY = get_method("splat").test_overrides


@pytest.mark.parametrize(("policy", "calls"), [("cache", 1), ("system", 0)])
def test_trainer_applies_host_memory_policy_on_cpu(tmp_path, tiny_scene, quiet_config, monkeypatch, policy, calls):
    """quiet_config trains on the CPU."""
    seen = []
    monkeypatch.setattr(trainer_module, "cache_freed_host_memory", lambda: seen.append(True) or True)
    trainer_module.Trainer(quiet_config("splat", tiny_scene, tmp_path, 1, host_memory=policy, **TINY))
    assert len(seen) == calls


@pytest.mark.parametrize(("policy", "calls"), [("cache", 1), ("system", 0)])
def test_loaded_run_applies_host_memory_policy_on_cpu(tmp_path, tiny_scene, quiet_config, monkeypatch, policy, calls):
    """ns-eval, ns-render, ns-export and the viewer open runs with load_run: the run's policy holds there too."""
    from recon.engine import run as run_module

    run_dir = trainer_module.Trainer(quiet_config("splat", tiny_scene, tmp_path, 1, host_memory=policy, **TINY)).train()
    seen = []
    monkeypatch.setattr(run_module, "cache_freed_host_memory", lambda: seen.append(True) or True)
    loaded = run_module.load_run(run_dir / "config.yml", "cpu")
    assert loaded.step == 1 and len(seen) == calls
