"""``orex``, ``orex-small`` and ``orex-official``: shapes from planar cross-sections (see README.md beside this file)."""

from data.parsers import AutoParserConfig
from methods.orex.model import OReXModel, OReXModelConfig
from methods.orex.sampling import CrossSectionDataManager, CrossSectionDataManagerConfig
from recon.config import MethodSpec, override
from recon.engine.optim import OptimizerConfig, SchedulerConfig
from recon.engine.trainer import TrainerConfig

# The official schedule: lr 1e-2, x0.9 every 10 epochs over 650 epochs (64 decays) ~ x1.2e-3 overall.
STEPS = 7800
TEST_OVERRIDES = {
    "model.num_iterations": 2, "model.float64": False, "datamanager.batch_size": 512,
    "datamanager.steps_per_level": (5, 5, 5, 5, 5, 5), "datamanager.plane_noise_points": 64, "datamanager.hull_points": 256,
}


def orex_official() -> MethodSpec:
    """The official configuration (T = 10, float64, batch 2^14, ~8k steps over 6 levels; hours on a CPU)."""
    config = TrainerConfig(
        method_name="orex-official",
        dataparser=AutoParserConfig(),
        datamanager=CrossSectionDataManagerConfig(),
        model=OReXModelConfig(),
        optimizers={"fields": OptimizerConfig(lr=1e-2, weight_decay=1e-3, scheduler=SchedulerConfig("exponential", lr_final=1.2e-5, max_steps=STEPS))},
        max_num_iterations=STEPS,
        steps_per_save=1000,
        steps_per_eval_image=0,
    )
    return MethodSpec(
        "orex-official", "OReX with the official code's schedule and float64 network (hours on a CPU)", config,
        inputs="cross-sections", test_overrides=TEST_OVERRIDES,
    )


SMALL_STEPS = (300, 300, 500, 500, 600, 800)
"""``orex-small``: the six levels in 3000 steps (issue 32: at 600 steps thin parts did not reproduce their contours)."""
STEPS_CPU = tuple(3 * s for s in SMALL_STEPS)
"""``orex``: the six levels in 9000 steps; at 3000 the field had not converged on the shapes with
many planes and thin parts (lamp004_fixed on-plane IoU 0.970 -> 0.984, README "Presets")."""
FAST = {
    "model.num_iterations": 3,
    "model.frequency_bands": 4,
    "model.float64": False,
    "model.gradient_hinge_points": 512,
    "datamanager.batch_size": 4096,
    "datamanager.steps_per_level": STEPS_CPU,
    "datamanager.plane_noise_points": 1024,
    "datamanager.hull_points": 8192,
    "datamanager.balance_planes": True,
    "max_num_iterations": sum(STEPS_CPU),
    "optimizers.fields.scheduler.max_steps": sum(STEPS_CPU),
    "optimizers.fields.scheduler.lr_final": 1e-3,
}
"""What makes ``orex`` converge in CPU minutes (README "Presets"): 3 refinement steps instead of 10,
4 frequency bands instead of 5 (smoother between planes: balloondog volume IoU 0.939 -> 0.961),
float32, the hinge on 512 points of each batch, batches of 4096 with every plane equally
represented, 9000 steps with the learning rate decaying 1e-2 -> 1e-3."""


def orex() -> MethodSpec:
    """The paper's recurrent network (7 x 64, the gradient hinge) with 3 refinement steps on a
    schedule that converges in about 10 CPU minutes (:data:`FAST`); at equal time 3 steps trained
    3x longer beat 10 (README "Presets"). ``orex-official`` keeps the official configuration."""
    config = override(orex_official().config, method_name="orex", **FAST)
    return MethodSpec(
        "orex", "OReX: shape from planar cross-sections with a recurrent occupancy field (Sawdayee et al. 2023)", config,
        inputs="cross-sections", test_overrides=TEST_OVERRIDES,
    )


def orex_small() -> MethodSpec:
    """``orex`` in a third of the steps (3000): a few CPU minutes."""
    steps = {"datamanager.steps_per_level": SMALL_STEPS, "max_num_iterations": sum(SMALL_STEPS), "optimizers.fields.scheduler.max_steps": sum(SMALL_STEPS)}
    config = override(orex().config, method_name="orex-small", **steps)
    return MethodSpec("orex-small", "OReX in 3000 steps: a few CPU minutes", config, inputs="cross-sections", test_overrides=TEST_OVERRIDES)


__all__ = ["CrossSectionDataManager", "OReXModel", "orex", "orex_official", "orex_small"]
