"""geconerf: warping and masks on analytic scenes, schedules at the release's points, unobserved
poses, the feature extractors, bad input, and quality against the same backbone without the
regulariser."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from methods.geconerf import GeCoNeRFModelConfig, compressed_schedules
from methods.geconerf.datamanager import nearby_frames, orbit_pose
from methods.geconerf.schedules import consistency_weight, occlusion_threshold, pose_divergence
from recon.cameras import Cameras, RayBundle, look_at
from recon.config import get_method, override
from recon.engine.trainer import Trainer
from recon.errors import CheckpointError, ConfigError
from recon.features import VGG19_CONVS, PatchFeatures, VGG19Features, masked_feature_l1
from recon.geometry.warp import backproject, inverse_warp
from recon.model import SceneInfo

GECONERF_ENTRY = "geconerf=methods.geconerf:geconerf,geconerf-small=methods.geconerf:geconerf_small,geconerf-hash=methods.geconerf:geconerf_hash"
W = H = 40
F = 40.0


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    """The methods by RECON_METHODS as well: a checkout whose venv predates the entry points."""
    monkeypatch.setenv("RECON_METHODS", GECONERF_ENTRY)


def _camera(eye, target) -> Cameras:
    c2w = look_at(torch.tensor([eye], dtype=torch.float32), torch.tensor([target], dtype=torch.float32), up=torch.tensor([0.0, -1.0, 0.0]))
    return Cameras(c2w, fx=F, fy=F, cx=W / 2, cy=H / 2, width=W, height=H)


def _texture(xy: torch.Tensor) -> torch.Tensor:
    """Colour [P, 3] of the plane at world (x, y) [P, 2]: linear, so bilinear sampling is exact."""
    x, y = xy.unbind(-1)
    return torch.stack([0.5 + 0.2 * x, 0.5 - 0.15 * y, 0.3 + 0.1 * x + 0.1 * y], -1)


def _plane_distance(rays: RayBundle, depth: float) -> torch.Tensor:
    return (depth - rays.origins[:, 2]) / rays.directions[:, 2]


def _render_source(camera: Cameras, planes) -> torch.Tensor:
    """The source image [H, W, 3] of the scene ``planes`` (nearest hit wins), at pixel centres."""
    rays = camera.generate_rays(0)
    dist, colour = _hits(rays, planes)
    return colour.reshape(H, W, 3)


def _hits(rays: RayBundle, planes) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hit distance [R] and colour [R, 3] of rays against planes z = depth, each limited to
    x in [x_lo, x_hi]."""
    best = torch.full((len(rays),), float("inf"))
    colour = torch.zeros(len(rays), 3)
    for depth, x_lo, x_hi in planes:
        t = _plane_distance(rays, depth)
        x = backproject(rays.origins, rays.directions, t)
        hit = (t > 0) & (x[:, 0] >= x_lo) & (x[:, 0] <= x_hi) & (t < best)
        best = torch.where(hit, t, best)
        colour = torch.where(hit[:, None], _texture(x[:, :2]) * (1.0 if depth > 3 else 0.5), colour)
    return best, colour


def _model(**changes) -> torch.nn.Module:
    config = override(GeCoNeRFModelConfig(), hidden_dim=8, num_layers=2, skips=(), color_hidden_dim=8, num_samples=4, max_deg=2, **changes)
    scene = SceneInfo(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), num_train_cameras=3)
    return config.setup(scene=scene)


def _analytic(model, planes) -> None:
    """Replace the model's renderer by the exact scene: distance and full opacity along any ray."""

    def render_rays(rays: RayBundle, perturb=None):
        dist, colour = _hits(rays, planes)
        return {"distance": dist[:, None], "accumulation": torch.ones(len(rays), 1), "rgb": colour}

    model.render_rays = render_rays


def _patch(source: Cameras, target: Cameras, planes) -> tuple[dict, dict]:
    rays = target.generate_rays(0)
    patch = {"rays": rays, "shape": (H, W), "camera": target, "source_image": _render_source(source, planes), "source_camera": source, "source": 0}
    dist, colour = _hits(rays, planes)
    return patch, {"distance": dist[:, None], "accumulation": torch.ones(len(rays), 1), "rgb": colour}


