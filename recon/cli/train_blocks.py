"""``ns-train-blocks <method> --data SCENE --blocks 2x2 --overlap 0.2 [--executor auto|ray|pool] [ns-train options]``:
train a large scene as overlapping blocks and merge them (VastGaussian, Lin et al. CVPR 2024;
CityGaussian, Liu et al. ECCV 2024; see :mod:`recon.blocks`).

Any Gaussian-family method (``splat``, ``coherentgs``, ``3dcs``, ``mesh-gs`` and their presets)
trains each block with the method's options as ``ns-train`` takes them (``--max-num-iterations`` is
per block). The block options below may stand anywhere on the line. The block run's folder::

    outputs/<experiment>/<method>/<timestamp>/      the merged run: ns-viewer, ns-render, ns-eval open it
      config.yml, dataparser_transforms.json        a `splat` run over the whole dataset
      checkpoints/step-*.safetensors                the merged Gaussians
      splat.ply                                     the merged Gaussians, standard 3DGS PLY (input frame)
      eval_summary.json                             PSNR / SSIM of the merged model (eval split)
      blocks.json                                   the partition, options and each block's outcome
      blocks/<method>/block-00/ ...                 each block's ordinary run folder

``--load-dir`` on that folder continues it: finished blocks are skipped, interrupted ones resume
from their last checkpoint, then the merge runs; the partition, the dataset and the method options
are those the run was started with. ``--only-block K`` (re)trains block K alone (from scratch when it
had finished) and merges when every block is finished.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tyro

from recon.atomic import atomic_write_bytes
from recon.blocks.merge import merge_blocks
from recon.blocks.partition import Balance, BlockPartition, UpAxis, parse_grid, partition_scene
from recon.blocks.runner import BlockEvent, Executor, block_config, block_dir, block_finished, executor_factory, payload, resolve_executor, run_tasks, train_block
from recon.cli import parse_cli, run_main
from recon.config import from_plain, to_plain
from recon.engine.logging import console
from recon.engine.trainer import TrainerConfig, load_dataset
from recon.errors import ConfigError, TrainingError

STATE_FILE = "blocks.json"


@dataclass
class BlocksOptions:
    """How the scene is cut into blocks and how the blocks run."""

    blocks: str = "2x2"
    """Grid of cells on the ground plane, COLUMNSxROWS (columns along the first ground axis)."""
    overlap: float = 0.2
    """Each cell grows by this ratio of its size on every side; cameras and points there train both blocks."""
    up: UpAxis = "auto"
    """Up axis; auto: the axis along which points and camera centres spread least."""
    balance: Balance = "cameras"
    """Cut the cells at quantiles of the camera centres or of the sparse points (equal counts per block)."""
    visibility: float | None = 0.25
    """A camera also trains a block when this share of the sparse points it sees lie in the block's
    expanded cell (None: cameras by position only)."""
    executor: Executor = "auto"
    """ray: Ray tasks (needs the ``distributed`` extra); pool: a local process pool; auto: Ray when installed."""
    ray_address: str | None = None
    """Address of a running Ray cluster (multi-node; e.g. ``auto`` or ``HOST:6379``); default: a local Ray."""
    max_workers: int | None = None
    """Blocks trained at once (local Ray or pool); default: the CPU count over ``threads-per-block``."""
    threads_per_block: int = 1
    """Torch threads (and Ray CPUs) per block."""
    retries: int = 1
    """Times a failed block is tried again (resuming from its last checkpoint)."""
    only_block: int | None = None
    """Train only this block (again, from scratch if it had finished); merge when all are finished."""


FLAGS = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(BlocksOptions)}


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(block options, the rest for ns-train) from a command line; each block option takes one value."""
    mine, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.split("=", 1)[0] in FLAGS:
            take = 1 if "=" in arg else 2
            mine += args[i : i + take]
            i += take
        else:
            rest.append(arg)
            i += 1
    return mine, rest


def parse_args(args: list[str]) -> tuple[TrainerConfig, BlocksOptions]:
    from recon.cli.train import parse_args as parse_train_args

    if not args or args[0] in ("-h", "--help"):
        print("usage: ns-train-blocks <method> [--data PATH] [block options] [ns-train options]\n"
              "(`ns-train` lists the methods, `ns-train <method> --help` their options)\n")
        try:
            parse_cli(lambda: tyro.cli(BlocksOptions, args=["--help"], prog="ns-train-blocks <method>"), "ns-train-blocks")
        except SystemExit:
            raise SystemExit(0 if args else 2) from None
    mine, rest = split_args(args[1:])
    options = parse_cli(lambda: tyro.cli(BlocksOptions, args=mine, prog="ns-train-blocks"), "ns-train-blocks")
    return parse_train_args([args[0], *rest]), options


