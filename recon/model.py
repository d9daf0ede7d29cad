"""The model interface shared by every method family.

A model is an ``nn.Module`` built from its config and a :class:`SceneInfo`. The trainer only uses
the methods below; what a batch holds (rays, whole images, labelled points) is agreed between a
model and the datamanager its method preset names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recon.cameras import Cameras
from recon.config import InstantiateConfig
from recon.engine.callbacks import Callback


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


@dataclass
class SceneInfo:
    """What a model may know about the training data when it is built.

    aabb: [2, 3] content box in normalised world units.
    background: [3] colour transparent pixels were composited onto, or None for opaque images.
    near, far: ray bounds from the dataset, or None (then rays are clipped to the box).
    points3d: [P, 3] sparse points (normalised world) and points3d_rgb [P, 3] uint8, when present.
    """

    aabb: Tensor
    num_train_cameras: int
    background: Tensor | None = None
    near: float | None = None
    far: float | None = None
    points3d: np.ndarray | None = None
    points3d_rgb: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig(InstantiateConfig):
    """Base of every model config."""


class Model(nn.Module):
    """Base class: subclasses implement the methods that raise ``NotImplementedError``."""

    exports: frozenset[Export] = frozenset()

    def __init__(self, config: ModelConfig, scene: SceneInfo):
        super().__init__()
        self.config = config
        self.scene = scene

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups; the trainer config has one optimizer entry per name."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Outputs for one training batch."""
        raise NotImplementedError

    def losses(self, batch: dict[str, Any], outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Named, already weighted loss terms; the trainer sums them."""
        raise NotImplementedError

    def metrics(self, batch: dict[str, Any], outputs: dict[str, Tensor]) -> dict[str, float]:
        """Cheap training-time scalars for the log (e.g. PSNR of the batch)."""
        return {}

    @torch.no_grad()
    def render(self, camera: Cameras) -> dict[str, Tensor]:
        """A full image dict (see :class:`Output`) for one camera, on the model's device."""
        raise NotImplementedError

    def sdf(self, points: Tensor) -> Tensor:
        """The implicit surface for ``Export.MARCHING_CUBES``: a field at normalised-world points
        [P, 3] -> [P] that is negative inside, positive outside and zero on the surface."""
        raise NotImplementedError

    def callbacks(self) -> list[Callback]:
        """Training-time heuristics as hook objects."""
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
    """

    image_outputs: tuple[Output, ...] = (Output.RGB, Output.DEPTH, Output.ACCUMULATION)

    def render_rays(self, rays: Any) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.render_rays(batch["rays"])

    def metrics(self, batch: dict[str, Any], outputs: dict[str, Any]) -> dict[str, float]:
        mse = torch.mean((outputs["rgb"].detach() - batch["rgb"]) ** 2)
        return {"psnr": float(-10 * torch.log10(mse.clamp_min(1e-10)))}

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
