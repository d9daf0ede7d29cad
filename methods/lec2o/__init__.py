"""``lec2o`` and ``lec2o-small``: LeC2O-NeRF (Mi & Xu 2024), a learned occupancy gate with a large
scene network and a small empty-space network (see README.md beside this file)."""

from data.datamanager import RayDataManagerConfig
from data.parsers import AutoParserConfig
from methods.lec2o.model import Lec2oModel, Lec2oModelConfig
from recon.config import MethodSpec, override
from recon.engine.optim import exponential
from recon.engine.trainer import TrainerConfig

STEPS = 30_000

TEST_OVERRIDES = {
    "model.num_levels": 4, "model.max_res": 64, "model.log2_hashmap_size": 12,
    "model.hidden_dim": 16, "model.color_hidden_dim": 16, "model.appearance_dim": 4,
    "model.gate_num_levels": 2, "model.gate_max_res": 32, "model.gate_log2_hashmap_size": 10, "model.gate_hidden_dim": 16,
    "model.num_samples": 16, "model.subdivisions": 2, "datamanager.train_num_rays_per_batch": 128,
}
"""Config changes that train in seconds on a tiny scene (the conformance test); they turn point
sampling on so that the conformance run covers it."""


def lec2o() -> MethodSpec:
    """The scene network at nerfacto's size (16 levels to 2048, T = 2^19, appearance 32, contraction),
    4096 rays, 128 samples per ray of which the gate aims to pass a quarter, Adam 1e-2 -> 1e-4 for the
    fields and the gate, 30k steps (nerfacto's schedule; the paper's is unknown)."""
    config = TrainerConfig(
        method_name="lec2o",
        dataparser=AutoParserConfig(),
        datamanager=RayDataManagerConfig(train_num_rays_per_batch=4096),
        model=Lec2oModelConfig(),
        optimizers={
            "fields": exponential(lr=1e-2, lr_final=1e-4, max_steps=STEPS, eps=1e-15),
            "occupancy": exponential(lr=1e-2, lr_final=1e-4, max_steps=STEPS, eps=1e-15),
        },
        max_num_iterations=STEPS,
        steps_per_save=2000,
        steps_per_eval_image=500,
    )
    return MethodSpec("lec2o", "LeC2O-NeRF: learned occupancy gate routing to a large scene and a small empty-space network", config, test_overrides=TEST_OVERRIDES)


def lec2o_small() -> MethodSpec:
    """A CPU-sized variant with nerf-hash-small's scene network (8 levels to 256, T = 2^15, bounded
    box, no contraction), 512 rays, 64 samples per ray, 3k steps, final learning rate 3e-3."""
    steps = 3000
    config = override(
        lec2o().config,
        method_name="lec2o-small",
        max_num_iterations=steps,
        **{
            "model.num_levels": 8, "model.max_res": 256, "model.log2_hashmap_size": 15, "model.contraction": "none",
            "model.num_samples": 64, "model.gate_num_levels": 4, "model.gate_max_res": 64, "model.gate_log2_hashmap_size": 12,
            "datamanager.train_num_rays_per_batch": 512,
            "optimizers.fields.scheduler.max_steps": steps, "optimizers.fields.scheduler.lr_final": 3e-3,
            "optimizers.occupancy.scheduler.max_steps": steps, "optimizers.occupancy.scheduler.lr_final": 3e-3,
        },
    )
    return MethodSpec("lec2o-small", "lec2o scaled down to train interactively on a CPU", config, test_overrides=TEST_OVERRIDES)


__all__ = ["TEST_OVERRIDES", "Lec2oModel", "Lec2oModelConfig", "lec2o", "lec2o_small"]
