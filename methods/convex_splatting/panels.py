"""The 3dcs viewer panel, "3D convexes": render-time controls that hold for any number of points K.

* **Sharpness** (log2 scale): sigma x 2^value. The indicator is I = sigmoid(-s sigma phi) with
  phi = logsumexp_e(s delta L_e): sigma scales only the sigmoid's slope, so the boundary I = 1/2
  (phi = 0) stays where it is and the edges get harder (alpha closer to binary) or softer.
* **Corners** (log2 scale): delta x 2^value. Near one edge phi ~ s delta L_e, so delta sharpens
  the straight edges like sigma does; at the corners the log-sum term shrinks as delta grows, so
  the convex also fills out towards its hull polygon (lower values round it off).
* **Min opacity**: convexes whose opacity (x the mask) is below it are not drawn.
* **Show hulls**: the outlines of the projected 2D hulls of the most opaque convexes in view
  (at most "Max hulls"), one colour per convex, one pixel wide, nearer outlines on top; an
  outline pixel is hidden where the rendered surface lies more than ``HULL_DEPTH_TOLERANCE``
  in front of the convex's centre. Drawn into the rendered colour before the other panels'
  ``process_outputs`` (so the viewer's crop box hides outlines outside it too).

Nothing here changes the model: the panel renders the viewer's frame itself
(:meth:`ConvexPanel.render`, called by the viewer with the model locked) from scaled copies of
the activated primitives, and only when a control is away from its default; training, evaluation
and exports use ``model.render`` / ``forward`` and never see these settings.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.panel_api import Panel, PanelContext
from recon.render.convex import hull_edge_pairs

HULL_DEPTH_TOLERANCE = 0.05
"""An outline pixel is drawn where the convex's centre depth is at most (1 + this) x the rendered
depth there (or where the render is mostly transparent, accumulation < 1/2)."""

_PALETTE = 0.35 + 0.65 * torch.rand(64, 3, generator=torch.Generator().manual_seed(3))
"""Outline colours: convex i gets entry i mod 64."""


@dataclass(frozen=True)
class ConvexView:
    """The panel's settings for one frame (replaced whole by the GUI callbacks, so a frame never
    mixes two updates)."""

    sharpness_log2: float = 0.0
    corners_log2: float = 0.0
    min_opacity: float = 0.0
    show_hulls: bool = False
    max_hulls: int = 300

    @property
    def is_default(self) -> bool:
        """Whether the frame is exactly ``model.render``'s (the panel then leaves it to the model)."""
        return self.sharpness_log2 == 0.0 and self.corners_log2 == 0.0 and self.min_opacity <= 0.0 and not self.show_hulls


def view_primitives(prims: dict[str, Tensor], view: ConvexView) -> dict[str, Tensor]:
    """New activated primitives for the frame: sigma x 2^sharpness, delta x 2^corners, opacity 0
    below ``min_opacity`` (culled by the rasterizer). ``prims`` is left unchanged."""
    out = dict(prims)
    out["sigma"] = prims["sigma"] * 2.0**view.sharpness_log2
    out["delta"] = prims["delta"] * 2.0**view.corners_log2
    if view.min_opacity > 0:
        out["opacities"] = torch.where(prims["opacities"] >= view.min_opacity, prims["opacities"], torch.zeros_like(prims["opacities"]))
    return out


class HullSegments(NamedTuple):
    """Projected hull edges of the chosen convexes, in pixel coordinates (pixel centres at +0.5)."""

    start: Tensor  # [S, 2]
    end: Tensor  # [S, 2]
    convex: Tensor  # [S] index of the convex
    depth: Tensor  # [S] camera z of the convex's centre


