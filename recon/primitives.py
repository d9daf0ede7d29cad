"""The base of primitive-based methods: a scene as N primitives rasterized one camera at a time.

3D Gaussian splatting (Kerbl et al. 2023), CoherentGS (Paliwal et al. 2024), 3D Convex Splatting
(Held et al. 2025) and mesh-bound Gaussians (Gao et al. 2024) share everything here and differ in
what they write themselves:

=========================  =====================================================================
the base provides           per-primitive parameters (one ``nn.ParameterDict``, one optimizer
                            group per attribute), the background, the SH-degree schedule,
                            rendering one camera (optionally supersampled: rendered at k x the
                            size with the same field of view and average-pooled), the photometric
                            loss (1 - lambda) L1 + lambda (1 - SSIM), PSNR and the primitive
                            count, densification hooks (a gsplat-style ``Strategy``) whose
                            statistics travel in checkpoints, resizing on a checkpoint with another
                            primitive count, and the Gaussian-splat export layout
a method writes             its parameterisation (:meth:`PrimitiveModel.primitives`: activated
                            attributes from parameters, decoders, a mesh...), its extra losses,
                            its strategy (a config field ``strategy``), and, for primitives that
                            are not Gaussians, :meth:`PrimitiveModel.rasterize_primitives`
=========================  =====================================================================

Colours are spherical harmonics in gsplat's layout: ``params["sh0"]`` [N, 1, 3] and
``params["shN"]`` [N, K - 1, 3]; only the active bands are handed to the rasterizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.cameras import Cameras
from recon.engine.callbacks import Callback, Where
from recon.engine.optim import OptimizerConfig, adam, exponential
from recon.image_metrics import ssim
from recon.model import Export, Model, ModelConfig, Output, SceneInfo
from recon.errors import ConfigError
from recon.render.gaussians import rasterization, resolve_backend
from recon.render.gaussians.helpers import camera_matrices, require_pinhole

__all__ = ["PrimitiveModel", "PrimitiveModelConfig", "gaussian_optimizers", "initial_points", "knn_rms_distance"]

STRATEGY_PREFIX = "strategy_state."
SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
"""The Gaussian-splat layout of :meth:`PrimitiveModel.splat_parameters` (gsplat's, raw values:
log scales, opacity logits)."""


def strategy_entries(state: dict[str, Any], prefix: str) -> dict[str, Tensor]:
    """A densification state's tensors as checkpoint entries ``prefix + key`` (copies)."""
    return {f"{prefix}{k}": v.detach().clone() for k, v in state.items() if isinstance(v, Tensor)}


