"""Small pieces every Gaussian method needs around :func:`rasterization`."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from recon.cameras import Cameras
from recon.errors import ConfigError
from recon.fields.spherical_harmonics import C0


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """The degree-0 coefficient whose colour (c * C0 + 0.5) is ``rgb``."""
    return (rgb - 0.5) / C0


def camera_matrices(camera: Cameras) -> tuple[Tensor, Tensor]:
    """Pinhole cameras [C] -> view matrices [C, 4, 4] (world-to-camera, OpenCV) and intrinsics [C, 3, 3].

    The rasterizers project through a pinhole. Whole-image datamanagers undistort distorted data
    at load time (``data.undistort``) and :func:`require_pinhole` refuses others before training,
    so a distorted camera here is a bug in the caller, not a user error."""
    if camera.has_distortion:
        raise ValueError("internal error: a distorted camera reached the pinhole rasterizer (whole-image data must be undistorted at load time)")
    return camera.world_to_cameras(), camera.intrinsics_matrices()


def require_pinhole(datamanager: Any, method: str) -> None:
    """ConfigError, before anything is written, when ``datamanager``'s training cameras are not all
    pinhole cameras (a datamanager that does not undistort, given lens-distorted data)."""
    cameras = getattr(getattr(datamanager, "train_dataset", None), "cameras", None)
    if isinstance(cameras, Cameras) and cameras.has_distortion:
        raise ConfigError(
            f"{method} rasterizes pinhole cameras, but its datamanager ({type(datamanager).__name__}) gives it lens-distorted ones;"
            " use a whole-image datamanager (ImageDataManager undistorts the images at load time)"
        )
