"""Run with the PEER venv's python (nerfstudio installed): render chosen test views of a nerfstudio
run at chosen checkpoints, for recon's evaluator (benchmarks/peers/bench_nerfstudio.py).

    python ns_render.py RUN/config.yml OUT_DIR STEP[,STEP...] NAME[,NAME...]

Writes OUT_DIR/step-<step>.npz with ``names`` (image file names) and ``images`` float32 [N, H, W, 3]
in [0, 1], one per checkpoint that loads; prints one JSON line per step. Uses nerfstudio's public
eval_setup and get_outputs_for_camera; nothing of recon is imported here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from nerfstudio.utils.eval_utils import eval_setup


def main() -> None:
    config, out, steps, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    wanted = set(names.split(","))
    out.mkdir(parents=True, exist_ok=True)
    for step in (int(s) for s in steps.split(",")):
        def at_step(cfg, step=step):
            cfg.load_step = step
            return cfg

        try:
            _, pipeline, _, _ = eval_setup(config, test_mode="test", update_config_callback=at_step)
        except Exception as exc:  # a checkpoint cut short by the time budget
            print(json.dumps({"step": step, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        dataset = pipeline.datamanager.eval_dataset
        files = [Path(p).name for p in dataset._dataparser_outputs.image_filenames]
        picked = [i for i, name in enumerate(files) if name in wanted]
        images = []
        with torch.no_grad():
            for i in picked:
                outputs = pipeline.model.get_outputs_for_camera(dataset.cameras[i : i + 1])
                rgb = outputs["rgb"] if "rgb" in outputs else outputs["rgb_fine"]  # vanilla-nerf: rgb_coarse / rgb_fine
                images.append(rgb.clamp(0, 1).float().cpu().numpy())
        np.savez(out / f"step-{step:09d}.npz", names=np.array([files[i] for i in picked]), images=np.stack(images))
        print(json.dumps({"step": step, "images": len(picked)}), flush=True)


if __name__ == "__main__":
    main()
