"""GeCoNeRF's batches: random input rays every step, plus on regularisation steps an unobserved
camera near one input view, the ray grid of a patch of it, and that input view (image and camera)
to warp from (Kwak, Song & Kim, ICML 2023, sec. 3.1-3.2).

Unobserved poses (``pose_mode``):

* ``strict`` (default): only the input views' poses. The source camera is turned rigidly about
  its orbit centre by an azimuth and an elevation each uniform in [-theta/2, theta/2], theta the
  pose divergence of the step (:func:`methods.geconerf.schedules.pose_divergence`); this is the
  release's Blender generator (angular jitter on the sphere about the object) with the centre
  generalised: the point the input cameras look at (least-squares meeting point of their optical
  axes) when it lies in front of the camera and within the far bound, else the point on the optical
  axis at NeRF's focus depth ``1 / (0.25 / near + 0.75 / far)`` (forward-facing captures).
* ``nearby``: the release's LLFF mode, for parity. The pose of one of the ``num_nearby_views``
  training-split cameras whose centres are most similar (cosine) to the source's, itself excluded;
  it reads poses of training images that are not inputs, which a strict few-shot setting forbids.

The unobserved camera keeps the source camera's intrinsics. Its patch is a ``patch_size`` window at
a uniformly drawn place, rendered every ``patch_stride`` pixels (the centres of stride x stride
blocks, so rendering and warping share one grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from data.base import DataparserOutputs
from data.datamanager import RayDataManager, RayDataManagerConfig
from data.normalize import focus_point
from methods.geconerf.schedules import pose_divergence
from recon.cameras import Cameras
from recon.engine.callbacks import Callback, Where
from recon.errors import ConfigError


def axis_rotation(axis: Tensor, degrees: float) -> Tensor:
    """[3, 3] rotation by ``degrees`` about the unit ``axis`` [3] (Rodrigues)."""
    a = math.radians(degrees)
    k = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return torch.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)


def orbit_pose(c2w: Tensor, centre: Tensor, azimuth_deg: float, elevation_deg: float) -> Tensor:
    """The OpenCV camera ``c2w`` [3, 4] turned rigidly about ``centre`` [3]: by ``azimuth_deg`` about
    its own up axis (-y), then ``elevation_deg`` about its right axis (x). Returns [3, 4]."""
    rot = axis_rotation(c2w[:, 0], elevation_deg) @ axis_rotation(-c2w[:, 1], azimuth_deg)
    return torch.cat([rot @ c2w[:, :3], (centre + rot @ (c2w[:, 3] - centre))[:, None]], 1)


def orbit_centres(c2w: Tensor, near: float | None, far: float | None, fallback_depth: float) -> Tensor:
    """Each camera's orbit centre [C, 3] for strict poses (see the module docstring): the meeting
    point of the cameras' optical axes when it is in front of the camera and nearer than ``far``,
    else the point on its axis at NeRF's focus depth (``fallback_depth`` without near/far)."""
    origins, axes = c2w[:, :, 3], c2w[:, :, 2]
    focus = torch.from_numpy(focus_point(c2w.double().numpy())).float() if len(c2w) > 1 else origins[0] + axes[0] * fallback_depth
    depth = ((focus - origins) * axes).sum(-1)
    limit = far if far is not None else float("inf")
    fallback = 1.0 / (0.25 / near + 0.75 / far) if near and far else fallback_depth
    use_focus = (depth > 0) & (depth < limit)
    return torch.where(use_focus[:, None], focus.expand_as(origins), origins + axes * fallback)


def nearby_frames(centres: Tensor, frames: list[int], source: int, count: int) -> list[int]:
    """The ``count`` frames among ``frames`` (not ``source``) whose camera centres [N, 3] (rows =
    frame indices) are most similar in direction to the source's, seen from the mean centre of
    ``frames`` (the release ranks by cosine similarity of centres in LLFF's recentred world)."""
    others = [f for f in frames if f != source]
    mean = centres[frames].mean(0)
    rel = centres[others] - mean
    src = centres[source] - mean
    cos = (rel @ src) / (rel.norm(dim=-1) * src.norm()).clamp_min(1e-12)
    order = torch.argsort(cos, descending=True, stable=True)[:count]
    return [others[int(i)] for i in order]


@dataclass
class GeCoNeRFDataManagerConfig(RayDataManagerConfig):
    """Random rays, and on regularisation steps an unobserved patch (see the module docstring)."""

    patch_size: int = 120
    """Side, in pixels of the unobserved camera, of the patch window (the release's 120)."""
    patch_stride: int = 2
    """Render every N-th pixel of the window (the release's downsample 2: 60 x 60 rays)."""
    pose_mode: Literal["strict", "nearby"] = "strict"
    """Unobserved poses from the input views' poses only (strict), or the release's LLFF mode:
    poses of the training split's cameras nearest to the source (nearby; non-input training poses)."""
    num_nearby_views: int = 5
    """nearby: how many of the most similar training-split cameras to choose from."""
    divergence_start: float = 3.0
    """strict: pose divergence theta (degrees; azimuth and elevation each within +-theta/2) at step 0."""
    divergence_end: float = 9.0
    """strict: pose divergence after ``divergence_steps``."""
    divergence_steps: int = 120_000
    """strict: steps over which the divergence grows linearly (the release: 3 -> 9 degrees over 120k)."""
    reg_start: int = 900
    """First step with an unobserved patch (the release's scripts: 900)."""
    reg_every: int = 2
    """Steps between unobserved patches (the release: every 2nd step)."""


