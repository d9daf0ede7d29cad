"""The training loop.

The trainer knows nothing about methods: it parses the data with the configured parser, builds
the datamanager and model their configs name, steps one optimizer per parameter group, and runs
hook objects (the model's and its own: logging, evaluation, checkpoints). A run lives in
``<output_dir>/<experiment>/<method>/<timestamp>/`` with ``config.yml``,
``dataparser_transforms.json``, ``checkpoints/`` and TensorBoard event files.

Nothing is written before the data and the model have been built, so a bad dataset never leaves
an empty run folder behind.
"""

from __future__ import annotations

import datetime
import json
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import tyro

from recon.atomic import atomic_write_bytes
from recon.config import DataParserConfig, InstantiateConfig, save_config
from recon.engine import distributed
from recon.engine.callbacks import Callback, Where, run_callbacks
from recon.engine.checkpoint import checkpoint_paths, find_checkpoint, list_checkpoints, load_into_model, load_model_state, load_train_state, remove_incomplete, save_checkpoint
from recon.engine.evaluate import evaluate_images
from recon.engine.host_memory import cache_freed_host_memory
from recon.engine.logging import console, make_progress, Writer
from recon.engine.optim import OptimizerConfig, Optimizers
from recon.errors import ConfigError, TrainingError, WriteError
from recon.model import Model, ModelConfig, SceneInfo


@dataclass
class LoggingConfig:
    """What the run reports while it trains."""

    tensorboard: bool = True
    """Write TensorBoard scalars and images into the run folder."""
    progress_bar: bool = True
    """Show a progress bar with iterations/s and ETA."""
    steps_per_log: int = 25
    """Steps between scalar logs."""


