"""nerf-hash-small: quality on the default synthetic scene (a broken field, sampler or renderer
cannot reach the threshold)."""

from __future__ import annotations

from recon.engine.evaluate import evaluate_images
from recon.engine.trainer import Trainer

STEPS = 500
THRESHOLD = 21.0
"""Measured 23.2 dB (SSIM 0.89) after 500 steps, about 17 s on 2 CPU cores."""


def test_quality_on_synthetic_scene(tmp_path, quiet_config):
    """The preset, unchanged but for its schedule length, on the 8 held-out views of the default scene.

    Baselines on these views: mean training colour 10.3 dB, mean training image 13.7 dB, white
    8.4 dB (test_vanilla_nerf.py). Measured: see THRESHOLD.
    """
    from data.synthetic import default_scene_path

    schedules = {f"optimizers.{g}.scheduler.max_steps": STEPS for g in ("fields", "proposal_networks")}
    trainer = Trainer(quiet_config("nerf-hash-small", default_scene_path(), tmp_path, STEPS, **schedules))
    trainer.train()
    result = evaluate_images(trainer.model, trainer.datamanager.eval_dataset, progress=False)
    assert result["mean"]["psnr"] > THRESHOLD, result["mean"]
