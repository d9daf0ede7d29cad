"""The OReX viewer panel ("Cross-sections") against stand-in widgets: contours and planes in the
viewer's frame, a slice of the field coloured by the logit's sign, controls that change what is
shown and never the model, the frame the viewer renders for a model without images."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from data.cross_sections import axis_planes, read_csl, slice_mesh, write_csl
from methods.orex import TEST_OVERRIDES
from methods.orex.panels import INSIDE_COLOR, OUTSIDE_COLOR, CrossSectionPanel
from recon.cameras import Cameras, look_at
from recon.engine.run import load_run
from recon.engine.trainer import Trainer
from viewer.render import frame_outputs


@pytest.fixture(scope="module")
def orex_run(tmp_path_factory, quiet_config):
    """orex-small trained 300 tiny steps on a torus (R 1, r 0.4, moved off the origin: the
    normalisation is not the identity) cut by 5 z planes and 2 vertical ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torus = trimesh.creation.torus(major_radius=0.5, minor_radius=0.2, major_sections=32, minor_sections=16)
    torus.apply_scale(2.0)
    torus.apply_translation([0.3, -0.2, 0.5])
    planes = np.concatenate([axis_planes(torus, axis=2, count=5), [[1.0, 0.0, 0.0, -0.3], [0.0, 1.0, 0.0, 0.2]]])
    out = tmp_path_factory.mktemp("orex_panel")
    path = out / "torus.csl"
    write_csl(slice_mesh(torus, planes), path)
    trainer = Trainer(quiet_config("orex-small", path, out, 300, **{**TEST_OVERRIDES, "datamanager.steps_per_level": (100, 200)}))
    try:
        run_dir = trainer.train()
    finally:
        torch.set_num_threads(threads)
    return trainer, path, run_dir


def populated(panel, model, Widget):
    """Populate ``panel`` with stand-in widgets; returns the widgets by label, the scene objects
    by name (the latest of each) and the rerender count."""
    widgets, scene_objects, rerenders = {}, {}, []

    def add(label, initial_value=None, **kw):
        widgets[label] = Widget(initial_value, **kw)
        return widgets[label]

    def scene_add(kind):
        def added(name, *args, **kw):
            scene_objects[name] = Widget(kind=kind, args=args, **kw)
            return scene_objects[name]

        return added

    gui = SimpleNamespace(add_checkbox=add, add_dropdown=add, add_slider=add)
    scene = SimpleNamespace(add_line_segments=scene_add("lines"), add_mesh_simple=scene_add("mesh"), add_point_cloud=scene_add("points"))
    panel.populate(SimpleNamespace(gui=gui, scene=scene, model=model, run_dir=None, rerender=lambda: rerenders.append(1)))
    return widgets, scene_objects, rerenders


def to_viewer_frame(trainer, points):
    """Input-unit points [..., 3] -> the normalised frame the viewer shows, by the dataparser's outputs."""
    T, s = trainer.outputs.dataparser_transform.double().numpy(), float(trainer.outputs.dataparser_scale)
    return s * (points @ T[:, :3].T + T[:, 3])