def hull_segments(points: Tensor, opacities: Tensor, radii: Tensor, depths: Tensor, camera: Cameras, max_hulls: int) -> HullSegments:
    """The hull edges of the ``max_hulls`` most opaque convexes that the rasterizer drew.

    points [N, K, 3] world; opacities [N] activated; radii [N, 2] and depths [N] of the render's
    projection (radii 0: culled, off-screen or transparent). The points are projected as
    :func:`recon.render.convex.project_convexes` does, and :func:`hull_edge_pairs` gives the edges."""
    visible = (radii > 0).any(-1)
    index = torch.nonzero(visible).squeeze(-1)
    if len(index) > max_hulls:
        index = index[torch.topk(opacities[index], max_hulls).indices]
    cam = camera.world_to_cameras()[0].to(points)
    K = camera.intrinsics_matrices()[0].to(points)
    p = points[index] @ cam[:3, :3].T + cam[:3, 3]  # [M, K, 3]
    q = torch.stack([K[0, 0] * p[..., 0] / p[..., 2] + K[0, 2], K[1, 1] * p[..., 1] / p[..., 2] + K[1, 2]], -1)
    m, a, b = torch.nonzero(hull_edge_pairs(q), as_tuple=True)
    return HullSegments(q[m, a], q[m, b], index[m], depths[index][m])


def _clip_to_box(start: Tensor, end: Tensor, width: int, height: int) -> tuple[Tensor, Tensor, Tensor]:
    """Liang-Barsky: the parts of segments [S, 2] inside [0, width] x [0, height], and which exist."""
    d = end - start
    t0, t1 = torch.zeros_like(d[:, 0]), torch.ones_like(d[:, 0])
    keep = torch.ones_like(t0, dtype=torch.bool)
    for axis, size in ((0, width), (1, height)):
        for room, slope in ((start[:, axis], d[:, axis]), (size - start[:, axis], -d[:, axis])):  # room + t slope >= 0
            t = -room / torch.where(slope == 0, torch.ones_like(slope), slope)
            t0 = torch.where(slope > 0, torch.maximum(t0, t), t0)
            t1 = torch.where(slope < 0, torch.minimum(t1, t), t1)
            keep = keep & ~((slope == 0) & (room < 0))
    keep = keep & (t0 <= t1)
    return start + t0[:, None] * d, start + t1[:, None] * d, keep


def draw_hulls(rgb: Tensor, depth: Tensor, accumulation: Tensor, segments: HullSegments) -> tuple[Tensor, Tensor]:
    """``rgb`` [H, W, 3] with the segments drawn one pixel wide in their convex's colour: sampled
    every half pixel, the nearest convex on top, hidden behind the rendered surface (``depth``,
    ``accumulation`` [H, W, 1]; :data:`HULL_DEPTH_TOLERANCE`); and [H, W] True where drawn."""
    H, W = rgb.shape[:2]
    nothing = torch.zeros(H, W, dtype=torch.bool, device=rgb.device)
    start, end, keep = _clip_to_box(segments.start.float(), segments.end.float(), W, H)
    start, end, convex, seg_depth = start[keep], end[keep], segments.convex[keep], segments.depth[keep].float()
    if len(start) == 0:
        return rgb, nothing
    counts = (2 * (end - start).norm(dim=-1)).ceil().long() + 1
    seg = torch.repeat_interleave(torch.arange(len(start), device=start.device), counts)
    first = torch.cumsum(counts, 0) - counts
    t = (torch.arange(len(seg), device=start.device) - first[seg]) / (counts[seg] - 1).clamp_min(1)
    xy = start[seg] + t[:, None] * (end[seg] - start[seg])
    px = xy[:, 0].floor().long().clamp(0, W - 1)
    py = xy[:, 1].floor().long().clamp(0, H - 1)
    shown = (accumulation[py, px, 0] < 0.5) | (seg_depth[seg] <= depth[py, px, 0].float() * (1 + HULL_DEPTH_TOLERANCE))
    seg, pixel = seg[shown], (py * W + px)[shown]
    # Nearest convex on top: each pixel takes the sample whose segment comes first in depth order.
    by_depth = torch.argsort(seg_depth, stable=True)
    rank = torch.empty_like(by_depth)
    rank[by_depth] = torch.arange(len(by_depth), device=rank.device)
    top = torch.full((H * W,), len(by_depth), dtype=torch.long, device=seg.device).scatter_reduce(0, pixel, rank[seg], "amin")
    drawn = torch.nonzero(top < len(by_depth)).squeeze(-1)
    colours = _PALETTE.to(rgb)[convex[by_depth[top[drawn]]] % len(_PALETTE)]
    out = rgb.reshape(H * W, 3).clone()
    out[drawn] = colours
    return out.reshape(H, W, 3), (top < len(by_depth)).reshape(H, W)