def pop_strategy_entries(checkpoint: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove the entries :func:`strategy_entries` wrote with ``prefix`` from ``checkpoint``; returns them without it."""
    return {k[len(prefix) :]: checkpoint.pop(k) for k in list(checkpoint) if k.startswith(prefix)}


def knn_rms_distance(points: Tensor, k: int = 3) -> Tensor:
    """Root mean square distance of each point [N, 3] to its k nearest other points -> [N].

    3DGS initialises each Gaussian's scale with it; 3D Convex Splatting sizes its convexes by it.
    """
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    if len(pts) <= 1:
        return torch.ones(len(pts), dtype=points.dtype, device=points.device)
    dist, _ = cKDTree(pts).query(pts, k=min(k, len(pts) - 1) + 1)
    rms = np.sqrt((dist[:, 1:] ** 2).mean(-1))
    return torch.as_tensor(rms, dtype=points.dtype, device=points.device)


def gaussian_optimizers(max_steps: int, positions: tuple[str, ...] = ("means",)) -> dict[str, OptimizerConfig]:
    """3DGS's optimizer groups (Inria release / gsplat ``simple_trainer``): each of ``positions``
    1.6e-4 -> 1.6e-6 over ``max_steps`` (a model's ``lr_multipliers`` scale it by the camera extent),
    scales 5e-3, rotations 1e-3, opacities 5e-2, SH 2.5e-3 (rest / 20)."""
    rates = {name: exponential(lr=1.6e-4, lr_final=1.6e-6, max_steps=max_steps) for name in positions}
    return {**rates, "scales": adam(5e-3), "quats": adam(1e-3), "opacities": adam(5e-2), "sh0": adam(2.5e-3), "shN": adam(2.5e-3 / 20)}


def initial_points(scene: SceneInfo, init: str, num_random: int, seed: int) -> tuple[Tensor, Tensor]:
    """Where primitives start: the dataset's sparse points [P, 3] and their colours [P, 3] in [0, 1]
    when ``init == "sfm"`` and it has some, else ``num_random`` uniform points in the scene box with
    random colours (3DGS's synthetic-scene initialisation)."""
    if scene.points3d is not None and len(scene.points3d) > 0 and init == "sfm":
        points = torch.as_tensor(np.asarray(scene.points3d), dtype=torch.float32)
        return points, torch.as_tensor(np.asarray(scene.points3d_rgb), dtype=torch.float32) / 255.0
    generator = torch.Generator().manual_seed(seed)
    lo, hi = scene.aabb[0].float(), scene.aabb[1].float()
    points = lo + (hi - lo) * torch.rand(num_random, 3, generator=generator)
    return points, torch.rand(num_random, 3, generator=generator)


@dataclass
class PrimitiveModelConfig(ModelConfig):
    """Options every primitive-based method has (3DGS's values by default)."""

    sh_degree: int = 3
    """Highest spherical-harmonics degree (3DGS counts from 0: 3 = 16 coefficients)."""
    sh_degree_interval: int = 1000
    """Steps between raising the active SH degree by one."""
    sh_degree_start: int | None = None
    """Step at which the degree first rises to 1; None: after one interval (3DGS)."""
    background: Literal["auto", "white", "black"] = "auto"
    """Colour behind the primitives; auto = the dataset's background for RGBA images, else black."""
    near_plane: float = 0.01
    """Primitives closer to the camera than this are culled."""
    ssim_lambda: float = 0.2
    """Weight of the D-SSIM term: (1 - lambda) L1 + lambda (1 - SSIM)."""


class PrimitiveModel(Model):
    """Base of models that rasterize N primitives per camera; see the module docstring.

    A subclass fills :attr:`params` (``self.params = nn.ParameterDict(...)``, every tensor
    [N, ...] in the same primitive order) in its constructor or in
    :meth:`~recon.model.Model.initialize_from_data`. Densification is on when the config has a
    ``strategy`` field: an object with gsplat's ``Strategy`` hooks (``initialize_state``,
    ``step_pre_backward``, ``step_post_backward``) that edits :attr:`params` and their optimizers
    in place (:mod:`recon.render.gaussians.strategy` has the row operations).
    """

    config: PrimitiveModelConfig
    exports = frozenset({Export.GAUSSIAN_SPLAT, Export.TSDF, Export.POINTCLOUD})
    rasterize_mode: str = "classic"
    """The Gaussian rasterizer's mode ("antialiased": Mip-Splatting's opacity compensation)."""
    primitive_buffers: tuple[str, ...] = ()
    """Registered buffers with one row per primitive (e.g. the face each mesh-bound Gaussian sits
    on): resized with :attr:`params` when a checkpoint holds another primitive count. A strategy
    that adds or removes primitives must edit them too."""

    def __init__(self, config: PrimitiveModelConfig, scene: SceneInfo):
        super().__init__(config, scene)
        self.params = nn.ParameterDict()
        self.register_buffer("active_sh_degree", torch.tensor(0))
        self.strategy: Any = getattr(config, "strategy", None)
        self.strategy_state: dict[str, Any] = self._new_strategy_state()
        self.supersample = 1
        """Render training images at this factor x the size and average-pool (1: off)."""

    # ------------------------------------------------------------------ what a method defines
    def primitives(self) -> dict[str, Tensor]:
        """The activated primitives for rendering. Default (3D Gaussians stored raw in :attr:`params`):
        means [N, 3], quats [N, 4], scales [N, 3] = exp(log scales), opacities [N] = sigmoid(logits).
        A method may return ``covars`` [N, 3, 3] instead of quats and scales, and extra entries
        its losses use (they reach ``outputs["primitives"]``)."""
        p = self.params
        return {"means": p["means"], "quats": p["quats"], "scales": torch.exp(p["scales"]), "opacities": torch.sigmoid(p["opacities"])}

    def rasterize_primitives(
        self, prims: dict[str, Tensor], colors: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Render ``prims`` into cameras [C]: colour + accumulated z-depth [C, H, W, 4], alpha
        [C, H, W, 1] and the rasterizer's info dict (densification reads it). ``colors`` are SH
        coefficients [N, (d + 1)^2, 3] of the active degree d. Default: 3D Gaussians through
        :func:`recon.render.gaussians.rasterization`; other primitives override this."""
        degree = int(self.active_sh_degree)
        return rasterization(
            prims["means"], prims.get("quats"), prims.get("scales"), prims["opacities"], colors, viewmats, Ks, width, height,
            sh_degree=degree, backgrounds=self.background.expand(len(viewmats), 3), render_mode="RGB+D",
            near_plane=self.config.near_plane, rasterize_mode=self.rasterize_mode, covars=prims.get("covars"),
        )

    def extra_param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Optimizer groups besides one per entry of :attr:`params` (e.g. decoder networks)."""
        return {}

    def method_callbacks(self) -> list[Callback]:
        """The method's own hooks, run after the base's (SH schedule, densification)."""
        return []

    multi_image_batches: bool = False
    """Whether the model trains on batches of several images (``camera`` [B], ``image`` [B, H, W, 3]:
    :meth:`rasterize` and :meth:`losses` of the base take them; a method whose own losses or hooks
    read one image leaves this False)."""

    def check_datamanager(self, datamanager: Any) -> None:
        """Before anything is written: lens-distorted training cameras, which every primitive
        rasterizer (it projects through a pinhole) cannot render, :meth:`check_rasterizer`, and
        batches of several images per process for a model that takes one (:attr:`multi_image_batches`)."""
        require_pinhole(datamanager, type(self).__name__)
        self.check_rasterizer()
        per_rank = getattr(datamanager, "images_per_rank", 1)
        if per_rank > 1 and not self.multi_image_batches:
            raise ConfigError(
                f"{type(self).__name__} trains on one image per step and process, not {per_rank}:"
                " set --datamanager.images-per-batch to the number of data-parallel processes"
            )

    #: (backend, device, dtype) -> backend name; raises ImportError / ValueError when unusable.
    resolve_rasterizer_backend = staticmethod(resolve_backend)

    def check_rasterizer(self) -> None:
        """Resolve the rasterizer backend once: a broken installation (warp-lang missing on a CPU)
        or an impossible ``RECON_BACKEND`` is a one-line error here instead of a traceback at the
        first step. Primitives with their own rasterizer set :attr:`resolve_rasterizer_backend`."""
        try:
            type(self).resolve_rasterizer_backend(None, self.device, torch.float32)
        except (ImportError, ValueError) as err:
            raise ConfigError(str(err)) from None

    # ------------------------------------------------------------------ parameters and checkpoints
    @property
    def num_primitives(self) -> int:
        return int(next(iter(self.params.values())).shape[0]) if len(self.params) else 0

    @property
    def camera_extent(self) -> float:
        """3DGS's ``cameras_extent``: 1.1 x the largest distance of a training camera from their centroid (1 if unknown)."""
        extent = self.scene.metadata.get("camera_extent")
        return float(extent) if extent else 1.0

    @property
    def scene_scale(self) -> float:
        """The scale the strategy's size thresholds are relative to (default: the camera extent)."""
        return self.camera_extent

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {name: [p] if p.requires_grad else [] for name, p in self.params.items()}
        return {**groups, **self.extra_param_groups()}

    def _new_strategy_state(self) -> dict[str, Any]:
        return self.strategy.initialize_state(scene_scale=self.scene_scale) if self.strategy is not None else {}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        # The densification statistics are part of the checkpoint, so that a resumed run densifies
        # exactly like an uninterrupted one.
        return {**super().state_dict(*args, **kwargs), **strategy_entries(self.strategy_state, STRATEGY_PREFIX)}

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        strategy = pop_strategy_entries(state, STRATEGY_PREFIX)
        # The number of primitives changes during training: take the checkpoint's sizes.
        for name in list(self.params):
            key = f"params.{name}"
            if key in state and state[key].shape != self.params[name].shape:
                requires_grad = self.params[name].requires_grad
                self.params[name] = nn.Parameter(torch.empty_like(state[key]), requires_grad=requires_grad)
        for name in self.primitive_buffers:
            if name in state and state[name].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state[name]))
        super().load_checkpoint_state(state)
        self.strategy_state = self._new_strategy_state()
        self.strategy_state.update(strategy)

    # ------------------------------------------------------------------ training
    def sh_degree_at(self, step: int) -> int:
        c = self.config
        start = c.sh_degree_interval if c.sh_degree_start is None else c.sh_degree_start
        return 0 if step < start else min(c.sh_degree, (step - start) // c.sh_degree_interval + 1)

    def callbacks(self) -> list[Callback]:
        def raise_sh(step: int, **_: Any) -> None:
            self.active_sh_degree.fill_(self.sh_degree_at(step))

        hooks = [Callback(raise_sh, where=Where.BEFORE_STEP)]
        if self.strategy is not None:

            def densify(step: int, outputs: dict[str, Any], optimizers: Any, **_: Any) -> None:
                self.densify(step, outputs["meta"], optimizers.optimizers)

            hooks.append(Callback(densify, where=Where.AFTER_BACKWARD))
        return hooks + self.method_callbacks()

    def densify(self, step: int, meta: dict[str, Any], optimizers: dict[str, Any]) -> None:
        """After the backward pass: the strategy's statistics and refinement (a method with several
        sets of primitives routes each its part of ``meta``)."""
        self.strategy.step_post_backward(self.params, optimizers, self.strategy_state, step, meta)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.rasterize(batch["camera"], self.primitives(), self.supersample)
        if self.strategy is not None and torch.is_grad_enabled():
            self.strategy.step_pre_backward(self.params, None, self.strategy_state, 0, out["meta"])
        return out

    def losses(self, batch: dict[str, Any], outputs: dict[str, Any], step: int) -> dict[str, Tensor]:
        """(1 - lambda) L1 + lambda (1 - SSIM) of the rendered image; methods add their own terms."""
        lam = self.config.ssim_lambda
        pred, gt = outputs["rgb"], batch["image"]
        out = {"l1": (1.0 - lam) * self.l1(pred, gt)}
        if lam > 0:
            out["ssim"] = lam * (1.0 - ssim(pred, gt).mean())  # mean over a batch of images
        return out

    def l1(self, pred: Tensor, gt: Tensor) -> Tensor:
        """The L1 term of :meth:`losses` (a method may use a multi-scale one)."""
        return F.l1_loss(pred, gt)

    def metrics(self, batch: dict[str, Any], outputs: dict[str, Any]) -> dict[str, float]:
        return {**super().metrics(batch, outputs), "num_primitives": float(self.num_primitives)}

    # ------------------------------------------------------------------ rendering
    def sh_coefficients(self) -> Tensor:
        """SH coefficients [N, (d + 1)^2, 3] of the active degree d (the inactive bands are not
        copied, and get no gradient, every step)."""
        degree = int(self.active_sh_degree)
        return torch.cat([self.params["sh0"], self.params["shN"][:, : (degree + 1) ** 2 - 1]], 1)

    def rasterize(self, camera: Cameras, prims: dict[str, Tensor], supersample: int = 1) -> dict[str, Any]:
        """One camera -> rgb [H, W, 3], depth [H, W, 1] (expected z-depth, 0 where nothing was hit),
        accumulation [H, W, 1], ``meta`` (the rasterizer's info) and ``primitives`` (``prims``);
        B > 1 cameras (of one size) -> the same with a leading [B].

        With ``supersample`` k the image is rendered at k x the size (same field of view), then
        colour, accumulated depth and alpha are average-pooled before the depth is normalised."""
        cam = camera.scaled(supersample) if supersample > 1 else camera
        viewmats, Ks = camera_matrices(cam)
        colors, alphas, meta = self.rasterize_primitives(prims, self.sh_coefficients(), viewmats, Ks, int(cam.width[0]), int(cam.height[0]))
        image = torch.cat([colors, alphas], -1)  # [B, H, W, 5]
        if supersample > 1:
            image = F.avg_pool2d(image.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
        if len(camera) == 1:
            image = image[0]
        rgb, acc_depth, alpha = image[..., :3], image[..., 3:4], image[..., 4:5]
        return {"rgb": rgb, "depth": acc_depth / alpha.clamp_min(1e-10), "accumulation": alpha, "meta": meta, "primitives": prims}

    @torch.no_grad()
    def render(self, camera: Cameras) -> dict[str, Tensor]:
        out = self.rasterize(camera[0:1] if len(camera) > 1 else camera, self.primitives())
        return {key.value: out[key.value] for key in (Output.RGB, Output.DEPTH, Output.ACCUMULATION)}

    @torch.no_grad()
    def splat_parameters(self) -> dict[str, Tensor]:
        """The primitives as 3D Gaussians in gsplat's raw layout (for ``ns-export gaussian-splat``):
        entries of :attr:`params` as stored, the rest from :meth:`primitives` with the activations
        inverted. Primitives that are not Gaussians override this with an approximation."""
        prims = self.primitives()
        out = {}
        for key in SPLAT_KEYS:
            if key in self.params:
                out[key] = self.params[key].detach().clone()
            elif key == "scales":
                out[key] = torch.log(prims["scales"].detach())
            elif key == "opacities":
                p = prims["opacities"].detach().clamp(1e-6, 1 - 1e-6)
                out[key] = torch.log(p / (1 - p))
            else:
                out[key] = prims[key].detach().clone()
        return out
