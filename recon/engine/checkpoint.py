"""Checkpoints: model weights as safetensors, training state loadable with ``weights_only=True``.

A checkpoint at step s is two files in ``checkpoints/``:

- ``step-{s:09d}.safetensors``: the model's ``state_dict`` with metadata (format, method, step);
- ``step-{s:09d}.state.pt``: optimizer states, RNG states and the datamanager's sampler state,
  a dict of tensors and plain Python values that ``torch.load(..., weights_only=True)`` reads.

Both are written atomically, the state first: a ``.safetensors`` file exists only once its
checkpoint is complete, so a crash mid-save (even ``kill -9``) leaves the previous checkpoint as
the latest; :func:`remove_incomplete` deletes what such a crash left when the run resumes.
Step s means s optimizer steps have been taken; training resumes at step s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from recon.errors import CheckpointError
from recon.atomic import atomic_write

FORMAT = "recon-checkpoint-1"
_NAME = re.compile(r"^step-(\d{9})\.safetensors$")

def checkpoint_paths(ckpt_dir: Path, step: int) -> tuple[Path, Path]:
    return ckpt_dir / f"step-{step:09d}.safetensors", ckpt_dir / f"step-{step:09d}.state.pt"

def save_checkpoint(ckpt_dir: Path, step: int, model_state: dict[str, Tensor], train_state: dict[str, Any], method: str, keep_only_latest: bool) -> Path:
    """Write the checkpoint for ``step`` and, with ``keep_only_latest``, remove older ones."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    model_path, state_path = checkpoint_paths(ckpt_dir, step)
    with atomic_write(state_path) as tmp:
        torch.save({"format": FORMAT, "step": step, **train_state}, tmp)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
    try:
        with atomic_write(model_path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "method": method, "step": str(step)})
    except BaseException:
        state_path.unlink(missing_ok=True)  # no orphan half of a checkpoint
        raise
    if keep_only_latest:
        for old in list_checkpoints(ckpt_dir):
            if old != step:
                for p in checkpoint_paths(ckpt_dir, old):
                    p.unlink(missing_ok=True)
    return model_path

def list_checkpoints(ckpt_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in ``ckpt_dir``, ascending."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name)))

_INCOMPLETE = re.compile(r"^(\.step-\d{9}(\.state)?\.[0-9a-f]{8}\.tmp\.(pt|safetensors)|step-(\d{9})\.state\.pt)$")


def remove_incomplete(ckpt_dir: Path) -> list[Path]:
    """Delete what a killed checkpoint write left: temporary files and a training-state file whose
    weights file was never completed. Returns the removed paths. Complete checkpoints are untouched."""
    if not ckpt_dir.is_dir():
        return []
    complete = set(list_checkpoints(ckpt_dir))
    removed = []
    for p in sorted(ckpt_dir.iterdir()):
        m = _INCOMPLETE.match(p.name)
        if m is None or (m.group(4) is not None and int(m.group(4)) in complete):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def find_checkpoint(path: Path, step: int | None = None) -> tuple[Path, Path]:
    """Resolve a run folder, a ``checkpoints/`` folder or a ``.safetensors`` file to a checkpoint pair."""
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(".safetensors"):
            raise CheckpointError("expected a .safetensors checkpoint", path)
        return path, path.with_name(path.name.replace(".safetensors", ".state.pt"))
    if not path.exists():
        raise CheckpointError("checkpoint path does not exist", path)
    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = list_checkpoints(ckpt_dir)
    if not steps:
        raise CheckpointError("no checkpoint (step-*.safetensors) found", ckpt_dir)
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"no checkpoint for step {step}; available: {', '.join(map(str, steps))}", ckpt_dir)
    return checkpoint_paths(ckpt_dir, step)

def load_model_state(model_path: Path, method: str | None = None) -> tuple[dict[str, Tensor], int]:
    """Read weights and step; a clear error for a missing, corrupt or foreign file."""
    if not model_path.is_file():
        raise CheckpointError("checkpoint file not found", model_path)
    try:
        state = load_file(str(model_path))

        with safe_open(str(model_path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"not a readable safetensors checkpoint ({exc})", model_path) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError("not a recon checkpoint (missing format metadata)", model_path)
    if method is not None and meta.get("method") != method:
        raise CheckpointError(f"checkpoint is for method {meta.get('method')!r}, not {method!r}", model_path)
    step = meta.get("step", "")
    if not step.isdecimal():
        raise CheckpointError(f"checkpoint metadata has no valid step (got {step[:40]!r})", model_path)
    return state, int(step)

def load_train_state(state_path: Path) -> dict[str, Any]:
    if not state_path.is_file():
        raise CheckpointError("training-state file of this checkpoint is missing", state_path)
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign pickle
        raise CheckpointError(f"training state is corrupt or not a recon file ({type(exc).__name__})", state_path) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError("not a recon training-state file", state_path)
    return state

def load_into_model(model: torch.nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """``model.load_checkpoint_state`` with shape/key mismatches reported as a foreign checkpoint."""
    try:
        model.load_checkpoint_state(state)  # type: ignore[operator]
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"checkpoint does not fit this model ({first})", path) from None
