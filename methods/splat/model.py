"""3D Gaussian Splatting (Kerbl, Kopanas, Leimkühler, Drettakis 2023, "3D Gaussian Splatting for
Real-Time Radiance Field Rendering", ACM TOG 42(4)) on recon's Gaussian backend.

The scene is a set of anisotropic 3D Gaussians (mean, rotation quaternion, log scales, opacity
logit, spherical-harmonics colour). A training step renders one whole training image with
:func:`recon.render.gaussians.rasterization` and minimises (1 - lambda) L1 + lambda (1 - SSIM);
densification (clone / split / prune / opacity reset) is :class:`recon.render.gaussians.strategy.DefaultStrategy`
run as training hooks. Parameters follow gsplat's layout, one optimizer group per attribute.
Everything but the initialisation and the scene scale is :class:`recon.primitives.PrimitiveModel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from recon.errors import ConfigError
from recon.model import SceneInfo
from recon.primitives import PrimitiveModel, PrimitiveModelConfig, initial_points, knn_rms_distance
from recon.render.gaussians.helpers import rgb_to_sh
from recon.render.gaussians.strategy import DefaultStrategy


class SplatModel(PrimitiveModel):
    """See :class:`SplatModelConfig` and the module docstring."""

    config: "SplatModelConfig"
    multi_image_batches = True  # the base's rasterize and losses take B images (data-parallel global batches)

    def __init__(self, config: "SplatModelConfig", scene: SceneInfo):
        if not config.global_scale > 0:
            raise ConfigError(f"model.global_scale must be positive, got {config.global_scale}")
        super().__init__(config, scene)
        c = config
        means, rgb = initial_points(scene, c.init, c.num_random_points, c.init_seed)
        n = len(means)
        scales = torch.log(knn_rms_distance(means).clamp_min(1e-7) * c.init_scale)[:, None].repeat(1, 3)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        opacities = torch.logit(torch.full((n,), c.init_opacity))
        sh0 = rgb_to_sh(rgb)[:, None, :]
        shN = torch.zeros(n, (c.sh_degree + 1) ** 2 - 1, 3)
        init = {"means": means, "scales": scales, "quats": quats, "opacities": opacities, "sh0": sh0, "shN": shN}
        self.params = nn.ParameterDict({name: nn.Parameter(t.contiguous()) for name, t in init.items()})

    @property
    def rasterize_mode(self) -> str:  # type: ignore[override]
        return self.config.rasterize_mode

    @property
    def scene_scale(self) -> float:
        """3DGS's ``cameras_extent`` times ``global_scale``."""
        return self.camera_extent * self.config.global_scale

    def lr_multipliers(self) -> dict[str, float]:
        return {"means": self.scene_scale}


@dataclass
class SplatModelConfig(PrimitiveModelConfig):
    """3DGS's defaults (Inria release / gsplat ``simple_trainer``) unless noted."""

    init: Literal["sfm", "random"] = "sfm"
    """Initial Gaussians: the dataset's sparse points when it has them (else random), or random in the box."""
    num_random_points: int = 100_000
    """Number of random initial Gaussians (3DGS's synthetic-scene setting)."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    init_scale: float = 1.0
    """Factor on the initial scale (root mean square distance to the 3 nearest points)."""
    init_seed: int = 0
    """Seed of the random initialisation."""
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    """classic = 3DGS; antialiased = Mip-Splatting's opacity compensation (gsplat)."""
    global_scale: float = 1.0
    """Factor on the scene scale (gsplat's ``global_scale``): the camera extent that scales the position
    learning rate and the densification size thresholds. A few close cameras make that extent small
    against the scene (see benchmarks/RESULTS.md, fern 3 views); this corrects it."""
    strategy: DefaultStrategy = field(default_factory=DefaultStrategy)
    """Densification: clone / split / prune / opacity reset (3DGS schedule and thresholds)."""


SplatModelConfig._target = SplatModel
