"""Data-parallel training: one process per device, started by ``torchrun`` (or ``--machine.num-devices``).

Every rank holds the whole model and the whole dataset. Each step, every rank draws the same
global batch from the datamanager's seeded generator and keeps its own disjoint slice
(``set_shard`` on the datamanager), computes its loss (a mean over its slice) and gradients,
and :func:`average_gradients` averages them over the ranks before the optimizers step. With
equal slices the averaged gradient is the gradient of the mean loss over the global batch, so a
run on W processes follows the 1-process run with the same global batch up to the order of float
summation. Parameters are broadcast from rank 0 once after the model is built; from then on they
stay identical because every rank applies the same averaged gradients with the same optimizer
state and draws the same numbers from the (identically seeded) global RNG.

Models whose size changes while they train (Gaussian densification) make the same decision on
every rank because their strategies sum their per-step statistics over the ranks
(:func:`all_reduce_`) before they use them; :func:`average_gradients` checks on every step that
every parameter has the same shape on every rank and raises if they ever diverged. Nothing is
wrapped in ``DistributedDataParallel``: its module wrapper assumes parameters that keep their
shape and a graph that uses each of them, and neither holds for Gaussians.

Only rank 0 writes (run folder, config.yml, checkpoints, TensorBoard, evaluation, progress bar,
viewer); the other ranks keep in step through the collectives of the next step.

The backend is gloo on CPU and NCCL on CUDA (device ``cuda:LOCAL_RANK``). Outside torchrun
(``WORLD_SIZE`` unset or 1) every function here is a no-op for a single process.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from recon.errors import ConfigError

__all__ = [
    "all_reduce_",
    "average_gradients",
    "average_scalars",
    "barrier",
    "broadcast_model",
    "broadcast_object",
    "env_rank",
    "env_world_size",
    "is_main",
    "MachineConfig",
    "keep_rng",
    "launch",
    "rank",
    "setup",
    "shard_datamanager",
    "shutdown",
    "world_size",
]

BUCKET_ELEMENTS = 1 << 24
"""Gradients are flattened into buffers of at most this many elements (64 MB of float32) per all-reduce."""
TIMEOUT = datetime.timedelta(minutes=30)
"""How long a rank waits for the others in one collective (rank 0 pausing in the viewer counts)."""


def env_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's rank from torchrun's environment (``RANK``; 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0, or the only process)."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when torchrun started several processes and return this rank's
    device: ``cuda:LOCAL_RANK`` for CUDA (NCCL), the CPU otherwise (gloo). A single process gets
    ``device`` back unchanged. Idempotent."""
    if env_world_size() <= 1:
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"data-parallel: LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) on this machine")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not is_initialized():
        if not dist.is_available():
            raise ConfigError("data-parallel: this PyTorch build has no torch.distributed")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def barrier() -> None:
    """Wait until every rank gets here. Training calls it where every rank ends (after the last
    checkpoint, or a Ctrl-C stop's): a rank then leaves the group only once the others are done
    with the collectives they share (gloo sends asynchronously, so a rank can return from a
    collective before its last message has reached its peers; a rank leaving then was seen to
    abort with ``terminate called without an active exception``). No-op in one process."""
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (at the end of ``ns-train``)."""
    if is_initialized():
        dist.destroy_process_group()


# -- set-up ---------------------------------------------------------------------------------------
def shard_datamanager(datamanager: Any) -> None:
    """Tell the datamanager which slice of each global batch is this rank's (``set_shard(rank,
    world_size)``); a one-line error for a datamanager that cannot split its batches."""
    if world_size() == 1:
        return
    set_shard = getattr(datamanager, "set_shard", None)
    if set_shard is None:
        raise ConfigError(f"data-parallel: the datamanager {type(datamanager).__name__} cannot split its batches across processes (no set_shard)")
    set_shard(rank(), world_size())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable; e.g. the run folder, whose name has a timestamp)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_model(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (models may initialise randomly).
    A model whose tensors differ in name or shape between ranks is an error, not a hang."""
    if world_size() == 1:
        return
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    layout = [(name, tuple(t.shape), str(t.dtype)) for name, t in tensors.items()]
    theirs = broadcast_object(layout)
    if theirs != layout:
        diff = next((a, b) for a, b in zip(theirs + [None] * len(layout), layout + [None] * len(theirs)) if a != b)
        raise RuntimeError(f"data-parallel: rank {rank()} built a different model than rank 0 (rank 0: {diff[0]}, here: {diff[1]})")
    for chunk in _buckets(list(tensors.values())):
        flat = _flatten(chunk)
        dist.broadcast(flat, src=0)
        _unflatten(flat, chunk)


