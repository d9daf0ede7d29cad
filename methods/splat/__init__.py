"""``splat``: 3D Gaussian Splatting (Kerbl et al. 2023) as a recon method (see README.md beside this file)."""

from data.datamanager import ImageDataManagerConfig
from data.parsers import AutoParserConfig
from methods.splat.model import SplatModel, SplatModelConfig
from recon.config import MethodSpec
from recon.primitives import gaussian_optimizers
from recon.engine.trainer import TrainerConfig

STEPS = 30_000



def splat() -> MethodSpec:
    """The Inria / gsplat defaults: 30k steps, one image per step, positions 1.6e-4 -> 1.6e-6 (times
    the camera extent), scales 5e-3, rotations 1e-3, opacities 5e-2, SH 2.5e-3 (rest / 20)."""
    config = TrainerConfig(
        method_name="splat",
        dataparser=AutoParserConfig(),
        datamanager=ImageDataManagerConfig(),
        model=SplatModelConfig(),
        optimizers=gaussian_optimizers(STEPS),
        max_num_iterations=STEPS,
        steps_per_save=7000,
        steps_per_eval_image=1000,
    )
    tiny = {
        "model.num_random_points": 300, "model.sh_degree": 1, "model.sh_degree_interval": 5,
        "model.strategy.refine_start_iter": 10, "model.strategy.refine_every": 10, "model.strategy.reset_every": 1000,
    }
    return MethodSpec("splat", "3D Gaussian Splatting (Kerbl et al. 2023) on the shared Gaussian backend", config, test_overrides=tiny)


__all__ = ["SplatModel", "SplatModelConfig", "splat"]