@dataclass
class TrainerConfig:
    """A training run: data, method (datamanager + model + optimizers), schedule and outputs."""

    method_name: Annotated[str, tyro.conf.Suppress] = "unnamed"
    """Name of the method preset (set by the registry, not a flag)."""
    data: Path | None = None
    """Dataset folder (its format is detected); without it, the built-in synthetic scene is used."""
    dataparser: DataParserConfig = field(default_factory=DataParserConfig)
    """Dataset format; pick one with a sub-command to override detection."""
    num_train_views: int | None = None
    """Few-shot: train on K views only (RegNeRF protocol for LLFF and DTU, evenly spaced otherwise)."""
    datamanager: InstantiateConfig = field(default_factory=InstantiateConfig)
    """How training batches are drawn."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model and its hyper-parameters."""
    optimizers: dict[str, OptimizerConfig] = field(default_factory=dict)
    """One optimizer (and schedule) per named parameter group of the model."""
    max_num_iterations: int = 30_000
    """Number of training steps."""
    steps_per_save: int = 2000
    """Steps between checkpoints (one is also written at the end and on Ctrl-C)."""
    save_only_latest_checkpoint: bool = True
    """Delete older checkpoints when a new one is written."""
    steps_per_eval_image: int = 500
    """Steps between rendering one evaluation image (logged with its PSNR); 0 disables."""
    steps_per_eval_all_images: int = 0
    """Steps between evaluating every evaluation image; 0 disables periodic full evaluation."""
    eval_at_end: bool = True
    """Evaluate every evaluation image when training ends and write ``eval_summary.json``."""
    output_dir: Path = Path("outputs")
    """Root folder of runs."""
    experiment_name: str | None = None
    """Experiment folder name; defaults to the dataset folder's name."""
    timestamp: str = "{timestamp}"
    """Run folder name; ``{timestamp}`` becomes the start time."""
    load_dir: Path | None = None
    """Resume from this run folder (or its checkpoints/ folder), continuing in the same run folder."""
    load_step: int | None = None
    """Step of the checkpoint to resume from; the latest when unset."""
    seed: int = 42
    """Seed of every random generator."""
    on_nonfinite: Literal["skip", "stop"] = "skip"
    """A step whose loss or gradient is NaN or infinite is never applied. "skip": report it and go
    on (training stops anyway after ``max_nonfinite_steps`` such steps in a row); "stop": write a
    checkpoint of the last good state and stop with an error naming the step and the loss term."""
    max_nonfinite_steps: int = 10
    """With ``on_nonfinite skip``: stop after this many non-finite steps in a row."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: CUDA when available with auto."""
    host_memory: Literal["cache", "system"] = "cache"
    """Training on the CPU: "cache" keeps freed host memory in the process for reuse (glibc only; about
    2x faster steps on large scenes, higher resident size; see recon/engine/host_memory.py), "system"
    leaves the C library's allocator as it is."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Progress and TensorBoard options."""
    machine: distributed.MachineConfig = field(default_factory=distributed.MachineConfig)
    """Data-parallel training: processes to start on this machine and the machines taking part
    (or start ns-train with torchrun; see README "Data-parallel training")."""
    viewer: bool = False
    """Serve the live web viewer while training (its URL is printed)."""
    viewer_host: str = "127.0.0.1"
    """Address the viewer binds; 0.0.0.0 makes it reachable from other machines."""
    viewer_port: int = 7007
    """Port of the viewer (0 picks a free one)."""
    viewer_token: str = "auto"
    """Viewer access token: auto (a random one, in the printed URL, unless the host is loopback), none (disable), or your own."""
    viewer_train_render_ratio: float = 3.0
    """Seconds of training per second of viewer rendering while training runs (3 = 75 % training)."""
    viewer_max_res: int = 512
    """Longest side, in pixels, of the viewer's frames when the camera rests."""
    viewer_quit_on_completion: bool = False
    """Stop the viewer when training ends (by default it keeps serving the final model until Ctrl-C)."""

    def resolve_device(self) -> torch.device:
        return resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """``--device`` auto, cpu or cuda -> the torch device (auto: CUDA when available); a one-line
    error when CUDA is asked for and missing."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but CUDA is not available")
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def scene_info(outputs: Any) -> SceneInfo:
    """What the model may know of the parsed data (image datasets and image-free inputs alike)."""
    background = getattr(outputs, "alpha_color", None)
    return SceneInfo(
        aabb=outputs.scene_box.aabb.clone(),
        num_train_cameras=len(outputs.splits.get("train", [])),
        background=None if background is None else torch.as_tensor(background, dtype=torch.float32),
        near=getattr(outputs, "near", None),
        far=getattr(outputs, "far", None),
        points3d=getattr(outputs, "points3d", None),
        points3d_rgb=getattr(outputs, "points3d_rgb", None),
        metadata={**dict(getattr(outputs, "metadata", {})), **_camera_extent(outputs)},
        instance_filenames=_train_instances(outputs),
        depth_is_relative=bool(getattr(outputs, "depth_is_relative", False)),
    )


def _train_instances(outputs: Any) -> list[Path] | None:
    names, train = getattr(outputs, "instance_filenames", None), getattr(outputs, "splits", {}).get("train")
    return None if not names or not train else [Path(names[i]) for i in train]


def _camera_extent(outputs: Any) -> dict[str, float]:
    """``camera_extent``: 1.1 x the largest distance of a training camera from the cameras' centroid
    (3DGS's ``cameras_extent``, which scales its position learning rate and densification)."""
    cameras, train = getattr(outputs, "cameras", None), outputs.splits.get("train") if hasattr(outputs, "splits") else None
    if cameras is None or train is None or len(train) == 0:
        return {}
    centres = cameras.camera_to_worlds[torch.as_tensor(train, dtype=torch.long), :3, 3]
    return {"camera_extent": 1.1 * float((centres - centres.mean(0)).norm(dim=-1).max())}


def load_dataset(config: TrainerConfig) -> Any:
    """Parse the configured dataset (few-shot split applied), as the datamanager presents it
    (its ``prepare_data``: whole-image datamanagers undistort it), so that evaluation, rendering,
    export and the viewer see the cameras the model was trained with."""
    parser = config.dataparser
    if config.num_train_views is not None:
        parser.num_train_views = config.num_train_views
    outputs = parser.load(config.data)
    prepare = getattr(config.datamanager, "prepare_data", None)
    return outputs if prepare is None else prepare(outputs)


def train_step(model: Model, datamanager: Any, optimizers: Optimizers, callbacks: list[Callback], step: int) -> dict[str, Any]:
    """One training step: hooks before, a batch, the model's losses, backward, hooks after the
    backward (gradient statistics, densification), the optimizers, hooks after the step. Returns
    the summed ``loss``, each named term (detached), the step's ``_batch`` and ``_outputs``, and
    ``_nonfinite``: None, or what went non-finite. A step whose loss or gradient is not finite
    changes nothing (no hook after the backward runs, no optimizer steps); only the step count
    and the random draws move on."""
    run_callbacks(callbacks, Where.BEFORE_STEP, step)
    batch = datamanager.next_train(step)
    outputs = model(batch)
    losses = model.loss_dict(batch, outputs, step)
    loss = sum(losses.values())
    optimizers.zero_grad()
    loss.backward()
    distributed.average_gradients(optimizers.parameters())  # data-parallel: mean over processes; no-op in one
    problem = nonfinite_problem(loss, losses, optimizers, step)
    if problem is None:
        run_callbacks(callbacks, Where.AFTER_BACKWARD, step, batch=batch, outputs=outputs, optimizers=optimizers)
        optimizers.step(step)
        run_callbacks(callbacks, Where.AFTER_STEP, step, batch=batch, outputs=outputs, optimizers=optimizers)
    else:
        optimizers.zero_grad()
    values = {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}, "_batch": batch, "_outputs": outputs}
    return {**values, "_nonfinite": problem}


