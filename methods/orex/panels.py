"""The OReX viewer panel, "Cross-sections": the input planes and a slice through the occupancy field.

* **Show contours**: every input contour as a closed 3D polyline (outer contours green, holes red).
* **Show planes**: each input plane as a translucent quad over its contours' 2-D bounding box
  (padded by a fifth of its extent).
* **Show slice**, **Slice axis** (x, y, z), **Slice offset** and **Slice resolution**: the model's
  final logit (``model.sdf``, negative inside) on a resolution x resolution grid of cell centres
  across the scene box, in the plane ``axis = offset``, drawn as coloured points: blue inside,
  orange outside, paler towards the 0-level so that the fitted contour shows as a light band.

Everything is in the normalised frame the model is trained in, which is the viewer's world frame:
the ``.csl`` parser maps input units by ``x_n = dataparser_scale * (x + dataparser_transform[:, 3])``
and the model, the scene box and the viewer all work on ``x_n``. The slice is evaluated in
:meth:`CrossSectionPanel.render`, which the viewer calls with the model locked (between training
steps), so it follows training; reading the field changes nothing in the model. OReX renders no
images, so that method also returns an empty frame (the background colour) for the viewer to draw
the panel's 3D objects over.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.panel_api import Panel, PanelContext

AXES = ("x", "y", "z")
OUTER_COLOR, HOLE_COLOR = (40, 200, 90), (230, 60, 60)
PLANE_COLOR = (120, 160, 255)
INSIDE_COLOR, OUTSIDE_COLOR = np.array([30, 90, 230], dtype=np.float64), np.array([240, 140, 30], dtype=np.float64)


def contour_polylines(sections: Any) -> list[tuple[np.ndarray, bool]]:
    """Every contour of ``sections`` (:class:`data.cross_sections.CrossSections`, or None: none) as
    a closed polyline [n + 1, 3] (its first vertex repeated at the end) with whether it is a hole."""
    lines = []
    for sec in [] if sections is None else sections.sections:
        for c in sec.contours:
            v = sec.vertices[c.indices]
            lines.append((np.concatenate([v, v[:1]]), c.is_hole))
    return lines


def line_segments(lines: list[tuple[np.ndarray, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Polylines -> viser's line segments [N, 2, 3] float32 and colours [N, 2, 3] uint8."""
    if not lines:
        return np.zeros((0, 2, 3), np.float32), np.zeros((0, 2, 3), np.uint8)
    segments = np.concatenate([np.stack([p[:-1], p[1:]], 1) for p, _ in lines]).astype(np.float32)
    colors = np.concatenate([np.tile(np.array(HOLE_COLOR if hole else OUTER_COLOR, np.uint8), (len(p) - 1, 2, 1)) for p, hole in lines])
    return segments, colors


def plane_quads(sections: Any, pad: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """One quad per plane with vertices over its contours' 2-D bounding box padded by ``pad`` of
    its extent: vertices [4 P, 3] float32 and faces [2 P, 3] (planes without vertices skipped)."""
    vertices, faces = [], []
    for sec in [] if sections is None else sections.sections:
        if not len(sec.vertices):
            continue
        lo, hi = sec.uv_bounds(pad)
        k = 4 * len(vertices)
        vertices.append(sec.to_3d(np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])))
        faces.append(np.array([[k, k + 1, k + 2], [k, k + 2, k + 3]]))
    if not vertices:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    return np.concatenate(vertices).astype(np.float32), np.concatenate(faces)


def slice_points(aabb: Tensor, axis: int, offset: float, resolution: int) -> Tensor:
    """Cell centres [R, R, 3] of a ``resolution``^2 grid across the box ``aabb`` [2, 3] in the plane
    ``x[axis] = offset`` (the grid's first index runs along the first other axis)."""
    lo, hi = aabb[0].double(), aabb[1].double()
    others = [a for a in range(3) if a != axis]
    ticks = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    u = lo[others[0]] + ticks * (hi[others[0]] - lo[others[0]])
    v = lo[others[1]] + ticks * (hi[others[1]] - lo[others[1]])
    points = torch.zeros(resolution, resolution, 3, dtype=torch.float64)
    points[..., others[0]] = u[:, None]
    points[..., others[1]] = v[None, :]
    points[..., axis] = float(offset)
    return points


def logit_colors(logits: np.ndarray) -> np.ndarray:
    """Logits [...] -> uint8 colours [..., 3]: blue where negative (inside), orange elsewhere,
    blended towards white near 0 (the surface)."""
    z = np.asarray(logits, dtype=np.float64)
    strength = (0.25 + 0.75 * np.tanh(np.abs(z) / 2.0))[..., None]
    base = np.where((z < 0)[..., None], INSIDE_COLOR, OUTSIDE_COLOR)
    return np.round(255.0 + strength * (base - 255.0)).astype(np.uint8)


