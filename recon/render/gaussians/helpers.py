"""Small pieces every Gaussian method needs around :func:`rasterization`."""

from __future__ import annotations

import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.fields.spherical_harmonics import C0


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """The degree-0 coefficient whose colour (c * C0 + 0.5) is ``rgb``."""
    return (rgb - 0.5) / C0


def camera_matrices(camera: Cameras) -> tuple[Tensor, Tensor]:
    """Cameras [C] -> view matrices [C, 4, 4] (world-to-camera, OpenCV) and intrinsics [C, 3, 3]."""
    if camera.has_distortion:
        raise ValueError("Gaussian splatting renders pinhole cameras; undistort the images first")
    return camera.world_to_cameras(), camera.intrinsics_matrices()
