"""``mesh-gs``: mesh-bound Gaussians (Gao et al. 2024) as a recon method (see README.md beside this file).

``mesh-gs`` follows the official ``train_mesh_gaussian.py`` (30k steps, 3DGS's learning rates, the
position schedule on the barycentric and offset logits, face splits every 200 steps from 500 to
15000); ``mesh-gs-small`` is a CPU-sized schedule.
"""

from data.datamanager import ImageDataManagerConfig
from data.parsers import AutoParserConfig
from methods.mesh_gs.model import MeshGSModel, MeshGSModelConfig
from methods.mesh_gs.strategy import FaceSplitStrategy
from recon.config import MethodSpec, override
from recon.primitives import gaussian_optimizers
from recon.engine.trainer import TrainerConfig

STEPS = 30_000

TINY = {
    "model.max_dataset_mesh_faces": 150, "model.init_min_gaussians": 150, "model.sh_degree": 1, "model.sh_degree_interval": 5,
    "model.strategy.refine_start_iter": 10, "model.strategy.refine_every": 10, "model.strategy.reset_every": 1000,
}


def mesh_gs() -> MethodSpec:
    """Barycentric and offset logits 1.6e-4 -> 1.6e-6 (times the camera extent), scales 5e-3,
    rotations 1e-3, opacities 5e-2, SH 2.5e-3 (rest / 20); 30k steps. The background Gaussians
    (``--model.background-stage-start``) have 3DGS's groups, ``bg_means`` ... ``bg_shN``."""
    config = TrainerConfig(
        method_name="mesh-gs",
        dataparser=AutoParserConfig(),
        datamanager=ImageDataManagerConfig(),
        model=MeshGSModelConfig(),
        optimizers={**gaussian_optimizers(STEPS, positions=("bary", "offset")),
                    **{f"bg_{k}": v for k, v in gaussian_optimizers(STEPS).items()}},
        max_num_iterations=STEPS,
        steps_per_save=7000,
        steps_per_eval_image=1000,
    )
    return MethodSpec("mesh-gs", "Mesh-bound Gaussians with mesh-driven deformation (Gao et al. 2024) on the shared Gaussian backend",
                      config, test_overrides=TINY)


SMALL_STEPS = 3000


def mesh_gs_small() -> MethodSpec:
    """A CPU-sized schedule: 3000 steps, every step-numbered event of the 30k schedule scaled by 1/10
    (face splits every 20 steps from 50 to 1500, opacity resets at 300, 600, ..., the SH degree
    raised every 100 steps, the logits' rate decaying over the 3000 steps), at least 20k initial
    Gaussians, at most 300k (face splits multiply the count by up to 5 at every refinement), and a
    dataset mesh decimated to 5000 faces."""
    r = SMALL_STEPS / STEPS
    config = override(
        mesh_gs().config, method_name="mesh-gs-small", max_num_iterations=SMALL_STEPS, steps_per_save=1000, steps_per_eval_image=250,
        **{
            "model.sh_degree_interval": round(1000 * r), "model.strategy.refine_start_iter": round(500 * r),
            "model.strategy.refine_stop_iter": round(15_000 * r), "model.strategy.refine_every": round(200 * r),
            "model.strategy.reset_every": round(3000 * r), "model.strategy.max_gaussians": 300_000,
            "model.init_min_gaussians": 20_000, "model.max_dataset_mesh_faces": 5000,
            "optimizers.bary.scheduler.max_steps": SMALL_STEPS, "optimizers.offset.scheduler.max_steps": SMALL_STEPS,
            "optimizers.bg_means.scheduler.max_steps": SMALL_STEPS,
            "model.background_strategy.refine_start_iter": round(500 * r), "model.background_strategy.refine_stop_iter": round(15_000 * r),
            "model.background_strategy.refine_every": round(500 * r), "model.background_strategy.reset_every": round(3000 * r),
            "model.background_prune_steps": (round(1000 * r), round(10_000 * r)),
        },
    )
    return MethodSpec("mesh-gs-small", "Mesh-bound Gaussians on a CPU-sized schedule (3000 steps)", config, test_overrides=TINY)


__all__ = ["FaceSplitStrategy", "MeshGSModel", "MeshGSModelConfig", "mesh_gs", "mesh_gs_small"]
