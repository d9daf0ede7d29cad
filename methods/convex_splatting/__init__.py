"""``3dcs``: 3D Convex Splatting (Held et al. 2025) as a recon method (see README.md beside this file).

Presets follow the official ``arguments/__init__.py``: ``3dcs`` is what the official ``train.py``
runs without flags (its ``adapt()`` indoor values), ``3dcs-outdoor`` its ``--outdoor`` values,
``3dcs-light`` its ``--light`` run (the argument defaults: fewer convexes), ``3dcs-indoor`` the
same as ``3dcs`` under the name the paper's tables use, and ``3dcs-small`` a CPU-sized schedule.
"""

from data.datamanager import ImageDataManagerConfig
from data.parsers import AutoParserConfig
from methods.convex_splatting.model import ConvexSplatModel, ConvexSplatModelConfig
from methods.convex_splatting.strategy import ConvexStrategy
from recon.config import MethodSpec, override
from recon.engine.optim import adam, exponential
from recon.engine.trainer import TrainerConfig

STEPS = 30_000



TINY = {
    "model.num_random_points": 300, "model.sh_degree": 1, "model.sh_degree_interval": 5,
    "model.strategy.refine_start_iter": 10, "model.strategy.refine_every": 10, "model.strategy.reset_every": 1000,
}

INDOOR = {
    "model.init_sigma": 0.0009, "model.strategy.grad_threshold": 6e-6, "model.strategy.refine_stop_iter": 9500,
    "model.strategy.split_scale": 0.7, "model.strategy.split_sigma_power": 0.85, "model.strategy.prune_mask": 0.02,
    "optimizers.points.lr": 4e-4, "optimizers.points.scheduler.lr_final": 4e-6,
}
"""The official ``adapt()`` values for every scene that is not outdoor."""


def _light() -> TrainerConfig:
    """The official argument defaults (``--light``): points 5e-4 -> 5e-6 over 30k steps, delta 5e-3,
    sigma 4.5e-3, opacity 1e-2, mask 1e-2, SH 2.5e-3 / 1.25e-4; 30k steps."""
    return TrainerConfig(
        method_name="3dcs-light",
        dataparser=AutoParserConfig(),
        datamanager=ImageDataManagerConfig(),
        model=ConvexSplatModelConfig(strategy=ConvexStrategy()),
        optimizers={
            "points": exponential(lr=5e-4, lr_final=5e-6, max_steps=STEPS),
            "delta": adam(5e-3),
            "sigma": adam(4.5e-3),
            "opacities": adam(1e-2),
            "mask": adam(1e-2),
            "sh0": adam(2.5e-3),
            "shN": adam(1.25e-4),
        },
        max_num_iterations=STEPS,
        steps_per_save=7000,
        steps_per_eval_image=1000,
    )


def convex_splatting_light() -> MethodSpec:
    return MethodSpec("3dcs-light", "3D Convex Splatting (Held et al. 2025), the official --light settings", _light(), test_overrides=TINY)


def convex_splatting() -> MethodSpec:
    """What the official code runs without flags: the argument defaults with ``adapt()``'s indoor values."""
    config = override(_light(), method_name="3dcs", **INDOOR)
    return MethodSpec("3dcs", "3D Convex Splatting (Held et al. 2025): smooth convex primitives on the shared backend", config, test_overrides=TINY)


def convex_splatting_indoor() -> MethodSpec:
    config = override(_light(), method_name="3dcs-indoor", **INDOOR)
    return MethodSpec("3dcs-indoor", "3D Convex Splatting, the official indoor values (= 3dcs)", config, test_overrides=TINY)


def convex_splatting_outdoor() -> MethodSpec:
    """``--outdoor``: sigma 0.001 initially, lr 4e-3, split threshold 1e-6, child spread 0.6. (Its
    intended opacity resets until 18k never take effect in the official code, a typo; 9k here too.)"""
    config = override(
        _light(), method_name="3dcs-outdoor",
        **{"model.init_sigma": 0.001, "optimizers.sigma.lr": 4e-3, "model.strategy.grad_threshold": 1e-6, "model.strategy.split_scale": 0.6},
    )
    return MethodSpec("3dcs-outdoor", "3D Convex Splatting, the official outdoor values", config, test_overrides=TINY)


SMALL_STEPS = 3000


def convex_splatting_small() -> MethodSpec:
    """A CPU-sized schedule: 3000 steps, every step-numbered event of the 30k schedule scaled by 1/10
    (refinement every 20 steps from 50 to 950, opacity resets at 300 and 600, the SH degree raised
    every 100 steps, the points' rate decaying over the 3000 steps), and the initial smoothness
    scaled to the image width (``delta_reference_width`` 1000), since CPU runs use small images."""
    r = SMALL_STEPS / STEPS
    config = override(
        convex_splatting().config, method_name="3dcs-small", max_num_iterations=SMALL_STEPS, steps_per_save=1000, steps_per_eval_image=250,
        **{
            "model.sh_degree_interval": round(1000 * r), "model.strategy.refine_start_iter": round(500 * r),
            "model.strategy.refine_stop_iter": round(9500 * r), "model.strategy.refine_every": round(200 * r),
            "model.strategy.prune_every_after": round(1000 * r), "model.strategy.reset_every": round(3000 * r),
            "model.strategy.reset_until": round(9000 * r), "optimizers.points.scheduler.max_steps": SMALL_STEPS,
            "model.delta_reference_width": 1000.0,
        },
    )
    return MethodSpec("3dcs-small", "3D Convex Splatting on a CPU-sized schedule (3000 steps)", config, test_overrides=TINY)


__all__ = [
    "ConvexSplatModel", "ConvexSplatModelConfig", "ConvexStrategy", "convex_splatting", "convex_splatting_indoor",
    "convex_splatting_light", "convex_splatting_outdoor", "convex_splatting_small",
]
