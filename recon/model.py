"""The model interface shared by every method family.

A model is an ``nn.Module`` built from its config and a :class:`SceneInfo`. The trainer only uses
the methods below; what a batch holds (rays, whole images, labelled points) is agreed between a
model and the datamanager its method preset names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recon.cameras import Cameras
from recon.config import InstantiateConfig
from recon.engine.callbacks import Callback
from recon.losses import S3IMConfig, s3im


class Output(str, Enum):
    """Keys of the image dict that :meth:`Model.render` returns ([H, W, C] tensors)."""

    RGB = "rgb"
    DEPTH = "depth"
    """z-depth along the camera's optical axis, normalised world units, [H, W, 1]."""
    ACCUMULATION = "accumulation"
    NORMAL = "normal"
    INSTANCE = "instance"


class Export(str, Enum):
    """Export capabilities a model can declare in :attr:`Model.exports`."""

    TSDF = "tsdf"
    """Mesh by TSDF fusion of rendered depth."""
    POINTCLOUD = "pointcloud"
    """Points back-projected from rendered depth."""
    MARCHING_CUBES = "marching-cubes"
    """Mesh from the model's own implicit surface."""
    GAUSSIAN_SPLAT = "gaussian-splat"
    """Standard 3DGS PLY."""
    CONVEX_PLY = "convex-ply"
    """Every smooth convex's parameters, losslessly (3D Convex Splatting; :mod:`recon.export.convex_ply`)."""
    CONVEX_MESH = "convex-mesh"
    """Mesh of the 3D hulls of the opaque, sharp smooth convexes (:mod:`recon.export.convex_mesh`)."""


@dataclass
class SceneInfo:
    """What a model may know about the training data when it is built.

    aabb: [2, 3] content box in normalised world units.
    background: [3] colour transparent pixels were composited onto, or None for opaque images.
    near, far: ray bounds from the dataset, or None (then rays are clipped to the box).
    points3d: [P, 3] sparse points (normalised world) and points3d_rgb [P, 3] uint8, when present.
    instance_filenames: the training images' instance masks, when the dataset has them (methods
        that learn per-object fields derive their label set from them: ``data.instances``).
    depth_is_relative: the dataset's depth maps are monocular (known up to scale and shift).
    """

    aabb: Tensor
    num_train_cameras: int
    background: Tensor | None = None
    near: float | None = None
    far: float | None = None
    points3d: np.ndarray | None = None
    points3d_rgb: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    instance_filenames: list[Path] | None = None
    depth_is_relative: bool = False


@dataclass
class ModelConfig(InstantiateConfig):
    """Base of every model config."""


@dataclass
class RayModelConfig(ModelConfig):
    """Base of the configs of :class:`RayModel` subclasses: options every ray-based method has."""

    s3im: S3IMConfig = field(default_factory=S3IMConfig)
    """S3IM loss on the batch's rendered colours (off unless its weight is positive)."""


def resolve_background(choice: str, dataset_background: Tensor | None) -> Tensor:
    """The colour [3] behind a rendered scene: "white", "black", or "auto" = the colour the dataset's
    transparent pixels were composited onto (RGBA images), else black."""
    fixed = {"white": torch.ones(3), "black": torch.zeros(3)}.get(choice)
    if fixed is not None:
        return fixed
    if choice != "auto":
        raise ValueError(f"unknown background {choice!r} (auto, white or black)")
    return dataset_background.float().clone() if dataset_background is not None else torch.zeros(3)


