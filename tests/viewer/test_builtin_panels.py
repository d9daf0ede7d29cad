"""The built-in panels against stand-in widgets (no server): behaviour under viser's threading."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

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


ESCAPES = ["../../x.json", "../x", "/etc/x", "/etc/passwd", "..", ".", ".hidden.json", "a/b.json", "sub\\..\\..\\x.json",
           "x\x00.json", "line\nbreak.json", "y" * 121, "camera_paths/../../z.json"]  # fmt: skip


def test_camera_path_file_names_stay_in_the_run_folder(tmp_path):
    from viewer.builtin_panels import camera_path_file

    folder = tmp_path / "camera_paths"
    assert camera_path_file(tmp_path, "") == folder / "camera_path.json"
    assert camera_path_file(tmp_path, "  orbit ") == folder / "orbit.json"
    assert camera_path_file(tmp_path, "orbit.JSON") == folder / "orbit.JSON"
    assert camera_path_file(tmp_path, "a..b") == folder / "a..b.json"  # dots inside a name are fine
    assert camera_path_file(tmp_path, "y" * 115) == folder / ("y" * 115 + ".json")
    for name in ESCAPES:
        with pytest.raises(ValueError) as err:
            camera_path_file(tmp_path, name)
        assert "\n" not in str(err.value) and "file name" in str(err.value), name
    # A symlink planted in the folder does not lead out of it.
    folder.mkdir()
    (folder / "out.json").symlink_to(tmp_path.parent / "elsewhere.json")
    with pytest.raises(ValueError, match="outside"):
        camera_path_file(tmp_path, "out.json")


def test_camera_path_panel_rejects_a_bad_name_in_the_gui(tmp_path, stand_in_widget):
    """Through the panel's own widgets: a rejected name says why in the GUI and writes nothing anywhere."""
    from viewer.builtin_panels import CameraPathPanel

    widgets = {}

    def add(label, initial_value=None, **_):
        widgets[label] = stand_in_widget(initial_value, content="", label=label)
        return widgets[label]

    gui = SimpleNamespace(add_button=add, add_markdown=lambda content: add(f"markdown {len(widgets)}", content), add_number=add,
                          add_slider=add, add_text=add)  # fmt: skip
    scene = SimpleNamespace(add_camera_frustum=lambda name, **kw: stand_in_widget())
    run = tmp_path / "run"
    run.mkdir()
    panel = CameraPathPanel(run)
    panel.populate(SimpleNamespace(gui=gui, scene=scene, model=None, run_dir=run, rerender=lambda: None))
    camera = SimpleNamespace(wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, -3.0), fov=0.9, image_width=64, image_height=48, aspect=4 / 3)
    widgets["Add keyframe"].callbacks[0](SimpleNamespace(client=SimpleNamespace(camera=camera)))
    widgets["Duration (s)"].value, widgets["FPS"].value, widgets["Render height"].value = 0.5, 2.0, 16
    command = next(w for label, w in widgets.items() if label.startswith("markdown") and w.content == "")
    before = sorted(p for p in tmp_path.rglob("*"))
    for name in ESCAPES:
        widgets["File name"].value = name
        widgets["Save camera path"].fire()
        assert command.content.startswith("Not saved: ") and "\n" not in command.content, (name, command.content)
    assert sorted(p for p in tmp_path.rglob("*")) == before
    widgets["File name"].value = "orbit"
    widgets["Save camera path"].fire()
    assert (run / "camera_paths" / "orbit.json").is_file() and command.content.startswith("Saved")
