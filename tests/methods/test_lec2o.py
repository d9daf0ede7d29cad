"""lec2o-small: quality on the default synthetic scene, the occupied fraction against the configured
ratio, routing during training, what skipping empty samples at inference changes, the viewer panel."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from data.synthetic import default_scene_path
from methods.lec2o import TEST_OVERRIDES
from methods.lec2o.panels import OCCUPANCY, OccupancyPanel, heat, occupied_points
from recon.engine.evaluate import evaluate_images
from recon.engine.trainer import Trainer
from recon.errors import ConfigError
from recon.image_metrics import psnr
from recon.render.rays import intersect_aabb

STEPS = 250
THRESHOLD = 18.5
"""Measured 19.83 dB (SSIM 0.79) after 250 steps with the default g_occ scaling (19.96 under g_emp), 26 s on one thread; nerf-hash-small reaches 20.3 dB
after 300 steps. Baselines on these views: mean training colour 10.3 dB (test_nerf_hash.py)."""

RATIO = 0.25
"""The preset's target occupied ratio."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, quiet_config):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    schedules = {f"optimizers.{g}.scheduler.max_steps": STEPS for g in ("fields", "occupancy")}
    trainer = Trainer(quiet_config("lec2o-small", default_scene_path(), tmp_path_factory.mktemp("lec2o"), STEPS, **schedules))
    trainer.train()
    yield trainer
    torch.set_num_threads(threads)


def test_quality_on_synthetic_scene(trained):
    result = evaluate_images(trained.model, trained.datamanager.eval_dataset, with_lpips=False, progress=False)
    print(f"lec2o-small quality: psnr {result['mean']['psnr']:.2f}, ssim {result['mean']['ssim']:.3f}")
    assert result["mean"]["psnr"] > THRESHOLD, result["mean"]


def test_occupied_fraction_tracks_the_preset_ratio(trained):
    """On training rays the gate passes about ``target_ratio`` of the samples to the large network
    (measured 0.266 on one 512-ray batch after 250 steps)."""
    model = trained.model.train()
    batch = trained.datamanager.next_train(STEPS)
    with torch.no_grad():
        out = model(batch)
    fraction = float(out["num_occupied"].sum()) / out["num_occupied"].numel() / model.config.num_samples
    print(f"lec2o-small occupied fraction {fraction:.3f}")
    assert abs(fraction - RATIO) < 0.06, fraction


@pytest.mark.usefixtures("one_thread")
def test_occupied_fraction_tracks_another_ratio(tiny_scene, tmp_path, quiet_config):
    """With target_ratio 0.45 on the tiny scene the fraction settles there too (measured 0.456, mean
    of the last 50 of 300 steps, 21 s); the same run with 0.15 settles at 0.21, where the photometric
    loss holds samples the scene needs against the occupancy loss at the preset's weight."""
    ratio, steps = 0.45, 300
    changes = {"model.target_ratio": ratio, "datamanager.train_num_rays_per_batch": 256, "optimizers.fields.scheduler.max_steps": steps, "optimizers.occupancy.scheduler.max_steps": steps}
    trainer = Trainer(quiet_config("lec2o-small", tiny_scene, tmp_path, steps, **changes))
    fractions = []
    forward = trainer.model.forward

    def recording(batch):
        out = forward(batch)
        fractions.append(float(out["num_occupied"].float().mean()) / trainer.model.config.num_samples)
        return out

    trainer.model.forward = recording
    trainer.train()
    late = sum(fractions[-50:]) / 50
    assert abs(late - ratio) < 0.05 and fractions[0] > 0.6, (fractions[0], late)  # starts at 0.74


BETWEEN_DB = 33.0
"""Measured 56.6 dB between the render that skips the empty samples and the one that evaluates them
(first test view) with the default g_occ density scaling; 39.5 dB under Switch-NeRF's g_emp
(largest pixel difference 0.42 after 300 steps, on a few silhouette pixels)."""
SKIP_TOLERANCE_DB = 0.4
"""Measured mean test PSNR 19.83 dB skipping vs 19.85 dB evaluating the empty samples (g_occ); under
g_emp 19.96 vs 20.14 dB (0.17 dB), more than the 0.1 dB the spec hoped for (methods/lec2o/README.md)."""


@pytest.mark.usefixtures("one_thread")
def test_skipping_empty_samples_changes_little(trained):
    """Rendering with the empty samples skipped (no network evaluated, density 0) against rendering
    them through the empty-space network: the images differ by less than a measured tolerance, and
    the large network evaluates only the occupied share of the samples."""
    model = trained.model.eval()
    camera = trained.datamanager.eval_dataset.cameras[0]
    rays = camera.generate_rays(0)
    calls = {"large": 0, "empty": 0}

    def counting(module, key):
        forward = module.forward

        def wrapped(positions, *args):
            calls[key] += positions.shape[0]
            return forward(positions, *args)

        return wrapped

    model.field.forward = counting(model.field, "large")
    model.empty_field.forward = counting(model.empty_field, "empty")
    try:
        with torch.no_grad():
            skipped = model.render_rays(rays)
            model.config.skip_empty = False
            full = model.render_rays(rays)
    finally:
        model.config.skip_empty = True
        del model.field.forward, model.empty_field.forward
    total = len(rays) * model.config.num_samples
    occupied, large = int(skipped["num_occupied"].sum()), int(skipped["num_large"].sum())
    assert calls == {"large": 2 * large, "empty": total - occupied}
    assert large == occupied * model.config.subdivisions and occupied < 0.35 * total  # measured 0.26
    between = float(psnr(skipped["rgb"][None], full["rgb"][None]))  # [1, R, 3]: an image of one row
    dataset = trained.datamanager.eval_dataset
    with_skip = evaluate_images(model, dataset, with_lpips=False, progress=False)["mean"]["psnr"]
    model.config.skip_empty = False
    try:
        without = evaluate_images(model, dataset, with_lpips=False, progress=False)["mean"]["psnr"]
    finally:
        model.config.skip_empty = True
    print(f"lec2o-small skipping: {between:.1f} dB apart, psnr {with_skip:.2f} skipped / {without:.2f} not, large network on {occupied / total:.3f}")
    assert between > BETWEEN_DB and abs(with_skip - without) < SKIP_TOLERANCE_DB, (between, with_skip, without)


