"""The geconerf viewer panel, "GeCoNeRF patch": the last unobserved camera as a frustum in the
scene, and its patch as one picture: rendered | warped from the input view | mask (white: pixels
the consistency loss compares). It shows what the regulariser saw at its latest step; nothing here
changes training."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.panel_api import Panel, PanelContext


class PatchSnapshot(NamedTuple):
    """One regularisation step as the panel shows it (CPU tensors)."""

    step: int
    camera: Cameras
    """The unobserved camera [1]."""
    rendered: Tensor
    """[h, w, 3] the patch rendered at the unobserved pose."""
    warped: Tensor
    """[h, w, 3] the input view warped into the patch."""
    mask: Tensor
    """[h, w] bool: compared pixels."""


def patch_picture(snapshot: PatchSnapshot) -> np.ndarray:
    """uint8 [h, 3 w, 3]: rendered, warped and mask side by side."""
    mask = snapshot.mask.float()[..., None].expand(-1, -1, 3)
    tiles = torch.cat([snapshot.rendered, snapshot.warped, mask], 1)
    return (tiles.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


class UnobservedPatchPanel(Panel):
    """Refreshed with every viewer frame when the model has a newer snapshot."""

    title = "GeCoNeRF patch"

    def __init__(self, model: Any):
        self.model = model
        self._shown = -1
        self._image: Any = None
        self._scene: Any = None

    def populate(self, context: PanelContext) -> None:
        self._image = context.gui.add_image(np.zeros((8, 24, 3), dtype=np.uint8), label="rendered | warped | mask")
        self._scene = context.scene
        self.refresh()

    def refresh(self) -> None:
        snapshot: PatchSnapshot | None = getattr(self.model, "last_patch", None)
        if snapshot is None or snapshot.step == self._shown or self._image is None:
            return
        self._shown = snapshot.step
        self._image.image = patch_picture(snapshot)
        from recon.rotations import matrix_to_quaternion

        cam = snapshot.camera
        c2w = cam.camera_to_worlds[0].double()
        fov = 2 * math.atan(0.5 * float(cam.height[0]) / float(cam.fy[0]))  # vertical, as viser's
        self._scene.add_camera_frustum(
            "/geconerf/unobserved", fov=fov, aspect=float(cam.width[0]) / float(cam.height[0]), scale=0.1,
            wxyz=matrix_to_quaternion(c2w[None, :, :3])[0].numpy(), position=c2w[:, 3].numpy(), color=(40, 200, 80),
        )

    def process_outputs(self, camera: Cameras, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        self.refresh()
        return outputs
