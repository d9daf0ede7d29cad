"""``ns-eval --load-config outputs/.../config.yml``: PSNR/SSIM (and LPIPS when its weights are
present locally) of a trained model on a dataset split, written as JSON."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from recon.cli import parse_cli, run_main
from recon.cli.handoff import config_is_nerfstudios, dispatch
from recon.engine.evaluate import evaluate_images
from recon.engine.logging import console
from recon.engine.run import load_run
from recon.atomic import atomic_write


@dataclass
class EvalConfig:
    """Evaluate a trained run on its dataset's held-out images."""

    load_config: Path
    """The run's config.yml."""
    output_path: Path | None = None
    """JSON file with per-image and mean metrics; default <run>/eval.json."""
    render_output_path: Path | None = None
    """Folder to write the rendered images into (optional)."""
    split: Literal["test", "val", "train"] = "test"
    """Dataset split to evaluate."""
    step: int | None = None
    """Checkpoint step (default: the latest)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render."""


def main(cfg: EvalConfig) -> dict:
    run = load_run(cfg.load_config, cfg.device, cfg.step)
    dataset = run.config.datamanager.dataset(run.outputs.split(cfg.split))
    result = evaluate_images(run.model, dataset, render_dir=cfg.render_output_path)
    payload = {"method": run.config.method_name, "run": str(run.run_dir), "step": run.step, "split": cfg.split, **result}
    out = cfg.output_path or run.run_dir / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=2))
    m = result["mean"]
    extra = f", LPIPS {m['lpips']:.4f}" if "lpips" in m else " (LPIPS skipped: no local weights)"
    console.print(f"{cfg.split}: {m['num_images']} images, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}{extra}; written to {out}")
    return payload


def entrypoint() -> None:
    cfg = parse_cli(lambda: tyro.cli(EvalConfig, args=sys.argv[1:]), "ns-eval")
    run_main(lambda: main(cfg))



def ns_entrypoint() -> None:
    """``ns-eval``: a nerfstudio run's config.yml goes to nerfstudio's ns-eval when it is installed."""
    dispatch("ns-eval", entrypoint, config_is_nerfstudios)


if __name__ == "__main__":
    entrypoint()