def test_fronto_parallel_plane_warps_the_source_exactly_inside_the_mask():
    plane = [(4.0, -1e9, 1e9)]
    source = _camera([0.0, 0.0, 0.0], [0.0, 0.0, 4.0])
    target = _camera([1.0, 0.4, -0.6], [0.5, 0.1, 4.0])  # moved and turned: part of its view is outside the source's
    model = _model(occlusion_threshold=0.05, occlusion_unit=1.0)
    _analytic(model, plane)
    patch, rendered = _patch(source, target, plane)
    warped, mask = model.warp_patch(patch, rendered, step=0)
    points = backproject(patch["rays"].origins, patch["rays"].directions, rendered["distance"][:, 0])
    # Where the source sees the point (analytically: its projection lies inside the image by half a pixel).
    x, y = points[:, 0] / 4.0 * F + W / 2, points[:, 1] / 4.0 * F + H / 2
    expected = (x > 0.5) & (x < W - 0.5) & (y > 0.5) & (y < H - 0.5)
    assert torch.equal(mask, expected)
    assert 0.3 < mask.float().mean() < 0.95
    assert torch.allclose(warped[mask], _texture(points[mask, :2]), atol=1e-5)
    # A wrong depth breaks it: warping with 10% too far points misplaces the texture.
    wrong = dict(rendered, distance=rendered["distance"] * 1.1)
    bad, _ = model.warp_patch(patch, wrong, step=0)
    assert (bad[mask] - _texture(points[mask, :2])).abs().max() > 0.02


def test_consistency_losses_vanish_on_a_consistent_patch_only():
    plane = [(4.0, -1e9, 1e9)]
    source = _camera([0.0, 0.0, 0.0], [0.0, 0.0, 4.0])
    target = _camera([0.2, 0.1, 0.8], [0.1, 0.0, 4.0])  # sees only what the source sees: the mask is full
    model = _model(photo_weight=0.15, occlusion_unit=1.0)
    _analytic(model, plane)
    patch, rendered = _patch(source, target, plane)
    exact = model.patch_losses(patch, rendered, step=0)
    assert model.warp_patch(patch, rendered, step=0)[1].all()
    assert set(exact) == {"consistency", "photo"}
    assert exact["consistency"] < 1e-4 and exact["photo"] < 1e-9
    shifted = dict(rendered, rgb=(rendered["rgb"] + 0.1).requires_grad_())
    wrong = model.patch_losses(patch, shifted, step=0)
    assert wrong["consistency"] > 100 * exact["consistency"] and float(wrong["photo"]) == pytest.approx(0.15 * 0.01, rel=1e-3)
    wrong["consistency"].backward()
    assert shifted["rgb"].grad.abs().sum() > 0  # the loss reaches the rendered colours
    later = model.patch_losses(patch, shifted, step=20000)["consistency"]
    assert float(later) == pytest.approx(float(wrong["consistency"]) / math.e, rel=1e-4)  # lambda decays as exp(-t / 20000)


def test_two_plane_scene_masks_the_occluded_band():
    """A strip at z = 2 in front of a wall at z = 5: from a camera moved sideways, the wall behind
    the strip's shadow (as the source sees it) must be masked, and only that band."""
    planes = [(5.0, -1e9, 1e9), (2.0, -0.3, 0.3)]
    source = _camera([0.0, 0.0, 0.0], [0.0, 0.0, 5.0])
    target = _camera([0.6, 0.0, 0.0], [0.6, 0.0, 5.0])
    model = _model(occlusion_threshold=0.5, occlusion_unit=1.0)
    _analytic(model, planes)
    patch, rendered = _patch(source, target, planes)
    _, mask = model.warp_patch(patch, rendered, step=0)
    points = backproject(patch["rays"].origins, patch["rays"].directions, rendered["distance"][:, 0])
    _, _, _, inside = inverse_warp(patch["source_image"], source, points)
    on_wall = points[:, 2] > 4.0
    shadow_x = points[:, 0] * 2.0 / 5.0  # where the source's ray to a wall point crosses z = 2
    occluded = on_wall & (shadow_x >= -0.3) & (shadow_x <= 0.3)
    assert occluded.sum() > 40  # a real band, several columns wide
    assert torch.equal(mask, inside & ~occluded)
    # Without the check the band stays in: its warped colours are the strip's, not the wall's.
    _, unchecked = _model_without_check(planes).warp_patch(patch, rendered, step=0)
    assert torch.equal(unchecked, inside)


