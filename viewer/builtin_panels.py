"""The viewer's built-in panels, written against the same :mod:`recon.panel_api` API as a method's.

* :class:`CropBoxPanel`: an axis-aligned box (gizmo + numbers) that limits what is shown, saved to
  ``<run>/viewer_crop.json`` (:mod:`recon.export.crop`) for ``ns-export ... --crop-from-viewer``.
* :class:`CameraPathPanel`: keyframes from the browser camera, a duration, a frame rate and a
  smoothness, saved as a camera-path JSON that ``ns-render camera-path`` renders headless.
"""

from __future__ import annotations

import math
import shlex
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.export.crop import write_viewer_crop
from recon.panel_api import Panel, PanelContext
from viewer.render import ViewCamera, bounded, to_cameras


def builtin_panels(run_dir: Path | None) -> list[Panel]:
    return [CropBoxPanel(run_dir), CameraPathPanel(run_dir)]


def crop_mask(camera: Cameras, depth: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """[H, W] True where the surface seen at depth (z-depth [H, W, 1]) lies inside the box ``lo``..``hi``.

    Model-agnostic: a pixel whose visible surface is outside the box is hidden, so content inside
    the box behind an occluder outside it stays hidden too (a model that can restrict its own
    sampling would be exact; none needs to for a preview)."""
    h, w = depth.shape[:2]
    rays = camera.to(depth.device).generate_rays(0)
    t = depth.reshape(-1) / rays.z_scale.clamp_min(1e-8)
    points = rays.origins + rays.directions * t[:, None]
    inside = ((points >= lo.to(points)) & (points <= hi.to(points))).all(-1)
    return inside.reshape(h, w)


class CropBoxPanel(Panel):
    """Crop: show only what lies inside a box; ``ns-export --crop-from-viewer`` uses the same box."""

    title = "Crop"

    def __init__(self, run_dir: Path | None):
        self.run_dir = run_dir
        self.enabled = False
        self.center = np.zeros(3)
        self.size = np.full(3, 2.0)
        self.model_background: Tensor | None = None
        # viser runs each GUI callback on its own pool thread: without the lock, a callback that read
        # the controls before a later update could save after it and leave a stale crop file.
        self._lock = threading.RLock()

    @property
    def bounds(self) -> tuple[Tensor, Tensor]:
        c, s = torch.tensor(self.center, dtype=torch.float32), torch.tensor(np.abs(self.size), dtype=torch.float32)
        return c - s / 2, c + s / 2

    def populate(self, context: PanelContext) -> None:
        aabb = getattr(getattr(context.model, "scene", None), "aabb", None)
        if aabb is not None:
            self.center = ((aabb[0] + aabb[1]) / 2).double().numpy()
            self.size = (aabb[1] - aabb[0]).double().numpy()
        bg = getattr(context.model, "background", None)
        self.model_background = bg.detach().float().cpu() if isinstance(bg, Tensor) else None
        gui, scene = context.gui, context.scene
        enabled = gui.add_checkbox("Crop viewport", initial_value=False)
        center = gui.add_vector3("Crop center", initial_value=tuple(self.center), step=0.01)
        size = gui.add_vector3("Crop size", initial_value=tuple(self.size), step=0.01, min=(0.0, 0.0, 0.0))
        gizmo = scene.add_transform_controls("/crop/gizmo", scale=0.3, disable_rotations=True, position=tuple(self.center), visible=False)
        box = scene.add_box("/crop/box", color=(255, 80, 80), dimensions=tuple(self.size), wireframe=True, position=tuple(self.center), visible=False)

        def changed(_: Any = None) -> None:
            with self._lock:  # the last callback to save reads the controls after every update before it
                self.enabled = bool(enabled.value)
                self.center, self.size = np.asarray(center.value, dtype=np.float64), np.asarray(size.value, dtype=np.float64)
                gizmo.visible = box.visible = self.enabled
                box.position, box.dimensions = tuple(self.center), tuple(np.abs(self.size))
                self.save()
            context.rerender()

        def dragged(_: Any) -> None:
            center.value = tuple(float(v) for v in gizmo.position)  # triggers changed()

        def typed(_: Any) -> None:
            if not np.allclose(gizmo.position, center.value):
                gizmo.position = tuple(center.value)
            changed()

        enabled.on_update(changed)
        center.on_update(typed)
        size.on_update(changed)
        gizmo.on_update(dragged)

    def save(self) -> Path | None:
        """Write the box to ``<run>/viewer_crop.json`` (with ``enabled``) for ns-export."""
        if self.run_dir is None or not Path(self.run_dir).is_dir():
            return None
        return write_viewer_crop(Path(self.run_dir), *self.bounds, self.enabled)

    def process_outputs(self, camera: Cameras, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if not self.enabled or "depth" not in outputs:
            return outputs
        lo, hi = self.bounds
        keep = crop_mask(camera, outputs["depth"].float(), lo, hi)[..., None]
        out = {}
        for k, v in outputs.items():
            if k == "rgb":
                bg = self.model_background if self.model_background is not None else torch.zeros(3)
                out[k] = torch.where(keep, v, bg.to(v))
            elif isinstance(v, Tensor) and v.shape[:2] == keep.shape[:2]:
                out[k] = torch.where(keep, v, torch.zeros_like(v))
            else:
                out[k] = v
        return out


MAX_NAME_CHARS = 120


def camera_path_file(run_dir: Path | None, name: Any) -> Path:
    """``<run>/camera_paths/<name>.json`` for the "File name" field (``camera_path.json`` if empty);
    a ValueError, one line for the GUI, for a name that is a path or could leave that folder
    (separators, ``..``, a leading dot, NUL or other control characters, over 120 characters).
    Whatever the field holds, the file is inside the folder."""
    text = str(name).strip() or "camera_path.json"
    if any(ch in text for ch in "/\\") or any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValueError("the file name must be a plain name (no '/', '\\' or control characters); it is saved in the run's camera_paths folder")
    if text.startswith("."):
        raise ValueError(f"the file name {text[:40]!r} starts with a dot; give a plain name such as orbit.json")
    if len(text) > MAX_NAME_CHARS:
        raise ValueError(f"the file name is {len(text)} characters long (at most {MAX_NAME_CHARS})")
    if not text.lower().endswith(".json"):
        text += ".json"
    folder = (Path(run_dir) if run_dir is not None else Path.cwd()) / "camera_paths"
    target = folder / text
    if target.resolve().parent != folder.resolve():  # a symlink planted in the folder, or what the checks above missed
        raise ValueError(f"{text!r} would be written outside {folder}")
    return target


class CameraPathPanel(Panel):
    """Record a camera path: keyframes from the browser camera, then a JSON for ``ns-render camera-path``."""

    title = "Camera path"
    tab = "Render"

    def __init__(self, run_dir: Path | None):
        self.run_dir = run_dir
        self.keyframes: list[ViewCamera] = []
        self._frustums: list[Any] = []
        self.last_saved: Path | None = None

    def populate(self, context: PanelContext) -> None:
        gui, scene = context.gui, context.scene
        add = gui.add_button("Add keyframe")
        clear = gui.add_button("Clear keyframes")
        count = gui.add_markdown("Keyframes: 0")
        duration = gui.add_number("Duration (s)", initial_value=4.0, min=0.1, max=600.0, step=0.1)
        fps = gui.add_number("FPS", initial_value=24.0, min=1.0, max=120.0, step=1.0)
        smooth = gui.add_slider("Smoothness", min=0.0, max=1.0, step=0.05, initial_value=1.0,
                                hint="0: straight segments between keyframes; 1: a Catmull-Rom spline through them.")
        height = gui.add_number("Render height", initial_value=480, min=16, max=4320, step=1)
        name = gui.add_text("File name", initial_value="camera_path.json")
        save = gui.add_button("Save camera path")
        command = gui.add_markdown("")

        @add.on_click
        def _(event: Any) -> None:
            cam = event.client.camera
            self.keyframes.append(ViewCamera(tuple(cam.wxyz), tuple(cam.position), float(cam.fov), int(cam.image_width), int(cam.image_height)))
            i = len(self.keyframes) - 1
            self._frustums.append(scene.add_camera_frustum(f"/camera_path/{i:03d}", fov=float(cam.fov), aspect=cam.aspect, scale=0.08, wxyz=cam.wxyz, position=cam.position, color=(220, 60, 60)))
            count.content = f"Keyframes: {len(self.keyframes)}"

        @clear.on_click
        def _(_: Any) -> None:
            for frustum in self._frustums:
                frustum.remove()
            self._frustums.clear()
            self.keyframes.clear()
            count.content = "Keyframes: 0"

        @save.on_click
        def _(_: Any) -> None:
            if not self.keyframes:
                command.content = "Add at least one keyframe first."
                return
            try:
                target = camera_path_file(self.run_dir, name.value)
            except ValueError as exc:
                command.content = f"Not saved: {exc}"
                return
            self.save(target, bounded(duration.value, 0.1, 600.0, 4.0), bounded(fps.value, 1.0, 120.0, 24.0), bounded(smooth.value, 0.0, 1.0, 1.0),
                      int(bounded(height.value, 16, 4320, 480)))
            cmd = f"ns-render camera-path --load-config {shlex.quote(str(Path(self.run_dir) / 'config.yml'))} " if self.run_dir else "ns-render camera-path --load-config CONFIG "
            command.content = f"Saved `{target}`. Render it with:\n\n```\n{cmd}--camera-path-filename {shlex.quote(str(target))} --output-path renders/path.mp4\n```"

    def save(self, path: Path, duration: float, fps: float, smoothness: float, height: int) -> Path:
        """Interpolate the keyframes to ``duration * fps`` frames at ``height`` pixels (the first
        keyframe's aspect ratio) and write the camera-path JSON."""
        from recon.camera_paths import interpolate_path, save_camera_path_json

        first = self.keyframes[0]
        width = max(1, round(height * first.width / first.height))
        keys = Cameras.cat([to_cameras(ViewCamera(k.wxyz, k.position, k.fov, width, height), 10**9) for k in self.keyframes])
        frames = max(1, math.ceil(duration * fps))
        path_cams = interpolate_path(keys, frames, tension=1.0 - smoothness)
        self.last_saved = save_camera_path_json(path_cams, path, fps=fps)
        return self.last_saved
