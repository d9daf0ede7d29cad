"""Image evaluation of a model on a dataset split (used by the trainer and ``ns-eval``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from recon.atomic import atomic_write
from recon.engine.logging import make_progress
from recon.image_metrics import load_lpips, psnr, ssim
from recon.model import Model, Output


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


@torch.no_grad()
def evaluate_images(model: Model, dataset: Any, render_dir: Path | None = None, with_lpips: bool = True, progress: bool = True) -> dict[str, Any]:
    """Render every image of ``dataset`` (an ImageDataset) and compare with the ground truth.

    Returns ``{"mean": {psnr, ssim[, lpips], seconds_per_image}, "images": [{name, psnr, ...}]}``.
    LPIPS appears only when its weights are present locally (see :func:`recon.image_metrics.load_lpips`).
    With ``render_dir``, writes ``<name>.png`` renders next to nothing else.
    """
    model.eval()
    lpips = load_lpips() if with_lpips else None
    if lpips is not None:
        lpips = lpips.to(model.device)
    if render_dir is not None:
        render_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    bar = make_progress(transient=True)
    with bar:
        task = bar.add_task("eval", total=len(dataset), rate="", info="", visible=progress)
        for i in range(len(dataset)):
            start = time.perf_counter()
            out = model.render(dataset.cameras[i].to(model.device))
            seconds = time.perf_counter() - start
            pred, gt = out[Output.RGB.value].float(), dataset.image(i).to(model.device)
            row: dict[str, Any] = {
                "name": Path(dataset.filenames[i]).name,
                "psnr": float(psnr(pred, gt)),
                "ssim": float(ssim(pred, gt)),
                "seconds": seconds,
            }
            if lpips is not None:
                row["lpips"] = float(lpips(pred, gt))
            rows.append(row)
            if render_dir is not None:
                with atomic_write(render_dir / f"{Path(row['name']).stem}.png") as tmp:
                    Image.fromarray(to_uint8(pred)).save(tmp)
            bar.update(task, advance=1, info=f"PSNR {row['psnr']:.2f}")
    model.train()
    keys = [k for k in ("psnr", "ssim", "lpips") if rows and k in rows[0]]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    mean["seconds_per_image"] = float(np.mean([r["seconds"] for r in rows])) if rows else 0.0
    mean["num_images"] = len(rows)
    return {"mean": mean, "images": rows}