class Model(nn.Module):
    """Base class: subclasses implement the methods that raise ``NotImplementedError``.

    A model whose config has a ``background`` field ("auto", "white" or "black") gets the buffer
    ``background`` [3] (:func:`resolve_background`). :meth:`metrics` reports the PSNR of
    ``outputs["rgb"]`` against the batch's target colours (``batch["rgb"]`` for rays,
    ``batch["image"]`` for whole images).
    """

    exports: frozenset[Export] = frozenset()

    def __init__(self, config: ModelConfig, scene: SceneInfo):
        super().__init__()
        self.config = config
        self.scene = scene
        choice = getattr(config, "background", None)
        if choice is not None:
            self.register_buffer("background", resolve_background(choice, scene.background), persistent=False)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups; the trainer config has one optimizer entry per name."""
        raise NotImplementedError

    def lr_multipliers(self) -> dict[str, float]:
        """Factors on the configured learning-rate schedule of named groups (default: none), for rates
        that depend on the scene (3DGS scales its position rate by the camera extent)."""
        return {}

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Outputs for one training batch."""
        raise NotImplementedError

    def losses(self, batch: dict[str, Any], outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The method's own named, already weighted loss terms."""
        raise NotImplementedError

    def loss_dict(self, batch: dict[str, Any], outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Every loss term of a training step, which the trainer sums: :meth:`losses` plus the terms
        a model family adds to all its methods (e.g. S3IM for :class:`RayModel`)."""
        return self.losses(batch, outputs, step)

    def check_datamanager(self, datamanager: Any) -> None:
        """Raise :class:`recon.errors.ConfigError` if this model cannot train on the batches
        ``datamanager`` produces; the trainer calls it once, before the first step."""

    def initialize_from_data(self, datamanager: Any) -> None:
        """Create or fill the parameters that depend on the training data itself (e.g. one Gaussian
        per training pixel). The trainer calls it once, after :meth:`check_datamanager` and before the
        optimizers are built; on resume the checkpoint is loaded afterwards. Default: nothing."""

    def metrics(self, batch: dict[str, Any], outputs: dict[str, Tensor]) -> dict[str, float]:
        """Cheap training-time scalars for the log: the PSNR of the batch, when it has colours."""
        gt = batch.get("rgb", batch.get("image"))
        if gt is None or "rgb" not in outputs:
            return {}
        mse = torch.mean((outputs["rgb"].detach() - gt) ** 2)
        return {"psnr": float(-10 * torch.log10(mse.clamp_min(1e-10)))}

    @torch.no_grad()
    def render(self, camera: Cameras) -> dict[str, Tensor]:
        """A full image dict (see :class:`Output`) for one camera, on the model's device."""
        raise NotImplementedError

    def sdf(self, points: Tensor) -> Tensor:
        """The implicit surface for ``Export.MARCHING_CUBES``: a field at normalised-world points
        [P, 3] -> [P] that is negative inside, positive outside and zero on the surface."""
        raise NotImplementedError

    def rest_mesh(self) -> tuple[Tensor, Tensor] | None:
        """The mesh whose deformed copies move this model at render time (``ns-render --deform``,
        ``ns-export gaussian-splat --deform``): vertices [V, 3] in the normalised frame and faces
        [F, 3]; None (the default) for a model that no mesh drives."""
        return None

    def set_deformed_vertices(self, vertices: Tensor | None) -> None:
        """Render with :meth:`rest_mesh`'s vertices moved to ``vertices`` [V, 3] (normalised frame),
        or at rest (None). Only models with a :meth:`rest_mesh` implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no mesh to deform")

    def callbacks(self) -> list[Callback]:
        """Training-time heuristics as hook objects."""
        return []

    def viewer_panels(self) -> list[Any]:
        """The method's own controls in the live viewer (:class:`recon.panel_api.Panel` objects)."""
        return []

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        """Load weights saved by :meth:`state_dict`; models whose size changes override this."""
        self.load_state_dict(state, strict=True)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


class RayModel(Model):
    """Base of models trained on ray batches (``batch["rays"]``, ``batch["rgb"]``).

    Subclasses implement :meth:`render_rays` (rays [R] -> outputs [R, C]); whole images are rendered
    in chunks of ``config.eval_num_rays_per_chunk`` rays, keeping the keys in :attr:`image_outputs`.
    Their configs derive from :class:`RayModelConfig`: :meth:`loss_dict` adds ``"s3im"`` (weighted
    ``1 - S3IM`` of ``outputs["rgb"]`` vs ``batch["rgb"]``) when ``config.s3im.weight > 0``.
    """

    image_outputs: tuple[Output, ...] = (Output.RGB, Output.DEPTH, Output.ACCUMULATION)

    def render_rays(self, rays: Any) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.render_rays(batch["rays"])

    def loss_dict(self, batch: dict[str, Any], outputs: dict[str, Any], step: int) -> dict[str, Tensor]:
        losses = super().loss_dict(batch, outputs, step)
        c: S3IMConfig | None = getattr(self.config, "s3im", None)
        if c is not None and c.weight > 0:
            # Permutations come from the global RNG, whose state checkpoints save: resume stays exact.
            value = s3im(outputs["rgb"], batch["rgb"], c.kernel_size, c.stride, c.repeats, c.patch_height)
            losses["s3im"] = c.weight * (1.0 - value)
        return losses

    def check_datamanager(self, datamanager: Any) -> None:
        c: S3IMConfig | None = getattr(self.config, "s3im", None)
        num_rays = getattr(getattr(datamanager, "config", None), "train_num_rays_per_batch", None)
        if c is not None and c.weight > 0 and num_rays is not None:
            c.check_batch(int(num_rays))

    @torch.no_grad()
    def render(self, camera: Cameras) -> dict[str, Tensor]:
        rays = camera.generate_rays(0)
        h, w = int(camera.height[0]), int(camera.width[0])
        n = self.config.eval_num_rays_per_chunk  # type: ignore[attr-defined]
        keys = [k.value for k in self.image_outputs]
        chunks = []
        for i in range(0, len(rays), n):
            out = self.render_rays(rays[i : i + n])
            chunks.append({k: out[k].detach() for k in keys})
        return {k: torch.cat([ch[k] for ch in chunks]).reshape(h, w, -1) for k in keys}
