"""Training the blocks: one ordinary recon run per block, as Ray tasks or in a process pool.

Each block is a plain :class:`~recon.engine.trainer.Trainer` run of the chosen method whose
dataparser keeps the block's training views and sparse points (``train_views``, ``points_box``:
:func:`data.splits.apply_block`), in ``<parent>/blocks/<method>/block-KK/``: a run folder like any
other (``ns-eval``, ``ns-render``, ``ns-viewer`` open it), resumable with ``--load-dir``.

Scheduling is Ray's (``ray.remote`` tasks, ``max_calls=1`` so each block gets a fresh worker process;
a cluster address makes it multi-node) or :class:`concurrent.futures.ProcessPoolExecutor`'s
(a fork server, ``max_tasks_per_child=1``). Both hand back :class:`concurrent.futures.Future` objects;
this module only submits, waits and resubmits a failed block (``retries`` times, in a fresh pool:
a block that crashed its worker breaks a process pool for the blocks still queued, which are then
retried too). A retried block resumes from its last checkpoint.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import multiprocessing
import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from recon.config import from_plain, to_plain
from recon.engine.checkpoint import list_checkpoints
from recon.errors import ConfigError

Executor = Literal["auto", "ray", "pool"]
PRELOAD = ("torch", "torch._dynamo", "warp", "recon.engine.trainer", "recon.blocks.runner")
"""Modules the process pool's fork server imports once, before it forks a worker per block."""


def block_name(index: int) -> str:
    return f"block-{index:02d}"


def block_dir(parent: Path, method: str, index: int) -> Path:
    """Run folder of block ``index`` under the block run ``parent``."""
    return Path(parent) / "blocks" / method / block_name(index)


def block_config(base: Any, parent: Path, index: int, train_views: list[int], points_box: tuple[float, ...]) -> Any:
    """The TrainerConfig of one block: ``base`` (the method's config as the user set it) training on
    ``train_views`` with the sparse points in ``points_box``, written to :func:`block_dir`. The
    full-scene evaluation at the end is off (a block sees part of the scene; the merged model is
    evaluated instead) and so are the viewer and the live progress bar (blocks report by line)."""
    cfg = copy.deepcopy(base)
    cfg.dataparser.train_views = [int(i) for i in train_views]
    cfg.dataparser.points_box = tuple(float(v) for v in points_box)
    cfg.output_dir, cfg.experiment_name, cfg.timestamp = Path(parent), "blocks", block_name(index)
    cfg.load_dir = None
    cfg.eval_at_end, cfg.viewer = False, False
    cfg.logging.progress_bar = False
    return cfg


def block_finished(run_dir: Path, steps: int) -> bool:
    """Whether the block run in ``run_dir`` holds its final checkpoint."""
    return steps in list_checkpoints(Path(run_dir) / "checkpoints")


def train_block(payload: dict[str, Any]) -> dict[str, Any]:
    """The task of one block (runs in a worker process): train ``payload["config"]`` (a plain config
    dict), resuming from the block's last checkpoint when it has one. Prints ``[block-KK] started``,
    about ten ``step`` lines and ``done``. Returns the block index, its run folder, the final step,
    the wall time and the process's peak resident memory (MiB; the process trains only this block)."""
    start = time.perf_counter()
    torch.set_num_threads(int(payload.get("threads", 1)))
    from recon.engine.trainer import Trainer

    index, config = int(payload["index"]), from_plain(payload["config"])
    if config.experiment_name and "{" not in config.timestamp:  # a fixed run folder: resume what it holds
        run_dir = Path(config.output_dir) / config.experiment_name / config.method_name / config.timestamp
        if list_checkpoints(run_dir / "checkpoints"):
            config.load_dir = run_dir
    name, total = block_name(index), config.max_num_iterations
    trainer = Trainer(config)
    every = max(total // 10, 1)
    print(f"[{name}] started: {len(trainer.outputs.splits['train'])} views, step {trainer.start_step} of {total}, pid {os.getpid()}", flush=True)

    def report(tr: Any, step: int) -> None:
        if step % every == 0 or step == total:
            loss = f", loss {tr.history[-1][1]:.4f}" if tr.history else ""
            print(f"[{name}] step {step}/{total}{loss}", flush=True)

    trainer.between_steps.append(report)
    trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 1024.0**2)
    wall = time.perf_counter() - start
    print(f"[{name}] done in {wall:.1f} s, peak memory {peak:.0f} MiB", flush=True)
    return {"index": index, "run_dir": str(trainer.run_dir), "step": trainer.step, "wall_s": wall, "peak_rss_mib": peak}


