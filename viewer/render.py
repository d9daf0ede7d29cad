"""From a browser camera to a picture: camera conversion, frame size, a frame's outputs (model and
panels), output colouring.

viser reports the browser's camera as ``T_world_camera`` in the OpenCV convention (x right, y down,
z forward), the same convention as :class:`recon.cameras.Cameras`, with a vertical field of view
in radians and the canvas size in pixels. Nothing here imports viser.
"""

from __future__ import annotations

import math
import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.panel_api import Panel
from recon.rotations import quaternion_to_matrix

COLORMAPS = ("turbo", "gray")


@dataclass(frozen=True)
class ViewCamera:
    """A browser camera: pose (quaternion w x y z, position), vertical fov (radians), canvas size."""

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov: float
    width: int
    height: int


def bounded(value: Any, lo: float, hi: float, default: float) -> float:
    """A GUI number as the server may use it: viser casts a browser's update to the widget's type
    but leaves its min and max to the browser, so a forged message can send anything (a 10^9-pixel
    frame size would stall rendering under the trainer's lock). ``default`` for NaN or a non-number."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return default if math.isnan(number) else min(max(number, lo), hi)


def frame_size(width: int, height: int, max_res: int) -> tuple[int, int]:
    """Canvas size scaled down (never up) so that its longest side is at most ``max_res``."""
    width, height = max(int(width), 1), max(int(height), 1)
    s = min(1.0, max_res / max(width, height))
    return max(1, round(width * s)), max(1, round(height * s))


def to_cameras(view: ViewCamera, max_res: int) -> Cameras:
    """One pinhole camera [1] for ``view`` at the frame size for ``max_res``."""
    w, h = frame_size(view.width, view.height, max_res)
    R = quaternion_to_matrix(torch.tensor(view.wxyz, dtype=torch.float64)).float()
    c2w = torch.cat([R, torch.tensor(view.position, dtype=torch.float32)[:, None]], 1)
    fy = 0.5 * h / math.tan(0.5 * view.fov)
    return Cameras(c2w, fy, fy, w / 2, h / 2, w, h)


def frame_outputs(
    model: Any, camera: Cameras, panels: list[Panel], lock: Any = None, pending: threading.Event | None = None
) -> dict[str, Tensor]:
    """The outputs of one viewer frame of ``model`` from ``camera`` (what the render thread shows).

    Under ``lock`` (the trainer's step lock while training), in eval mode and without gradients:
    the first panel whose :meth:`~recon.panel_api.Panel.render` returns outputs renders the frame,
    else ``model.render``; then, outside the lock, every panel's ``process_outputs`` in turn.
    ``pending`` is set while the lock is waited for and held (the trainer yields to it)."""
    if pending is not None:
        pending.set()
    try:
        with lock if lock is not None else contextlib.nullcontext(), torch.no_grad():
            on_device = camera.to(model.device)
            was_training = model.training
            model.eval()
            try:
                outputs = None
                for panel in panels:
                    outputs = panel.render(model, on_device)
                    if outputs is not None:
                        break
                if outputs is None:
                    outputs = model.render(on_device)
            finally:
                model.train(was_training)
    finally:
        if pending is not None:
            pending.clear()
    for panel in panels:
        outputs = panel.process_outputs(camera, outputs)
    return outputs


def _instance_colors(ids: Tensor) -> Tensor:
    """Integer ids [H, W] -> distinct colours [H, W, 3] (golden-ratio hues; id 0 stays black)."""
    ids = ids.long()
    hue = (ids.float() * 0.618033988749895) % 1.0
    k = torch.arange(3, dtype=torch.float32, device=ids.device)
    rgb = 0.5 + 0.5 * torch.cos(2 * math.pi * (hue[..., None] + k / 3))
    return torch.where((ids > 0)[..., None], rgb, torch.zeros_like(rgb))


def output_image(
    outputs: dict[str, Tensor],
    name: str,
    colormap: str = "turbo",
    background: Tensor | None = None,
    model_background: Tensor | None = None,
) -> np.ndarray:
    """One rendered output as an [H, W, 3] uint8 image for the browser.

    rgb: re-composited onto ``background`` [3] (the model composited onto ``model_background``, so
    ``rgb + (1 - accumulation) (background - model_background)``); normal: ``(n + 1) / 2``;
    instance: one colour per id; any other one-channel output: ``colormap`` over its range inside
    the rendered object (accumulation > 0.5) when the model renders accumulation.
    """
    from recon.export.video import colormap as apply_colormap
    from recon.export.video import to_uint8_frame

    value = outputs[name].detach().float()
    if value.ndim == 2:
        value = value[..., None]
    acc = outputs.get("accumulation")
    if name == "rgb" and background is not None and acc is not None:
        old = model_background if model_background is not None else torch.zeros(3)
        value = value + (1.0 - acc.float()) * (background.to(value) - old.to(value))
    elif name == "normal":
        value = (value + 1.0) / 2.0
    elif name == "instance":
        value = _instance_colors(value[..., 0] if value.shape[-1] == 1 else value.argmax(-1))
    elif value.shape[-1] == 1:
        mask = None if acc is None or name == "accumulation" else (acc.float() > 0.5)
        if mask is not None and not bool(mask.any()):
            mask = None
        value = apply_colormap(value.cpu(), colormap, mask=None if mask is None else mask.cpu())
    elif value.shape[-1] != 3:
        value = value[..., :3] if value.shape[-1] > 3 else value.mean(-1, keepdim=True)
    return to_uint8_frame(value.clamp(0, 1).cpu())
