"""``geconerf``, ``geconerf-small`` and ``geconerf-hash``: few-shot NeRF with geometric consistency (Kwak, Song & Kim,
ICML 2023) on a mip-NeRF backbone (see README.md beside this file)."""

from typing import Any

from data.parsers import AutoParserConfig
from methods.geconerf.datamanager import GeCoNeRFDataManager, GeCoNeRFDataManagerConfig
from methods.geconerf.model import GeCoNeRFModel, GeCoNeRFModelConfig
from recon.config import MethodSpec, override
from recon.engine.optim import exponential
from recon.engine.trainer import TrainerConfig

STEPS = 85_000
"""The release's max_steps."""

TINY = {
    "model.hidden_dim": 16, "model.num_layers": 2, "model.skips": (), "model.color_hidden_dim": 8,
    "model.num_samples": 8, "model.max_deg": 4, "model.anneal_steps": 10,
    "datamanager.train_num_rays_per_batch": 64, "datamanager.patch_size": 8, "datamanager.reg_start": 2,
    "optimizers.fields.lr": 5e-3, "optimizers.fields.scheduler.warmup_steps": 0,
}
"""Config changes that train in seconds on a tiny scene (the conformance test)."""


def compressed_schedules(steps: int) -> dict[str, Any]:
    """The release's step constants (regularisation start 900, annealing 15k, weight decay 20k,
    occlusion decay 25k, pose divergence 120k, learning-rate warm-up 2500, all of 85k steps)
    scaled to a run of ``steps``."""
    s = steps / STEPS
    return {
        "max_num_iterations": steps,
        "datamanager.reg_start": round(900 * s), "datamanager.divergence_steps": round(120_000 * s),
        "model.anneal_steps": round(15_000 * s), "model.weight_decay_steps": round(20_000 * s),
        "model.occlusion_decay_steps": round(25_000 * s),
        "optimizers.fields.scheduler.max_steps": steps, "optimizers.fields.scheduler.warmup_steps": round(2500 * s),
    }


def geconerf() -> MethodSpec:
    """The release's settings: 3 input views, 1024 rays, mip-NeRF with 2 x 128 samples, 16 IPE
    bands annealed over 15k steps, Adam 5e-4 -> 5e-6 over 85k steps after a 2500-step warm-up
    from 5e-6, a 120-pixel patch rendered at stride 2 every 2nd step from step 900."""
    optimizer = exponential(lr=5e-4, lr_final=5e-6, max_steps=STEPS, eps=1e-8, warmup_steps=2500)
    optimizer.scheduler.lr_pre_warmup = 5e-6
    config = TrainerConfig(
        method_name="geconerf",
        dataparser=AutoParserConfig(),
        num_train_views=3,
        datamanager=GeCoNeRFDataManagerConfig(train_num_rays_per_batch=1024),
        model=GeCoNeRFModelConfig(),
        optimizers={"fields": optimizer},
        max_num_iterations=STEPS,
        steps_per_save=5000,
        steps_per_eval_image=2500,
    )
    return MethodSpec("geconerf", "GeCoNeRF: few-shot mip-NeRF with geometry-aware feature consistency on unobserved poses (Kwak et al. 2023)", config, test_overrides=TINY)


SMALL_STEPS = 3000


def geconerf_small() -> MethodSpec:
    """geconerf sized for a CPU: a 4 x 128 trunk (skip after layer 2), 12 IPE bands, 2 x 32 samples,
    512 rays, a 32-pixel patch at stride 2 (16 x 16 rays), Adam 5e-3 -> 5e-5, and every step
    constant of the release scaled to 3000 steps (:func:`compressed_schedules`)."""
    config = override(
        geconerf().config,
        method_name="geconerf-small",
        steps_per_save=1000,
        steps_per_eval_image=500,
        **{
            "model.hidden_dim": 128, "model.num_layers": 4, "model.skips": (2,), "model.color_hidden_dim": 64,
            "model.max_deg": 12, "model.num_samples": 32,
            "datamanager.train_num_rays_per_batch": 512, "datamanager.patch_size": 32,
            "optimizers.fields.lr": 5e-3, "optimizers.fields.scheduler.lr_final": 5e-5, "optimizers.fields.scheduler.lr_pre_warmup": 5e-5,
            **compressed_schedules(SMALL_STEPS),
        },
    )
    return MethodSpec("geconerf-small", "geconerf sized to train in minutes on a CPU", config, test_overrides=TINY)


HASH_TINY = {**TINY, "model.field": "hash", "model.hash_num_levels": 4, "model.hash_max_res": 32, "model.hash_log2_hashmap_size": 12, "model.hash_hidden_dim": 16}
"""Config changes that train ``geconerf-hash`` in seconds on a tiny scene."""


def geconerf_hash() -> MethodSpec:
    """``geconerf-small`` with the hash-grid backbone (:class:`recon.fields.hash_field.AnnealedHashField`):
    16 levels up to 512 cells per axis, 2^17 entries per level, 64-wide MLPs, the levels enabled
    coarse-to-fine over the annealing window that anneals the mip-NeRF bands; Adam 1e-2 -> 1e-4
    (hash tables want instant-ngp's larger steps), everything else as ``geconerf-small``."""
    config = override(
        geconerf_small().config,
        method_name="geconerf-hash",
        **{
            "model.field": "hash", "model.hash_num_levels": 16, "model.hash_max_res": 512, "model.hash_log2_hashmap_size": 17,
            "model.hash_hidden_dim": 64,
            "optimizers.fields.lr": 1e-2, "optimizers.fields.scheduler.lr_final": 1e-4, "optimizers.fields.scheduler.lr_pre_warmup": 1e-4,
            "optimizers.fields.eps": 1e-15,
        },
    )
    return MethodSpec("geconerf-hash", "geconerf-small on a hash grid whose levels are annealed coarse-to-fine", config, test_overrides=HASH_TINY)


__all__ = [
    "GeCoNeRFDataManager", "GeCoNeRFDataManagerConfig", "GeCoNeRFModel", "GeCoNeRFModelConfig",
    "compressed_schedules", "geconerf", "geconerf_hash", "geconerf_small",
]