def _model_without_check(planes):
    model = _model(occlusion_check=False)
    _analytic(model, planes)
    return model


def test_schedules_at_the_releases_points():
    assert consistency_weight(0, 0.0115, 20000) == pytest.approx(0.0115)
    assert consistency_weight(20000, 0.0115, 20000) == pytest.approx(0.00423, abs=1e-5)
    assert consistency_weight(50000, 0.0115, 20000) == pytest.approx(0.00094, abs=1e-5)
    assert consistency_weight(85000, 0.0115, 20000) == pytest.approx(0.00016, abs=1e-5)
    assert occlusion_threshold(0, 2.0, 25000) == 2.0
    assert [round(occlusion_threshold(t, 2.0, 25000), 2) for t in (25000, 50000, 85000)] == [0.74, 0.27, 0.07]
    assert pose_divergence(0, 3, 9, 120000) == 3 and pose_divergence(60000, 3, 9, 120000) == 6
    assert pose_divergence(120000, 3, 9, 120000) == pose_divergence(200000, 3, 9, 120000) == 9
    small = compressed_schedules(8500)  # a tenth of the release's 85k steps
    assert small["datamanager.reg_start"] == 90 and small["model.anneal_steps"] == 1500
    assert small["model.weight_decay_steps"] == 2000 and small["datamanager.divergence_steps"] == 12000


def test_strict_poses_orbit_the_centre_within_the_divergence():
    source = look_at(torch.tensor([[0.0, -3.0, 1.0]]), torch.tensor([[0.0, 0.0, 0.0]]))[0]
    centre = torch.zeros(3)
    g = torch.Generator().manual_seed(0)
    theta = 9.0
    angles = []
    for _ in range(200):
        az, el = ((torch.rand(2, generator=g) - 0.5) * theta).tolist()
        pose = orbit_pose(source, centre, az, el)
        assert torch.allclose(pose[:, :3] @ pose[:, :3].T, torch.eye(3), atol=1e-5)
        assert (pose[:, 3] - centre).norm() == pytest.approx(float((source[:, 3] - centre).norm()), rel=1e-5)
        # Still looking at the centre, and turned by at most theta / sqrt(2).
        to_centre = (centre - pose[:, 3]) / (centre - pose[:, 3]).norm()
        assert torch.allclose(pose[:, 2], to_centre, atol=1e-5)
        angles.append(math.degrees(math.acos(float((pose[:, 2] * source[:, 2]).sum().clamp(-1, 1)))))
    assert 0 < min(angles) and max(angles) <= theta / math.sqrt(2) + 1e-3 and max(angles) > 0.6 * theta / math.sqrt(2)


def test_nearby_poses_are_the_most_similar_other_training_cameras():
    angles = torch.arange(12) * (2 * math.pi / 12)  # camera centres on a circle around their mean
    centres = torch.stack([torch.cos(angles), torch.sin(angles), torch.full((12,), 0.5)], -1) * 3
    frames = list(range(12))
    assert set(nearby_frames(centres, frames, 4, 2)) == {3, 5}
    assert set(nearby_frames(centres, frames, 4, 4)) == {2, 3, 5, 6}
    assert 4 not in nearby_frames(centres, frames, 4, 11) and len(nearby_frames(centres, frames, 4, 11)) == 11
    # Only frames of the list are candidates (the few-shot run's full training split).
    assert set(nearby_frames(centres, [0, 2, 4, 6, 8, 10], 4, 2)) == {2, 6}


