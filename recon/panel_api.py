"""The viewer's panel API: how a method adds its own controls to the live viewer.

A method's model returns :class:`Panel` objects from ``Model.viewer_panels()``. The viewer (the
``viewer`` package) gives each panel a :class:`PanelContext` once, when it starts: the panel adds
its widgets (sliders, buttons, dropdowns, ...) through ``context.gui`` and its scene handles
(transform gizmos, boxes, points) through ``context.scene`` -- the viser GUI and scene APIs, so a
panel can use anything viser offers -- and reacts to them with viser's ``on_update`` / ``on_click``
callbacks, calling ``context.rerender()`` when the picture should change. While the viewer renders
a frame it passes the model's outputs through every panel's :meth:`Panel.process_outputs`, so a
panel can change what is shown (mask, slice, recolour) without touching the viewer core. A panel
whose setting changes the render itself (a render-time sharpness, say) renders the frame in
:meth:`Panel.render`, which the viewer calls with the model locked, instead of ``model.render``.

This module imports nothing from viser or the viewer: methods depend on ``recon`` only, and a
method that defines panels still trains and exports without the viewer installed.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor

from recon.cameras import Cameras


class PanelContext(Protocol):
    """What the viewer gives a panel (implemented by ``viewer.server``)."""

    gui: Any
    """viser's GUI API; widgets added here appear in the panel's own folder."""
    scene: Any
    """viser's scene API (``add_transform_controls``, ``add_box``, ...), in recon's normalised world frame."""
    model: Any
    """The model being shown (for reading only; training may be changing it)."""
    run_dir: Any
    """The run folder (a ``pathlib.Path``), or None when the viewer shows no run."""

    def rerender(self) -> None:
        """Ask every connected browser for a fresh frame."""


class Panel:
    """Base of viewer panels. Subclasses set :attr:`title` and override what they need."""

    title: str = "Panel"
    tab: str = "Control"
    """The viewer tab the panel's folder goes into ("Control" or "Render"; another name adds a tab)."""

    def populate(self, context: PanelContext) -> None:
        """Add widgets and scene handles; called once when the viewer starts."""

    def render(self, model: Any, camera: Cameras) -> dict[str, Tensor] | None:
        """Render one viewer frame of ``model`` from ``camera`` (on the model's device) in place of
        ``model.render(camera)``, or None (the default) to leave it to the model.

        Called by the viewer's render thread before :meth:`process_outputs`, holding the model's
        lock (while training: between optimizer steps), with the model in eval mode and gradients
        off; the first panel that returns outputs renders the frame. The model must be left as it
        was (read its parameters, never change them): training and evaluation do not pass here."""
        return None

    def process_outputs(self, camera: Cameras, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Change the rendered outputs ([H, W, C] tensors keyed like :class:`recon.model.Output`)
        of one viewer frame seen from ``camera``; the default leaves them alone."""
        return outputs
