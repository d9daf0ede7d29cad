"""A third-party method plugin used by the tests: a sphere SDF whose radius is learned.

Registered through ``RECON_METHODS="test-sphere=sphere_sdf_method:spec"`` with this folder on
PYTHONPATH, exactly as an external package would register through the entry-point group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from data.datamanager import RayDataManagerConfig
from data.parsers import AutoParserConfig
from recon.config import MethodSpec
from recon.engine.optim import OptimizerConfig
from recon.engine.trainer import TrainerConfig
from recon.model import Export, Model, ModelConfig, SceneInfo


class SphereModel(Model):
    exports = frozenset({Export.MARCHING_CUBES})

    def __init__(self, config: "SphereModelConfig", scene: SceneInfo):
        super().__init__(config, scene)
        self.radius = nn.Parameter(torch.tensor(0.2))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"fields": [self.radius]}

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"radius": self.radius}

    def losses(self, batch, outputs, step):
        return {"radius": (outputs["radius"] - self.config.target_radius) ** 2}

    def sdf(self, points: Tensor) -> Tensor:
        return points.norm(dim=-1) - self.radius


@dataclass
class SphereModelConfig(ModelConfig):
    """A sphere at the origin."""

    target_radius: float = 0.5
    """Radius the model learns."""


SphereModelConfig._target = SphereModel


def spec() -> MethodSpec:
    config = TrainerConfig(
        method_name="test-sphere",
        dataparser=AutoParserConfig(),
        datamanager=RayDataManagerConfig(train_num_rays_per_batch=8),
        model=SphereModelConfig(),
        optimizers={"fields": OptimizerConfig(lr=0.05)},
        max_num_iterations=300,
        steps_per_eval_image=0,
        eval_at_end=False,
    )
    return MethodSpec("test-sphere", "test plugin: a learned sphere SDF", config)
