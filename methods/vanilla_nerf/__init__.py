"""``vanilla-nerf`` and ``vanilla-nerf-small``: the original NeRF as a recon method (see README.md
beside this file)."""

from data.datamanager import RayDataManagerConfig
from data.parsers import AutoParserConfig
from methods.vanilla_nerf.model import VanillaNeRFModel, VanillaNeRFModelConfig
from recon.config import MethodSpec, override
from recon.engine.optim import exponential
from recon.engine.trainer import TrainerConfig

STEPS = 200_000

TINY = {
    "model.hidden_dim": 32, "model.num_layers": 2, "model.skips": (), "model.color_hidden_dim": 16,
    "model.num_coarse_samples": 8, "model.num_fine_samples": 8, "model.position_frequencies": 4,
    "datamanager.train_num_rays_per_batch": 128, "optimizers.fields.lr": 5e-3,
}
"""Config changes that train in seconds on a tiny scene (the conformance test)."""


def vanilla_nerf() -> MethodSpec:
    """The paper's setting: 1024 rays, 64 + 128 samples, Adam 5e-4 decaying to 5e-5."""
    config = TrainerConfig(
        method_name="vanilla-nerf",
        dataparser=AutoParserConfig(),
        datamanager=RayDataManagerConfig(train_num_rays_per_batch=1024),
        model=VanillaNeRFModelConfig(),
        optimizers={"fields": exponential(lr=5e-4, lr_final=5e-5, max_steps=STEPS, eps=1e-8)},
        max_num_iterations=STEPS,
        steps_per_save=5000,
        steps_per_eval_image=2500,
    )
    return MethodSpec("vanilla-nerf", "Original NeRF: positional encoding, coarse + fine MLPs (Mildenhall et al. 2020)", config, test_overrides=TINY)


def vanilla_nerf_small() -> MethodSpec:
    """The paper's model scaled down to train in minutes on a CPU (``make demo``): a 3 x 64 density
    MLP without skip, 24 + 24 samples, 6 position bands, softplus density (small ReLU networks lose
    densities for good), 1024 rays as in the paper, and Adam 5e-3 decaying to 5e-4 over the
    2000 steps of training."""
    steps = 2000
    config = override(
        vanilla_nerf().config,
        method_name="vanilla-nerf-small",
        max_num_iterations=steps,
        steps_per_save=1000,
        steps_per_eval_image=500,
        **{
            "model.hidden_dim": 64, "model.num_layers": 3, "model.skips": (), "model.color_hidden_dim": 32,
            "model.num_coarse_samples": 24, "model.num_fine_samples": 24, "model.position_frequencies": 6,
            "model.density_activation": "softplus",
            "optimizers.fields.lr": 5e-3, "optimizers.fields.scheduler.lr_final": 5e-4, "optimizers.fields.scheduler.max_steps": steps,
        },
    )
    return MethodSpec("vanilla-nerf-small", "vanilla-nerf scaled down to train in minutes on a CPU (make demo)", config, test_overrides=TINY)


__all__ = ["VanillaNeRFModel", "VanillaNeRFModelConfig", "vanilla_nerf", "vanilla_nerf_small"]
