"""Cameras and ray generation.

Convention inside recon is OpenCV: camera x right, y down, z forward; ``camera_to_worlds`` maps
camera coordinates to world coordinates. Pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``.
Parsers convert from OpenGL/Blender (x right, y up, camera looks down -z) and LLFF at load time
with :func:`opengl_to_opencv`.

Two projection models (``Cameras.camera_model``), each with up to eight coefficients in
``Cameras.distortion``:

* ``PERSPECTIVE``: OpenCV's rational radial-tangential model (Brown 1971, "Close-range camera
  calibration"; the numerator/denominator form of OpenCV's ``CALIB_RATIONAL_MODEL``), coefficients
  in OpenCV's order ``k1, k2, p1, p2, k3, k4, k5, k6``. COLMAP's SIMPLE_PINHOLE, PINHOLE,
  SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV are all special cases.
* ``FISHEYE``: the equidistant model of Kannala and Brandt (2006, "A generic camera model and
  calibration method for conventional, wide-angle, and fish-eye lenses", TPAMI), OpenCV's
  ``cv2.fisheye`` and COLMAP's OPENCV_FISHEYE: ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 +
  k3 theta^6 + k4 theta^8)`` with ``k1..k4`` in the first four slots. Its rays may leave at more
  than 90 degrees from the optical axis.

Rays for distorted pixels invert the model by Newton's method (2-D for perspective, 1-D in the
angle for fisheye); :meth:`Cameras.project` applies it forwards.

Shapes: C cameras, R rays, P points.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

PERSPECTIVE = 0
FISHEYE = 1
CAMERA_MODEL_NAMES = ("perspective", "fisheye")
"""``Cameras.camera_model`` value -> name."""
MAX_IMAGE_SIDE = 1 << 16
"""Largest image width or height a file may declare for a camera (65536, the limit of common image formats)."""
NUM_DISTORTION = 8
"""Coefficients per camera in ``Cameras.distortion``."""
_FISHEYE_MAX_THETA = 3.1  # radians: the angle a fisheye ray is clamped below (just short of straight back)

PIXEL_RADIUS_FACTOR = 2.0 / 12.0**0.5
"""A square pixel of width w matches the variance of a disc of radius w * 2 / sqrt(12) (mip-NeRF)."""

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
    direction, so that a distance ``t`` along the ray is the z-depth ``t * z_scale``;
    ``pixel_radius`` [R] is the radius of the cone through the pixel at unit distance along the ray
    (mip-NeRF's base radius: the pixel's width there times 2 / sqrt(12); Barron et al. 2021, sec. 3.1).
    """

    origins: Tensor
    directions: Tensor
    camera_indices: Tensor
    z_scale: Tensor
    pixel_radius: Tensor

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
            self.pixel_radius.reshape(*shape),
        )


def _full(k: Tensor) -> Tensor:
    """Distortion coefficients [..., n <= 8] padded with zeros to [..., 8]."""
    if k.shape[-1] == NUM_DISTORTION:
        return k
    return torch.cat([k, k.new_zeros(*k.shape[:-1], NUM_DISTORTION - k.shape[-1])], -1)


