"""The mesh-gs viewer panel ("Mesh deformation") against stand-in widgets: a handle drag solves ARAP
on the server, changes the viewer's frame (the model itself untouched) and the saved mesh."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch
import trimesh

from methods.mesh_gs.model import MeshGSModel, MeshGSModelConfig
from methods.mesh_gs.panels import SAVE_NAME, MeshDeformPanel
from recon.cameras import Cameras, look_at
from recon.model import SceneInfo
from viewer.render import frame_outputs


def populated(model, run_dir, Widget):
    widgets, meshes = {}, []

    def add(label, initial_value=None, **_):
        widgets[label] = Widget(initial_value)
        return widgets[label]

    def gizmo(name, **kw):
        widgets[name] = Widget(position=np.asarray(kw["position"]), wxyz=np.array([1.0, 0, 0, 0]))
        return widgets[name]

    def mesh(name, vertices, faces, **kw):
        meshes.append((vertices, kw["visible"]))
        return Widget()

    def dropdown(label, options, initial_value=None, **_):
        widgets[label] = Widget(initial_value)
        return widgets[label]

    def on_click(**_):
        def register(callback):
            widgets["scene click"] = callback
            return callback
        return register

    def markdown(text, **_):
        widgets["status"] = Widget(content=text)
        return widgets["status"]

    gui = SimpleNamespace(add_checkbox=add, add_number=add, add_button=add, add_dropdown=dropdown, add_markdown=markdown)
    scene = SimpleNamespace(add_transform_controls=gizmo, add_mesh_simple=mesh, on_click=on_click)
    rerenders = []
    panel = MeshDeformPanel(model)
    panel.populate(SimpleNamespace(gui=gui, scene=scene, model=model, run_dir=run_dir, rerender=lambda: rerenders.append(1)))
    return panel, widgets, meshes, rerenders


def test_handle_drag_changes_the_frame_and_the_saved_mesh(tmp_path, one_thread, stand_in_widget):
    """Grab the top of a sphere (handle) and its bottom (anchor), drag the handle up: the frame through
    the viewer's path changes, the model is back at rest afterwards, the saved mesh has the handle
    moved by the drag and the anchor where it was; Reset brings back the rest frame."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    model = MeshGSModel(MeshGSModelConfig(init_min_gaussians=400, sh_degree=1), SceneInfo(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), num_train_cameras=1))
    model.set_proxy_mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    with torch.no_grad():
        model.params["opacities"].fill_(2.0)
        model.params["sh0"].copy_(torch.rand(model.params["sh0"].shape, generator=torch.Generator().manual_seed(0)))
    model.eval()
    camera = Cameras(look_at(torch.tensor([[2.2, 0.3, 0.4]]), torch.zeros(1, 3)), 40.0, 40.0, 20.0, 20.0, 40, 40)
    panel, widgets, meshes, rerenders = populated(model, tmp_path, stand_in_widget)
    rest = frame_outputs(model, camera, [panel])["rgb"]

    widgets["/mesh_gs/handle"].position = np.array([0.0, 0.0, 0.5])
    widgets["/mesh_gs/anchor"].position = np.array([0.0, 0.0, -0.5])
    widgets["Radius"].value = 0.3
    widgets["Grab"].fire()
    d = panel.deformer
    assert len(d.handles) > 3 and len(d.anchors) > 3
    widgets["/mesh_gs/handle"].position = np.array([0.0, 0.0, 0.9])
    widgets["/mesh_gs/handle"].fire()
    assert rerenders and d.deformed is not None
    dragged = frame_outputs(model, camera, [panel])["rgb"]
    assert (dragged - rest).abs().mean() > 0.01
    assert model.deformed_vertices is None and torch.equal(frame_outputs(model, camera, [])["rgb"], rest)

    # the run's normalisation x_n = 2 (x + (0.1, 0, 0)): the mesh is saved in the input frame
    (tmp_path / "dataparser_transforms.json").write_text(json.dumps({"transform": [[1, 0, 0, 0.1], [0, 1, 0, 0], [0, 0, 1, 0]], "scale": 2.0}))
    widgets["Save deformed mesh"].fire()
    saved = trimesh.load(tmp_path / SAVE_NAME, process=False)
    v = (np.asarray(saved.vertices) + [0.1, 0, 0]) * 2
    assert np.abs(v[d.handles] - (sphere.vertices[d.handles] + [0, 0, 0.4])).max() < 1e-5
    assert np.abs(v[d.anchors] - sphere.vertices[d.anchors]).max() < 1e-5
    free = np.setdiff1d(np.arange(len(v)), np.concatenate([d.handles, d.anchors]))
    assert np.abs(v[free] - sphere.vertices[free]).max() > 0.05  # ARAP carried the rest along
    assert len(meshes) >= 2 and np.abs(meshes[-1][0] - v).max() < 1e-5 and not meshes[-1][1]  # overlay off by default
    widgets["Show proxy mesh"].value = True
    widgets["Show proxy mesh"].fire()
    assert meshes[-1][1]  # the overlay shows the deformed proxy

    widgets["Reset deformation"].fire()
    assert d.deformed is None and torch.equal(frame_outputs(model, camera, [panel])["rgb"], rest)