# -- every step -----------------------------------------------------------------------------------
@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over the ranks (after ``backward``, before the
    hooks that read gradients and the optimizers). A parameter without a gradient on every rank
    keeps none (Adam skips it, as in one process); one with a gradient on some ranks only gets
    zeros from the others. Raises when a parameter's shape differs between ranks."""
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    numel = torch.tensor([p.numel() for p in params], dtype=torch.int64)
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int64)
    meta = torch.cat([numel, -numel, has]).to(device)
    dist.all_reduce(meta, op=dist.ReduceOp.MAX)
    meta = meta.cpu()
    n = len(params)
    hi, lo, any_grad = meta[:n], -meta[n : 2 * n], meta[2 * n :]
    if not torch.equal(hi, lo):
        i = int(torch.nonzero(hi != lo)[0])
        raise RuntimeError(
            f"data-parallel: the ranks' models diverged: parameter {i} has {int(lo[i])} to {int(hi[i])} elements across ranks"
            " (a size change, e.g. densification, that did not use statistics summed over the ranks)"
        )
    grads = []
    for p, wanted in zip(params, any_grad.tolist()):
        if not wanted:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        elif p.grad.is_sparse:
            raise RuntimeError("data-parallel: sparse gradients are not supported")
        grads.append(p.grad)
    scale = 1.0 / world_size()
    for chunk in _buckets(grads):
        flat = _flatten(chunk)
        dist.all_reduce(flat)
        flat.mul_(scale)
        _unflatten(flat, chunk)


def average_scalars(values: dict[str, Any], flags: Iterable[bool] = ()) -> tuple[dict[str, Any], list[bool]]:
    """The scalar tensors of ``values`` (keys not starting with ``_``) averaged over the ranks, in
    one collective, and each of ``flags`` or-ed over the ranks (e.g. a stop request, which every
    rank must act on at the same step). Other entries pass through."""
    flags = list(flags)
    if world_size() == 1:
        return values, flags
    keys = [k for k, v in values.items() if not k.startswith("_") and isinstance(v, Tensor) and v.numel() == 1]
    if not keys and not flags:
        return values, flags
    device = values[keys[0]].device if keys else _device()
    numbers = [values[k].detach().reshape(()).double() for k in keys] + [torch.tensor(float(f), dtype=torch.float64, device=device) for f in flags]
    packed = torch.stack(numbers)
    dist.all_reduce(packed)
    out = dict(values)
    for i, k in enumerate(keys):
        out[k] = (packed[i] / world_size()).to(values[k].dtype)
    return out, [bool(packed[len(keys) + j] > 0) for j in range(len(flags))]


def keep_rng(fn: Any) -> Any:
    """``fn`` run, in a data-parallel run, without moving the global RNG: rank 0 alone evaluates,
    and its RNG must stay the other ranks' (Gaussian splits draw from it on every rank)."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if world_size() == 1:
            return fn(*args, **kwargs)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and dist.get_backend() == "nccl" else []
        with torch.random.fork_rng(devices=devices):
            return fn(*args, **kwargs)

    return wrapped


def all_reduce_(*tensors: Tensor, op: str = "sum") -> None:
    """Sum (or ``op="max"``) each tensor over the ranks, in place (strategy statistics)."""
    if world_size() == 1 or not tensors:
        return
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    if len(tensors) == 1 or len({(t.dtype, t.device) for t in tensors}) > 1:
        for t in tensors:
            dist.all_reduce(t, op=reduce_op)
        return
    flat = _flatten(list(tensors))
    dist.all_reduce(flat, op=reduce_op)
    _unflatten(flat, list(tensors))


# -- helpers --------------------------------------------------------------------------------------
def _device() -> torch.device:
    """The device collectives run on: this rank's CUDA device under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _buckets(tensors: list[Tensor]) -> list[list[Tensor]]:
    """Consecutive runs of tensors with one dtype and device, each at most BUCKET_ELEMENTS large
    (a larger tensor is a bucket of its own)."""
    out: list[list[Tensor]] = []
    size = 0
    for t in tensors:
        if out and out[-1][0].dtype == t.dtype and out[-1][0].device == t.device and size + t.numel() <= BUCKET_ELEMENTS:
            out[-1].append(t)
            size += t.numel()
        else:
            out.append([t])
            size = t.numel()
    return out


