"""Fixtures for method tests: small synthetic scenes and tiny trainer configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.synthetic import SyntheticSceneConfig, generate_scene
from recon.config import get_method, override


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    """32x32 images, 8 training and 2 test views: enough to exercise a method in seconds."""
    cfg = SyntheticSceneConfig(width=32, height=32, num_train_views=8, num_test_views=2, supersample=1, num_points=500)
    return generate_scene(tmp_path_factory.mktemp("scenes") / "tiny", cfg)


@pytest.fixture(scope="session")
def quiet_config():
    """``quiet_config(method, scene, out, steps, **changes)``: see :func:`make_quiet_config` (a plain
    function, so session-scoped: module fixtures that train a run use it too)."""
    return make_quiet_config


def make_quiet_config(method: str, scene: Path, out: Path, steps: int, **changes):
    """The method's preset on ``scene`` with logging off and no periodic work, plus ``changes``."""
    defaults = dict(
        data=scene,
        output_dir=out,
        max_num_iterations=steps,
        steps_per_save=0,
        steps_per_eval_image=0,
        eval_at_end=False,
        device="cpu",
        timestamp="run",
        **{"logging.tensorboard": False, "logging.progress_bar": False},
    )
    return override(get_method(method).config, **{**defaults, **changes})
