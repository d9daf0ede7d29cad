"""The objectsdf viewer panel, "Objects": show or hide each object, or isolate one.

The segmentation itself is the ``instance`` output (the viewer's output menu): the argmax of the
rendered object opacities, one colour per object. Hiding objects renders the frame as if their
SDF channels were empty (:meth:`methods.objectsdf.model.ObjectSDFField.hiding`), so what was
behind them appears; nothing in the model changes, and training, evaluation and exports never see
the panel's choice.
"""

from __future__ import annotations

import threading
from typing import Any

from torch import Tensor

from data.instances import InstanceLabels
from recon.cameras import Cameras
from recon.panel_api import Panel, PanelContext

ALL = "(all)"


class ObjectPanel(Panel):
    """Object visibility: a checkbox per label, and an "Isolate" menu that shows one object alone."""

    title = "Objects"

    def __init__(self, labels: InstanceLabels, background_shell: bool):
        self.labels = labels
        first = 0 if background_shell else 1
        self.names = {labels.name(k): k for k in range(first, labels.num_labels)}
        self.channel = {k: k - first for k in self.names.values()}
        self.hidden: frozenset[int] = frozenset()
        self._lock = threading.Lock()

    def set_hidden(self, labels: set[int] | frozenset[int]) -> None:
        """Hide these labels (numbers as in ``--object``) from the next frame on."""
        unknown = set(labels) - set(self.channel)
        if unknown:
            raise ValueError(f"no object label {sorted(unknown)[0]}")
        with self._lock:
            self.hidden = frozenset(labels)

    def isolate(self, label: int | None) -> None:
        """Show only ``label`` (None: show every object)."""
        self.set_hidden(set() if label is None else set(self.channel) - {label})

    def populate(self, context: PanelContext) -> None:
        gui = context.gui
        boxes = {k: gui.add_checkbox(name, initial_value=True, hint=f"Show label {k}") for name, k in self.names.items()}
        isolate = gui.add_dropdown("Isolate", options=[ALL, *self.names], initial_value=ALL, hint="Show one object alone.")

        def boxes_changed(_: Any) -> None:
            self.set_hidden({k for k, box in boxes.items() if not box.value})
            context.rerender()

        def isolate_changed(_: Any) -> None:
            keep = None if isolate.value == ALL else self.names[isolate.value]
            self.isolate(keep)
            for k, box in boxes.items():
                box.value = keep is None or k == keep  # (viser calls boxes_changed: the same set)
            context.rerender()

        for box in boxes.values():
            box.on_update(boxes_changed)
        isolate.on_update(isolate_changed)

    def render(self, model: Any, camera: Cameras) -> dict[str, Tensor] | None:
        hidden = self.hidden
        if not hidden:
            return None  # exactly model.render
        with model.field.hiding([self.channel[k] for k in hidden]):
            return model.render(camera)
