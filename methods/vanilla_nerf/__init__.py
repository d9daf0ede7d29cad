"""``vanilla-nerf``: the original NeRF as a recon method (see README.md beside this file)."""

from data.datamanager import RayDataManagerConfig
from data.parsers import AutoParserConfig
from methods.vanilla_nerf.model import VanillaNeRFModel, VanillaNeRFModelConfig
from recon.config import MethodSpec
from recon.engine.optim import exponential
from recon.engine.trainer import TrainerConfig

STEPS = 200_000


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
    tiny = {
        "model.hidden_dim": 32, "model.num_layers": 2, "model.skips": (), "model.color_hidden_dim": 16,
        "model.num_coarse_samples": 8, "model.num_fine_samples": 8, "model.position_frequencies": 4,
        "datamanager.train_num_rays_per_batch": 128, "optimizers.fields.lr": 5e-3,
    }
    return MethodSpec("vanilla-nerf", "Original NeRF: positional encoding, coarse + fine MLPs (Mildenhall et al. 2020)", config, test_overrides=tiny)


__all__ = ["VanillaNeRFModel", "VanillaNeRFModelConfig", "vanilla_nerf"]
