"""Shared helpers of the benchmark scripts: data location, memory, the results table."""

from __future__ import annotations

import ast
import datetime
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"


def shared_data() -> Path:
    path = Path(os.environ.get("RECON_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        raise SystemExit(f"shared datasets not found at {path} (set RECON_SHARED_DATA)")
    return path


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB, {gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB, or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or on Linux the process's peak resident set
    size (writing 5 to /proc/self/clear_refs resets VmHWM to the current VmRSS)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def current_memory_mb(device: torch.device) -> float:
    """Memory in use now: allocated GPU memory on CUDA, else the resident set size."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; on CPU the process's peak resident set size (since the last
    :func:`reset_peak_memory` where Linux allows the reset, else since start)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def append_results(title: str, columns: list[str], rows: list[dict[str, Any]], record: bool = True) -> str:
    """A markdown table of ``rows``; appended to RESULTS.md with date, commit and machine when ``record``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    table = "\n".join(lines)
    if record:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            commit = "?"
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        block = f"\n## {title}\n\n{stamp}, commit {commit or '?'}; {machine_description()}\n\n{table}\n"
        with RESULTS.open("a") as f:
            f.write(block)
    return table


class Subset:
    """Every k-th image of an ImageDataset (a cheaper evaluation with the same interface)."""

    def __init__(self, dataset: Any, every: int):
        self.idx = list(range(0, len(dataset), every))
        self.cameras = dataset.cameras[self.idx]
        self.filenames = [dataset.filenames[i] for i in self.idx]
        self._ds = dataset

    def __len__(self) -> int:
        return len(self.idx)

    def image(self, i: int) -> torch.Tensor:
        return self._ds.image(self.idx[i])


def train_and_evaluate(
    method: str, data: Path, output_dir: Path, steps: int, test_every: int = 8, device: str = "auto", eval_every: int = 0,
    on_point: Callable[[dict[str, float]], None] | None = None, time_budget_s: float | None = None, train_psnr: bool = True, **changes: Any
) -> tuple[Any, dict[str, Any]]:
    """Train preset ``method`` (with ``changes``; every optimizer's schedule rescaled to ``steps``)
    quietly, then evaluate every ``test_every``-th test image. Returns the trainer and a result row.
    ``time_budget_s`` ends training after that many seconds (evaluations excluded) if ``steps`` are
    not done by then; ``row["steps"]`` counts the steps taken.
    ``eval_every`` > 0 also evaluates those test images and every training image every that many
    steps: ``row["curve"]`` lists ``{step, psnr, ssim, train_psnr}`` (``train_psnr`` only with ``train_psnr``) (and ``gaussians`` for Gaussian models; the end of training included),
    and ``on_point`` (if given) receives each point as it is measured, so a run cut short still reports."""
    from recon.config import get_method, override
    from recon.engine.evaluate import evaluate_images
    from recon.engine.trainer import Trainer

    base = get_method(method).config
    schedules = {f"optimizers.{name}.scheduler.max_steps": steps for name in base.optimizers}
    fields = {
        "data": data, "output_dir": output_dir, "max_num_iterations": steps, "steps_per_save": 0, "steps_per_eval_image": 0,
        "eval_at_end": False, "device": device, "timestamp": method, "logging.progress_bar": False, "logging.tensorboard": False,
        **schedules,
    }
    cfg = override(base, **{**fields, **changes})
    trainer = Trainer(cfg)
    reset_peak_memory(trainer.device)
    curve: list[dict[str, float]] = []
    paused = 0.0

    def test_metrics() -> dict[str, Any]:
        return evaluate_images(trainer.model, Subset(trainer.datamanager.eval_dataset, test_every), with_lpips=False, progress=False)

    def point(step: int) -> dict[str, Any]:
        test = test_metrics()
        curve.append({"step": step, "psnr": test["mean"]["psnr"], "ssim": test["mean"]["ssim"]})
        if train_psnr:  # every training image: the costly part of a point
            curve[-1]["train_psnr"] = evaluate_images(trainer.model, trainer.datamanager.train_dataset, with_lpips=False, progress=False)["mean"]["psnr"]
        if hasattr(trainer.model, "num_primitives"):
            curve[-1]["gaussians"] = int(trainer.model.num_primitives)
        if on_point is not None:
            on_point(curve[-1])
        return test

    def checkpoint(_: Any, step: int) -> None:
        nonlocal paused
        if eval_every > 0 and step % eval_every == 0 and step < steps:
            t0 = time.perf_counter()
            point(step)
            paused += time.perf_counter() - t0  # not training time
        if time_budget_s is not None and time.perf_counter() - start - paused >= time_budget_s:
            trainer.config.max_num_iterations = step  # the training loop re-reads it after every step

    trainer.between_steps.append(checkpoint)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start - paused
    result = point(trainer.step) if eval_every > 0 else test_metrics()
    row = {
        "method": method, "steps": trainer.step, "train_s": seconds, "steps_per_s": trainer.step / seconds,
        "peak_mem_mb": peak_memory_mb(trainer.device), "psnr": result["mean"]["psnr"], "ssim": result["mean"]["ssim"],
        "test_images": result["mean"]["num_images"], "device": str(trainer.device),
    }
    if eval_every > 0:
        row["curve"] = curve
    return trainer, row


def mesh_picture(mesh: Any, camera: Any, path: Path, samples_per_pixel: float = 40.0, scale: float = 1.0) -> Path:
    """A shaded picture of ``mesh`` (trimesh, world units; or a list of meshes, each in its own
    colour) seen by ``camera`` (recon Cameras, one view; ``scale`` resizes its image), written as
    PNG. Dense surface samples are splatted into a z-buffer (nearest sample per pixel) and shaded
    by a head light on their face normals (two-sided): enough to judge a reconstructed surface
    without an OpenGL context. One mesh is grey; several get distinct hues."""
    import colorsys

    import numpy as np
    from PIL import Image

    from recon.geometry.mesh import sample_points_on_mesh

    camera = camera.scaled(scale) if scale != 1.0 else camera
    meshes = list(mesh) if isinstance(mesh, (list, tuple)) else [mesh]
    h, w = int(camera.height[0]), int(camera.width[0])
    area = sum(float(m.area) for m in meshes) or 1.0
    tints = [(1.0, 1.0, 1.0)] if len(meshes) == 1 else [colorsys.hsv_to_rgb(i / len(meshes), 0.55, 1.0) for i in range(len(meshes))]
    pts_l, nrm_l, col_l = [], [], []
    for m, tint in zip(meshes, tints):
        points, normals = sample_points_on_mesh(m, max(int(samples_per_pixel * h * w * float(m.area) / area), 1), seed=0)
        pts_l.append(torch.as_tensor(points, dtype=torch.float32))
        nrm_l.append(torch.as_tensor(normals, dtype=torch.float32))
        col_l.append(torch.tensor(tint, dtype=torch.float32).expand(len(points), 3))
    pts, nrm, col = torch.cat(pts_l), torch.cat(nrm_l), torch.cat(col_l)
    uv, z = camera.project(pts)
    u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    ok = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    pix, z, pts, nrm, col = (v * w + u)[ok], z[ok], pts[ok], nrm[ok], col[ok]
    nearest = torch.full((h * w,), float("inf")).scatter_reduce(0, pix, z, reduce="amin")
    front = z <= nearest[pix]
    eye = camera.camera_to_worlds[0, :3, 3]
    view = torch.nn.functional.normalize(eye - pts[front], dim=-1)
    shade = (nrm[front] * view).sum(-1).abs()
    image = torch.ones(h * w, 3)
    image[pix[front]] = (0.15 + 0.8 * shade)[:, None] * col[front]
    out = (image.reshape(h, w, 3).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out if len(meshes) > 1 else out[..., 0]).save(path)
    return path


def parse_sets(items: list[str]) -> dict[str, dict[str, object]]:
    """``METHOD:KEY=VALUE`` strings -> {method: {key: value}} (value a Python literal, else a string)."""
    out: dict[str, dict[str, object]] = {}
    for item in items:
        method, sep, rest = item.partition(":")
        key, eq, text = rest.partition("=")
        if not (sep and eq and key):
            raise SystemExit(f"--set {item!r}: expected METHOD:KEY=VALUE, e.g. 3dcs:optimizers.opacities.lr=0.05")
        try:
            value: object = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        out.setdefault(method, {})[key] = value
    return out
