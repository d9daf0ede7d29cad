"""The mesh-gs viewer panel, "Mesh deformation": drag part of the proxy mesh and watch the Gaussians
follow (Gao et al. 2024, sec. 4: interactive as-rigid-as-possible editing of the proxy).

* **Show proxy mesh**: the proxy (deformed, when it is) as a wireframe overlay.
* Two gizmos: **handle** and **anchor**, placed by dragging them or by clicking the mesh ("Click
  places": the gizmo jumps to the vertex nearest to where the click's ray first meets the mesh as
  it is now, deformed or not). "Grab" takes the vertices within "Radius" of each: the
  handle's move with the handle gizmo (rigidly, about the gizmo's position at the grab), the
  anchor's stay; every other vertex follows by ARAP (:class:`recon.geometry.arap.ArapSolver`,
  solved on the server at each gizmo update, each solve starting from the previous one so a large
  turn builds up over the drag).
* **Reset** returns to the rest pose; **Save deformed mesh** writes the deformed proxy, in the input
  poses' frame, to ``<run>/deformed_proxy.ply`` (``ns-render --deform`` takes it).

Nothing here changes the model's parameters: the panel renders the viewer's frame itself with the
deformed vertices set for that one render (:meth:`MeshDeformPanel.render`) and the rest pose
restored afterwards, so training, evaluation and exports never see the deformation.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from torch import Tensor

from recon.cameras import Cameras
from recon.export.mesh_io import write_mesh
from recon.geometry.arap import ArapSolver
from recon.geometry.mesh import first_ray_hit
from recon.panel_api import Panel, PanelContext
from recon.rotations import quaternion_to_matrix

SAVE_NAME = "deformed_proxy.ply"


class MeshDeformer:
    """The state of a handle drag on a proxy mesh (vertices [V, 3] and faces [F, 3], normalised frame)."""

    def __init__(self, vertices: Tensor, faces: Tensor, iterations: int = 10):
        self.rest = vertices.detach().double().cpu().numpy()
        self.faces = faces.cpu().numpy()
        self.iterations = iterations
        self.deformed: Tensor | None = None
        """The current deformed vertices [V, 3] (None: the rest pose)."""
        self.handles = self.anchors = np.zeros(0, dtype=np.int64)
        self.pivot = np.zeros(3)
        self._solver: ArapSolver | None = None
        self._previous: np.ndarray | None = None
        """The last solution of the current drag (float64), the next solve's first guess."""

    def grab(self, handle_centre: np.ndarray, anchor_centre: np.ndarray, radius: float) -> int:
        """Take the vertices within ``radius`` of each centre as the handle and the anchor (handle
        first where they overlap); returns the handle's size (0: nothing grabbed, no solver)."""
        current = self.rest if self.deformed is None else self.deformed.double().numpy()
        near = lambda c: np.nonzero(np.linalg.norm(current - np.asarray(c, dtype=np.float64), axis=-1) <= radius)[0]  # noqa: E731
        self.handles = near(handle_centre)
        self.anchors = np.setdiff1d(near(anchor_centre), self.handles)
        self.pivot = np.asarray(handle_centre, dtype=np.float64)
        self._start = self._previous = current
        self._solver = ArapSolver(self.rest, self.faces, np.concatenate([self.handles, self.anchors])) if len(self.handles) else None
        return len(self.handles)

    def pick(self, origin: np.ndarray, direction: np.ndarray) -> tuple[int, np.ndarray] | None:
        """The vertex nearest to where a ray first meets the mesh as it is now (index, position), or None."""
        current = self.rest if self.deformed is None else self.deformed.double().numpy()
        hit = first_ray_hit(current, self.faces, origin, direction)
        if hit is None:
            return None
        corners = self.faces[hit[0]]
        nearest = int(corners[np.argmin(np.linalg.norm(current[corners] - hit[1], axis=-1))])
        return nearest, current[nearest]

    def drag(self, rotation: np.ndarray, translation: np.ndarray) -> Tensor | None:
        """Move the handle rigidly, p -> R (p - pivot) + pivot + t from where it was at the grab,
        keep the anchor, solve ARAP for the rest; returns the deformed vertices (None: no handle)."""
        if self._solver is None:
            return None
        moved = {int(i): (np.asarray(rotation) @ (self._start[i] - self.pivot)) + self.pivot + np.asarray(translation) for i in self.handles}
        targets = np.stack([moved.get(int(i), self._start[i]) for i in self._solver.handles])
        solved = self._solver.solve(targets, self.iterations, initial=self._previous)
        self._previous = solved  # the next update of this drag starts from here
        self.deformed = torch.from_numpy(solved).float()
        return self.deformed

    def reset(self) -> None:
        self.deformed, self._solver, self._previous = None, None, None
        self.handles = self.anchors = np.zeros(0, dtype=np.int64)

    def save(self, path: Path, to_input: Any) -> Path:
        """Write the deformed (or rest) proxy mesh, mapped by ``to_input`` ([V, 3] float64 -> input frame)."""
        vertices = self.rest if self.deformed is None else self.deformed.double().numpy()
        return write_mesh(trimesh.Trimesh(to_input(vertices), self.faces, process=False), path)