# -- folders and state ---------------------------------------------------------------------------
def run_folder(config: TrainerConfig) -> Path:
    """The folder an ordinary run of ``config`` would get: ``<output>/<experiment>/<method>/<timestamp>``."""
    data = Path(config.data) if config.data is not None else None
    experiment = config.experiment_name or ("synthetic" if data is None else data.stem if data.is_file() else data.resolve().name)
    stamp = config.timestamp.replace("{timestamp}", datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S"))
    return Path(config.output_dir) / experiment / config.method_name / stamp


def write_state(parent: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(parent / STATE_FILE, json.dumps(state, indent=1).encode())


def read_state(parent: Path) -> dict[str, Any]:
    path = parent / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"--load-dir: not a block run ({STATE_FILE} missing; resume an ordinary run with ns-train)", parent)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{STATE_FILE} is unreadable ({exc})", path) from None


def partition_dataset(config: TrainerConfig, options: BlocksOptions) -> tuple[list[int], BlockPartition]:
    """The dataset's train frames and their partition into blocks by ``options``."""
    outputs = load_dataset(config)
    train = [int(i) for i in outputs.splits.get("train", [])]
    cams = outputs.cameras[train]
    intrinsics = np.stack([cams.fx.numpy(), cams.fy.numpy(), cams.cx.numpy(), cams.cy.numpy(), cams.width.numpy(), cams.height.numpy()], 1)
    partition = partition_scene(
        cams.camera_to_worlds.numpy(), intrinsics, outputs.points3d, parse_grid(options.blocks), options.overlap,
        options.up, options.balance, options.visibility, seed=config.seed,
    )
    return train, partition


def _check(config: TrainerConfig, options: BlocksOptions) -> None:
    from recon.primitives import PrimitiveModelConfig

    if not isinstance(config.model, PrimitiveModelConfig):
        raise ConfigError(f"ns-train-blocks trains Gaussian-family methods (splat, coherentgs, 3dcs, mesh-gs); {config.method_name!r} has no Gaussians to merge")
    if options.retries < 0 or options.threads_per_block < 1 or (options.max_workers is not None and options.max_workers < 1):
        raise ConfigError("--retries must be >= 0, --threads-per-block and --max-workers >= 1")
    parse_grid(options.blocks)


# -- the command ---------------------------------------------------------------------------------
def say(line: str) -> None:
    """Print one line as it is (no rich markup: block names look like ``[block-00]``)."""
    console.print(line, markup=False, highlight=False)


def train_blocks(config: TrainerConfig, options: BlocksOptions, log: Callable[[str], None] = say) -> Path:
    """Partition, train the blocks (skipping finished ones), merge, export the PLY and evaluate;
    returns the block run's folder. See the module docstring."""
    _check(config, options)
    kind = resolve_executor(options.executor, options.ray_address)
    if config.data is not None:
        config.data = Path(config.data).expanduser().resolve()
    if config.load_dir is not None:
        parent = Path(config.load_dir)
        state = read_state(parent)
        if state.get("method") != config.method_name:
            raise ConfigError(f"--load-dir: this block run trains {state.get('method')!r}, not {config.method_name!r}", parent)
        base = from_plain(state["config"])
        kept = BlocksOptions(**state["options"])
        options = dataclasses.replace(options, **{k: getattr(kept, k) for k in ("blocks", "overlap", "up", "balance", "visibility")})
        train, partition = partition_dataset(base, options)
        if train != state["train_frames"] or partition.to_dict() != state["partition"]:
            raise ConfigError("--load-dir: the dataset no longer gives the partition this block run was started with", parent)
    else:
        base = config
        train, partition = partition_dataset(base, options)
        parent = run_folder(base)
        parent.mkdir(parents=True, exist_ok=True)
        state = {"method": base.method_name, "options": dataclasses.asdict(options), "train_frames": train,
                 "partition": partition.to_dict(), "config": to_plain(base), "results": {}}
        write_state(parent, state)
    n = len(partition)
    configs = [block_config(base, parent, b, [train[i] for i in partition.cameras[b]], partition.box3d(b)) for b in range(n)]
    dirs = [block_dir(parent, base.method_name, b) for b in range(n)]
    steps = base.max_num_iterations
    log(f"ns-train-blocks {base.method_name}: {n} blocks ({options.blocks}, overlap {partition.overlap:g}, up {'xyz'[partition.up]}); block run {parent}")
    for b in range(n):
        log(f"  {dirs[b].name}: {len(partition.cameras[b])} views, {len(partition.points[b])} points")
    if options.only_block is not None:
        if not 0 <= options.only_block < n:
            raise ConfigError(f"--only-block {options.only_block} is out of range: this run has blocks 0 to {n - 1}")
        todo = [options.only_block]
        if block_finished(dirs[options.only_block], steps):
            shutil.rmtree(dirs[options.only_block])
    else:
        todo = [b for b in range(n) if not block_finished(dirs[b], steps)]
        for b in sorted(set(range(n)) - set(todo)):
            log(f"[{dirs[b].name}] already finished: skipped")
    if todo:
        workers = options.max_workers or max(1, min(len(todo), (os.cpu_count() or 1) // options.threads_per_block))
        log(f"training {len(todo)} block(s) on {'Ray' + (' at ' + options.ray_address if options.ray_address else ' (local)') if kind == 'ray' else 'a process pool'}, {workers} at a time")

        def report(event: BlockEvent) -> None:
            name = dirs[event.index].name
            if event.kind == "submitted":
                log(f"[{name}] queued ({event.detail})")
            elif event.kind == "failed":
                log(f"[{name}] failed: {event.detail}")
            elif event.kind == "retry":
                log(f"[{name}] {event.detail}")
            if event.kind in ("done", "failed"):
                state["results"][str(event.index)] = {"status": event.kind, **(event.result or {"error": event.detail})}
                write_state(parent, state)

        jobs = [payload(configs[b], b, options.threads_per_block) for b in todo]
        _, errors = run_tasks(train_block, jobs, executor_factory(kind, workers, options.threads_per_block, options.ray_address), options.retries, options.threads_per_block, report)
        if errors:
            which = ", ".join(f"block {b}: {e}" for b, e in sorted(errors.items()))
            raise TrainingError(f"{len(errors)} block(s) failed after {options.retries + 1} tries ({which}); rerun with ns-train-blocks {base.method_name} --load-dir {parent} (add --only-block K for one block)")
    missing = [b for b in range(n) if not block_finished(dirs[b], steps)]
    if missing:
        log(f"blocks {missing} are not trained yet: the merge waits for them (ns-train-blocks {base.method_name} --load-dir {parent})")
        return parent
    merged = merge_blocks(parent, partition, dirs, base)
    state["merged"] = merged
    write_state(parent, state)
    kept = ", ".join(f"{b['kept']}/{b['trained']}" for b in merged["blocks"])
    log(f"merged: {merged['count']} Gaussians ({kept} kept per block) at step {merged['step']}")
    finish_merged(parent, base.eval_at_end, log)
    return parent


def finish_merged(parent: Path, evaluate: bool, log: Callable[[str], None]) -> None:
    """The merged run's standard 3DGS PLY (input frame, as ``ns-export gaussian-splat`` writes it)
    and, with ``evaluate``, ``eval_summary.json`` over the eval split (as the trainer writes it)."""
    from recon.cli.export import GaussianSplatExport

    GaussianSplatExport(load_config=parent / "config.yml", output_dir=parent, device="cpu").run()
    if not evaluate:
        return
    from recon.engine.evaluate import evaluate_images
    from recon.engine.run import load_run

    run = load_run(parent / "config.yml", device="cpu")
    split = getattr(run.config.datamanager, "eval_split", "test")
    if not run.outputs.splits.get(split):
        return
    result = evaluate_images(run.model, run.config.datamanager.dataset(run.outputs.split(split)), with_lpips=False, progress=False)
    summary = {"step": run.step, **result["mean"]}
    atomic_write_bytes(parent / "eval_summary.json", json.dumps(summary, indent=2).encode())
    log(f"merged model: eval PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.3f} ({split}, {summary['num_images']} images)")


def main(args: list[str]) -> Path:
    config, options = parse_args(args)
    return train_blocks(config, options)


def entrypoint() -> None:
    run_main(lambda: main(sys.argv[1:]))


if __name__ == "__main__":
    entrypoint()
