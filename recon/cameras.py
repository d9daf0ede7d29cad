"""Cameras and ray generation.

Convention inside recon is OpenCV: camera x right, y down, z forward; ``camera_to_worlds`` maps
camera coordinates to world coordinates. Pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``.
Parsers convert from OpenGL/Blender (x right, y up, camera looks down -z) and LLFF at load time
with :func:`opengl_to_opencv`.

Lens distortion is OpenCV's radial-tangential model restricted to ``k1, k2, p1, p2``. Rays for
distorted pixels are found by inverting the distortion with a few Newton steps.

Shapes: C cameras, R rays.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0]))


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """Flip the y and z camera axes: OpenGL/Blender camera-to-world [..., 3, 4|4] to OpenCV."""
    out = c2w.clone()
    out[..., :3, :3] = c2w[..., :3, :3] @ _OPENGL_TO_OPENCV.to(c2w)
    return out


@dataclass
class RayBundle:
    """Rays in world space.

    ``origins``/``directions`` are [R, 3] with unit-length directions; ``camera_indices`` [R] says
    which camera each ray came from; ``z_scale`` [R] is the camera-space z component of the unit
    direction, so that a distance ``t`` along the ray is the z-depth ``t * z_scale``.
    """

    origins: Tensor
    directions: Tensor
    camera_indices: Tensor
    z_scale: Tensor

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, idx) -> "RayBundle":
        return RayBundle(*(getattr(self, f.name)[idx] for f in fields(self)))

    def to(self, device) -> "RayBundle":
        return RayBundle(*(getattr(self, f.name).to(device) for f in fields(self)))

    def reshape(self, *shape: int) -> "RayBundle":
        return RayBundle(
            self.origins.reshape(*shape, 3),
            self.directions.reshape(*shape, 3),
            self.camera_indices.reshape(*shape),
            self.z_scale.reshape(*shape),
        )


def _distort(x: Tensor, y: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Apply OpenCV k1,k2,p1,p2 distortion to normalised coordinates; k is [..., 4]."""
    k1, k2, p1, p2 = k.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def undistort_points(xd: Tensor, yd: Tensor, k: Tensor, iterations: int = 10) -> tuple[Tensor, Tensor]:
    """Invert :func:`_distort` by Newton's method on normalised coordinates.

    xd, yd: [R] distorted normalised coordinates; k: [R, 4]. Returns undistorted (x, y).
    """
    x, y = xd.clone(), yd.clone()
    k1, k2, p1, p2 = k.unbind(-1)
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        dradial = 2 * k1 + 4 * k2 * r2  # d(radial)/d(r2)
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        # Jacobian of the distortion map.
        j00 = radial + x * dradial * 2 * x + 2 * p1 * y + 6 * p2 * x
        j01 = x * dradial * 2 * y + 2 * p1 * x + 2 * p2 * y
        j10 = y * dradial * 2 * x + 2 * p1 * x + 2 * p2 * y
        j11 = radial + y * dradial * 2 * y + 6 * p1 * y + 2 * p2 * x
        det = j00 * j11 - j01 * j10
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        x = x - (j11 * fx - j01 * fy) / det
        y = y - (-j10 * fx + j00 * fy) / det
    return x, y