def test_nearby_mode_on_fern_uses_other_training_split_poses(shared_data, tmp_path, quiet_config):
    """The release's LLFF mode: 3 inputs (RegNeRF's split), unobserved poses drawn from the 5 most
    similar cameras of the 17-image training split, never a test camera or the input itself."""
    tiny = get_method("geconerf").test_overrides
    trainer = Trainer(quiet_config("geconerf", shared_data / "fern", tmp_path, 1, **{**tiny, "datamanager.image_scale": 0.1, "datamanager.pose_mode": "nearby"}))
    dm = trainer.datamanager
    outputs = trainer.outputs
    assert outputs.splits["train"] == [1, 10, 19] and trainer.model.ray_space.is_ndc and trainer.model.cylinder
    c2w = outputs.cameras.camera_to_worlds
    allowed = set(outputs.metadata["few_shot"]["train_split"])
    for source, frame in enumerate(outputs.splits["train"]):
        pool = dm.nearby[source]
        frames = [int(torch.nonzero((c2w - p).abs().amax(dim=(1, 2)) < 1e-6)[0, 0]) for p in pool]
        assert len(frames) == 5 and frame not in frames and set(frames) <= allowed
        for _ in range(5):
            pose = dm.unobserved_pose(source, 0)
            assert any(torch.equal(pose, p) for p in pool)


def test_patch_batches_every_second_step_from_the_start(tiny_scene, tmp_path, quiet_config):
    tiny = get_method("geconerf").test_overrides
    trainer = Trainer(quiet_config("geconerf", tiny_scene, tmp_path, 1, **{**tiny, "datamanager.reg_start": 3}))
    dm = trainer.datamanager
    hooks = dm.callbacks()
    seen = []
    for step in range(8):
        for hook in hooks:
            hook(step)
        batch = dm.next_train(step)
        seen.append("patch" in batch)
        if "patch" in batch:
            patch = batch["patch"]
            assert patch["shape"] == (4, 4) and len(patch["rays"]) == 16 and patch["source_image"].shape == (32, 32, 3)
            uv, _ = patch["camera"].project(patch["rays"].origins + patch["rays"].directions)
            assert (uv >= 0).all() and (uv <= 32).all()
    assert seen == [False, False, False, True, False, True, False, True]


def test_an_unobserved_pose_equal_to_the_source_warps_back_to_its_own_pixels(tiny_scene, tmp_path, quiet_config):
    """With zero divergence the unobserved camera is the source camera: whatever depth is rendered,
    every point projects back to the pixel it came from, so the warp is the source image itself."""
    tiny = get_method("geconerf").test_overrides
    changes = {**tiny, "datamanager.divergence_start": 0.0, "datamanager.divergence_end": 0.0, "datamanager.patch_size": 16, "model.occlusion_check": False}
    trainer = Trainer(quiet_config("geconerf", tiny_scene, tmp_path, 1, **changes))
    patch = trainer.datamanager.patch_batch(step=0)
    assert torch.allclose(patch["camera"].camera_to_worlds, patch["source_camera"].camera_to_worlds)
    rays = patch["rays"]
    rendered = {"distance": torch.rand(len(rays), 1) * 3 + 0.5, "accumulation": torch.ones(len(rays), 1), "rgb": torch.zeros(len(rays), 3)}
    warped, mask = trainer.model.warp_patch(patch, rendered, step=0)
    image = patch["source_image"]
    uv, _ = patch["camera"].project(rays.origins + rays.directions)
    # The patch grid is the centres of 2 x 2 blocks: the mean of the block's four pixels.
    u0, v0 = (uv[:, 0] - 1).round().long(), (uv[:, 1] - 1).round().long()
    blocks = (image[v0, u0] + image[v0, u0 + 1] + image[v0 + 1, u0] + image[v0 + 1, u0 + 1]) / 4
    assert mask.all() and torch.allclose(warped, blocks, atol=1e-5)