def _flatten(tensors: list[Tensor]) -> Tensor:
    flat = torch.cat([t.detach().reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].detach().reshape(-1).clone()
    return flat.to(torch.uint8) if flat.dtype == torch.bool else flat


def _unflatten(flat: Tensor, tensors: list[Tensor]) -> None:
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t) if flat.dtype == t.dtype else flat[offset : offset + n].reshape(t.shape).to(t.dtype))
        offset += n


# -- launching ------------------------------------------------------------------------------------
@dataclass
class MachineConfig:
    """Data-parallel training started by ``ns-train`` itself (nerfstudio's ``--machine.*`` flags);
    under ``torchrun`` these are ignored and torchrun's own arguments count."""

    num_devices: int = 1
    """Processes to start on this machine (one per GPU; on a CPU they share its cores)."""
    num_machines: int = 1
    """Machines taking part; run the same command on each with its own ``--machine.machine-rank``."""
    machine_rank: int = 0
    """This machine's rank, 0 .. num_machines - 1 (0 hosts the rendezvous)."""
    dist_url: str = "auto"
    """``tcp://HOST:PORT`` of machine 0 for the rendezvous; "auto": a free port on this machine (one machine only)."""

    @property
    def world_size(self) -> int:
        return self.num_devices * self.num_machines


def launch(machine: MachineConfig, argv: list[str], module: str) -> None:
    """Start this program again with ``argv`` as ``machine.num_devices`` processes of this machine
    through torchrun's launcher (``torch.distributed.run``), as ``--machine.num-devices`` asks, and
    wait for them; a failed process ends this one with its exit status. "This program" is the
    script that is running (the ``ns-train`` console script), or ``python -m module`` when it was
    started that way (or cannot be found)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    m = machine
    if m.num_devices < 1 or m.num_machines < 1 or not 0 <= m.machine_rank < m.num_machines:
        raise ConfigError(
            f"--machine: need num-devices >= 1, num-machines >= 1 and 0 <= machine-rank < num-machines (got {m.num_devices}, {m.num_machines}, {m.machine_rank})"
        )
    if m.dist_url == "auto":
        if m.num_machines > 1:
            raise ConfigError("--machine.dist-url tcp://HOST:PORT (machine 0's address) is needed with several machines")
        rendezvous = ["--standalone"]
    else:
        if not m.dist_url.startswith("tcp://") or ":" not in m.dist_url[6:]:
            raise ConfigError(f"--machine.dist-url must be tcp://HOST:PORT or auto, got {m.dist_url!r}")
        host, port = m.dist_url[6:].rsplit(":", 1)
        rendezvous = [f"--nnodes={m.num_machines}", f"--node-rank={m.machine_rank}", f"--master-addr={host}", f"--master-port={port}"]
    sys.stdout.flush()
    # torchrun's agent logs every ended process; the processes report their own errors (a user
    # mistake once, as one line, from rank 0), so only a failure they could not report is added.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun.main([f"--nproc-per-node={m.num_devices}", *rendezvous, *_this_program(module), *argv])
    except ChildFailedError as exc:
        first_rank, first = exc.get_first_failure()
        code = first.exitcode
        if code not in (2, 130):  # neither a reported mistake (recon.cli.fail) nor Ctrl-C
            print(f"error: data-parallel process {first_rank} ended with exit status {code}", file=sys.stderr)
        raise SystemExit(code if 0 < code < 256 else 1) from None
    except SignalException:  # Ctrl-C: torchrun has passed it on and waited for the processes (checkpoint written)
        raise SystemExit(130) from None


def _this_program(module: str) -> list[str]:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", None):
        return ["-m", spec.name.removesuffix(".__main__")]
    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    return [script] if script and os.path.isfile(script) else ["-m", module]
