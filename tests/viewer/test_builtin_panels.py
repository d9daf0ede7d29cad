"""The built-in panels against stand-in widgets (no server): behaviour under viser's threading."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

from viewer import builtin_panels as panels
from viewer.builtin_panels import CropBoxPanel


def populated_crop_panel(run_dir, Widget):
    widgets = {}

    def add(label, initial_value=None, **_):
        widgets[label] = Widget(initial_value)
        return widgets[label]

    gui = SimpleNamespace(add_checkbox=add, add_vector3=add)
    scene = SimpleNamespace(add_transform_controls=lambda name, **kw: Widget(position=kw["position"], visible=False),
                            add_box=lambda name, **kw: Widget(position=kw["position"], dimensions=kw["dimensions"], visible=False))
    panel = CropBoxPanel(run_dir)
    panel.populate(SimpleNamespace(gui=gui, scene=scene, model=None, run_dir=run_dir, rerender=lambda: None))
    return panel, widgets


def test_crop_file_follows_the_last_update_when_callbacks_overlap(tmp_path, monkeypatch, stand_in_widget):
    """viser runs every GUI callback on its own pool thread. A callback that read the controls
    before a later update and saved after it left a stale crop file (``enabled`` false although the
    box was ticked: a CI failure). Here the first save is held up while the box is ticked."""
    panel, widgets = populated_crop_panel(tmp_path, stand_in_widget)
    write = panels.write_viewer_crop
    first = threading.Event()

    def slow_first_write(*args):
        if not first.is_set():
            first.set()
            time.sleep(0.3)  # this thread is preempted between reading the controls and saving
        return write(*args)

    monkeypatch.setattr(panels, "write_viewer_crop", slow_first_write)
    widgets["Crop size"].value = (0.05, 0.05, 0.05)
    size_cb = threading.Thread(target=widgets["Crop size"].fire)
    size_cb.start()
    assert first.wait(5.0)
    widgets["Crop viewport"].value = True  # the next message: viser sets the value, then submits the callback
    tick_cb = threading.Thread(target=widgets["Crop viewport"].fire)
    tick_cb.start()
    size_cb.join(), tick_cb.join()

    saved = json.loads((tmp_path / "viewer_crop.json").read_text())
    assert saved["enabled"] is True and panel.enabled
    assert abs(saved["max"][0] - saved["min"][0] - 0.05) < 1e-6