def test_feature_extractors_and_the_masked_loss(tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    feats = PatchFeatures()
    fa, fb = feats(a), feats(b)
    assert [f.shape for f in fa] == [(1, 12, 8, 8), (1, 12, 4, 4)]
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1
    # The loss only sees masked pixels: changing the unmasked half changes nothing.
    c = a.clone()
    c[..., 10:] = b[..., 10:]
    assert masked_feature_l1(fa, feats(c), mask) < 0.05 * masked_feature_l1(fa, fb, mask)
    assert masked_feature_l1(fa, fa, mask) == 0
    # VGG-19 from a torchvision-format file; a VGG-16 file is refused with one line.
    vgg19 = {f"features.{i}.weight": torch.randn(co, ci, 3, 3) * 0.05 for i, ci, co in VGG19_CONVS}
    vgg19.update({f"features.{i}.bias": torch.zeros(co) for i, _, co in VGG19_CONVS})
    vgg19["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(vgg19, tmp_path / "vgg19.pth")
    net = VGG19Features().load_weights(tmp_path / "vgg19.pth")
    assert torch.equal(net.convs["5"].weight, vgg19["features.5.weight"])
    assert [f.shape for f in net(a)] == [(1, 64, 8, 8), (1, 128, 4, 4)]
    vgg16 = {k.replace("features.16.", "features.17."): v for k, v in vgg19.items() if not k.startswith(("features.3", "features.25"))}
    torch.save(vgg16, tmp_path / "vgg16.pth")
    with pytest.raises(CheckpointError, match="not a torchvision VGG-19 state dict"):
        VGG19Features().load_weights(tmp_path / "vgg16.pth")
    wrong_shape = dict(vgg19, **{"features.0.weight": torch.zeros(64, 1, 3, 3)})
    torch.save(wrong_shape, tmp_path / "gray.pth")
    with pytest.raises(CheckpointError, match=r"features.0.weight is \(64, 1, 3, 3\)"):
        VGG19Features().load_weights(tmp_path / "gray.pth")


def test_viewer_panel_shows_the_last_unobserved_patch(tiny_scene, tmp_path, quiet_config):
    from types import SimpleNamespace

    from methods.geconerf.panels import UnobservedPatchPanel

    tiny = get_method("geconerf").test_overrides
    trainer = Trainer(quiet_config("geconerf", tiny_scene, tmp_path, 4, **tiny))
    panels = trainer.model.viewer_panels()
    assert len(panels) == 1 and isinstance(panels[0], UnobservedPatchPanel)
    trainer.train()
    snap = trainer.model.last_patch
    assert snap is not None and snap.step == 2  # patches at steps 2 (reg_start) and 4 > last step 3
    images, frustums = [], []
    handle = SimpleNamespace(image=None)
    context = SimpleNamespace(
        gui=SimpleNamespace(add_image=lambda image, label: images.append(image) or handle),
        scene=SimpleNamespace(add_camera_frustum=lambda name, **kw: frustums.append(kw)),
        model=trainer.model, run_dir=None, rerender=lambda: None,
    )
    panel = panels[0]
    panel.populate(context)
    assert handle.image.shape == (4, 12, 3) and handle.image.dtype.name == "uint8"
    mask_tile = handle.image[:, 8:, 0]
    assert set(mask_tile.flatten().tolist()) <= {0, 255} and (mask_tile == 255).sum() == int(snap.mask.sum())
    assert len(frustums) == 1 and torch.allclose(torch.as_tensor(frustums[0]["position"]).float(), snap.camera.camera_to_worlds[0, :, 3])
    panel.process_outputs(snap.camera, {})  # no newer patch: nothing redrawn
    assert len(frustums) == 1


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    # Plugins the shared environment registers but this checkout lacks warn on every start: not ours.
    env = {**os.environ, "COLUMNS": "100", "RECON_METHODS": GECONERF_ENTRY, "PYTHONWARNINGS": "ignore:method plugin"}
    return subprocess.run([sys.executable, "-m", "recon.cli.train", "geconerf", *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_bad_input_is_one_line(tiny_scene, tmp_path):
    def one_line(proc, needle):
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode != 0 and len(lines) == 1 and needle in lines[0], proc.stderr

    common = ["--data", tiny_scene, "--output-dir", tmp_path, "--device", "cpu", "--max-num-iterations", "1"]
    one_line(_train_cli(*common, "--datamanager.patch-size", "40"), "patch_size 40 is larger than the training images (32x32 pixels)")
    one_line(_train_cli(*common, "--num-train-views", "9"), "num_train_views=9 but the train split has only 8 views")
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "alexnet.pth")
    small = [*common, "--datamanager.patch-size", "8"]
    one_line(_train_cli(*small, "--model.vgg-weights", tmp_path / "alexnet.pth"), "not a torchvision VGG-19 state dict")
    one_line(_train_cli(*small, "--model.vgg-weights", tmp_path / "missing.pth"), "VGG-19 weights file not found")
    assert not any(tmp_path.rglob("config.yml"))  # nothing written for a failed start


@pytest.mark.slow
def test_quality_on_synthetic_scene_with_few_views(tmp_path, quiet_config, one_thread):
    """geconerf (strict poses, weight-free features, regulariser on from step 100) reproduces
    held-out views of the default scene from 8 of its views; a broken renderer or training loop
    cannot (the warp, masks and losses are checked on analytic scenes above).

    On the 8 test views the mean training image gives 13.7 dB and the mean colour 10.3 dB. This
    configuration (3 x 64 trunk, 2 x 24 samples, 256 rays, 400 steps) measured 16.96 dB (seed 42;
    17.08 with seed 7); the threshold keeps 1.5 dB of margin and is 1.8 dB above the mean image.
    The regulariser's effect on this scene is within noise (README.md, "Measured")."""
    from data.synthetic import default_scene_path
    from recon.engine.evaluate import evaluate_images

    steps = 400
    small = {
        "model.hidden_dim": 64, "model.num_layers": 3, "model.skips": (), "model.color_hidden_dim": 32, "model.num_samples": 24,
        "datamanager.train_num_rays_per_batch": 256, "datamanager.patch_size": 16,
        **compressed_schedules(steps), "datamanager.reg_start": 100, "model.weight_decay_steps": 2000,
    }
    del small["max_num_iterations"]
    trainer = Trainer(quiet_config("geconerf-small", default_scene_path(), tmp_path, steps, num_train_views=8, **small))
    trainer.train()
    result = evaluate_images(trainer.model, trainer.datamanager.eval_dataset, progress=False, with_lpips=False)
    assert result["mean"]["psnr"] > 15.5, result["mean"]


@pytest.mark.slow
def test_hash_variant_learns_the_synthetic_scene(tmp_path, quiet_config, one_thread):
    """geconerf-hash (the hash-grid backbone with annealed levels) reproduces held-out views of the
    default scene from 8 of its views, in the configuration of the test above. Measured 17.57 dB
    (17.56 without the consistency loss: on this scene the regulariser is within noise, as with
    mip-NeRF); the mean training image gives 13.7 dB, so a field whose levels never open, or a
    broken grid, stays far below the threshold."""
    from data.synthetic import default_scene_path
    from recon.engine.evaluate import evaluate_images

    steps = 400
    small = {"model.num_samples": 24, "datamanager.train_num_rays_per_batch": 256, "datamanager.patch_size": 16,
             **compressed_schedules(steps), "datamanager.reg_start": 100, "model.weight_decay_steps": 2000}
    del small["max_num_iterations"]
    trainer = Trainer(quiet_config("geconerf-hash", default_scene_path(), tmp_path, steps, num_train_views=8, **small))
    trainer.train()
    assert float(trainer.model.field.anneal_alpha) == 16.0  # every level open by the end
    result = evaluate_images(trainer.model, trainer.datamanager.eval_dataset, progress=False, with_lpips=False)
    assert result["mean"]["psnr"] > 16.0, result["mean"]
