"""Reopen a finished (or interrupted) run from its ``config.yml`` for evaluation, rendering and export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recon.config import load_config
from recon.engine.checkpoint import find_checkpoint, load_into_model, load_model_state
from recon.engine.host_memory import cache_freed_host_memory
from recon.engine.trainer import TrainerConfig, load_dataset, scene_info
from recon.errors import ConfigError
from recon.model import Model


@dataclass
class LoadedRun:
    """A trained model with the dataset it was trained on."""

    config: TrainerConfig
    run_dir: Path
    outputs: Any  # data.base.DataparserOutputs
    model: Model
    step: int
    device: torch.device


def load_run(config_path: Path, device: str = "auto", step: int | None = None) -> LoadedRun:
    """Read ``config.yml``, re-parse its dataset, build the model and load its checkpoint. On the CPU,
    applies the run's ``host_memory`` policy (ns-eval, ns-render, ns-export and the viewer come here)."""
    config_path = Path(config_path)
    config = load_config(config_path)
    if not isinstance(config, TrainerConfig):
        raise ConfigError("not a recon training config", config_path)
    config.device = device  # type: ignore[assignment]
    dev = config.resolve_device()
    if dev.type == "cpu" and getattr(config, "host_memory", "cache") == "cache":
        cache_freed_host_memory()  # rendering and exporting a large model on the CPU gains as training does
    run_dir = config_path.parent
    model_path, _ = find_checkpoint(run_dir, step)
    outputs = load_dataset(config)
    model = config.model.setup(scene=scene_info(outputs)).to(dev)
    state, loaded_step = load_model_state(model_path, config.method_name)
    load_into_model(model, {k: v.to(dev) for k, v in state.items()}, model_path)
    model.eval()
    return LoadedRun(config, run_dir, outputs, model, loaded_step, dev)


def load_deformations(run: LoadedRun, paths: tuple[Path, ...] | list[Path]) -> list[torch.Tensor]:
    """The vertices [V, 3] (normalised frame, on the run's device) of each deformed copy of the run's
    proxy mesh at ``paths`` (PLY, OBJ or GLB in the input poses' frame, the proxy's connectivity),
    all read and checked before anything is rendered. A one-line error for a model without a proxy
    mesh, an unreadable file or another connectivity."""
    if not paths:
        return []
    rest = run.model.rest_mesh()
    if rest is None:
        raise ConfigError(f"method {run.config.method_name!r} has no proxy mesh to deform (--deform is for mesh-bound methods such as mesh-gs)")
    from recon.geometry.deformation import read_deformed_vertices

    vertices, faces = rest
    return [read_deformed_vertices(p, vertices, faces, run.outputs.transform_from_input) for p in paths]