def nonfinite_problem(loss: torch.Tensor, losses: dict[str, torch.Tensor], optimizers: Optimizers, step: int) -> str | None:
    """None when the loss and every gradient are finite, else a sentence naming the step, the loss
    terms and the parameter groups that are not. One fused check (a single device sync) on the
    common path; the per-term diagnosis runs only when something is wrong."""
    grads = {name: [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None] for name, opt in optimizers.optimizers.items()}
    flat = [g for gs in grads.values() for g in gs]
    probe = loss.detach().float().sum()
    if flat:
        probe = probe + torch.stack([n.float() for n in torch._foreach_norm(flat)]).sum() * 0  # nan/inf survive * 0
    if distributed.is_initialized():  # every process takes the same decision
        distributed.all_reduce_(probe)
    if bool(torch.isfinite(probe)):
        return None
    terms = [f"{k} = {float(v.detach().float().sum())}" for k, v in losses.items() if not bool(torch.isfinite(v.detach()).all())]
    groups = [name for name, gs in grads.items() if any(not bool(torch.isfinite(g).all()) for g in gs)]
    parts = [f"loss term {', '.join(terms)}"] if terms else []
    if groups:
        parts.append(f"gradient of parameter group {', '.join(groups)}")
    return f"step {step}: non-finite " + (" and ".join(parts) or "loss")


def fit(config: TrainerConfig, outputs: Any, device: torch.device, steps: int) -> Model:
    """Train ``config``'s datamanager, model and optimizers on already parsed data for ``steps``
    steps, in memory: no run folder, no checkpoints, no logging, and the global RNG left as it was
    (e.g. a short reconstruction that another method starts from). Returns the model in eval mode."""
    rng = torch.get_rng_state()
    try:
        with torch.enable_grad():  # callers may hold no_grad (a model's initialize_from_data does)
            torch.manual_seed(config.seed)
            datamanager = config.datamanager.setup(outputs=outputs, device=device, seed=config.seed)
            model: Model = config.model.setup(scene=scene_info(outputs)).to(device)
            model.check_datamanager(datamanager)
            model.initialize_from_data(datamanager)
            optimizers = Optimizers(config.optimizers, model.param_groups(), model.lr_multipliers())
            callbacks = getattr(datamanager, "callbacks", lambda: [])() + model.callbacks()
            model.train()
            consecutive = 0
            for step in range(steps):
                problem = train_step(model, datamanager, optimizers, callbacks, step)["_nonfinite"]
                consecutive = consecutive + 1 if problem else 0
                if consecutive > config.max_nonfinite_steps:
                    raise TrainingError(f"{problem}; {consecutive} steps in a row went non-finite")
    finally:
        torch.set_rng_state(rng)
    return model.eval()