# -- executors --------------------------------------------------------------------------------
def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_executor(name: Executor, ray_address: str | None) -> str:
    """``auto``: Ray when it imports, else the process pool. A one-line error for ``ray`` (or a Ray
    address) without Ray installed."""
    if name not in ("auto", "ray", "pool"):
        raise ConfigError(f"--executor must be auto, ray or pool, got {name!r}")
    if name == "pool":
        return "pool"
    if ray_available():
        return "ray"
    if name == "ray" or ray_address:
        raise ConfigError("--executor ray (or --ray-address) needs Ray: pip install 'recon[distributed]'")
    return "pool"


class RaySession:
    """Ray for the blocks: joins ``address`` (a running cluster: multi-node) or starts a local Ray
    with ``num_cpus`` CPUs and no dashboard; shuts down only what it started. ``submit(fn, payload,
    num_cpus)`` runs ``fn`` as a Ray task in a fresh worker process (``max_calls=1``) and returns a
    :class:`concurrent.futures.Future`."""

    def __init__(self, address: str | None, num_cpus: int):
        import ray

        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            if address:
                try:
                    ray.init(address=address, include_dashboard=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ConfigError(f"--ray-address {address}: cannot join a Ray cluster there ({_describe(exc)})") from None
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False)

    def submit(self, fn: Callable[[dict], dict], payload: dict, num_cpus: int) -> cf.Future:
        remote = self.ray.remote(max_calls=1, max_retries=0, num_cpus=num_cpus)(fn)
        return remote.remote(payload).future()

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


@dataclass
class BlockEvent:
    """What :func:`run_tasks` reports: ``kind`` is submitted, done, failed or retry."""

    kind: str
    index: int
    detail: str = ""
    result: dict[str, Any] | None = None


def _describe(exc: BaseException) -> str:
    lines = [line for line in "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def run_tasks(
    fn: Callable[[dict], dict],
    payloads: list[dict],
    make_executor: Callable[[], Any],
    retries: int = 1,
    num_cpus: int = 1,
    report: Callable[[BlockEvent], None] = lambda e: None,
) -> tuple[dict[int, dict], dict[int, str]]:
    """Run ``fn(payload)`` for every payload (each has an ``index``) on executors made by
    ``make_executor()`` (a ``concurrent.futures`` executor, or a :class:`RaySession`), resubmitting a
    failed payload up to ``retries`` times, each round of retries on a fresh executor. Returns
    (results by index, last error by index of those that failed every try)."""
    pending = list(payloads)
    results: dict[int, dict] = {}
    errors: dict[int, str] = {}
    for attempt in range(retries + 1):
        if not pending:
            break
        executor = make_executor()
        try:
            futures: dict[cf.Future, dict] = {}
            for payload in pending:
                if isinstance(executor, RaySession):
                    future = executor.submit(fn, payload, num_cpus)
                else:
                    future = executor.submit(fn, payload)
                futures[future] = payload
                report(BlockEvent("submitted", payload["index"], f"try {attempt + 1} of {retries + 1}"))
            failed = []
            for future in cf.as_completed(futures):
                payload = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # a block's error or a crashed worker: retried, never fatal here
                    errors[payload["index"]] = _describe(exc)
                    failed.append(payload)
                    report(BlockEvent("failed", payload["index"], errors[payload["index"]]))
                    continue
                results[payload["index"]] = result
                errors.pop(payload["index"], None)
                report(BlockEvent("done", payload["index"], result=result))
        finally:
            if isinstance(executor, RaySession):
                executor.close()
            else:
                executor.shutdown(wait=True, cancel_futures=True)
        pending = sorted(failed, key=lambda p: p["index"])
        for payload in pending if attempt < retries else []:
            report(BlockEvent("retry", payload["index"], f"retry {attempt + 1} of {retries}"))
    return results, errors


def executor_factory(kind: str, max_workers: int, threads: int, ray_address: str | None) -> Callable[[], Any]:
    """A maker of fresh executors of ``kind`` ("ray" or "pool") for :func:`run_tasks`."""
    if kind == "ray":
        return lambda: RaySession(ray_address, num_cpus=max_workers * threads)
    # A plain fork would copy the parent's torch threads and locks. A fork server is started once per
    # parent process, single-threaded, with torch and the trainer imported (PRELOAD): each block's
    # fresh process is forked from it and skips seconds of imports.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return lambda: cf.ProcessPoolExecutor(max_workers=max_workers, mp_context=context, max_tasks_per_child=1)


def payload(config: Any, index: int, threads: int) -> dict[str, Any]:
    """What a worker gets: the block's config as plain data (picklable, and what config.yml holds)."""
    return {"index": index, "config": to_plain(config), "threads": threads}
