"""Every registered method: builds from the registry, trains, saves, resumes exactly, exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from data.cross_sections import axis_planes, slice_mesh, write_csl
from recon.config import discover_methods
from recon.engine.callbacks import Callback
from recon.engine.trainer import Trainer
from recon.model import Export

METHODS = discover_methods()


@pytest.fixture(scope="module")
def tiny_csl(tmp_path_factory):
    shape = trimesh.creation.torus(major_radius=0.5, minor_radius=0.2, major_sections=32, minor_sections=16)
    path = tmp_path_factory.mktemp("csl") / "torus.csl"
    write_csl(slice_mesh(shape, axis_planes(shape, axis=2, count=4)), path)
    return path


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_conformance(name, tiny_scene, tiny_csl, tmp_path, quiet_config):
    spec = METHODS[name]
    assert spec.inputs in ("images", "cross-sections") and spec.description
    data = tiny_csl if spec.inputs == "cross-sections" else tiny_scene
    steps = 30
    full = Trainer(quiet_config(name, data, tmp_path / "a", steps, **spec.test_overrides))
    full.train()
    losses = np.array([loss for _, loss in full.history])
    assert np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean(), f"{name}: loss did not fall ({losses[:5].mean()} -> {losses[-5:].mean()})"

    stop = Trainer(quiet_config(name, data, tmp_path / "b", steps, **spec.test_overrides))
    stop.callbacks.append(Callback(lambda s, **_: stop.request_stop(), start=11, every=100))
    with pytest.raises(KeyboardInterrupt):
        stop.train()
    resumed = Trainer(quiet_config(name, data, tmp_path / "b", steps, load_dir=stop.run_dir, **spec.test_overrides))
    resumed.train()
    assert resumed.history == full.history[12:], f"{name}: resume differs from an uninterrupted run"

    model = resumed.model
    if Export.MARCHING_CUBES in model.exports:
        with torch.no_grad():
            values = model.sdf(torch.rand(64, 3) * 2 - 1)
        assert values.shape == (64,) and torch.isfinite(values).all()
    if Export.TSDF in model.exports or Export.POINTCLOUD in model.exports:
        out = model.render(resumed.datamanager.eval_dataset.cameras[0])
        assert {"rgb", "depth", "accumulation"} <= set(out) and out["rgb"].shape[-1] == 3
    if Export.GAUSSIAN_SPLAT in model.exports:
        params = model.splat_parameters()
        n = len(params["means"])
        assert n > 0 and params["quats"].shape == (n, 4) and params["sh0"].shape == (n, 1, 3)
        assert all(torch.isfinite(v).all() for v in params.values())