class Trainer:
    """Builds everything from a :class:`TrainerConfig` and runs the loop."""

    def __init__(self, config: TrainerConfig):
        self.config = config
        if config.data is not None:  # config.yml must find the data again from any working directory
            config.data = Path(config.data).expanduser().resolve()
        self.device = distributed.setup(config.resolve_device())  # data-parallel under torchrun: cuda:LOCAL_RANK
        if not distributed.is_main():  # rank 0 alone reports and writes
            console.quiet = True
            config.logging.progress_bar = False
        if self.device.type == "cpu" and config.host_memory == "cache":
            cache_freed_host_memory()
        seed_everything(config.seed)
        self.outputs = load_dataset(config)
        self.datamanager = config.datamanager.setup(outputs=self.outputs, device=self.device, seed=config.seed)
        distributed.shard_datamanager(self.datamanager)
        self.model: Model = config.model.setup(scene=scene_info(self.outputs)).to(self.device)
        self.model.check_datamanager(self.datamanager)
        self.model.initialize_from_data(self.datamanager)
        distributed.broadcast_model(self.model)
        self.optimizers = Optimizers(config.optimizers, self.model.param_groups(), self.model.lr_multipliers())
        self.start_step = 0
        self.step = 0
        self.history: list[tuple[int, float]] = []
        self.nonfinite_steps = 0
        self.nonfinite_in_a_row = 0
        self.run_dir = distributed.broadcast_object(self._run_dir())  # rank 0's timestamp
        self._stop_signalled = 0.0
        resume = None
        if config.load_dir is not None:
            resume = find_checkpoint(config.load_dir, config.load_step)
            removed = remove_incomplete(resume[0].parent)
            if removed:
                console.print(f"removed {len(removed)} file(s) of an interrupted checkpoint write: {', '.join(p.name for p in removed)}")
            self._load(*resume)
        datamanager_hooks = getattr(self.datamanager, "callbacks", lambda: [])()
        self.callbacks: list[Callback] = datamanager_hooks + self.model.callbacks() + self._own_callbacks()
        self.writer: Writer | None = None
        self.lock = threading.RLock()
        """Held for each training step; whoever reads the model from another thread (the viewer) takes it."""
        self.between_steps: list[Any] = []
        """Functions ``fn(trainer, step)`` run after every step, outside :attr:`lock` (the viewer's
        pause gate, read-outs and checkpoint-now button)."""

    # -- folders and checkpoints ------------------------------------------------------------------
    def _run_dir(self) -> Path:
        c = self.config
        if c.load_dir is not None:
            load_dir = Path(c.load_dir)
            return load_dir.parent if load_dir.name == "checkpoints" else load_dir
        data = Path(c.data) if c.data is not None else None
        experiment = c.experiment_name or ("synthetic" if data is None else data.stem if data.is_file() else data.resolve().name)
        stamp = c.timestamp.replace("{timestamp}", datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S"))
        return Path(c.output_dir) / experiment / c.method_name / stamp

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _load(self, model_path: Path, state_path: Path) -> None:
        state, step = load_model_state(model_path, self.config.method_name)
        train_state = load_train_state(state_path)
        load_into_model(self.model, {k: v.to(self.device) for k, v in state.items()}, model_path)
        # The optimizer is rebuilt after loading: models may change size when they load.
        self.optimizers = Optimizers(self.config.optimizers, self.model.param_groups(), self.model.lr_multipliers())
        try:
            self.optimizers.load_state_dict(train_state["optimizers"])
            self.datamanager.load_state_dict(train_state["datamanager"])
        except (KeyError, ValueError, RuntimeError) as exc:
            from recon.errors import CheckpointError

            raise CheckpointError(f"training state does not fit this run ({type(exc).__name__}: {exc})", state_path) from None
        torch.set_rng_state(train_state["rng_torch"])
        if torch.cuda.is_available() and "rng_cuda" in train_state:
            torch.cuda.set_rng_state_all(train_state["rng_cuda"])
        self.start_step = self.step = step

    def _nonfinite(self, problem: str, step: int) -> None:
        """A step that went non-finite (and was not applied): report it; stop when asked to, or
        when too many came in a row, with a checkpoint of the last good state."""
        c = self.config
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        if self.writer is not None:
            self.writer.scalars({"nonfinite_steps": self.nonfinite_steps}, step + 1, prefix="train/")
        if c.on_nonfinite == "skip" and self.nonfinite_in_a_row <= c.max_nonfinite_steps:
            console.print(f"warning: {problem}; the step was skipped ({self.nonfinite_steps} so far)")
            return
        path = self.save_checkpoint(step)
        why = "--on-nonfinite stop" if c.on_nonfinite == "stop" else f"{self.nonfinite_in_a_row} steps in a row (--max-nonfinite-steps {c.max_nonfinite_steps})"
        raise TrainingError(f"{problem}; training stopped ({why}); the last good state is checkpoint {path.name}: resume with --load-dir {self.run_dir}")

    def save_checkpoint(self, step: int) -> Path:
        """Write the checkpoint for ``step``; a destination that cannot take it (a full disk) stops
        training with a :class:`TrainingError` naming the last complete checkpoint, which stays intact."""
        failure: WriteError | None = None
        try:
            path = self._save_checkpoint(step)
        except WriteError as exc:
            failure = exc
        # Data-parallel: rank 0 writes, and every rank must stop with it (or wait forever).
        _, (failed_somewhere,) = distributed.average_scalars({}, [failure is not None])
        if failure is None and not failed_somewhere:
            return path
        steps = list_checkpoints(self.checkpoint_dir)
        last = f"the last complete checkpoint, step {steps[-1]}, is intact" if steps else "no earlier checkpoint exists"
        what = failure if failure is not None else f"rank 0 could not write the checkpoint of step {step}"
        raise TrainingError(f"{what}; training stopped at step {step}; {last}: free space and resume with --load-dir {self.run_dir}") from None

    def _save_checkpoint(self, step: int) -> Path:
        train_state: dict[str, Any] = {
            "optimizers": self.optimizers.state_dict(),
            "datamanager": self.datamanager.state_dict(),
            "rng_torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            train_state["rng_cuda"] = torch.cuda.get_rng_state_all()
        if not distributed.is_main():  # the ranks' states are identical; rank 0 alone writes
            return checkpoint_paths(self.checkpoint_dir, step)[0]
        return save_checkpoint(
            self.checkpoint_dir, step, self.model.state_dict(), train_state, self.config.method_name, self.config.save_only_latest_checkpoint
        )

    # -- hooks --------------------------------------------------------------------------------
    def _own_callbacks(self) -> list[Callback]:
        c = self.config
        # These run after step s completes, i.e. with s + 1 steps done: shift by one.
        hooks = [(c.steps_per_save, lambda s, **_: self.save_checkpoint(s + 1))]
        if self.eval_images is not None:
            hooks += [(c.steps_per_eval_image, distributed.keep_rng(self._eval_image)), (c.steps_per_eval_all_images, distributed.keep_rng(self._eval_all))]
        return [Callback(fn, every=every, start=every - 1) for every, fn in hooks if every > 0]

    @property
    def eval_images(self) -> Any:
        """The datamanager's evaluation images, or None for image-free inputs (or an empty split), and
        on every data-parallel rank but 0 (rank 0 alone evaluates)."""
        ds = getattr(self.datamanager, "eval_dataset", None) if distributed.is_main() else None
        return ds if ds is not None and len(ds) > 0 else None

    def _eval_image(self, step: int, **_: Any) -> None:
        ds = self.datamanager.eval_dataset
        i = (step // max(self.config.steps_per_eval_image, 1)) % len(ds)
        from recon.image_metrics import psnr

        self.model.eval()
        out = self.model.render(ds.cameras[i].to(self.device))
        self.model.train()
        value = float(psnr(out["rgb"], ds.image(i).to(self.device)))
        if self.writer is not None:
            self.writer.scalars({"psnr": value}, step + 1, prefix="eval_image/")
            self.writer.image("eval_image/rgb", torch.cat([ds.image(i), out["rgb"].cpu()], 1), step + 1)
        self.last_eval_psnr = value

    def _eval_all(self, step: int, **_: Any) -> dict[str, Any]:
        result = evaluate_images(self.model, self.datamanager.eval_dataset, with_lpips=False, progress=False)
        if self.writer is not None:
            self.writer.scalars({k: v for k, v in result["mean"].items() if k != "num_images"}, step + 1, prefix="eval/")
        return result

    # -- the loop -----------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        values = train_step(self.model, self.datamanager, self.optimizers, self.callbacks, step)
        # Data-parallel: losses averaged over the processes (the global batch's), and a stop request
        # (Ctrl-C) acted on by every process after the same step.
        values, (stop,) = distributed.average_scalars(values, [bool(self._stop_signalled)])
        self._stop_requested = getattr(self, "_stop_requested", False) or stop
        return values

    def setup_run_dir(self) -> None:
        if not distributed.is_main():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.run_dir / "config.yml")
        self.outputs.save_transforms(self.run_dir / "dataparser_transforms.json")
        if self.config.logging.tensorboard:
            self.writer = Writer(self.run_dir)

    def request_stop(self, *_: Any) -> None:
        """Ctrl-C: finish the current step, write a checkpoint, then stop (a second Ctrl-C aborts)."""
        if distributed.world_size() > 1:  # Ctrl-C reaches each process twice (terminal, torchrun): abort on one 2 s later
            if self._stop_signalled and time.monotonic() - self._stop_signalled > 2.0:
                raise KeyboardInterrupt
            self._stop_signalled = self._stop_signalled or time.monotonic()
            return
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        console.print("\nCtrl-C: finishing this step and writing a checkpoint (press again to abort without saving)")

    def train(self) -> Path:
        """Train to ``max_num_iterations``; returns the run folder.

        Ctrl-C (SIGINT) lets the current step finish, writes a checkpoint for it and raises
        KeyboardInterrupt, so the checkpoint is always consistent with the steps taken.
        """
        c = self.config
        self.setup_run_dir()
        console.print(f"[bold]recon[/bold] {c.method_name}: {self.datamanager.describe()} on {self.device}; run folder {self.run_dir}")
        if c.load_dir is not None:
            console.print(f"resuming at step {self.start_step} of {c.max_num_iterations}")
        self._stop_requested = False
        handler_installed = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self.request_stop) if handler_installed else None
        bar = make_progress()
        step = self.start_step
        t_last, s_last = time.perf_counter(), step
        try:
            with bar:
                task = bar.add_task(c.method_name, total=c.max_num_iterations, completed=step, rate="", info="", visible=c.logging.progress_bar)
                while step < c.max_num_iterations:
                    with self.lock:
                        values = self.train_step(step)
                    self.history.append((step, float(values["loss"])))
                    if values["_nonfinite"] is not None:
                        self._nonfinite(values["_nonfinite"], step)
                    else:
                        self.nonfinite_in_a_row = 0
                    step += 1
                    self.step = step
                    for fn in self.between_steps:
                        fn(self, step)
                    if step % max(c.logging.steps_per_log, 1) == 0 or step == c.max_num_iterations:
                        now = time.perf_counter()
                        rate = (step - s_last) / max(now - t_last, 1e-9)
                        t_last, s_last = now, step
                        metrics = self.model.metrics(values["_batch"], values["_outputs"])
                        scalars = {k: v for k, v in values.items() if not k.startswith("_")}
                        if self.writer is not None:
                            self.writer.scalars({**scalars, **metrics}, step, prefix="train/")
                            self.writer.scalars(self.optimizers.learning_rates(), step, prefix="lr/")
                            self.writer.scalars({"steps_per_second": rate}, step)
                        info = f"loss {float(values['loss']):.4f}" + (f" psnr {metrics['psnr']:.2f}" if "psnr" in metrics else "")
                        bar.update(task, completed=step, rate=f"{rate:.1f} it/s", info=info)
                        if c.logging.progress_bar and not console.is_terminal and step % max(c.max_num_iterations // 10, 1) < c.logging.steps_per_log:
                            console.print(f"step {step}/{c.max_num_iterations}  {rate:.1f} it/s  {info}")  # logs have no live bar
                    else:
                        bar.update(task, completed=step)
                    if self._stop_requested:
                        path = self.save_checkpoint(step)
                        console.print(f"stopped at step {step}; checkpoint written to {path}; resume with --load-dir {self.run_dir}")
                        distributed.barrier()
                        raise KeyboardInterrupt
        finally:
            if handler_installed:
                signal.signal(signal.SIGINT, previous)
            if self._stop_requested or step < c.max_num_iterations:
                self.close()
        path = self.save_checkpoint(step)
        distributed.barrier()  # every rank is done communicating (nothing below uses a collective)
        result = self._eval_all(step - 1) if c.eval_at_end and self.eval_images is not None else None
        if result is not None:
            summary = {"step": step, **result["mean"]}
            atomic_write_bytes(self.run_dir / "eval_summary.json", json.dumps(summary, indent=2).encode())
            console.print(f"done: step {step}, eval PSNR {summary.get('psnr', float('nan')):.2f} dB, SSIM {summary.get('ssim', float('nan')):.3f}; checkpoint {path}")
        self.close()
        return self.run_dir

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
