"""3D Gaussian Splatting (Kerbl, Kopanas, Leimkühler, Drettakis 2023, "3D Gaussian Splatting for
Real-Time Radiance Field Rendering", ACM TOG 42(4)) on recon's Gaussian backend.

The scene is a set of anisotropic 3D Gaussians (mean, rotation quaternion, log scales, opacity
logit, spherical-harmonics colour). A training step renders one whole training image with
:func:`recon.render.gaussians.rasterization` and minimises (1 - lambda) L1 + lambda (1 - SSIM);
densification (clone / split / prune / opacity reset) is :class:`recon.render.gaussians.strategy.DefaultStrategy`
run as training hooks. Parameters follow gsplat's layout, one optimizer group per attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.cameras import Cameras
from recon.engine.callbacks import Callback, Where
from recon.errors import ConfigError
from recon.image_metrics import ssim
from recon.model import Export, Model, ModelConfig, Output, SceneInfo
from recon.render.gaussians import rasterization
from recon.render.gaussians.helpers import camera_matrices, rgb_to_sh
from recon.render.gaussians.strategy import DefaultStrategy

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")
STRATEGY_PREFIX = "strategy_state."


def knn_mean_distance(points: Tensor, k: int = 3, chunk: int = 4096) -> Tensor:
    """Mean distance of each point [N, 3] to its k nearest other points (3DGS's initial scale)."""
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    if len(pts) <= 1:
        return torch.ones(len(pts), dtype=points.dtype, device=points.device)
    dist, _ = cKDTree(pts).query(pts, k=min(k, len(pts) - 1) + 1)
    mean = np.sqrt((dist[:, 1:] ** 2).mean(-1))
    return torch.as_tensor(mean, dtype=points.dtype, device=points.device)


class SplatModel(Model):
    """See :class:`SplatModelConfig` and the module docstring."""

    config: "SplatModelConfig"
    exports = frozenset({Export.GAUSSIAN_SPLAT, Export.TSDF, Export.POINTCLOUD})

    def __init__(self, config: "SplatModelConfig", scene: SceneInfo):
        super().__init__(config, scene)
        c = config
        if not c.global_scale > 0:
            raise ConfigError(f"model.global_scale must be positive, got {c.global_scale}")
        generator = torch.Generator().manual_seed(c.init_seed)
        if scene.points3d is not None and len(scene.points3d) > 0 and c.init == "sfm":
            means = torch.as_tensor(np.asarray(scene.points3d), dtype=torch.float32)
            rgb = torch.as_tensor(np.asarray(scene.points3d_rgb), dtype=torch.float32) / 255.0
        else:
            lo, hi = scene.aabb[0].float(), scene.aabb[1].float()
            means = lo + (hi - lo) * torch.rand(c.num_random_points, 3, generator=generator)
            rgb = torch.rand(c.num_random_points, 3, generator=generator)
        n = len(means)
        scales = torch.log(knn_mean_distance(means).clamp_min(1e-7) * c.init_scale)[:, None].repeat(1, 3)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        opacities = torch.logit(torch.full((n,), c.init_opacity))
        k = (c.sh_degree + 1) ** 2
        sh0 = rgb_to_sh(rgb)[:, None, :]
        shN = torch.zeros(n, k - 1, 3)
        self.params = nn.ParameterDict(
            {name: nn.Parameter(t.contiguous()) for name, t in zip(PARAM_NAMES, (means, scales, quats, opacities, sh0, shN), strict=True)}
        )
        self.strategy = c.strategy
        self.strategy_state: dict[str, Any] = self.strategy.initialize_state(scene_scale=self.scene_scale)
        bg = {"white": torch.ones(3), "black": torch.zeros(3)}.get(c.background)
        if bg is None:
            bg = scene.background if scene.background is not None else torch.zeros(3)
        self.register_buffer("background", bg.float().clone(), persistent=False)
        self.register_buffer("active_sh_degree", torch.tensor(0))

    @property
    def scene_scale(self) -> float:
        """3DGS's ``cameras_extent`` (1.1 x the largest distance of a training camera from their
        centroid) times ``global_scale``."""
        extent = self.scene.metadata.get("camera_extent")
        return (float(extent) if extent else 1.0) * self.config.global_scale

    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    # ------------------------------------------------------------------ training plumbing
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {name: [self.params[name]] for name in PARAM_NAMES}

    def lr_multipliers(self) -> dict[str, float]:
        return {"means": self.scene_scale}

    def callbacks(self) -> list[Callback]:
        c = self.config

        def raise_sh(step: int, **_: Any) -> None:
            self.active_sh_degree.fill_(min(c.sh_degree, step // c.sh_degree_interval))

        def densify(step: int, outputs: dict[str, Any], optimizers: Any, **_: Any) -> None:
            self.strategy.step_post_backward(self.params, optimizers.optimizers, self.strategy_state, step, outputs["meta"])

        return [Callback(raise_sh, where=Where.BEFORE_STEP), Callback(densify, where=Where.AFTER_BACKWARD)]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        # The densification statistics are part of the checkpoint, so that a resumed run densifies
        # exactly like an uninterrupted one.
        out = super().state_dict(*args, **kwargs)
        for key, value in self.strategy_state.items():
            if isinstance(value, Tensor):
                out[f"{STRATEGY_PREFIX}{key}"] = value.detach().clone()
        return out

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        strategy = {k[len(STRATEGY_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(STRATEGY_PREFIX)}
        # The number of Gaussians changes during training: take the checkpoint's sizes.
        for name in PARAM_NAMES:
            key = f"params.{name}"
            if key in state and state[key].shape != self.params[name].shape:
                self.params[name] = nn.Parameter(torch.empty_like(state[key]))
        super().load_checkpoint_state(state)
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)
        self.strategy_state.update(strategy)

    # ------------------------------------------------------------------ rendering
    def rasterize(self, camera: Cameras, render_mode: str = "RGB+ED") -> tuple[Tensor, Tensor, dict[str, Any]]:
        p = self.params
        viewmats, Ks = camera_matrices(camera)
        degree = int(self.active_sh_degree)
        # Only the active bands (the rest would be copied, and get zero gradients, every step).
        colors = torch.cat([p["sh0"], p["shN"][:, : (degree + 1) ** 2 - 1]], 1)
        return rasterization(
            p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), colors,
            viewmats, Ks, int(camera.width[0]), int(camera.height[0]), sh_degree=degree,
            backgrounds=self.background.expand(len(camera), 3), render_mode=render_mode,
            near_plane=self.config.near_plane, rasterize_mode=self.config.rasterize_mode,
        )

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        colors, alphas, meta = self.rasterize(batch["camera"])
        if meta["means2d"].requires_grad:
            self.strategy.step_pre_backward(self.params, None, self.strategy_state, 0, meta)
        return {"rgb": colors[0, ..., :3], "depth": colors[0, ..., 3:], "accumulation": alphas[0], "meta": meta}

    def losses(self, batch: dict[str, Any], outputs: dict[str, Any], step: int) -> dict[str, Tensor]:
        lam = self.config.ssim_lambda
        pred, gt = outputs["rgb"], batch["image"]
        out = {"l1": (1.0 - lam) * F.l1_loss(pred, gt)}
        if lam > 0:
            out["ssim"] = lam * (1.0 - ssim(pred, gt))
        return out

    def metrics(self, batch: dict[str, Any], outputs: dict[str, Any]) -> dict[str, float]:
        mse = torch.mean((outputs["rgb"].detach() - batch["image"]) ** 2)
        return {"psnr": float(-10 * torch.log10(mse.clamp_min(1e-10))), "num_gaussians": float(self.num_gaussians)}

    @torch.no_grad()
    def render(self, camera: Cameras) -> dict[str, Tensor]:
        colors, alphas, _ = self.rasterize(camera[0:1] if len(camera) > 1 else camera)
        return {Output.RGB.value: colors[0, ..., :3], Output.DEPTH.value: colors[0, ..., 3:], Output.ACCUMULATION.value: alphas[0]}

    def splat_parameters(self) -> dict[str, Tensor]:
        """The Gaussians in gsplat's layout (for ``ns-export gaussian-splat``)."""
        return {name: self.params[name].detach() for name in PARAM_NAMES}


@dataclass
class SplatModelConfig(ModelConfig):
    """3DGS's defaults (Inria release / gsplat ``simple_trainer``) unless noted."""

    sh_degree: int = 3
    """Highest spherical-harmonics degree (3DGS counts from 0: 3 = 16 coefficients)."""
    sh_degree_interval: int = 1000
    """Steps between raising the active SH degree by one."""
    init: Literal["sfm", "random"] = "sfm"
    """Initial Gaussians: the dataset's sparse points when it has them (else random), or random in the box."""
    num_random_points: int = 100_000
    """Number of random initial Gaussians (3DGS's synthetic-scene setting)."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    init_scale: float = 1.0
    """Factor on the initial scale (mean distance to the 3 nearest points)."""
    init_seed: int = 0
    """Seed of the random initialisation."""
    ssim_lambda: float = 0.2
    """Weight of the D-SSIM term: (1 - lambda) L1 + lambda (1 - SSIM)."""
    background: Literal["auto", "white", "black"] = "auto"
    """Colour behind the Gaussians; auto = the dataset's background for RGBA images, else black."""
    near_plane: float = 0.01
    """Gaussians closer to the camera than this are culled."""
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    """classic = 3DGS; antialiased = Mip-Splatting's opacity compensation (gsplat)."""
    global_scale: float = 1.0
    """Factor on the scene scale (gsplat's ``global_scale``): the camera extent that scales the position
    learning rate and the densification size thresholds. A few close cameras make that extent small
    against the scene (see benchmarks/RESULTS.md, fern 3 views); this corrects it."""
    strategy: DefaultStrategy = field(default_factory=DefaultStrategy)
    """Densification: clone / split / prune / opacity reset (3DGS schedule and thresholds)."""


SplatModelConfig._target = SplatModel