@pytest.mark.usefixtures("one_thread")
def test_training_routes_every_sample_once_and_trains_the_gate(tiny_scene, tmp_path, quiet_config):
    """One training step on the tiny scene: the two experts together see each sample exactly once,
    the large one exactly the occupied ones, and every loss reaches the gate."""
    trainer = Trainer(quiet_config("lec2o-small", tiny_scene, tmp_path, 1, **TEST_OVERRIDES, **{"model.gate_init_occupied": 0.5}))
    model = trainer.model.train()
    with torch.no_grad():
        model.occupancy.gate.encoding.table.uniform_(-1.0, 1.0)  # both classes populated from the start
    seen = {"large": 0, "empty": 0}
    for key, module in (("large", model.field), ("empty", model.empty_field)):
        module.register_forward_hook(lambda m, args, out, key=key: seen.__setitem__(key, seen[key] + args[0].shape[0]))
    batch = trainer.datamanager.next_train(0)
    out = model(batch)
    losses = model.loss_dict(batch, out, 0)
    occupied, large = int(out["num_occupied"].sum()), int(out["num_large"].sum())
    total = len(batch["rays"]) * model.config.num_samples
    assert 0 < occupied < total
    assert seen == {"large": large, "empty": total - occupied}
    assert {"rgb", "occupancy", "density"} <= set(losses)
    for name in ("rgb", "occupancy", "density"):
        model.zero_grad()
        losses[name].backward(retain_graph=True)
        grads = [p.grad for p in model.occupancy.gate.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name


@pytest.mark.parametrize(("change", "flag"), [({"model.target_ratio": 1.5}, "target-ratio"), ({"model.subdivisions": 0}, "subdivisions")])
def test_bad_options_are_config_errors(tiny_scene, tmp_path, quiet_config, change, flag):
    with pytest.raises(ConfigError, match=flag):
        Trainer(quiet_config("lec2o-small", tiny_scene, tmp_path / "run", 1, **{**TEST_OVERRIDES, **change}))
    assert not (tmp_path / "run").exists()


def _gate_everywhere(model, occupied: bool) -> None:
    """Make the gate's output constant: g_occ = sigmoid(+-8)."""
    last = model.occupancy.gate.mlp.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(8.0 if occupied else -8.0)


def test_occupancy_panel(tiny_scene, tmp_path, quiet_config):
    """The panel leaves the image to the model by default; its occupancy picture is white where every
    sample of the ray is occupied and black where none is (rays missing the box included), with the
    matching fraction; its points are the occupied grid cells."""
    trainer = Trainer(quiet_config("lec2o-small", tiny_scene, tmp_path, 1, **TEST_OVERRIDES))
    model = trainer.model.eval()
    (panel,) = model.viewer_panels()
    camera = trainer.datamanager.eval_dataset.cameras[0]
    assert isinstance(panel, OccupancyPanel) and panel.render(model, camera) is None
    panel.show = OCCUPANCY
    rays = camera.generate_rays(0)
    _, _, hit = intersect_aabb(rays.origins, rays.directions, model.aabb)  # samples of a missing ray lie outside: empty
    assert 0.2 < hit.float().mean() < 1.0
    for occupied in (True, False):
        _gate_everywhere(model, occupied)
        out = panel.render(model, camera)
        expected = (hit & occupied).float()[:, None].expand(-1, 3).reshape(32, 32, 3)
        assert torch.equal(out["rgb"], expected)
        assert panel.fraction == pytest.approx(float(hit.float().mean()) if occupied else 0.0)
        assert len(occupied_points(model, resolution=8)) == (512 if occupied else 0)
    assert torch.equal(heat(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]))


def test_occupancy_panel_widgets(tiny_scene, tmp_path, quiet_config, stand_in_widget):
    """Against stand-in widgets: the dropdown switches the view and asks for a frame, the button puts
    the occupied cells into the scene and counts them."""
    trainer = Trainer(quiet_config("lec2o-small", tiny_scene, tmp_path, 1, **TEST_OVERRIDES))
    model = trainer.model.eval()
    _gate_everywhere(model, True)
    widgets, clouds, frames = {}, {}, []

    def add(label, initial_value=None, **_):
        widgets[label] = stand_in_widget(initial_value)
        return widgets[label]

    gui = SimpleNamespace(add_dropdown=add, add_button=add, add_markdown=lambda content: add("status", content=content))
    scene = SimpleNamespace(add_point_cloud=lambda name, **kw: clouds.setdefault(name, kw))
    panel = OccupancyPanel()
    panel.populate(SimpleNamespace(gui=gui, scene=scene, model=model, run_dir=None, rerender=lambda: frames.append(1)))
    widgets["Show"].value = OCCUPANCY
    widgets["Show"].fire()
    assert panel.show == OCCUPANCY and frames == [1]
    widgets["Occupied points"].fire()
    assert clouds["/lec2o/occupied"]["points"].shape == (48**3, 3)
    assert widgets["status"].content == f"{48**3} occupied cells of 48^3"
