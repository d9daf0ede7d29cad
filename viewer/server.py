"""The live viewer: a viser server, a render thread, the scene and the control panel.

Threads: viser runs its websocket server on its own event-loop thread and calls our widget and
camera callbacks on its worker pool; those callbacks only record what changed. One render thread
(:class:`Viewer._render_loop`) turns the browsers' cameras into frames. The model is read under
``lock`` (the trainer's step lock while training), so a frame never sees half an optimizer step
or half a densification. Sending a frame only queues a message in viser's buffer, so a slow or
vanished browser never blocks the render thread, let alone training.

Scheduling (the idea of nerfstudio's viewer, written anew here):

* a camera that moved less than ``rest_delay`` seconds ago gets a frame at ``moving_res``; once it
  rests it gets one at the full resolution (capped by the "Max res" control);
* while training runs, a resting camera is refreshed every ``refresh_interval`` seconds;
* while training runs (not paused), after a frame that took ``t`` seconds no frame starts for
  ``train_render_ratio * t`` seconds, so training gets that share of the machine.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import viser

from recon.cameras import Cameras
from recon.engine.logging import console
from recon.errors import ConfigError
from recon.panel_api import Panel
from viewer.access import TOKEN_NONE, hardened_server, is_loopback, resolve_token
from viewer.render import COLORMAPS, ViewCamera, bounded, frame_outputs, output_image, to_cameras


@dataclass
class ViewerSettings:
    """How the viewer serves and renders."""

    host: str = "127.0.0.1"
    port: int = 7007
    max_res: int = 512
    """Longest side of a frame when the camera rests."""
    moving_res: int = 96
    """Longest side of a frame while the camera moves."""
    rest_delay: float = 0.25
    """Seconds without camera updates after which the camera counts as resting."""
    refresh_interval: float = 1.0
    """While training runs, seconds between refreshes of a resting view."""
    train_render_ratio: float = 3.0
    """While training runs: seconds of training per second of rendering."""
    jpeg_quality: int = 80
    frustum_scale: float = 0.1
    max_frustum_images: int = 100
    """Training cameras shown with their image (the others as plain frustums)."""
    token: str = "auto"
    """Access token: ``auto`` (a random one when ``host`` is not loopback), ``none`` (no token,
    explicitly), or the token to require (8 to 256 letters, digits, ``-``, ``_``)."""

    def check(self) -> None:
        """A one-line :class:`ConfigError` for values the viewer cannot use (before anything starts)."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"viewer port {self.port} is not a port number (0 to 65535)")
        if self.max_res < 16:
            raise ConfigError(f"viewer max resolution {self.max_res} is too small (at least 16 pixels)")
        if not self.train_render_ratio >= 0:
            raise ConfigError(f"viewer train/render ratio {self.train_render_ratio} must be 0 or more")
        resolve_token(self.token, self.host)
        # viser retries a failing bind on the next port a thousand times: check the address first.
        try:
            family, _, _, _, address = socket.getaddrinfo(self.host, 0, type=socket.SOCK_STREAM)[0]
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot serve the viewer on host {self.host!r} ({exc.strerror or exc})") from None


@dataclass
class TrainingState:
    """What the viewer and a running trainer share (written by one side, read by the other)."""

    max_steps: int
    step: int = 0
    loss: float | None = None
    paused: bool = False
    held_step: int | None = None
    """The step the trainer is holding at while paused (None while it runs: a pause takes effect between steps)."""
    done: bool = False
    save_requested: bool = False
    last_checkpoint: str | None = None
    stopped: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Client:
    handle: Any
    version: int = 0
    """Camera updates received."""
    moved_at: float = 0.0
    rendered_version: int = -1
    rendered_full: bool = False
    rendered_at: float = 0.0
    rendered_step: int = -1


