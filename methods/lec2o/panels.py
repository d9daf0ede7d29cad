"""The lec2o viewer panel, "Learned occupancy": what the gate routes to the scene network.

"Show" switches the frame between the rendered image and an occupancy picture, each pixel the share
of its ray's samples the gate calls occupied (black: none, through red and yellow to white: all),
with the frame's occupied fraction written below; "Occupied points" puts the gate's occupied cells
of a grid over the scene box into the 3D scene. Reading the gate changes nothing in the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.panel_api import Panel, PanelContext

IMAGE, OCCUPANCY = "image", "occupied samples per ray"


@torch.no_grad()
def occupied_points(model: Any, resolution: int = 48) -> Tensor:
    """Centres [P, 3] of the cells of a ``resolution``^3 grid over the scene box where g_occ >= 1/2."""
    lo, hi = model.aabb
    axis = (torch.arange(resolution, device=lo.device, dtype=lo.dtype) + 0.5) / resolution
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    points = lo + cells * (hi - lo)
    return points[model.occupancy.gate(points) >= 0.5]


def heat(share: Tensor) -> Tensor:
    """Shares [...] in [0, 1] -> colours [..., 3]: black, red, yellow, white."""
    s = share.clamp(0, 1)[..., None] * 3
    return torch.cat([s, s - 1, s - 2], -1).clamp(0, 1)


@torch.no_grad()
def occupancy_frame(model: Any, camera: Cameras) -> tuple[dict[str, Tensor], float]:
    """The frame of ``camera`` with ``rgb`` replaced by :func:`heat` of each ray's occupied share,
    and the occupied fraction of all its samples."""
    rays = camera.generate_rays(0).to(model.device)
    h, w = int(camera.height[0]), int(camera.width[0])
    n = model.config.eval_num_rays_per_chunk
    chunks = [model.render_rays(rays[i : i + n]) for i in range(0, len(rays), n)]
    share = torch.cat([c["num_occupied"] for c in chunks]).float() / model.config.num_samples
    outputs = {k: torch.cat([c[k] for c in chunks]).reshape(h, w, -1) for k in ("depth", "accumulation")}
    outputs["rgb"] = heat(share).reshape(h, w, 3)
    return outputs, float(share.mean())


class OccupancyPanel(Panel):
    """See the module docstring."""

    title = "Learned occupancy"

    def __init__(self) -> None:
        self.show = IMAGE
        self.fraction: float | None = None
        self._status: Any = None

    def populate(self, context: PanelContext) -> None:
        gui = context.gui
        show = gui.add_dropdown("Show", options=[IMAGE, OCCUPANCY], initial_value=IMAGE, hint="Recolour the frame by the gate's routing.")
        self._status = gui.add_markdown("")
        button = gui.add_button("Occupied points", hint="Add the gate's occupied cells of a 48^3 grid to the scene.")

        def show_changed(_: Any) -> None:
            self.show = show.value
            context.rerender()

        def add_points(_: Any) -> None:
            points = occupied_points(context.model).cpu().numpy().astype(np.float32)
            context.scene.add_point_cloud("/lec2o/occupied", points=points, colors=np.array([255, 160, 40], dtype=np.uint8), point_size=0.01)
            if self._status is not None:
                self._status.content = f"{len(points)} occupied cells of 48^3"

        show.on_update(show_changed)
        button.on_click(add_points)

    def render(self, model: Any, camera: Cameras) -> dict[str, Tensor] | None:
        if self.show == IMAGE:
            return None
        outputs, self.fraction = occupancy_frame(model, camera)
        if self._status is not None:
            self._status.content = f"Occupied fraction of this frame's samples: {self.fraction:.3f}"
        return outputs
