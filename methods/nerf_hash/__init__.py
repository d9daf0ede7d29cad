"""``nerf-hash`` and ``nerf-hash-small``: hash-grid NeRF with proposal sampling (nerfacto recipe);
``instant-ngp``: the same field sampled through an occupancy grid (instant-ngp recipe)."""

from data.datamanager import RayDataManagerConfig
from data.parsers import AutoParserConfig
from methods.nerf_hash.model import NerfHashModel, NerfHashModelConfig
from recon.config import MethodSpec, override
from recon.engine.optim import OptimizerConfig, SchedulerConfig
from recon.engine.trainer import TrainerConfig

STEPS = 30_000


def _adam(steps: int) -> OptimizerConfig:
    return OptimizerConfig(lr=1e-2, eps=1e-15, scheduler=SchedulerConfig("exponential", lr_final=1e-4, max_steps=steps))


_TINY_FIELD = {
    "model.num_levels": 4, "model.max_res": 64, "model.log2_hashmap_size": 12,
    "model.hidden_dim": 16, "model.color_hidden_dim": 16, "model.appearance_dim": 4,
    "datamanager.train_num_rays_per_batch": 128,
}
TEST_OVERRIDES = {
    **_TINY_FIELD, "model.num_proposal_samples": (16,), "model.proposal_max_res": (32,), "model.num_nerf_samples": 8,
    "model.proposal_log2_hashmap_size": 10,
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


_CPU_FIELD = {
    "model.num_levels": 8, "model.max_res": 256, "model.log2_hashmap_size": 15, "model.contraction": "none",
    "datamanager.train_num_rays_per_batch": 512, "optimizers.fields.scheduler.lr_final": 3e-3,
}
"""nerf-hash-small's field, ray batch, bounded box and short-schedule final learning rate."""


def nerf_hash_small() -> MethodSpec:
    """A CPU-sized variant: 8 levels to 256 and T = 2^15, one proposal network (32 samples) and 16
    field samples per ray, 512 rays, bounded scene (no contraction), 3k steps. Chosen on lego at
    100x100 (benchmarks/bench_nerf_hash.py): the short schedule needs a final learning rate of
    3e-3 (1e-4 as in nerfacto stalls it: 21.5 vs 24.3 dB after 600 steps) and proposal annealing
    over 200 steps."""
    steps = 3000
    config = override(
        nerf_hash().config,
        method_name="nerf-hash-small",
        max_num_iterations=steps,
        **_CPU_FIELD,
        **{
            "model.num_proposal_samples": (32,), "model.proposal_max_res": (64,), "model.num_nerf_samples": 16,
            "model.proposal_log2_hashmap_size": 13, "model.spacing": "linear", "model.proposal_anneal_steps": 200,
            "optimizers.proposal_networks.scheduler.max_steps": steps, "optimizers.fields.scheduler.max_steps": steps,
            "optimizers.proposal_networks.scheduler.lr_final": 3e-3,
        },
    )
    return MethodSpec("nerf-hash-small", "nerf-hash scaled down to train interactively on a CPU", config, test_overrides=TEST_OVERRIDES)


def instant_ngp() -> MethodSpec:
    """nerfstudio's ``instant-ngp`` (Müller et al. 2022 as nerfstudio runs it): the nerf-hash field
    (16 levels to 2048, T = 2^19, contraction) sampled through a 4-level 128^3 occupancy grid with
    a step of the scene-box diagonal / 1000, cone angle 0.004, alpha threshold 0.01, near plane
    0.05; 4096 rays, 8192 rays per rendering chunk, Adam 1e-2 -> 1e-4 over 200k steps, 30k steps.
    The sampler settings are the model config's defaults; methods/nerf_hash/README.md lists them
    and the departures."""
    config = override(
        nerf_hash().config,
        method_name="instant-ngp",
        optimizers={"fields": _adam(200_000)},
        **{"model.sampler": "occupancy", "model.eval_num_rays_per_chunk": 8192},
    )
    # A coarse one-level grid and long steps keep the conformance run to seconds.
    test_overrides = {**_TINY_FIELD, "model.grid_resolution": 16, "model.grid_levels": 1, "model.render_step_size": 0.02}
    return MethodSpec("instant-ngp", "Hash-grid NeRF with occupancy-grid sampling (instant-ngp recipe, as in nerfstudio)", config, test_overrides=test_overrides)


INSTANT_NGP_CPU = {**_CPU_FIELD, "model.grid_levels": 1, "model.grid_resolution": 32, "model.occ_thre": 1e-3}
"""Overrides that size ``instant-ngp`` like nerf-hash-small, for CPU tests and benchmarks (no preset of
its own): nerf-hash-small's field, 512 rays and final learning rate, a one-level 32^3 grid over
the bounded box, and an occupancy threshold of 1e-3 instead of 1e-2, which a short schedule needs
(methods/nerf_hash/README.md)."""


S3IM_WEIGHT = 1.0
"""The S3IM release's weight for its radiance-field backbones (TensoRF and DVGO); see methods/s3im/README.md."""


def nerf_hash_s3im() -> MethodSpec:
    """``nerf-hash`` plus the S3IM loss (Xie et al. 2023): 4096 rays form a 64 x 640 virtual image, as released."""
    base = nerf_hash()
    config = override(base.config, method_name="nerf-hash-s3im", **{"model.s3im.weight": S3IM_WEIGHT})
    # The tiny test batch (128 rays) satisfies the batch rule: 10 x 128 is a multiple of 64 rows.
    return MethodSpec("nerf-hash-s3im", f"{base.description}, with the S3IM loss", config, test_overrides=TEST_OVERRIDES)


__all__ = ["INSTANT_NGP_CPU", "NerfHashModel", "NerfHashModelConfig", "instant_ngp", "nerf_hash", "nerf_hash_s3im", "nerf_hash_small"]