def _radial(r2: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """The rational radial factor (1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 + k5 r^4 + k6 r^6)
    at r2 [R] and its derivative with respect to r2; k [R, 8] in OpenCV's order."""
    k1, k2, _, _, k3, k4, k5, k6 = k.unbind(-1)
    a = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    b = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
    da = k1 + r2 * (2 * k2 + 3 * k3 * r2)
    db = k4 + r2 * (2 * k5 + 3 * k6 * r2)
    return a / b, (da * b - a * db) / (b * b)


def _distort(x: Tensor, y: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the perspective model's distortion to normalised coordinates x, y [R]; k [R, n <= 8]
    (or [n], one lens for all) in OpenCV's order (k1, k2, p1, p2, k3, k4, k5, k6)."""
    k = _full(k)
    p1, p2 = k[..., 2], k[..., 3]
    r2 = x * x + y * y
    radial, _ = _radial(r2, k)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def undistort_points(xd: Tensor, yd: Tensor, k: Tensor, iterations: int = 10) -> tuple[Tensor, Tensor]:
    """Invert :func:`_distort` by Newton's method on normalised coordinates.

    xd, yd: [R] distorted normalised coordinates; k: [R, n <= 8]. Returns undistorted (x, y).
    """
    k = _full(k)
    p1, p2 = k[..., 2], k[..., 3]
    x, y = xd.clone(), yd.clone()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial, g = _radial(r2, k)  # g = d(radial)/d(r2)
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        j00 = radial + 2 * x * x * g + 2 * p1 * y + 6 * p2 * x
        j01 = 2 * x * y * g + 2 * p1 * x + 2 * p2 * y
        j11 = radial + 2 * y * y * g + 6 * p1 * y + 2 * p2 * x
        det = j00 * j11 - j01 * j01  # the Jacobian is symmetric
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        x = x - (j11 * fx - j01 * fy) / det
        y = y - (-j01 * fx + j00 * fy) / det
    return x, y


def _fisheye_theta_d(theta: Tensor, k: Tensor) -> Tensor:
    """Kannala-Brandt distorted angle theta_d [R] of angles theta [R] from the optical axis; k [R, 8] or [8]."""
    k1, k2, k3, k4 = k[..., :4].unbind(-1)
    t2 = theta * theta
    return theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))


def fisheye_theta(theta_d: Tensor, k: Tensor, iterations: int = 10) -> Tensor:
    """Invert :func:`_fisheye_theta_d` by Newton's method: angles [R] in [0, 3.1] from theta_d [R] >= 0."""
    k1, k2, k3, k4 = _full(k)[..., :4].unbind(-1)
    theta = theta_d.clone()
    for _ in range(iterations):
        t2 = theta * theta
        f = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - theta_d
        df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + 9 * k4 * t2)))
        df = torch.where(df.abs() < 1e-12, torch.full_like(df, 1e-12), df)
        theta = (theta - f / df).clamp(0.0, _FISHEYE_MAX_THETA)
    return theta


