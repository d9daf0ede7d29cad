"""Benchmark: ``geconerf`` against the identical backbone without the consistency loss and against
``vanilla-nerf``, at equal steps, on LLFF fern with 3 views (RegNeRF's split), in one run.

    python -m benchmarks.bench_geconerf [--steps 1000] [--scale 0.5] [--preset geconerf-small]
        [--pose-mode strict] [--vgg-weights PATH] [--methods geconerf,backbone,vanilla-nerf]

Data: fern's LLFF hold-out (every 8th of the 20 photos is a test view: 3 views), the 3 training
views at ``round(linspace(0, 16, 3))`` of the other 17 (RegNeRF's rule), at ``--scale`` of the
shared 504x378 copy (the protocol's resolution is 1: 504x378). NDC rays for all three.

Rows:
- ``geconerf``: ``--preset`` (default the CPU-sized ``geconerf-small``; its step constants are the
  release's compressed to ``--steps``), ``--pose-mode`` strict (input poses only) or nearby (the
  release's LLFF mode), weight-free features unless ``--vgg-weights`` names a VGG-19 state dict.
- ``backbone``: the same preset with ``--model.consistency-weight 0`` (same mip-NeRF, annealing,
  schedule; no unobserved patches contribute).
- ``vanilla-nerf``: ``vanilla-nerf-small`` (NDC as well), its schedule rescaled to ``--steps``.

``--set KEY=VALUE`` changes the geconerf row's config (the mode column lists it), ``--seed`` seeds
every row. Columns: PSNR / SSIM over the 3 test views (LPIPS when local weights exist), training time.
Depth maps of the first test view, one per row, are written side by side to
``<output-dir>/geconerf_fern_depth.png`` (inverse depth, brighter is nearer), and copied to
``benchmarks/images/`` when the run is recorded (not with ``--no-record``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import append_results, machine_description, shared_data, train_and_evaluate
from recon.config import get_method

IMAGES = Path(__file__).resolve().parent / "images"


def _changes(name: str, args: argparse.Namespace) -> tuple[str, dict]:
    if name == "vanilla-nerf":
        return "vanilla-nerf-small", {}
    from methods.geconerf import compressed_schedules

    changes = {k: v for k, v in compressed_schedules(args.steps).items() if k != "max_num_iterations"}
    changes["datamanager.pose_mode"] = args.pose_mode
    if args.vgg_weights is not None:
        changes["model.vgg_weights"] = args.vgg_weights
    if name == "geconerf":
        changes.update(args.set)
    if name == "backbone":
        changes["model.consistency_weight"] = 0.0
    return args.preset, changes


def _setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with a JSON value (a bare word stays a string)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _depth_picture(depths: list[torch.Tensor], path: Path) -> None:
    """Inverse depths [H, W, 1], side by side, each normalised by its own 2nd-98th percentile."""
    from PIL import Image

    tiles = []
    for d in depths:
        inv = 1.0 / d[..., 0].clamp_min(1e-6)
        lo, hi = torch.quantile(inv.flatten(), torch.tensor([0.02, 0.98]))
        tiles.append(((inv - lo) / (hi - lo).clamp_min(1e-9)).clamp(0, 1))
    Image.fromarray((torch.cat(tiles, 1).numpy() * 255).astype(np.uint8)).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--preset", default="geconerf-small")
    ap.add_argument("--pose-mode", default="strict", choices=["strict", "nearby"])
    ap.add_argument("--vgg-weights", type=Path, default=None)
    ap.add_argument("--methods", default="geconerf,backbone,vanilla-nerf")
    ap.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                    help="a config change for the geconerf row only (JSON value), e.g. model.consistency_weight=0.2; repeatable")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    args.set = dict(args.set)
    data = shared_data() / "fern"
    rows, depths = [], []
    for name in args.methods.split(","):
        preset, changes = _changes(name, args)
        get_method(preset)  # an unknown preset fails before any training
        trainer, row = train_and_evaluate(
            preset, data, args.output_dir, args.steps, test_every=1, device=args.device,
            num_train_views=3, **{"datamanager.image_scale": args.scale, "timestamp": name, "seed": args.seed}, **changes,
        )
        ds = trainer.datamanager.eval_dataset
        depths.append(trainer.model.render(ds.cameras[0])["depth"].cpu())
        h, w = ds.images[0].shape[:2]
        extractor = "VGG-19" if args.vgg_weights else "weight-free"
        extra = "".join(f", {k.split('.')[-1]}={v}" for k, v in args.set.items())
        mode = f"{args.pose_mode} poses, {extractor} features{extra}" if name == "geconerf" else ""
        rows.append({**row, "method": name, "preset": preset, "mode": mode, "data": f"fern {w}x{h}, 3 views"})
    picture = args.output_dir / "geconerf_fern_depth.png"  # benchmarks/images/ only for a recorded run
    _depth_picture(depths, picture)
    if not args.no_record:
        IMAGES.mkdir(exist_ok=True)
        shutil.copy(picture, IMAGES / picture.name)
    columns = ["method", "preset", "mode", "data", "steps", "train_s", "steps_per_s", "peak_mem_mb", "psnr", "ssim", "test_images", "device"]
    table = append_results("geconerf vs its backbone vs vanilla-nerf, fern 3 views (benchmarks/bench_geconerf.py)", columns, rows, record=not args.no_record)
    print(machine_description())
    print(table)
    print("unrounded: " + "; ".join(f"{r['method']} {r['psnr']:.3f} dB / {r['ssim']:.4f}" for r in rows))


if __name__ == "__main__":
    main()