@dataclass
class Cameras:
    """A set of C pinhole cameras with optional OpenCV distortion.

    camera_to_worlds: [C, 3, 4] OpenCV convention.
    fx, fy, cx, cy: [C] intrinsics in pixels.
    width, height: [C] int64 image sizes.
    distortion: [C, 4] (k1, k2, p1, p2); zeros for pinhole.
    """

    camera_to_worlds: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: Tensor
    height: Tensor
    distortion: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        c2w = torch.as_tensor(self.camera_to_worlds, dtype=torch.float32)
        if c2w.ndim == 2:
            c2w = c2w[None]
        if c2w.shape[-2:] == (4, 4):
            c2w = c2w[..., :3, :]
        if c2w.ndim != 3 or c2w.shape[-2:] != (3, 4):
            raise ValueError(f"camera_to_worlds must be [C, 3, 4], got {tuple(c2w.shape)}")
        n = c2w.shape[0]
        self.camera_to_worlds = c2w

        def vec(v, dtype=torch.float32):
            t = torch.as_tensor(v, dtype=dtype, device=c2w.device)
            return t.expand(n).clone() if t.ndim == 0 or t.numel() == 1 else t.reshape(n)

        self.fx, self.fy, self.cx, self.cy = (vec(v) for v in (self.fx, self.fy, self.cx, self.cy))
        self.width, self.height = vec(self.width, torch.int64), vec(self.height, torch.int64)
        if self.distortion is None:
            self.distortion = torch.zeros(n, 4, device=c2w.device)
        else:
            self.distortion = torch.as_tensor(self.distortion, dtype=torch.float32, device=c2w.device)
            self.distortion = self.distortion.reshape(n, 4) if self.distortion.numel() == 4 * n else self.distortion.expand(n, 4).clone()

    # -- container behaviour -------------------------------------------------------------------
    def __len__(self) -> int:
        return self.camera_to_worlds.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = [idx]
        return Cameras(*(getattr(self, f.name)[idx] for f in fields(self)))

    def to(self, device) -> "Cameras":
        return Cameras(*(getattr(self, f.name).to(device) for f in fields(self)))

    @property
    def device(self) -> torch.device:
        return self.camera_to_worlds.device

    @property
    def has_distortion(self) -> bool:
        return bool((self.distortion != 0).any())

    @staticmethod
    def cat(cams: list["Cameras"]) -> "Cameras":
        return Cameras(*(torch.cat([getattr(c, f.name) for c in cams]) for f in fields(Cameras)))

    def scaled(self, factor: float) -> "Cameras":
        """Cameras for images resized by ``factor`` (e.g. 0.5 halves width and height)."""
        w = torch.round(self.width.float() * factor).long()
        h = torch.round(self.height.float() * factor).long()
        sx, sy = w.float() / self.width.float(), h.float() / self.height.float()
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy, width=w, height=h)

    def intrinsics_matrices(self) -> Tensor:
        """[C, 3, 3] K matrices."""
        K = torch.zeros(len(self), 3, 3, device=self.device)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = self.fx, self.fy, self.cx, self.cy, 1.0
        return K

    def world_to_cameras(self) -> Tensor:
        """[C, 4, 4] world-to-camera (view) matrices."""
        R, t = self.camera_to_worlds[:, :, :3], self.camera_to_worlds[:, :, 3:]
        out = torch.eye(4, device=self.device).repeat(len(self), 1, 1)
        out[:, :3, :3] = R.transpose(1, 2)
        out[:, :3, 3:] = -R.transpose(1, 2) @ t
        return out

    # -- rays ----------------------------------------------------------------------------------
    def rays_for_pixels(self, camera_indices: Tensor, u: Tensor, v: Tensor) -> RayBundle:
        """Rays through pixel coordinates (continuous; centres are at +0.5).

        camera_indices: [R] int; u, v: [R] pixel coordinates (x right, y down).
        """
        i = camera_indices.long()
        x = (u - self.cx[i]) / self.fx[i]
        y = (v - self.cy[i]) / self.fy[i]
        k = self.distortion[i]
        if self.has_distortion:
            x, y = undistort_points(x, y, k)
        d_cam = torch.stack([x, y, torch.ones_like(x)], -1)
        d_cam = d_cam / d_cam.norm(dim=-1, keepdim=True)
        c2w = self.camera_to_worlds[i]
        directions = (c2w[:, :, :3] @ d_cam[..., None])[..., 0]
        directions = directions / directions.norm(dim=-1, keepdim=True)
        return RayBundle(c2w[:, :, 3].clone(), directions, i, d_cam[:, 2].contiguous())

    def generate_rays(self, camera_index: int = 0) -> RayBundle:
        """All rays of one camera, row-major: a RayBundle of H*W rays (reshape to [H, W])."""
        h, w = int(self.height[camera_index]), int(self.width[camera_index])
        vv, uu = torch.meshgrid(
            torch.arange(h, device=self.device, dtype=torch.float32) + 0.5,
            torch.arange(w, device=self.device, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        idx = torch.full((h * w,), camera_index, device=self.device, dtype=torch.long)
        return self.rays_for_pixels(idx, uu.reshape(-1), vv.reshape(-1))

    def project(self, points: Tensor, camera_index: int = 0) -> tuple[Tensor, Tensor]:
        """Project world points [P, 3] into camera ``camera_index``.

        Returns pixel coordinates [P, 2] (distortion applied) and z-depth [P].
        """
        w2c = self.world_to_cameras()[camera_index]
        pc = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[:, 2]
        x, y = pc[:, 0] / z, pc[:, 1] / z
        if self.has_distortion:
            x, y = _distort(x, y, self.distortion[camera_index].expand(len(x), 4))
        i = camera_index
        uv = torch.stack([x * self.fx[i] + self.cx[i], y * self.fy[i] + self.cy[i]], -1)
        return uv, z


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """OpenCV camera-to-world [C, 3, 4] for cameras at ``eye`` [C, 3] looking at ``target`` [C|1, 3].

    ``up`` is the world up direction (default +z); the camera's y axis points against it.
    """
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0])
    up = up.to(eye).expand_as(eye)
    z = target.to(eye).expand_as(eye) - eye
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.cross(z, up, dim=-1)  # right = forward x up in a right-handed frame
    degenerate = x.norm(dim=-1) < 1e-6
    if degenerate.any():  # looking along up: any perpendicular right vector will do
        ex = torch.tensor([1.0, 0.0, 0.0]).to(eye).expand_as(z)
        ey = torch.tensor([0.0, 1.0, 0.0]).to(eye).expand_as(z)
        cand = torch.cross(z, ex, dim=-1)
        cand = torch.where((cand.norm(dim=-1) < 1e-6)[:, None], torch.cross(z, ey, dim=-1), cand)
        x = torch.where(degenerate[:, None], cand, x)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)
    return torch.stack([x, y, z, eye], dim=-1)