def test_panel_draws_contours_planes_and_slice(orex_run, stand_in_widget, one_thread):
    trainer, path, _ = orex_run
    model = trainer.model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (panel,) = model.viewer_panels()
    assert isinstance(panel, CrossSectionPanel)
    widgets, objects, rerenders = populated(panel, model, stand_in_widget)

    # Contours: every input contour, mapped into the viewer's frame, as a closed loop of segments on its plane.
    lines = objects["/orex/contours"]
    segments = np.asarray(lines.args[0], dtype=np.float64)
    assert lines.visible
    read = read_csl(path)
    k = 0
    for sec in read.sections:
        normal = sec.normal
        plane_at = float(normal @ to_viewer_frame(trainer, sec.origin))
        for c in sec.contours:
            v = to_viewer_frame(trainer, sec.vertices[c.indices])
            loop = segments[k : k + len(v)]
            k += len(v)
            assert np.abs(loop[:, 0] - v).max() < 1e-5 and np.abs(loop[:, 1] - np.roll(v, -1, 0)).max() < 1e-5
            assert np.abs(loop.reshape(-1, 3) @ normal - plane_at).max() < 1e-5  # on the plane
    assert k == len(segments) == sum(len(c) for s in read.sections for c in s.contours)
    assert np.abs(segments).max() <= 1.0  # inside the scene box the viewer draws

    # Planes: hidden until asked for; each quad on its plane.
    planes = objects["/orex/planes"]
    assert not planes.visible and planes.opacity < 1
    quads = np.asarray(planes.args[0], dtype=np.float64).reshape(-1, 4, 3)
    assert len(quads) == len(read.sections)
    for quad, sec in zip(quads, read.sections):
        assert np.abs(quad @ sec.normal - float(sec.normal @ to_viewer_frame(trainer, sec.origin))).max() < 1e-5
    widgets["Show planes"].value = True
    widgets["Show planes"].fire()
    assert planes.visible
    widgets["Show contours"].value = False
    widgets["Show contours"].fire()
    assert not lines.visible

    # The viewer's frame: OReX renders no image; the panel gives the background for the 3D objects.
    camera = Cameras(look_at(torch.tensor([[2.5, -2.0, 1.5]]), torch.zeros(1, 3)), 30.0, 30.0, 16.0, 12.0, 32, 24)
    frame = frame_outputs(model, camera, [panel])
    assert frame["rgb"].shape == (24, 32, 3) and float(frame["accumulation"].abs().max()) == 0.0
    assert "/orex/slice" not in objects  # no slice until it is asked for

    # Slice through z = 0 (the torus's middle plane in the normalised frame).
    widgets["Slice offset"].value = 0.0
    widgets["Show slice"].value = True
    widgets["Show slice"].fire()
    assert rerenders
    frame_outputs(model, camera, [panel])
    cloud = objects["/orex/slice"]
    points, colors = np.asarray(cloud.args[0], dtype=np.float64), np.asarray(cloud.args[1], dtype=np.int64)
    assert points.shape == (96 * 96, 3) and np.abs(points[:, 2]).max() == 0.0
    logits = model.sdf(torch.from_numpy(points).float()).numpy()
    inside = logits < 0
    assert inside.any() and (~inside).any(), "the tiny run should already separate the torus from the outside"
    bluish = colors[:, 2] > colors[:, 0]
    assert np.array_equal(bluish, inside)
    strong = np.abs(logits) > 4  # far from the 0-level the colours are (nearly) the pure ones
    assert np.abs(colors[strong & inside] - INSIDE_COLOR).max(initial=0) <= 12 and np.abs(colors[strong & ~inside] - OUTSIDE_COLOR).max(initial=0) <= 12

    # The slice follows the controls: another axis, offset and resolution.
    widgets["Slice axis"].value = "x"
    widgets["Slice offset"].value = 0.25
    widgets["Slice resolution"].value = 32
    widgets["Slice resolution"].fire()
    frame_outputs(model, camera, [panel])
    cloud = objects["/orex/slice"]
    points = np.asarray(cloud.args[0], dtype=np.float64)
    assert points.shape == (32 * 32, 3) and np.allclose(points[:, 0], 0.25)
    assert np.allclose(points[:, 1:].min(0), -1 + 1 / 32) and np.allclose(points[:, 1:].max(0), 1 - 1 / 32)
    logits = model.sdf(torch.from_numpy(points).float()).numpy()
    assert np.array_equal(np.asarray(cloud.args[1])[:, 2] > np.asarray(cloud.args[1])[:, 0], logits < 0)
    widgets["Show slice"].value = False
    widgets["Show slice"].fire()
    assert not cloud.visible

    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the panel changed no parameter

    # While training, frames keep coming: the slice is re-evaluated only when an optimizer step (or
    # a control) changed something.
    widgets["Show slice"].value = True
    widgets["Show slice"].fire()
    frame_outputs(model, camera, [panel])
    drawn = objects["/orex/slice"]
    frame_outputs(model, camera, [panel])
    assert objects["/orex/slice"] is drawn
    with torch.no_grad():
        model.z0.add_(10.0)  # a stand-in for a training step
    try:
        frame_outputs(model, camera, [panel])
        assert objects["/orex/slice"] is not drawn and not np.allclose(panel.last_slice[1], logits.reshape(32, 32))
    finally:
        with torch.no_grad():
            model.z0.sub_(10.0)


def test_panel_of_a_finished_run(orex_run, stand_in_widget, one_thread):
    """``ns-viewer --load-config``'s path: the loaded run's panel draws the same contours, and its
    slice is the trained field's."""
    trainer, _, run_dir = orex_run
    run = load_run(run_dir / "config.yml", "cpu")
    (panel,) = run.model.viewer_panels()
    _, objects, _ = populated(panel, run.model, stand_in_widget)
    (trained,) = trainer.model.viewer_panels()
    _, trained_objects, _ = populated(trained, trainer.model, stand_in_widget)
    assert np.array_equal(np.asarray(objects["/orex/contours"].args[0]), np.asarray(trained_objects["/orex/contours"].args[0]))
    panel.show_slice = trained.show_slice = True
    camera = Cameras(look_at(torch.tensor([[2.5, -2.0, 1.5]]), torch.zeros(1, 3)), 30.0, 30.0, 16.0, 12.0, 32, 24)
    frame_outputs(run.model, camera, [panel])
    frame_outputs(trainer.model, camera, [trained])
    assert np.allclose(panel.last_slice[1], trained.last_slice[1], atol=1e-5)


def test_panel_without_cross_sections(stand_in_widget, one_thread):
    """A model built without the parser's sections (e.g. by hand) still gets a panel: nothing to
    outline, but the viewer's frame and the slice work."""
    from methods.orex.model import OReXModel, OReXModelConfig
    from recon.model import SceneInfo

    model = OReXModel(OReXModelConfig(float64=False, num_iterations=2), SceneInfo(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), num_train_cameras=0))
    (panel,) = model.viewer_panels()
    widgets, objects, _ = populated(panel, model, stand_in_widget)
    assert np.asarray(objects["/orex/contours"].args[0]).shape == (0, 2, 3) and np.asarray(objects["/orex/planes"].args[0]).shape == (0, 3)
    widgets["Slice resolution"].value = 16
    widgets["Show slice"].value = True
    widgets["Show slice"].fire()
    camera = Cameras(look_at(torch.tensor([[2.5, -2.0, 1.5]]), torch.zeros(1, 3)), 30.0, 30.0, 16.0, 12.0, 32, 24)
    assert frame_outputs(model, camera, [panel])["rgb"].shape == (24, 32, 3)
    assert np.asarray(objects["/orex/slice"].args[0]).shape == (16 * 16, 3)
