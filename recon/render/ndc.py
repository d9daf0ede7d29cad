"""Normalised device coordinates (NDC) for forward-facing captures.

NeRF (Mildenhall et al. 2020, appendix C, "NDC ray space derivation") renders forward-facing LLFF
scenes in the projective space of one reference camera: a world point ``(x, y, z)`` in that
camera's frame (here OpenCV: x right, y down, z forward) maps to

    x' = a_x x / z,   y' = a_y y / z,   z' = 1 - 2 n / z,      a_x = 2 f_x / W,  a_y = 2 f_y / H,

so the reference frustum from the near plane ``z = n`` to infinity becomes the cube [-1, 1]^3
and straight lines stay straight. A ray is first moved onto the near plane; in NDC it then runs
from ``o'`` along ``d'`` for a parameter in [0, 1] (z from n to infinity):

    o' = (a_x o_x / o_z, a_y o_y / o_z, 1 - 2 n / o_z),
    d' = (a_x (d_x / d_z - o_x / o_z), a_y (d_y / d_z - o_y / o_z), 2 n / o_z).

NeRF writes the same map for a camera looking down -z (OpenGL); the two agree with y' negated.
Here NDC rays are returned with unit directions and a far bound ``|d'|``, so samplers and volume
rendering run on them unchanged (the density integral is in NDC distance, as in NeRF and
mip-NeRF). :class:`RaySpace` is the option ray methods share (``ray_space`` in their configs).

Shapes: R rays, P points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from recon.cameras import RayBundle
from recon.errors import ConfigError

RaySpaceName = Literal["auto", "euclidean", "ndc"]

NDC_NEAR_FRACTION = 0.75
"""The NDC near plane as a fraction of the nearest depth bound: NeRF rescales LLFF scenes so the
nearest bound is 1 / 0.75 and puts the plane at 1."""

_MAX_Z_NDC = 1.0 - 1e-6  # z' below 1 keeps z = 2n / (1 - z') finite at the far end of a ray


@dataclass
class NDCFrame:
    """The reference camera of an NDC space: ``camera_to_world`` [3, 4] (OpenCV, normalised world),
    near-plane distance ``near`` along its z axis, and ``ax = 2 fx / W``, ``ay = 2 fy / H``."""

    camera_to_world: Tensor
    near: float
    ax: float
    ay: float

    def to_metadata(self) -> dict[str, Any]:
        """Plain lists and floats (dataset metadata is JSON-able)."""
        return {"camera_to_world": self.camera_to_world.tolist(), "near": self.near, "ax": self.ax, "ay": self.ay}

    @staticmethod
    def from_metadata(meta: dict[str, Any]) -> "NDCFrame":
        return NDCFrame(torch.tensor(meta["camera_to_world"], dtype=torch.float32), float(meta["near"]), float(meta["ax"]), float(meta["ay"]))


def reference_pose(c2w: np.ndarray) -> np.ndarray:
    """NeRF's average pose of OpenCV camera-to-worlds [C, 3, 4]: centre = mean centre, z = mean
    viewing direction, y = mean down vector made orthogonal to z. Returns [3, 4]."""
    c2w = np.asarray(c2w, dtype=np.float64)
    z = c2w[:, :, 2].sum(0)
    z /= np.linalg.norm(z)
    x = np.cross(c2w[:, :, 1].sum(0), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z, c2w[:, :, 3].mean(0)], axis=1)


def ndc_frame(c2w: np.ndarray, fx: float, fy: float, width: float, height: float, min_depth: float) -> NDCFrame:
    """The NDC space of a forward-facing capture: NeRF's average pose of ``c2w`` [C, 3, 4], the
    near plane at :data:`NDC_NEAR_FRACTION` of the nearest depth bound ``min_depth``, and one
    camera's intrinsics (fx / W is independent of the image scale)."""
    return NDCFrame(torch.from_numpy(reference_pose(c2w)).float(), NDC_NEAR_FRACTION * float(min_depth), 2.0 * fx / width, 2.0 * fy / height)


def _to_reference(frame: NDCFrame, points: Tensor, vectors: bool = False) -> Tensor:
    m = frame.camera_to_world.to(points)
    p = points if vectors else points - m[:, 3]
    return p @ m[:, :3]


def world_to_ndc(points: Tensor, frame: NDCFrame) -> Tensor:
    """World points [P, 3] (in front of the reference camera) to NDC [P, 3]."""
    x, y, z = _to_reference(frame, points).unbind(-1)
    return torch.stack([frame.ax * x / z, frame.ay * y / z, 1.0 - 2.0 * frame.near / z], -1)


def ndc_to_world(points: Tensor, frame: NDCFrame) -> Tensor:
    """NDC points [P, 3] (z' < 1) back to world [P, 3]: the inverse of :func:`world_to_ndc`."""
    xn, yn, zn = points.unbind(-1)
    z = 2.0 * frame.near / (1.0 - zn)
    local = torch.stack([xn * z / frame.ax, yn * z / frame.ay, z], -1)
    m = frame.camera_to_world.to(points)
    return local @ m[:, :3].T + m[:, 3]