class Viewer:
    """Serve ``model`` (and, optionally, a running training) to browsers.

    cameras / images: the training cameras and ``images(i) -> [H, W, 3]`` (shown in the frustums).
    aabb: [2, 3] scene box. lock: held while rendering (the trainer's step lock).
    """

    def __init__(
        self,
        settings: ViewerSettings,
        model: Any = None,
        cameras: Cameras | None = None,
        images: Callable[[int], Any] | None = None,
        aabb: torch.Tensor | None = None,
        run_dir: Path | None = None,
        training: TrainingState | None = None,
        lock: Any = None,
        panels: list[Panel] | None = None,
    ):
        self.settings = settings
        self.model = model
        self.cameras = cameras
        self.images = images
        self.aabb = aabb
        self.run_dir = run_dir
        self.training = training
        self.lock = lock if lock is not None else threading.RLock()
        self.panels = list(panels or [])
        self._clients: dict[int, _Client] = {}
        self._clients_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._next_allowed = 0.0
        self.render_pending = threading.Event()
        """Set while the render thread waits for or holds ``lock``: the trainer yields between steps
        (Python locks are not fair; without this a trainer that re-takes its lock at once would
        starve the viewer)."""
        self.frames_sent = 0
        self.last_frame: np.ndarray | None = None
        """The last frame sent ([H, W, 3] uint8), for tests and benchmarks."""
        self.render_seconds = 0.0
        self.output_names: list[str] = ["rgb"]
        self.server: viser.ViserServer | None = None
        self.token: str | None = None
        """The access token browsers must present (None: none required)."""
        self.guards: list[Any] = []
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.get_port()

    @property
    def url(self) -> str:
        """The address to open, with the access token if one is required."""
        host = self.settings.host
        name = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else f"[{host}]" if ":" in host else host
        return f"http://{name}:{self.port}" + (f"/?token={self.token}" if self.token else "")

    def start(self) -> "Viewer":
        self.settings.check()
        self.token = resolve_token(self.settings.token, self.settings.host)
        with hardened_server(self.token) as self.guards:
            self.server = viser.ViserServer(host=self.settings.host, port=self.settings.port, verbose=False)
        self.server.gui.configure_theme(control_width="medium", show_share_button=False)
        self._build_scene()
        tab_group = self.server.gui.add_tab_group()
        tabs = {name: tab_group.add_tab(name, icon) for name, icon in (("Control", viser.Icon.SETTINGS), ("Render", viser.Icon.CAMERA))}
        with tabs["Control"]:
            self._build_controls()
        for panel in self.panels:
            if panel.tab not in tabs:
                tabs[panel.tab] = tab_group.add_tab(panel.tab)
            with tabs[panel.tab], self.server.gui.add_folder(panel.title):
                panel.populate(_Context(self))
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        if self.model is not None:
            self._thread = threading.Thread(target=self._render_loop, name="recon-viewer-render", daemon=True)
            self._thread.start()
        console.print(f"[bold]viewer[/bold] at {self.url}")
        if self.token is None and self.settings.token == TOKEN_NONE and not is_loopback(self.settings.host):
            console.print(f"[yellow]viewer: no access token (token 'none'): whoever reaches {self.settings.host} port {self.port} controls this viewer[/yellow]")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.training is not None:
            self.training.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def rerender(self) -> None:
        with self._clients_lock:
            for c in self._clients.values():
                c.rendered_version = -1
        self._wake.set()

    # -- scene ------------------------------------------------------------------------------
    def _build_scene(self) -> None:
        scene = self.server.scene
        scene.set_up_direction("+z")
        scene.add_frame("/world_axes", axes_length=0.3, axes_radius=0.01, show_axes=True)
        if self.aabb is not None:
            lo, hi = (np.asarray(v, dtype=np.float64) for v in self.aabb.tolist())
            scene.add_box("/scene_box", color=(255, 200, 0), dimensions=tuple(hi - lo), wireframe=True, position=tuple((lo + hi) / 2))
        if self.cameras is None:
            if self.aabb is not None:  # e.g. a run from cross-sections: no camera to start at
                self.set_initial_view(framing_view(*self.aabb.double().numpy()))
            return
        from recon.rotations import matrix_to_quaternion

        cams = self.cameras.to("cpu")
        fovs = 2 * np.arctan(0.5 * cams.height.double().numpy() / cams.fy.double().numpy())  # vertical, as viser's
        centre = np.zeros(3) if self.aabb is None else self.aabb.double().mean(0).numpy()
        self.set_initial_view(camera_view(cams.camera_to_worlds[0].double().numpy(), fovs[0], centre))
        quats = matrix_to_quaternion(cams.camera_to_worlds[:, :, :3].double()).numpy()
        with_images = set(np.unique(np.linspace(0, len(cams) - 1, min(len(cams), self.settings.max_frustum_images)).round().astype(int)).tolist())
        for i in range(len(cams)):
            h, w = int(cams.height[i]), int(cams.width[i])
            image = None
            if self.images is not None and i in with_images and i != 0:  # the browser starts inside camera 0: its picture would cover the view
                image = _thumbnail(self.images(i), 96)
            frustum = scene.add_camera_frustum(
                f"/cameras/{i:04d}", fov=fovs[i], aspect=w / h, scale=self.settings.frustum_scale,
                image=image, wxyz=quats[i], position=cams.camera_to_worlds[i, :, 3].numpy(), color=(60, 60, 200),
            )
            frustum.on_click(self._go_to_camera(quats[i], cams.camera_to_worlds[i, :, 3].numpy(), fovs[i]))

    def set_initial_view(self, view: InitialView) -> None:
        """Where a browser's camera starts (and what its "Reset view" returns to)."""
        initial = self.server.initial_camera
        initial.fov = view.fov
        initial.position = view.position
        initial.look_at = view.look_at
        initial.up = view.up

    def _go_to_camera(self, wxyz: np.ndarray, position: np.ndarray, fov: float) -> Callable[[Any], None]:
        def go(event: Any) -> None:
            client = event.client
            with client.atomic():
                client.camera.wxyz = wxyz
                client.camera.position = position
                client.camera.fov = float(fov)

        return go

    # -- controls ---------------------------------------------------------------------------
    def _build_controls(self) -> None:
        gui = self.server.gui
        t = self.training
        self.status = gui.add_markdown(self._status_text())
        if t is not None:
            self.pause_button = gui.add_button("Pause training", icon=viser.Icon.PLAYER_PAUSE)
            self.pause_button.on_click(lambda _: self.set_paused(not t.paused))
            save = gui.add_button("Save checkpoint now", icon=viser.Icon.DEVICE_FLOPPY)

            @save.on_click
            def _(_: Any) -> None:
                t.save_requested = True

            ratio = gui.add_number("Train/render time", initial_value=self.settings.train_render_ratio, min=0.0, max=100.0, step=0.5,
                                   hint="Seconds of training per second of rendering while training runs.")
            ratio.on_update(lambda _: setattr(self.settings, "train_render_ratio", bounded(ratio.value, 0.0, 100.0, self.settings.train_render_ratio)))
        if self.model is None:
            return  # files only: nothing is rendered
        self.output_dropdown = gui.add_dropdown("Output", options=tuple(self.output_names), initial_value="rgb")
        self.colormap_dropdown = gui.add_dropdown("Colormap", options=COLORMAPS, initial_value="turbo", hint="For one-channel outputs.")
        self.max_res_slider = gui.add_slider("Max res", min=32, max=2048, step=16, initial_value=min(max(self.settings.max_res, 32), 2048))
        self.background_rgb = gui.add_rgb("Background", initial_value=self._model_background_rgb())
        for handle in (self.output_dropdown, self.colormap_dropdown, self.max_res_slider, self.background_rgb):
            handle.on_update(lambda _: self.rerender())

    def _model_background_rgb(self) -> tuple[int, int, int]:
        bg = self._model_background()
        return tuple(int(round(float(v) * 255)) for v in (bg if bg is not None else torch.zeros(3)))  # type: ignore[return-value]

    def _model_background(self) -> torch.Tensor | None:
        bg = getattr(self.model, "background", None)
        return bg.detach().float().cpu() if isinstance(bg, torch.Tensor) and bg.numel() == 3 else None

    def _status_text(self) -> str:
        t = self.training
        if t is None:
            return "**Viewing** a trained model" if self.model is not None else "**Viewing** files"
        state = "done" if t.done else ("paused" if t.held_step is not None else "pausing") if t.paused else "training"
        loss = f" · loss {t.loss:.4g}" if t.loss is not None else ""
        ckpt = f"<br/>saved {t.last_checkpoint}" if t.last_checkpoint else ""
        return f"**{state}** · step {t.step} / {t.max_steps}{loss}{ckpt}"

    def update_status(self) -> None:
        if self.server is not None:
            self.status.content = self._status_text()

    def set_paused(self, paused: bool) -> None:
        assert self.training is not None
        self.training.paused = paused
        if self.server is not None:
            self.pause_button.label = "Resume training" if paused else "Pause training"
            self.pause_button.icon = viser.Icon.PLAYER_PLAY if paused else viser.Icon.PLAYER_PAUSE
            self.update_status()
        self._wake.set()

    # -- clients ----------------------------------------------------------------------------
    # Coroutines, so that viser runs them on its event loop: they only record what changed, and a
    # plain function would cost a pool-thread hand-off per camera update of every browser.
    async def _on_connect(self, client: Any) -> None:
        now = time.perf_counter()
        state = _Client(client, moved_at=now, rendered_at=now)  # queued behind the browsers served before it came
        with self._clients_lock:
            self._clients[client.client_id] = state

        @client.camera.on_update
        async def _(_: Any) -> None:
            state.version += 1
            state.moved_at = time.perf_counter()
            self._wake.set()

        self._wake.set()

    async def _on_disconnect(self, client: Any) -> None:
        with self._clients_lock:
            self._clients.pop(client.client_id, None)

    # -- rendering --------------------------------------------------------------------------
    def _training_active(self) -> bool:
        t = self.training
        return t is not None and not t.paused and not t.done

    def _job(self, c: _Client, now: float) -> int | None:
        """The resolution of the frame this client needs now, or None."""
        resting = now - c.moved_at >= self.settings.rest_delay
        full = self._max_res()
        if c.rendered_version != c.version:
            return full if resting else min(self.settings.moving_res, full)
        if resting and not c.rendered_full:
            return full
        t = self.training
        if t is not None and t.step != c.rendered_step and now - c.rendered_at >= self.settings.refresh_interval:
            return full
        return None

    def _max_res(self) -> int:
        return int(bounded(self.max_res_slider.value, 32, 2048, min(max(self.settings.max_res, 32), 2048)))

    def _render_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            now = time.perf_counter()
            if self._training_active() and now < self._next_allowed:
                continue
            with self._clients_lock:  # served (or connected) longest ago first: a browser that moves all the time, or connects anew, starves no other
                clients = sorted(self._clients.values(), key=lambda c: c.rendered_at)
            for c in clients:
                try:  # whatever a browser sent, a failed frame must not end the viewer
                    res = self._job(c, time.perf_counter())
                    if res is None or self._stop.is_set():
                        continue
                    self._render_client(c, res)
                except Exception as exc:
                    console.print(f"[red]viewer: rendering failed: {type(exc).__name__}: {exc}[/red]")
                    c.rendered_version, c.rendered_full, c.rendered_at = c.version, True, time.perf_counter()
                break  # one frame per round: fairness between clients and training

    def _render_client(self, c: _Client, res: int) -> None:
        cam = c.handle.camera
        version, step = c.version, (self.training.step if self.training is not None else -1)
        view = ViewCamera(tuple(cam.wxyz), tuple(cam.position), float(cam.fov), int(cam.image_width), int(cam.image_height))
        camera = to_cameras(view, res)
        start = time.perf_counter()
        outputs = frame_outputs(self.model, camera, self.panels, self.lock, self.render_pending)
        names = [k for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.ndim == 3]
        if names != self.output_names:
            self.output_names = names
            self.output_dropdown.options = tuple(names)
        name = self.output_dropdown.value if self.output_dropdown.value in outputs else "rgb"
        bg = torch.tensor(self.background_rgb.value, dtype=torch.float32) / 255.0
        image = output_image(outputs, name, self.colormap_dropdown.value, background=bg, model_background=self._model_background())
        elapsed = time.perf_counter() - start
        if c.handle.client_id not in self._clients:
            return  # the browser left while this frame was rendered
        c.handle.scene.set_background_image(image, format="jpeg", jpeg_quality=self.settings.jpeg_quality)
        self.frames_sent += 1
        self.last_frame = image
        self.render_seconds += elapsed
        c.rendered_version, c.rendered_full, c.rendered_at, c.rendered_step = version, res >= self._max_res(), time.perf_counter(), step
        self._next_allowed = time.perf_counter() + self.settings.train_render_ratio * elapsed