def test_a_click_on_the_mesh_places_the_chosen_gizmo_on_the_nearest_vertex(tmp_path, stand_in_widget):
    """The click's ray is intersected with the proxy as it is now: the handle jumps to the vertex of
    the first face hit nearest to the hit point (the sphere's top, clicked from above; the bottom,
    clicked from below: the first face on the ray, not the far side); a miss changes nothing and says
    so; "nothing" ignores clicks; after a drag, picks use the deformed mesh."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    model = MeshGSModel(MeshGSModelConfig(init_min_gaussians=100, sh_degree=0), SceneInfo(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), num_train_cameras=1))
    model.set_proxy_mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    panel, widgets, _, _ = populated(model, tmp_path, stand_in_widget)
    click = lambda o, d: widgets["scene click"](SimpleNamespace(ray_origin=tuple(o), ray_direction=tuple(d)))  # noqa: E731
    top, bottom = int(np.argmax(sphere.vertices[:, 2])), int(np.argmin(sphere.vertices[:, 2]))

    click((0.01, 0.02, 3.0), (0.0, 0.0, -1.0))
    assert np.allclose(widgets["/mesh_gs/handle"].position, sphere.vertices[top])
    assert f"vertex {top}" in widgets["status"].content
    widgets["Click places"].value = "anchor"
    click((0.01, -0.02, -3.0), (0.0, 0.0, 2.0))
    assert np.allclose(widgets["/mesh_gs/anchor"].position, sphere.vertices[bottom])
    assert np.allclose(widgets["/mesh_gs/handle"].position, sphere.vertices[top])
    click((3.0, 3.0, 3.0), (0.0, 0.0, 1.0))
    assert "missed" in widgets["status"].content and np.allclose(widgets["/mesh_gs/anchor"].position, sphere.vertices[bottom])
    widgets["Click places"].value = "nothing"
    click((0.01, 0.02, 3.0), (0.0, 0.0, -1.0))
    assert np.allclose(widgets["/mesh_gs/anchor"].position, sphere.vertices[bottom])

    # grab at the picked vertices, drag the top up by 0.4: a click from above now meets the raised top
    widgets["Radius"].value = 0.2
    widgets["Grab"].fire()
    widgets["/mesh_gs/handle"].position = sphere.vertices[top] + [0.0, 0.0, 0.4]
    widgets["/mesh_gs/handle"].fire()
    vertex = panel.deformer.pick(np.array([0.01, 0.02, 3.0]), np.array([0.0, 0.0, -1.0]))
    assert vertex is not None and vertex[0] == top and abs(vertex[1][2] - 0.9) < 1e-5
