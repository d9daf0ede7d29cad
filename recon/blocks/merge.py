"""Merging trained blocks into one Gaussian model and one ordinary run folder.

As in VastGaussian (Lin et al., CVPR 2024, section 3.4, "seamless merging") and CityGaussian (Liu et
al., ECCV 2024, section 3.2), each block keeps only the primitives whose centres lie inside its own,
unexpanded cell (the overlap served only to train the borders well); the kept primitives of all
blocks are concatenated. The cells tile the ground plane half-open, so a centre is kept by exactly
one block.

Every Gaussian-family method gives its primitives as 3D Gaussians through
``PrimitiveModel.splat_parameters()`` (3D Convex Splatting approximates each convex by one Gaussian),
so the merged model is always a ``splat`` model (the registered ``splat`` method, resolved by name):
its ``config.yml`` and checkpoint make the block run's folder an ordinary run that ``ns-eval``,
``ns-render``, ``ns-export`` and ``ns-viewer`` open. Its training-state file holds no optimizer
state: the merged model is for viewing and evaluation, not for resuming training.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from recon.blocks.partition import BlockPartition
from recon.config import get_method, save_config
from recon.engine.checkpoint import save_checkpoint
from recon.engine.run import load_run
from recon.engine.trainer import load_dataset, scene_info
from recon.primitives import SPLAT_KEYS, STRATEGY_PREFIX

MERGED_METHOD = "splat"


def keep_own_cell(partition: BlockPartition, index: int, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Gaussians of block ``index`` (gsplat layout, ``means [N, 3]``) whose centres lie in its own cell."""
    keep = torch.from_numpy(partition.cell_of(params["means"].detach().cpu().double().numpy())[:, index])
    return {k: v[keep.to(v.device)] for k, v in params.items()}


def merged_config(base: Any, sh_degree: int) -> Any:
    """The TrainerConfig of the merged run: ``base`` (the blocks' method) when its model is already
    a ``splat`` model, else the ``splat`` preset with ``base``'s data and output settings; the block
    selection cleared, so the merged run sees the whole dataset; SH degree that of the blocks."""
    splat = get_method(MERGED_METHOD).config
    if type(base.model) is type(splat.model):
        cfg = copy.deepcopy(base)
    else:
        cfg = copy.deepcopy(splat)
        for name in ("data", "dataparser", "num_train_views", "output_dir", "experiment_name", "timestamp", "seed", "device", "eval_at_end"):
            setattr(cfg, name, copy.deepcopy(getattr(base, name)))
        for name in ("background", "near_plane"):
            if hasattr(base.model, name):
                setattr(cfg.model, name, getattr(base.model, name))
    cfg.method_name = MERGED_METHOD
    cfg.model.sh_degree = sh_degree
    cfg.dataparser.train_views = None
    cfg.dataparser.points_box = None
    cfg.load_dir, cfg.viewer = None, False
    return cfg


def merge_blocks(parent: Path, partition: BlockPartition, block_runs: list[Path], base: Any) -> dict[str, Any]:
    """Merge the block runs (``block_runs[b]`` is block b's run folder) into ``parent``: ``config.yml``,
    ``dataparser_transforms.json`` and one checkpoint of a ``splat`` model holding, block after block,
    the Gaussians each block kept in its own cell. Returns per block ``trained`` (its Gaussians),
    ``kept``, ``offset`` (its first row in the merged model), and the merged ``step`` and ``count``."""
    parts: list[dict[str, torch.Tensor]] = []
    blocks, offset, step, degree = [], 0, 0, 0
    for b, run_dir in enumerate(block_runs):
        run = load_run(Path(run_dir) / "config.yml", device="cpu")
        params = {k: v.detach().cpu() for k, v in run.model.splat_parameters().items()}
        kept = keep_own_cell(partition, b, params)
        n = int(kept["means"].shape[0])
        blocks.append({"block": b, "trained": int(params["means"].shape[0]), "kept": n, "offset": offset})
        parts.append(kept)
        offset += n
        step = max(step, run.step)
        degree = max(degree, int(getattr(run.model, "active_sh_degree", torch.tensor(0))))
    width = max(p["shN"].shape[1] for p in parts)
    merged = {}
    for key in SPLAT_KEYS:
        tensors = [p[key] for p in parts]
        if key == "shN":  # blocks of one method share the width; pad defensively
            tensors = [torch.cat([t, t.new_zeros(t.shape[0], width - t.shape[1], 3)], 1) for t in tensors]
        merged[key] = torch.cat(tensors).float()
    cfg = merged_config(base, sh_degree=int(round((width + 1) ** 0.5)) - 1)
    outputs = load_dataset(cfg)
    model = cfg.model.setup(scene=scene_info(outputs))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(STRATEGY_PREFIX)}
    state.update({f"params.{k}": v for k, v in merged.items()})
    state["active_sh_degree"] = torch.tensor(min(degree, cfg.model.sh_degree))
    model.load_checkpoint_state(state)
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, parent / "config.yml")
    outputs.save_transforms(parent / "dataparser_transforms.json")
    save_checkpoint(parent / "checkpoints", step, model.state_dict(), {}, MERGED_METHOD, keep_only_latest=True)
    return {"step": step, "count": offset, "blocks": blocks}