@dataclass
class InitialView:
    """A browser camera pose as viser sets it up: position [3], the point it looks at and orbits
    [3], its up vector [3] (world frame), and its vertical field of view in radians."""

    position: np.ndarray
    look_at: np.ndarray
    up: np.ndarray
    fov: float


def camera_view(camera_to_world: np.ndarray, fov: float, centre: np.ndarray) -> InitialView:
    """The view of a camera: OpenCV camera-to-world [3, 4] (x right, y down, z forward: viser's
    camera convention too, so the axes carry over unchanged), vertical ``fov`` in radians.

    The camera orbits the point of its optical axis nearest to ``centre`` [3] (the scene centre),
    so dragging turns the view about the scene rather than about the camera.
    """
    R, t = camera_to_world[:, :3], camera_to_world[:, 3]
    forward = R[:, 2]
    depth = max(float((np.asarray(centre) - t) @ forward), 1e-2)  # a scene behind the camera: orbit just in front
    return InitialView(position=t.copy(), look_at=t + depth * forward, up=-R[:, 1], fov=float(fov))


def framing_view(lo: np.ndarray, hi: np.ndarray, fov: float = np.deg2rad(50.0)) -> InitialView:
    """A view from outside the box ``lo``..``hi`` [3] that shows all of it: looking at its centre
    from a raised oblique direction, +z up (the viewer's up axis), far enough that the box's
    bounding sphere fits the vertical field of view ``fov``."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    centre, radius = (lo + hi) / 2, max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
    direction = np.array([1.0, -1.0, 0.7]) / np.linalg.norm([1.0, -1.0, 0.7])
    distance = 1.1 * radius / np.sin(fov / 2)
    return InitialView(position=centre + distance * direction, look_at=centre, up=np.array([0.0, 0.0, 1.0]), fov=float(fov))


class _Context:
    """The :class:`recon.panel_api.PanelContext` the viewer gives a panel."""

    def __init__(self, viewer: Viewer):
        self.viewer = viewer
        self.gui = viewer.server.gui
        self.scene = viewer.server.scene
        self.model = viewer.model
        self.run_dir = viewer.run_dir

    def rerender(self) -> None:
        self.viewer.rerender()


def training_views(outputs: Any, image_scale: float = 1.0) -> tuple[Cameras | None, Callable[[int], np.ndarray] | None]:
    """The training cameras of parsed data (``data.base.DataparserOutputs``) at the training image
    scale, and a loader of their images; (None, None) for inputs without cameras (cross-sections)."""
    if not hasattr(outputs, "split") or getattr(outputs, "cameras", None) is None:
        return None, None
    train = outputs.split("train")
    if len(train.cameras) == 0:
        return None, None
    cameras = train.cameras.scaled(image_scale) if image_scale != 1.0 else train.cameras
    background = getattr(outputs, "alpha_color", None)

    def image(i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(train.image_filenames[i]) as im:
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        bg = np.ones(3, np.float32) if background is None else np.asarray(background, np.float32)
        return rgba[..., :3] * rgba[..., 3:] + bg * (1.0 - rgba[..., 3:])

    return cameras, image


def _thumbnail(image: Any, size: int) -> np.ndarray:
    """[H, W, 3] float or uint8 -> uint8 with the longest side at most ``size`` (nearest pixel)."""
    from recon.export.video import to_uint8_frame

    img = to_uint8_frame(image)
    h, w = img.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / size)))
    return np.ascontiguousarray(img[::step, ::step])
