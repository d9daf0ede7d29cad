"""``objectsdf``: ObjectSDF++ (Wu et al. 2023), object-compositional SDFs from instance masks (see
README.md beside this file)."""

from data.datamanager import RayDataManagerConfig
from data.parsers import AutoParserConfig
from methods.objectsdf.model import ObjectSDFField, ObjectSDFModel, ObjectSDFModelConfig
from recon.config import MethodSpec, override
from recon.engine.optim import OptimizerConfig, SchedulerConfig
from recon.engine.trainer import TrainerConfig

STEPS = 200_000


def _adam_exponential(lr: float, max_steps: int) -> OptimizerConfig:
    # ObjectSDF++ / MonoSDF: Adam beta (0.9, 0.99), eps 1e-15, exponential decay to 0.1 x lr at the end.
    return OptimizerConfig(lr=lr, eps=1e-15, betas=(0.9, 0.99), scheduler=SchedulerConfig("exponential", lr_final=0.1 * lr, max_steps=max_steps))


TEST_OVERRIDES = {
    "model.field.num_layers": 2, "model.field.hidden_dim": 32, "model.field.feature_dim": 16,
    "model.field.weight_norm": False, "model.field.frequencies": 4,
    "model.color_hidden_dim": 32, "model.color_num_layers": 2, "model.color_weight_norm": False,
    "model.error_bound.num_init": 16, "model.error_bound.num_add": 16, "model.error_bound.max_iters": 2,
    "model.error_bound.num_final": 16, "model.error_bound.num_extra": 8, "model.num_uniform_points": 64,
    "datamanager.train_num_rays_per_batch": 64,
    "optimizers.fields.lr": 5e-3, "optimizers.variance.lr": 5e-3,
}


def objectsdf() -> MethodSpec:
    """The official MLP setting (``scannet_objsdfplus_mlp.conf``): 1024 rays, lr 5e-4 with exponential
    decay to 0.1x over 200k steps, opacity 0.5, distinction 0.1 from the start, eikonal 0.05, smoothness 0.005."""
    config = TrainerConfig(
        method_name="objectsdf",
        dataparser=AutoParserConfig(),
        datamanager=RayDataManagerConfig(train_num_rays_per_batch=1024, load_instances=True, load_cues=True),
        model=ObjectSDFModelConfig(),
        optimizers={"fields": _adam_exponential(5e-4, STEPS), "variance": _adam_exponential(5e-4, STEPS)},
        max_num_iterations=STEPS,
        steps_per_save=5000,
        steps_per_eval_image=2500,
    )
    return MethodSpec("objectsdf", "ObjectSDF++: object-compositional SDFs from instance masks (Wu et al. 2023)", config,
                      test_overrides=dict(TEST_OVERRIDES))


SMALL_STEPS = 3_000


def objectsdf_small() -> MethodSpec:
    """A CPU-sized ObjectSDF++: 4 x 64 SDF MLP, 6 bands, 512 rays, 256 uniform points, 3k steps; the
    error-bounded sampler with 64 initial samples, up to 2 x 32 added, 32 + 16 + 2 final (50 per ray)."""
    base = objectsdf().config
    config = override(
        base,
        method_name="objectsdf-small",
        max_num_iterations=SMALL_STEPS,
        steps_per_save=1000,
        steps_per_eval_image=500,
        **{
            "datamanager.train_num_rays_per_batch": 512,
            "model.field.num_layers": 4, "model.field.hidden_dim": 64, "model.field.skips": (),
            "model.field.feature_dim": 64, "model.field.frequencies": 6,
            "model.color_hidden_dim": 64, "model.color_num_layers": 3,
            "model.error_bound.num_init": 64, "model.error_bound.num_add": 32, "model.error_bound.max_iters": 3,
            "model.error_bound.num_final": 32, "model.error_bound.num_extra": 16, "model.num_uniform_points": 256,
            "optimizers.fields": _adam_exponential(5e-3, SMALL_STEPS),
            "optimizers.variance": _adam_exponential(5e-3, SMALL_STEPS),
        },
    )
    return MethodSpec("objectsdf-small", "ObjectSDF++ sized for a CPU (small MLPs, 50 samples per ray, 3k steps)", config,
                      test_overrides=dict(TEST_OVERRIDES))


__all__ = ["ObjectSDFField", "ObjectSDFModel", "ObjectSDFModelConfig", "objectsdf", "objectsdf_small"]