@torch.no_grad()
def field_slice(model: Any, aabb: Tensor, axis: int, offset: float, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's final logit on :func:`slice_points`: points [R, R, 3] and logits [R, R] (numpy)."""
    points = slice_points(aabb, axis, offset, resolution)
    logits = model.sdf(points.reshape(-1, 3).to(device=model.device, dtype=torch.float32))
    return points.numpy(), logits.double().cpu().numpy().reshape(resolution, resolution)


@torch.no_grad()
def fingerprint(model: Any) -> tuple[float, ...]:
    """A cheap summary of the model's parameters that changes when an optimizer step does."""
    return tuple(float(p.double().sum()) for p in model.parameters())


def empty_frame(camera: Cameras, device: Any) -> dict[str, Tensor]:
    """A frame with nothing rendered: rgb 0 and accumulation 0, so the viewer shows its background."""
    h, w = int(camera.height[0]), int(camera.width[0])
    return {"rgb": torch.zeros(h, w, 3, device=device), "accumulation": torch.zeros(h, w, 1, device=device)}


class CrossSectionPanel(Panel):
    """See the module docstring. ``sections``: the normalised :class:`data.cross_sections.CrossSections`
    the model trains on (None: no contours or planes to draw, the slice and the frame still work);
    ``aabb`` [2, 3]: the scene box (the slice's extent)."""

    title = "Cross-sections"

    def __init__(self, sections: Any, aabb: Tensor):
        self.sections = sections
        self.aabb = aabb.detach().double().cpu()
        self.show_slice = False
        self.axis, self.offset, self.resolution = 2, float(self.aabb[:, 2].mean()), 96
        self.last_slice: tuple[np.ndarray, np.ndarray] | None = None
        """The points [R, R, 3] and logits [R, R] of the slice last drawn (None: none yet)."""
        self._drawn: tuple | None = None
        self._scene: Any = None
        self._slice_handle: Any = None
        self._lock = threading.Lock()

    def populate(self, context: PanelContext) -> None:
        gui, scene = context.gui, context.scene
        self._scene = scene
        show_contours = gui.add_checkbox("Show contours", initial_value=True)
        show_planes = gui.add_checkbox("Show planes", initial_value=False)
        show_slice = gui.add_checkbox("Show slice", initial_value=False, hint="The field's logit in a plane: blue inside, orange outside.")
        axis = gui.add_dropdown("Slice axis", options=AXES, initial_value=AXES[self.axis])
        lo, hi = float(self.aabb.min()), float(self.aabb.max())
        offset = gui.add_slider("Slice offset", min=lo, max=hi, step=(hi - lo) / 200, initial_value=self.offset)
        resolution = gui.add_slider("Slice resolution", min=16, max=256, step=16, initial_value=self.resolution)

        segments, colors = line_segments(contour_polylines(self.sections))
        contours = scene.add_line_segments("/orex/contours", segments, colors, thickness=3.0, thickness_units="screen", visible=True)
        vertices, faces = plane_quads(self.sections)
        planes = scene.add_mesh_simple("/orex/planes", vertices, faces, color=PLANE_COLOR, opacity=0.25, side="double", visible=False)

        def set_visible(handle: Any, widget: Any) -> Any:
            def changed(_: Any) -> None:
                handle.visible = bool(widget.value)

            return changed

        def slice_changed(_: Any) -> None:
            with self._lock:
                self.show_slice = bool(show_slice.value)
                self.axis = AXES.index(axis.value)
                self.offset = float(offset.value)
                self.resolution = int(resolution.value)
            if not self.show_slice and self._slice_handle is not None:
                self._slice_handle.visible = False
                self._drawn = None
            context.rerender()

        show_contours.on_update(set_visible(contours, show_contours))
        show_planes.on_update(set_visible(planes, show_planes))
        for widget in (show_slice, axis, offset, resolution):
            widget.on_update(slice_changed)

    def draw_slice(self, model: Any) -> None:
        """Evaluate the field on the current slice and put it into the scene (with the model locked),
        unless neither the settings nor the model's parameters changed since the last one."""
        with self._lock:
            axis, offset, resolution = self.axis, self.offset, self.resolution
        key = (axis, offset, resolution, fingerprint(model))
        if key == self._drawn:
            return
        self._drawn = key
        points, logits = field_slice(model, self.aabb, axis, offset, resolution)
        self.last_slice = (points, logits)
        if self._scene is not None:
            cell = float((self.aabb[1] - self.aabb[0]).max()) / resolution
            self._slice_handle = self._scene.add_point_cloud(
                "/orex/slice", points.reshape(-1, 3).astype(np.float32), logit_colors(logits).reshape(-1, 3),
                point_size=cell, point_shape="square", point_shading="flat", visible=True,
            )

    def render(self, model: Any, camera: Cameras) -> dict[str, Tensor] | None:
        if self.show_slice:
            self.draw_slice(model)
        return empty_frame(camera, model.device)


__all__ = ["CrossSectionPanel", "contour_polylines", "field_slice", "line_segments", "logit_colors", "plane_quads", "slice_points"]