def input_frame(run_dir: Path | None) -> Any:
    """normalised -> input coordinates from ``<run>/dataparser_transforms.json`` (identity without a run)."""
    file = None if run_dir is None else Path(run_dir) / "dataparser_transforms.json"
    if file is None or not file.is_file():
        return lambda v: v
    data = json.loads(file.read_text())
    T, s = np.asarray(data["transform"], dtype=np.float64), float(data["scale"])
    return lambda v: (np.asarray(v) / s - T[:, 3]) @ T[:, :3]


class MeshDeformPanel(Panel):
    """"Mesh deformation": proxy overlay, handle / anchor gizmos, ARAP drag, reset, save (module docstring)."""

    title = "Mesh deformation"

    def __init__(self, model: Any):
        vertices, faces = model.rest_mesh()
        self.deformer = MeshDeformer(vertices, faces)
        self._lock = threading.Lock()

    def populate(self, context: PanelContext) -> None:
        gui, scene, d = context.gui, context.scene, self.deformer
        extent = float(np.ptp(d.rest, axis=0).max()) if len(d.rest) else 1.0
        centre = d.rest.mean(0) if len(d.rest) else np.zeros(3)
        show = gui.add_checkbox("Show proxy mesh", initial_value=False)
        radius = gui.add_number("Radius", initial_value=round(0.1 * extent, 4), min=0.0, max=10.0 * extent, step=0.001,
                                hint="Grab takes the vertices within this distance of each gizmo.")
        grab, reset, save = gui.add_button("Grab"), gui.add_button("Reset deformation"), gui.add_button("Save deformed mesh")
        picks = gui.add_dropdown("Click places", ("nothing", "handle", "anchor"), initial_value="handle",
                                 hint="A click on the proxy mesh moves this gizmo to the nearest vertex of the face clicked.")
        status = gui.add_markdown("Click the mesh (or move the gizmos) to place the handle and the anchor, then Grab.")
        handle = scene.add_transform_controls("/mesh_gs/handle", scale=0.2 * extent, position=tuple(centre + [0, 0, 0.3 * extent]))
        anchor = scene.add_transform_controls("/mesh_gs/anchor", scale=0.15 * extent, position=tuple(centre - [0, 0, 0.3 * extent]))
        overlay = {"mesh": None}
        at_grab = {"wxyz": np.array([1.0, 0, 0, 0]), "position": np.zeros(3)}

        def draw() -> None:
            vertices = d.rest if d.deformed is None else d.deformed.numpy()
            overlay["mesh"] = scene.add_mesh_simple("/mesh_gs/proxy", vertices.astype(np.float32), d.faces, wireframe=True,
                                                    color=(255, 200, 60), visible=bool(show.value))

        def moved(_: Any) -> None:
            with self._lock:
                R0 = quaternion_to_matrix(torch.as_tensor(at_grab["wxyz"], dtype=torch.float64)).numpy()
                R1 = quaternion_to_matrix(torch.as_tensor(np.asarray(handle.wxyz), dtype=torch.float64)).numpy()
                result = d.drag(R1 @ R0.T, np.asarray(handle.position, dtype=np.float64) - at_grab["position"])
            if result is not None:
                draw()
                context.rerender()

        @grab.on_click
        def _(_: Any) -> None:
            with self._lock:
                at_grab["wxyz"], at_grab["position"] = np.asarray(handle.wxyz, dtype=np.float64), np.asarray(handle.position, dtype=np.float64)
                n = d.grab(at_grab["position"], np.asarray(anchor.position, dtype=np.float64), float(radius.value))
            status.content = f"{n} handle and {len(d.anchors)} anchor vertices grabbed." if n else "No vertex within the radius of the handle."

        @reset.on_click
        def _(_: Any) -> None:
            with self._lock:
                d.reset()
            draw()
            context.rerender()

        @save.on_click
        def _(_: Any) -> None:
            if context.run_dir is None:
                status.content = "No run folder to save into."
                return
            path = d.save(Path(context.run_dir) / SAVE_NAME, input_frame(context.run_dir))
            status.content = f"Saved {path.name}."

        def clicked(event: Any) -> None:
            which = str(picks.value)
            if which == "nothing":
                return
            with self._lock:
                vertex = d.pick(np.asarray(event.ray_origin, dtype=np.float64), np.asarray(event.ray_direction, dtype=np.float64))
            if vertex is None:
                status.content = "The click missed the proxy mesh."
                return
            (handle if which == "handle" else anchor).position = tuple(float(x) for x in vertex[1])
            status.content = f"{which.capitalize()} placed on vertex {vertex[0]}; Grab takes the vertices within Radius of each gizmo."

        scene.on_click()(clicked)
        handle.on_update(moved)
        show.on_update(lambda _: draw())
        draw()

    def render(self, model: Any, camera: Cameras) -> dict[str, Tensor] | None:
        deformed = self.deformer.deformed
        if deformed is None:
            return None  # exactly model.render
        model.set_deformed_vertices(deformed.to(model.mesh_vertices))
        try:
            return model.render(camera)
        finally:
            model.set_deformed_vertices(None)


__all__ = ["MeshDeformPanel", "MeshDeformer", "input_frame"]
