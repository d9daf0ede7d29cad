"""``neus``: NeuS surface reconstruction (Wang et al. 2021) as a recon method (see README.md beside this file)."""

from data.datamanager import RayDataManagerConfig
from data.parsers import AutoParserConfig
from methods.neus.model import NeuSModel, NeuSModelConfig
from recon.config import MethodSpec, override
from recon.engine.optim import OptimizerConfig, SchedulerConfig
from recon.engine.trainer import TrainerConfig

STEPS = 300_000
WARMUP = 5_000


def _adam_cosine(lr: float, warmup_steps: int, max_steps: int) -> OptimizerConfig:
    # NeuS: Adam (torch defaults, eps 1e-8), linear warm-up then cosine decay to 0.05 x lr.
    return OptimizerConfig(lr=lr, eps=1e-8, scheduler=SchedulerConfig("cosine", warmup_steps=warmup_steps, cosine_alpha=0.05, max_steps=max_steps))


TEST_OVERRIDES = {
    "model.field.num_layers": 2, "model.field.hidden_dim": 32, "model.field.feature_dim": 16,
    "model.field.weight_norm": False, "model.field.frequencies": 4,
    "model.color_hidden_dim": 32, "model.color_num_layers": 2, "model.color_weight_norm": False,
    "model.num_samples": 16, "model.num_importance": 16, "model.up_sample_steps": 2, "model.anneal_end": 20,
    "datamanager.train_num_rays_per_batch": 64,
    "optimizers.fields.lr": 5e-3, "optimizers.fields.scheduler.warmup_steps": 0,
    "optimizers.variance.lr": 5e-3, "optimizers.variance.scheduler.warmup_steps": 0,
}


def neus() -> MethodSpec:
    """The official setting: 512 rays, 64 + 64 samples (4 up-sampling rounds), lr 5e-4 with 5k warm-up
    and cosine decay to 0.05x over 300k steps, cosine annealing over 50k steps, eikonal weight 0.1."""
    config = TrainerConfig(
        method_name="neus",
        dataparser=AutoParserConfig(),
        datamanager=RayDataManagerConfig(train_num_rays_per_batch=512),
        model=NeuSModelConfig(),
        optimizers={"fields": _adam_cosine(5e-4, WARMUP, STEPS), "variance": _adam_cosine(5e-4, WARMUP, STEPS)},
        max_num_iterations=STEPS,
        steps_per_save=5000,
        steps_per_eval_image=2500,
    )
    return MethodSpec("neus", "NeuS: SDF volume rendering with logistic opacity (Wang et al. 2021)", config, test_overrides=dict(TEST_OVERRIDES))


SMALL_STEPS = 3_000


def neus_small() -> MethodSpec:
    """A CPU-sized NeuS: 4 x 64 SDF MLP, 6 bands, 32 + 32 samples, 512 rays, 3k steps, anneal over 500."""
    base = neus().config
    config = override(
        base,
        method_name="neus-small",
        max_num_iterations=SMALL_STEPS,
        steps_per_save=1000,
        steps_per_eval_image=500,
        **{
            "model.field.num_layers": 4, "model.field.hidden_dim": 64, "model.field.skips": (),
            "model.field.feature_dim": 64, "model.field.frequencies": 6,
            "model.color_hidden_dim": 64, "model.color_num_layers": 3,
            "model.num_samples": 32, "model.num_importance": 32, "model.up_sample_steps": 4, "model.anneal_end": 500,
            "optimizers.fields": _adam_cosine(5e-3, 100, SMALL_STEPS),
            "optimizers.variance": _adam_cosine(5e-3, 100, SMALL_STEPS),
        },
    )
    return MethodSpec("neus-small", "NeuS sized for a CPU (small MLPs, 32 + 32 samples, 3k steps)", config, test_overrides=dict(TEST_OVERRIDES))


def volsdf() -> MethodSpec:
    """VolSDF (Yariv et al. 2021) as a variant of ``neus``: Laplace-CDF density with a learned beta
    (init 0.1) instead of the logistic opacity, no cosine annealing; sampling, networks, losses and
    schedules are neus's (VolSDF's error-bounded sampler is ``--model.sampler error-bounded``)."""
    base = neus()
    config = override(base.config, method_name="volsdf", **{"model.density": "volsdf", "model.anneal_end": 0})
    return MethodSpec("volsdf", "VolSDF: SDF volume rendering with a Laplace-CDF density (Yariv et al. 2021)", config, test_overrides={k: v for k, v in TEST_OVERRIDES.items() if k != "model.anneal_end"})


S3IM_WEIGHT = 1.0
"""No released NeuS value (the authors' sdfstudio port leaves it to the user); see methods/s3im/README.md."""


def neus_s3im() -> MethodSpec:
    """``neus`` plus the S3IM loss (Xie et al. 2023): 512 rays form a 64 x 80 virtual image."""
    base = neus()
    config = override(base.config, method_name="neus-s3im", **{"model.s3im.weight": S3IM_WEIGHT})
    # The tiny test batch (64 rays) satisfies the batch rule: 10 x 64 is a multiple of 64 rows.
    return MethodSpec("neus-s3im", f"{base.description}, with the S3IM loss", config, test_overrides=dict(TEST_OVERRIDES))


__all__ = ["NeuSModel", "NeuSModelConfig", "neus", "neus_s3im", "neus_small", "volsdf"]
