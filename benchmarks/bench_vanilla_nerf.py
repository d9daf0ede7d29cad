"""Benchmark: vanilla-nerf on NeRF-synthetic lego at 100x100 for a fixed step budget.

Prints a table (preset, steps, steps/s, peak memory, test PSNR/SSIM) and appends it, with the
machine description, to benchmarks/RESULTS.md.

    python benchmarks/bench_vanilla_nerf.py [--steps 3000] [--presets small,paper] [--test-every 8]

Presets: ``paper`` is the published architecture and sampling (8x256 MLP, 64 + 128 samples,
1024 rays); ``small`` is a CPU-sized network (3x64, 24 + 24 samples, softplus density, 512 rays).
Test views: every ``--test-every``-th image of the 200-image test split (all with 1).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import append_results, machine_description, peak_memory_mb, reset_peak_memory, shared_data
from recon.config import get_method, override
from recon.engine.evaluate import evaluate_images
from recon.engine.trainer import Trainer

PRESETS = {
    "paper": {},
    "small": {
        "model.hidden_dim": 64,
        "model.num_layers": 3,
        "model.skips": (),
        "model.color_hidden_dim": 32,
        "model.num_coarse_samples": 24,
        "model.num_fine_samples": 24,
        "model.position_frequencies": 6,
        "model.density_activation": "softplus",
        "datamanager.train_num_rays_per_batch": 512,
        "optimizers.fields.lr": 5e-3,
    },
}


class Subset:
    """Every k-th image of an ImageDataset (for a cheaper evaluation)."""

    def __init__(self, dataset, every: int):
        self.idx = list(range(0, len(dataset), every))
        self.cameras = dataset.cameras[self.idx]
        self.filenames = [dataset.filenames[i] for i in self.idx]
        self._ds = dataset

    def __len__(self) -> int:
        return len(self.idx)

    def image(self, i: int) -> torch.Tensor:
        return self._ds.image(self.idx[i])


def run(preset: str, steps: int, test_every: int, device: str, out: Path) -> dict:
    lego = shared_data() / "lego"
    base = get_method("vanilla-nerf").config
    lr = PRESETS[preset].get("optimizers.fields.lr", base.optimizers["fields"].lr)
    cfg = override(
        base, data=lego, output_dir=out, max_num_iterations=steps, steps_per_save=0, steps_per_eval_image=0, eval_at_end=False,
        device=device, timestamp=preset,
        **{"datamanager.image_scale": 0.25, "logging.progress_bar": False, "logging.tensorboard": False,
           "optimizers.fields.scheduler.max_steps": steps, "optimizers.fields.scheduler.lr_final": lr / 10},
        **PRESETS[preset],
    )
    trainer = Trainer(cfg)
    reset_peak_memory(trainer.device)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    result = evaluate_images(trainer.model, Subset(trainer.datamanager.eval_dataset, test_every), with_lpips=False, progress=False)
    return {
        "method": f"vanilla-nerf ({preset})",
        "data": "lego 100x100",
        "steps": steps,
        "train_s": seconds,
        "steps_per_s": steps / seconds,
        "peak_mem_mb": peak_memory_mb(trainer.device),
        "psnr": result["mean"]["psnr"],
        "ssim": result["mean"]["ssim"],
        "test_images": result["mean"]["num_images"],
        "device": str(trainer.device),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--presets", default="small")
    ap.add_argument("--test-every", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    rows = [run(p, args.steps, args.test_every, args.device, args.output_dir) for p in args.presets.split(",")]
    columns = ["method", "data", "steps", "train_s", "steps_per_s", "peak_mem_mb", "psnr", "ssim", "test_images", "device"]
    table = append_results("vanilla-nerf on lego (benchmarks/bench_vanilla_nerf.py)", columns, rows, record=not args.no_record)
    print(machine_description())
    print(table)


if __name__ == "__main__":
    main()