@dataclass
class Cameras:
    """A set of C cameras: pinhole, distorted perspective or fisheye (see the module docstring).

    camera_to_worlds: [C, 3, 4] OpenCV convention.
    fx, fy, cx, cy: [C] intrinsics in pixels.
    width, height: [C] int64 image sizes.
    distortion: [C, 8] coefficients of each camera's model (zeros: pinhole); fewer columns
        (e.g. OpenCV's k1, k2, p1, p2) are padded with zeros, one row is shared by all cameras.
    camera_model: [C] int64, ``PERSPECTIVE`` (default) or ``FISHEYE``.
    """

    camera_to_worlds: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: Tensor
    height: Tensor
    distortion: Tensor = field(default=None)  # type: ignore[assignment]
    camera_model: Tensor = field(default=None)  # type: ignore[assignment]

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
        d = torch.zeros(n, NUM_DISTORTION) if self.distortion is None else torch.as_tensor(self.distortion, dtype=torch.float32)
        d = d.to(c2w.device)
        if d.ndim == 1:
            d = d[None]
        if d.ndim != 2 or d.shape[-1] > NUM_DISTORTION or d.shape[0] not in (1, n):
            raise ValueError(f"distortion must be [C, <= {NUM_DISTORTION}] or one row, got {tuple(d.shape)} for {n} cameras")
        self.distortion = _full(d).expand(n, NUM_DISTORTION).clone()
        self.camera_model = vec(PERSPECTIVE if self.camera_model is None else self.camera_model, torch.int64)
        if not bool(((self.camera_model == PERSPECTIVE) | (self.camera_model == FISHEYE)).all()):
            raise ValueError(f"camera_model must be {PERSPECTIVE} (perspective) or {FISHEYE} (fisheye)")

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
        """Whether any camera is not a plain pinhole (distortion coefficients or a fisheye model)."""
        return bool((self.distortion != 0).any()) or bool((self.camera_model != PERSPECTIVE).any())

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
    def pixel_directions(self, camera_indices: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """Unit camera-space directions [R, 3] of the rays through pixel coordinates (continuous;
        centres are at +0.5), with each camera's distortion inverted.

        camera_indices: [R] int; u, v: [R] pixel coordinates (x right, y down).
        """
        i = camera_indices.long()
        x = (u - self.cx[i]) / self.fx[i]
        y = (v - self.cy[i]) / self.fy[i]
        if not self.has_distortion:
            d = torch.stack([x, y, torch.ones_like(x)], -1)
            return d / d.norm(dim=-1, keepdim=True)
        k = self.distortion[i]
        fisheye = self.camera_model[i] == FISHEYE
        d = torch.empty(len(x), 3, dtype=x.dtype, device=x.device)
        flat = ~fisheye
        if bool(flat.any()):
            xu, yu = undistort_points(x[flat], y[flat], k[flat])
            d[flat] = torch.stack([xu, yu, torch.ones_like(xu)], -1)
        if bool(fisheye.any()):
            xd, yd = x[fisheye], y[fisheye]
            rd = torch.sqrt(xd * xd + yd * yd)
            theta = fisheye_theta(rd, k[fisheye])
            # sin(theta) / theta_d tends to 1 on the optical axis, where theta = theta_d = 0
            s = torch.where(rd > 1e-9, torch.sin(theta) / rd.clamp_min(1e-9), torch.ones_like(rd))
            d[fisheye] = torch.stack([xd * s, yd * s, torch.cos(theta)], -1)
        return d / d.norm(dim=-1, keepdim=True)

    def rays_for_pixels(self, camera_indices: Tensor, u: Tensor, v: Tensor) -> RayBundle:
        """Rays through pixel coordinates (continuous; centres are at +0.5).

        camera_indices: [R] int; u, v: [R] pixel coordinates (x right, y down).
        """
        i = camera_indices.long()
        d_cam = self.pixel_directions(i, u, v)
        c2w = self.camera_to_worlds[i]
        directions = (c2w[:, :, :3] @ d_cam[..., None])[..., 0]
        directions = directions / directions.norm(dim=-1, keepdim=True)
        z_scale = d_cam[:, 2].contiguous()
        # A pixel is 1 / f wide at unit z-depth, i.e. z_scale / f at unit distance along its ray.
        radius = PIXEL_RADIUS_FACTOR * z_scale.abs() / torch.sqrt(self.fx[i] * self.fy[i])
        return RayBundle(c2w[:, :, 3].clone(), directions, i, z_scale, radius)

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

    def camera_to_pixels(self, points: Tensor, camera_index: int = 0) -> Tensor:
        """Pixel coordinates [P, 2] (centres at +0.5, distortion applied) of camera-space points
        [P, 3] in camera ``camera_index``. Perspective cameras need z > 0; fisheye ones take any
        direction."""
        i = camera_index
        X, Y, Z = points.unbind(-1)
        k = self.distortion[i]  # [8], broadcast against the points
        if int(self.camera_model[i]) == FISHEYE:
            rho = torch.sqrt(X * X + Y * Y)
            theta_d = _fisheye_theta_d(torch.atan2(rho, Z), k)
            # theta_d / rho tends to 1 / Z on the optical axis
            s = torch.where(rho > 1e-9, theta_d / rho.clamp_min(1e-9), 1.0 / Z)
            x, y = X * s, Y * s
        else:
            x, y = X / Z, Y / Z
            if bool((self.distortion[i] != 0).any()):
                x, y = _distort(x, y, k)
        return torch.stack([x * self.fx[i] + self.cx[i], y * self.fy[i] + self.cy[i]], -1)

    def project(self, points: Tensor, camera_index: int = 0) -> tuple[Tensor, Tensor]:
        """Project world points [P, 3] into camera ``camera_index``.

        Returns pixel coordinates [P, 2] (distortion applied) and z-depth [P].
        """
        w2c = self.world_to_cameras()[camera_index]
        pc = points @ w2c[:3, :3].T + w2c[:3, 3]
        return self.camera_to_pixels(pc, camera_index), pc[:, 2]


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
