"""``ns-train ... --viewer``: the viewer beside a running :class:`recon.engine.trainer.Trainer`.

The trainer knows nothing of the viewer: it runs ``trainer.between_steps`` functions after each
step, outside its step lock, and the viewer renders under that lock. The function added here
publishes the step and loss, honours the pause button (waiting between steps, so a paused run
holds no lock and the viewer renders freely) and writes a checkpoint when asked.
"""

from __future__ import annotations

import time
from typing import Any

from recon.engine.logging import console
from viewer.server import TrainingState, Viewer, ViewerSettings, training_views


def settings_from(config: Any) -> ViewerSettings:
    """Viewer settings from the ``viewer_*`` fields of a TrainerConfig."""
    return ViewerSettings(
        host=config.viewer_host, port=config.viewer_port, max_res=config.viewer_max_res, train_render_ratio=config.viewer_train_render_ratio,
        token=getattr(config, "viewer_token", "auto"),
    )


def attach_viewer(trainer: Any, settings: ViewerSettings | None = None, status_interval: float = 0.25) -> Viewer:
    """Start a viewer for ``trainer`` (before ``trainer.train()``); returns it (``viewer.stop()`` ends it)."""
    from viewer.builtin_panels import builtin_panels

    settings = settings or settings_from(trainer.config)
    state = TrainingState(max_steps=trainer.config.max_num_iterations, step=trainer.step)
    cameras, images = training_views(trainer.outputs, getattr(trainer.config.datamanager, "image_scale", 1.0))
    viewer = Viewer(
        settings, model=trainer.model, cameras=cameras, images=images, aabb=trainer.outputs.scene_box.aabb,
        run_dir=trainer.run_dir, training=state, lock=trainer.lock, panels=builtin_panels(trainer.run_dir) + trainer.model.viewer_panels(),
    ).start()
    last_status = [0.0]

    def between_steps(trainer: Any, step: int) -> None:
        while viewer.render_pending.is_set() and not state.stopped.is_set():
            time.sleep(0.0005)  # let a waiting frame take the lock now (its cost is bounded by the time share)
        state.step = step
        if trainer.history:
            state.loss = trainer.history[-1][1]
        if state.save_requested:
            state.save_requested = False
            state.last_checkpoint = str(trainer.save_checkpoint(step))
            console.print(f"viewer: checkpoint written to {state.last_checkpoint}")
        now = time.perf_counter()
        if now - last_status[0] >= status_interval or step >= state.max_steps:
            last_status[0] = now
            viewer.update_status()
        while state.paused and not state.stopped.is_set() and not getattr(trainer, "_stop_requested", False):
            if state.held_step is None:
                state.held_step = step
                viewer.update_status()
            state.stopped.wait(0.05)
            if state.save_requested:
                state.save_requested = False
                state.last_checkpoint = str(trainer.save_checkpoint(step))
                viewer.update_status()
        state.held_step = None

    trainer.between_steps.append(between_steps)
    return viewer


def train_with_viewer(trainer: Any) -> None:
    """``trainer.train()`` with the viewer beside it; after training the viewer serves the final
    model until Ctrl-C unless ``viewer_quit_on_completion``. The ``recon.viewers`` entry point
    ``viser`` (what ``ns-train --viewer`` runs)."""
    viewer = attach_viewer(trainer)
    try:
        trainer.train()
        finish(viewer, trainer.config.viewer_quit_on_completion)
    finally:
        viewer.stop()


def finish(viewer: Viewer, quit_on_completion: bool) -> None:
    """After training: mark it done and, unless asked to quit, serve the final model until Ctrl-C."""
    if viewer.training is not None:
        viewer.training.done = True
        viewer.update_status()
    if quit_on_completion:
        return
    console.print(f"training done; the viewer keeps serving at {viewer.url} (Ctrl-C to exit)")
    serve_forever()


def serve_forever() -> None:
    """Block until Ctrl-C (which ends the viewer normally, not as an error)."""
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("viewer: stopped")
