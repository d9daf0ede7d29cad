"""``coherentgs``: CoherentGS (Paliwal et al. 2024) as a recon method (see README.md beside this file)."""

from typing import Any

from data.parsers import AutoParserConfig
from methods.coherentgs.model import CoherentGSModel, CoherentGSModelConfig
from methods.coherentgs.views import CoherentGSDataManager, CoherentGSDataManagerConfig
from recon.config import MethodSpec
from recon.engine.optim import OptimizerConfig, SchedulerConfig, adam
from recon.engine.trainer import TrainerConfig

STEPS = 13_000
"""Training steps after the alignment (official: iterations 7001-20 000)."""



def _cyclic(max_lr: float, step_size_up: int) -> OptimizerConfig:
    """AdamW (PyTorch defaults: weight decay 0.01, eps 1e-8) with CyclicLR triangular2 from 1e-6."""
    return OptimizerConfig(lr=max_lr, eps=1e-8, weight_decay=0.01, scheduler=SchedulerConfig("cyclic", cyclic_min_lr=1e-6, cyclic_step_size_up=step_size_up))


def short_schedule(steps: int, lr_factor: float = 1.0) -> dict[str, Any]:
    """Overrides that compress the official 13k-step schedule to ``steps`` (every step-numbered
    event scaled by steps / 13 000) and multiply every learning rate by ``lr_factor``: for CPU runs
    of a few hundred steps, where the official rates would barely move the decoders [ours]."""
    r = steps / STEPS
    at = lambda n: max(1, round(n * r))  # noqa: E731
    base = coherentgs().config.optimizers
    return {
        "max_num_iterations": steps, "model.scale_reset_until": at(8000), "model.scale_reset_every": at(100),
        "model.sh_degree_start": at(8000), "model.sh_degree_interval": at(1000), "model.multisample_start": at(5000),
        "model.tv_ramp_steps": steps, "optimizers.depth_decoder.scheduler.cyclic_step_size_up": at(1000),
        "optimizers.opacity_decoder.scheduler.cyclic_step_size_up": at(2000),
        **{f"optimizers.{name}.lr": cfg.lr * lr_factor for name, cfg in base.items()},
    }


def coherentgs() -> MethodSpec:
    """The official schedule: 13k steps after 1000 alignment steps; decoders AdamW with cyclic rates
    (depth 1e-6..1e-4 every 1000 steps up, opacity 1e-6..1e-5 every 2000), radii 1e-4, rotations
    1e-5, SH DC 5e-4 (trained here, frozen in the released code), SH rest 5e-5."""
    config = TrainerConfig(
        method_name="coherentgs",
        dataparser=AutoParserConfig(),
        datamanager=CoherentGSDataManagerConfig(),
        model=CoherentGSModelConfig(),
        optimizers={
            "depth_decoder": _cyclic(1e-4, 1000),
            "opacity_decoder": _cyclic(1e-5, 2000),
            "scales": adam(1e-4),
            "quats": adam(1e-5),
            "sh0": adam(5e-4),
            "shN": adam(5e-5),
        },
        max_num_iterations=STEPS,
        steps_per_save=2000,
        steps_per_eval_image=1000,
    )
    tiny = {
        "datamanager.align_steps": 20, "model.depth_decoder_width": 2, "model.opacity_decoder_width": 2, "model.sh_degree": 1,
        "model.sh_degree_start": 10, "model.sh_degree_interval": 5, "model.scale_reset_every": 5, "model.scale_reset_until": 20,
        "model.multisample_start": 15, "model.multisample_max": 2, "model.tv_ramp_steps": 30,
        "optimizers.sh0.lr": 1e-2, "optimizers.depth_decoder.scheduler.cyclic_step_size_up": 10,
        "optimizers.opacity_decoder.scheduler.cyclic_step_size_up": 10,
    }
    return MethodSpec("coherentgs", "CoherentGS (Paliwal et al. 2024): sparse-view Gaussians, one per input pixel, with decoders, flow and TV", config, test_overrides=tiny)


__all__ = ["short_schedule", "CoherentGSDataManager", "CoherentGSDataManagerConfig", "CoherentGSModel", "CoherentGSModelConfig", "coherentgs"]
