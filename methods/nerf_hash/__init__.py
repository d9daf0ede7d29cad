"""``nerf-hash`` and ``nerf-hash-small``: hash-grid NeRF with proposal sampling (nerfacto recipe)."""

from data.datamanager import RayDataManagerConfig
from data.parsers import AutoParserConfig
from methods.nerf_hash.model import NerfHashModel, NerfHashModelConfig
from recon.config import MethodSpec, override
from recon.engine.optim import OptimizerConfig, SchedulerConfig
from recon.engine.trainer import TrainerConfig

STEPS = 30_000


def _adam(steps: int) -> OptimizerConfig:
    return OptimizerConfig(lr=1e-2, eps=1e-15, scheduler=SchedulerConfig("exponential", lr_final=1e-4, max_steps=steps))


TEST_OVERRIDES = {
    "model.num_proposal_samples": (16,), "model.proposal_max_res": (32,), "model.num_nerf_samples": 8,
    "model.num_levels": 4, "model.max_res": 64, "model.log2_hashmap_size": 12, "model.proposal_log2_hashmap_size": 10,
    "model.hidden_dim": 16, "model.color_hidden_dim": 16, "model.appearance_dim": 4,
    "datamanager.train_num_rays_per_batch": 128,
}


def nerf_hash() -> MethodSpec:
    """nerfacto's settings: 4096 rays, 256/96 proposal + 48 field samples, Adam 1e-2 -> 1e-4."""
    config = TrainerConfig(
        method_name="nerf-hash",
        dataparser=AutoParserConfig(),
        datamanager=RayDataManagerConfig(train_num_rays_per_batch=4096),
        model=NerfHashModelConfig(),
        optimizers={"proposal_networks": _adam(STEPS), "fields": _adam(STEPS)},
        max_num_iterations=STEPS,
        steps_per_save=2000,
        steps_per_eval_image=500,
    )
    return MethodSpec("nerf-hash", "Hash-grid NeRF with proposal sampling (nerfacto recipe: instant-ngp + mip-NeRF 360)", config, test_overrides=TEST_OVERRIDES)


def nerf_hash_small() -> MethodSpec:
    """A CPU-sized variant: smaller grids, fewer samples and rays, bounded scene (no contraction)."""
    steps = 3000
    config = override(
        nerf_hash().config,
        method_name="nerf-hash-small",
        max_num_iterations=steps,
        **{
            "model.num_proposal_samples": (64,), "model.proposal_max_res": (64,), "model.num_nerf_samples": 32,
            "model.num_levels": 8, "model.max_res": 256, "model.log2_hashmap_size": 15, "model.proposal_log2_hashmap_size": 13,
            "model.contraction": "none", "model.spacing": "linear",
            "datamanager.train_num_rays_per_batch": 1024,
            "optimizers.proposal_networks.scheduler.max_steps": steps, "optimizers.fields.scheduler.max_steps": steps,
        },
    )
    return MethodSpec("nerf-hash-small", "nerf-hash scaled down to train interactively on a CPU", config, test_overrides=TEST_OVERRIDES)


__all__ = ["NerfHashModel", "NerfHashModelConfig", "nerf_hash", "nerf_hash_small"]