class ConvexPanel(Panel):
    """"3D convexes": sharpness and corner scales, an opacity threshold and hull outlines, applied
    to the viewer's frames only (module docstring)."""

    title = "3D convexes"

    def __init__(self, view: ConvexView | None = None):
        self.view = view or ConvexView()
        self.hulls_drawn = 0
        """Convexes whose hulls the last frame outlined (before clipping to the image; a read-out for tests and benchmarks)."""
        # viser runs each callback on a pool thread: one that read the controls before a later
        # update must not replace the view after it (the last to take the lock reads them last).
        self._lock = threading.Lock()

    def populate(self, context: PanelContext) -> None:
        gui, v = context.gui, self.view
        marks = ((-3, "1/8"), (0, "1"), (3, "8"))
        controls = {
            "sharpness_log2": gui.add_slider("Sharpness (log2)", min=-3.0, max=3.0, step=0.25, initial_value=v.sharpness_log2, marks=marks,
                                             hint="sigma x 2^value, at render time: harder (or softer) edges, the same shapes."),
            "corners_log2": gui.add_slider("Corners (log2)", min=-3.0, max=3.0, step=0.25, initial_value=v.corners_log2, marks=marks,
                                           hint="delta x 2^value, at render time: closer to the hull polygons (or rounder)."),
            "min_opacity": gui.add_slider("Min opacity", min=0.0, max=1.0, step=0.01, initial_value=v.min_opacity,
                                          hint="Hide convexes whose opacity is below this."),
            "show_hulls": gui.add_checkbox("Show hulls", initial_value=v.show_hulls, hint="Outline the 2D hulls of the most opaque convexes in view."),
            "max_hulls": gui.add_number("Max hulls", initial_value=v.max_hulls, min=1, max=100_000, step=1),
        }
        reset = gui.add_button("Reset convex view")

        def changed(_: Any) -> None:
            with self._lock:
                values = {name: handle.value for name, handle in controls.items()}
                self.view = ConvexView(float(values["sharpness_log2"]), float(values["corners_log2"]), float(values["min_opacity"]),
                                       bool(values["show_hulls"]), max(1, int(values["max_hulls"])))  # fmt: skip
            context.rerender()

        for handle in controls.values():
            handle.on_update(changed)

        @reset.on_click
        def _(_: Any) -> None:
            default = ConvexView()
            for name, handle in controls.items():
                handle.value = getattr(default, name)  # each triggers changed()

    def render(self, model: Any, camera: Cameras) -> dict[str, Tensor] | None:
        view = self.view
        self.hulls_drawn = 0
        if view.is_default:
            return None  # exactly model.render
        camera = camera[0:1] if len(camera) > 1 else camera
        prims = view_primitives(model.primitives(), view)
        out = model.rasterize(camera, prims)
        outputs = {key: out[key] for key in ("rgb", "depth", "accumulation")}
        if view.show_hulls:
            meta = out["meta"]
            segments = hull_segments(prims["points"], prims["opacities"], meta["radii"][0], meta["depths"][0], camera, view.max_hulls)
            outputs["rgb"], drawn = draw_hulls(outputs["rgb"], outputs["depth"], outputs["accumulation"], segments)
            # Opaque outlines: the viewer's background control re-composites by (1 - accumulation).
            outputs["accumulation"] = torch.where(drawn[..., None], torch.ones_like(outputs["accumulation"]), outputs["accumulation"])
            self.hulls_drawn = len(segments.convex.unique())
        return outputs


__all__ = ["ConvexPanel", "ConvexView", "HullSegments", "draw_hulls", "hull_segments", "view_primitives"]