def ndc_rays(origins: Tensor, directions: Tensor, frame: NDCFrame) -> tuple[Tensor, Tensor, Tensor]:
    """World rays (origins, directions [R, 3]) to NDC rays.

    Returns NDC origins [R, 3] (on the near plane, z' = -1), unit NDC directions [R, 3] and the
    NDC distance [R] at which each ray reaches z = infinity (z' = 1). Rays must point away from
    the reference camera (d_z > 0 in its frame); others are clamped to a tiny positive d_z.
    """
    o = _to_reference(frame, origins)
    d = _to_reference(frame, directions, vectors=True)
    dz = d[:, 2].clamp_min(1e-6)
    o = o + ((frame.near - o[:, 2]) / dz)[:, None] * d
    oz = o[:, 2]
    o_ndc = torch.stack([frame.ax * o[:, 0] / oz, frame.ay * o[:, 1] / oz, 1.0 - 2.0 * frame.near / oz], -1)
    d_ndc = torch.stack(
        [frame.ax * (d[:, 0] / dz - o[:, 0] / oz), frame.ay * (d[:, 1] / dz - o[:, 1] / oz), 2.0 * frame.near / oz], -1
    )
    length = d_ndc.norm(dim=-1)
    return o_ndc, d_ndc / length[:, None], length


def ndc_distance_to_world(s: Tensor, origins: Tensor, directions: Tensor, frame: NDCFrame) -> Tensor:
    """Distances ``s`` [R, S] along unit NDC rays (from :func:`ndc_rays` of the world rays
    origins/directions [R, 3], unit directions) to Euclidean distances [R, S] along the world rays."""
    o_ndc, d_ndc, _ = ndc_rays(origins, directions, frame)
    zn = (o_ndc[:, 2:3] + s * d_ndc[:, 2:3]).clamp_max(_MAX_Z_NDC)
    z = 2.0 * frame.near / (1.0 - zn)
    o = _to_reference(frame, origins)
    d = _to_reference(frame, directions, vectors=True)
    return (z - o[:, 2:3]) / d[:, 2:3].clamp_min(1e-6)


class RaySpace(nn.Module):
    """Where a ray method samples and evaluates its field: the world (Euclidean), or NDC of the
    dataset's forward-facing reference camera (``SceneInfo.metadata["ndc"]``, written by the LLFF
    parser). ``auto`` is NDC when the dataset has such a frame, else Euclidean.

    :meth:`rays` maps world rays and their bounds into the space; :meth:`world_distance` maps
    distances along the mapped rays back to distances along the world rays (for depth outputs).
    """

    def __init__(self, choice: RaySpaceName, metadata: dict[str, Any], far: float | None = None):
        super().__init__()
        if choice not in ("auto", "euclidean", "ndc"):
            raise ConfigError(f"unknown ray_space {choice!r} (auto, euclidean or ndc)")
        meta = metadata.get("ndc")
        if choice == "ndc" and meta is None:
            raise ConfigError("ray_space ndc needs a forward-facing dataset with an NDC reference camera (LLFF poses_bounds.npy)")
        self.frame = NDCFrame.from_metadata(meta) if meta is not None and choice != "euclidean" else None
        self.far = far

    @property
    def is_ndc(self) -> bool:
        return self.frame is not None

    def rays(self, rays: RayBundle, near: Tensor, far: Tensor) -> tuple[RayBundle, Tensor, Tensor]:
        """(rays [R], near [R], far [R]) in this space: unchanged in the world; NDC rays from 0
        to z = infinity otherwise (the dataset bounds are then not used, as in NeRF), whose
        ``pixel_radius`` is then the radius of the pixel's (cylindrical) footprint in NDC units."""
        if self.frame is None:
            return rays, near, far
        o, d, length = ndc_rays(rays.origins, rays.directions, self.frame)
        # In NDC a pixel's footprint is about constant along the ray (mip-NeRF uses cylinders there):
        # 1 / f per unit z-depth becomes sqrt(ax ay) / f, i.e. 2 / W for square pixels.
        radius = rays.pixel_radius / rays.z_scale.abs().clamp_min(1e-6) * (self.frame.ax * self.frame.ay) ** 0.5
        return RayBundle(o, d, rays.camera_indices, rays.z_scale, radius), torch.zeros_like(length), length

    def world_distance(self, rays: RayBundle, t: Tensor) -> Tensor:
        """Distances t [R, S] along the rays of :meth:`rays` to distances along the world ``rays``,
        clipped to the dataset's far bound in NDC (infinity is where NDC rays end)."""
        if self.frame is None:
            return t
        out = ndc_distance_to_world(t, rays.origins, rays.directions, self.frame)
        return out if self.far is None else out.clamp_max(self.far / rays.z_scale.clamp_min(1e-6)[:, None])