class GeCoNeRFDataManager(RayDataManager):
    """:class:`~data.datamanager.RayDataManager`'s batches; on regularisation steps also ``"patch"``:
    ``{"rays": RayBundle [n * n], "shape": (n, n), "camera": Cameras [1] (the unobserved camera),
    "source_image": [H, W, 3], "source_camera": Cameras [1], "source": int}``."""

    config: GeCoNeRFDataManagerConfig

    def __init__(self, config: GeCoNeRFDataManagerConfig, outputs: DataparserOutputs, device: torch.device, seed: int = 0):
        super().__init__(config, outputs, device, seed)
        ds = self.train_dataset
        h, w = int(ds.cameras.height.min()), int(ds.cameras.width.min())
        if config.patch_stride < 1 or config.patch_size < config.patch_stride:
            raise ConfigError(f"patch_size ({config.patch_size}) must be at least patch_stride ({config.patch_stride}) >= 1")
        if config.patch_size > min(h, w):
            raise ConfigError(f"patch_size {config.patch_size} is larger than the training images ({w}x{h} pixels)")
        if config.pose_mode not in ("strict", "nearby"):
            raise ConfigError(f"unknown pose_mode {config.pose_mode!r} (strict or nearby)")
        self.source_cameras = ds.cameras
        c2w = ds.cameras.camera_to_worlds
        box = outputs.scene_box.aabb
        self.centres = orbit_centres(c2w, outputs.near, outputs.far, float((box[1] - box[0]).norm()) / 2)
        self.nearby: list[Tensor] = []
        if config.pose_mode == "nearby":
            frames = [int(i) for i in outputs.metadata.get("few_shot", {}).get("train_split", outputs.splits["train"])]
            all_c2w = outputs.cameras.camera_to_worlds
            for frame in outputs.splits["train"]:
                near = nearby_frames(all_c2w[:, :, 3], frames, int(frame), config.num_nearby_views)
                if not near:
                    raise ConfigError("pose_mode nearby needs at least two training-split cameras")
                self.nearby.append(all_c2w[near])
        self._due = False

    def callbacks(self) -> list[Callback]:
        c = self.config
        return [Callback(self._schedule, where=Where.BEFORE_STEP, every=c.reg_every, start=c.reg_start)]

    def _schedule(self, step: int, **_: Any) -> None:
        self._due = True

    def describe(self) -> str:
        return f"{super().describe()}; unobserved poses: {self.config.pose_mode}"

    def next_train(self, step: int) -> dict[str, Any]:
        batch = super().next_train(step)
        if self._due:
            self._due = False
            batch["patch"] = self.patch_batch(step)
        return batch

    def unobserved_pose(self, source: int, step: int) -> Tensor:
        """[3, 4] camera-to-world of an unobserved camera for training view ``source``."""
        g = self.generator
        if self.config.pose_mode == "nearby":
            pool = self.nearby[source]
            return pool[int(torch.randint(len(pool), (1,), generator=g))]
        theta = pose_divergence(step, self.config.divergence_start, self.config.divergence_end, self.config.divergence_steps)
        az, el = ((torch.rand(2, generator=g) - 0.5) * theta).tolist()
        return orbit_pose(self.source_cameras.camera_to_worlds[source], self.centres[source], az, el)

    def patch_batch(self, step: int) -> dict[str, Any]:
        c = self.config
        g = self.generator
        source = int(torch.randint(len(self.train_dataset), (1,), generator=g))
        src = self.source_cameras[source]
        camera = Cameras(self.unobserved_pose(source, step)[None], src.fx, src.fy, src.cx, src.cy, src.width, src.height, src.distortion, src.camera_model)
        w, h = int(src.width[0]), int(src.height[0])
        x0 = int(torch.randint(w - c.patch_size + 1, (1,), generator=g))
        y0 = int(torch.randint(h - c.patch_size + 1, (1,), generator=g))
        n = c.patch_size // c.patch_stride
        grid = torch.arange(n, dtype=torch.float32) * c.patch_stride + 0.5 * c.patch_stride
        vv, uu = torch.meshgrid(grid + y0, grid + x0, indexing="ij")
        camera = camera.to(self.device)
        rays = camera.rays_for_pixels(torch.zeros(n * n, dtype=torch.long, device=self.device), uu.reshape(-1).to(self.device), vv.reshape(-1).to(self.device))
        return {
            "rays": rays, "shape": (n, n), "camera": camera, "source": source,
            "source_image": self.train_dataset.image(source).to(self.device), "source_camera": src.to(self.device),
        }


GeCoNeRFDataManagerConfig._target = GeCoNeRFDataManager
