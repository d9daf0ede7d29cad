"""helixsurf (HelixSurf, Liang et al. 2023): PatchMatch rounds fill the datamanager's per-pixel depth
and normal buffers with the scene's surface (filtered pixels empty), later rounds start from the
rendered SDF, the MVS losses vanish on agreement and ignore pixels without MVS, the loop state is
in the checkpoint (exact resume across a refresh), and user errors are one line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.datamanager import ImageDataset
from recon.config import get_method
from recon.engine.callbacks import Callback, Where
from recon.engine.checkpoint import find_checkpoint, load_train_state
from recon.engine.trainer import Trainer
from recon.errors import ConfigError
from recon.geometry.patchmatch import PatchMatchConfig, geometric_consistency, patchmatch
from recon.geometry.point_cleaning import SurfaceCleaningConfig

METHOD = "helixsurf-small"
# PatchMatch on the tiny scene at its full 32 x 32 (half size leaves 16 x 16 images, too few pixels to match)
FULL_SIZE = {"model.helix.image_scale": 1.0, "model.helix.patchmatch": PatchMatchConfig(patch_radius=2, iterations=2)}


def trainer(quiet_config, scene, out, steps, **changes) -> Trainer:
    return Trainer(quiet_config(METHOD, scene, out, steps, **{**get_method(METHOD).test_overrides, **changes}))


def flat_cues(t: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """The scene's ground-truth depth [N] and normals [N, 3] of the training pixels, in the datamanager's order."""
    gt = ImageDataset(t.outputs.split("train"), load_masks=False, load_cues=True)
    return torch.cat([d.reshape(-1) for d in gt.depths]), torch.cat([n.reshape(-1, 3) for n in gt.normals])


def test_round_zero_supervises_with_the_scene_surface(tmp_path, quiet_config):
    """Round 0 of helixsurf-small on the default synthetic scene (PatchMatch from random planes at
    half the 64 x 64 training size, 5 x 5 patches; the preset matches at full size, which takes
    four times as long) puts z-depths and world-frame normals
    of the true surface into the buffers the batches carry, at the training size: most surface
    pixels get one, within a few percent; a wrong frame, a ray distance for a z-depth, a wrong
    up-sampling or a mis-indexed image would fail."""
    from data.synthetic import default_scene_path

    half = {"model.helix.patchmatch": PatchMatchConfig(patch_radius=2), "model.helix.image_scale": 0.5}
    t = Trainer(quiet_config(METHOD, default_scene_path(), tmp_path, 1, **half))
    assert t.datamanager.depths is None  # helixsurf does not read the dataset's (ground-truth) maps
    t.model.helix_round(0)
    dm = t.datamanager
    assert dm.cue_version == 1
    depth, normal = dm.depths, dm.normals
    gt_depth, gt_normal = flat_cues(t)
    assert depth.shape == gt_depth.shape == (32 * 64 * 64,)
    both = (depth > 0) & (gt_depth > 0)
    assert torch.equal(depth > 0, normal.norm(dim=-1) > 0.5)
    surface_kept = float(both.sum() / (gt_depth > 0).sum())
    rel = (depth[both] - gt_depth[both]).abs() / gt_depth[both]
    cos = (normal[both] * gt_normal[both]).sum(-1)
    # measured: 0.94 of the surface pixels, median depth error 1.3 %, median normal cosine 0.95 (13 s)
    assert surface_kept > 0.85, surface_kept
    assert rel.median() < 0.03 and cos.median() > 0.9, (rel.median(), cos.median())
    batch = dm.next_train(0)
    assert batch["depth"].shape == (512,) and batch["normal"].shape == (512, 3) and batch["plane_normal"].shape == (512, 3)
    # planar priors: superpixels on planes carry the true normal, some of them where MVS has no depth
    plane = dm.extra_cues["plane_normal"]
    planar = (plane.norm(dim=-1) > 0.5) & (gt_depth > 0)
    plane_cos = (plane[planar] * gt_normal[planar]).sum(-1)
    # measured: 6.7 % of the pixels in planar regions, median cosine 0.99 (10th percentile 0.69),
    # 0.2 % of the pixels planar without an MVS depth
    assert planar.float().mean() > 0.03 and plane_cos.median() > 0.95, (planar.float().mean(), plane_cos.median())
    assert (planar & (depth == 0)).any()


def test_pixels_the_consistency_filter_drops_carry_no_supervision(tiny_scene, tmp_path, quiet_config):
    """At image scale 1 the buffers hold a value exactly where PatchMatch kept the pixel and the
    geometric-consistency filter let it through; the MVS losses then ignore every ray whose buffer
    is empty, whatever the model renders there."""
    t = trainer(quiet_config, tiny_scene, tmp_path, 1, **FULL_SIZE)
    t.model.helix_round(0)
    ds = t.datamanager.train_dataset
    pm = t.model.config.helix.patchmatch
    images = [ds.image(i) for i in range(len(ds))]
    points = torch.as_tensor(t.model.scene.points3d, dtype=torch.float32)
    result = patchmatch(images, ds.cameras, pm, t.model.scene.aabb, points=points)  # round 0's seed
    keep, _ = geometric_consistency(ds.cameras, result.depth, pm)
    assert 0 < int(keep.sum()) < int((result.depth > 0).sum())  # the filter did drop pixels
    assert torch.equal(t.datamanager.depths > 0, keep.reshape(-1))

    model = t.model.train()
    batch = t.datamanager.next_train(0)
    outputs = model(batch)
    empty = batch["depth"] == 0
    assert empty.any() and (~empty).any()
    base = model.mvs_losses(batch, outputs, step=0)
    # corrupt the rendered depth only on rays without MVS: the losses do not change
    moved = {**outputs, "depth": torch.where(empty[:, None], outputs["depth"] + 1.0, outputs["depth"])}
    after = model.mvs_losses(batch, moved, step=0)
    assert torch.allclose(base["mvs_depth"], after["mvs_depth"]) and base["mvs_depth"] > 0
    none = {**batch, "depth": torch.zeros_like(batch["depth"]), "normal": torch.zeros_like(batch["normal"])}
    zero = model.mvs_losses(none, outputs, step=0)
    assert float(zero["mvs_depth"].detach()) == 0.0 and float(zero["mvs_normal"].detach()) == 0.0


def mvs(model, batch, outputs, step) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in model.mvs_losses(batch, outputs, step).items()}


def test_mvs_losses_vanish_on_agreement_and_follow_the_schedule(tiny_scene, tmp_path, quiet_config):
    """The depth loss is the confidence-weighted L1 of ray distances (0 when the render agrees, the
    distance error otherwise, halved after the first decay step); the normal loss is 0 when the MVS
    normal is the SDF's gradient at the rendered surface point and positive for a tilted one; the
    plane-normal loss likewise, on planar rays only, within its cosine gate."""
    t = trainer(quiet_config, tiny_scene, tmp_path, 1)
    model = t.model.train()
    batch = t.datamanager.next_train(0)
    outputs = model(batch)
    rays = batch["rays"]
    batch = {**batch, "rgb": outputs["rgb"].detach()}  # confidence 1
    depth = outputs["depth"].detach().reshape(-1)
    surface = rays.origins + rays.directions * (depth / rays.z_scale)[:, None]
    _, _, grad = model.field.gradient(surface, create_graph=False)
    agree = {**batch, "depth": depth, "normal": F.normalize(grad, dim=-1), "plane_normal": F.normalize(grad, dim=-1)}
    losses = mvs(model, agree, outputs, step=0)
    assert losses["mvs_depth"] < 1e-6 and losses["mvs_normal"] < 1e-5 and losses["plane_normal"] < 1e-5
    shifted = {**agree, "depth": depth + 0.1 * rays.z_scale}  # 0.1 further along every ray
    first = model.config.decay_steps[0]
    assert mvs(model, shifted, outputs, step=0)["mvs_depth"] == pytest.approx(0.1 * model.config.mvs_depth_weight, rel=1e-4)
    assert mvs(model, shifted, outputs, step=first)["mvs_depth"] == pytest.approx(0.05 * model.config.mvs_depth_weight, rel=1e-4)
    tilted = F.normalize(F.normalize(grad, dim=-1) + 0.2 * torch.tensor([1.0, -1.0, 0.5]), dim=-1)
    assert mvs(model, {**agree, "normal": tilted}, outputs, step=0)["mvs_normal"] > 0.01
    # the planar prior: L1 of the tilted normals (all within its 0.8 cosine gate), weighted
    plane = mvs(model, {**agree, "plane_normal": tilted}, outputs, step=0)["plane_normal"]
    expected = model.config.plane_normal_weight * (F.normalize(grad, dim=-1) - tilted).abs().sum(-1).mean()
    assert plane == pytest.approx(float(expected), rel=1e-4) and plane > 0
    # rays outside planar regions (0) carry no plane loss, however wrong their normal
    half = torch.where(torch.arange(len(tilted))[:, None] % 2 == 0, tilted, torch.zeros_like(tilted))
    assert mvs(model, {**agree, "plane_normal": half}, outputs, step=0)["plane_normal"] == pytest.approx(float(expected), rel=0.3)
    flipped = torch.where(torch.arange(len(tilted))[:, None] % 2 == 0, tilted, -tilted)  # outside the 0.8 gate: ignored
    assert mvs(model, {**agree, "plane_normal": flipped}, outputs, step=0)["plane_normal"] < 2 * float(expected)


def test_later_rounds_start_from_the_rendered_sdf(tiny_scene, tmp_path, quiet_config):
    """With no PatchMatch sweeps, no noise and no filtering, a later round returns the model's own
    rendered depth and normals (where it is opaque and not grazing): the SDF -> MVS direction."""
    pm = PatchMatchConfig(patch_radius=2, iterations=0, max_cost=float("inf"), min_views=0)
    t = trainer(quiet_config, tiny_scene, tmp_path, 1, **{"model.helix.image_scale": 1.0, "model.helix.patchmatch": pm,
                                                          "model.helix.init_depth_noise": 0.0, "model.helix.init_normal_noise": 0.0})
    model, dm = t.model, t.datamanager
    model.helix_round(0)
    model.helix_round(1)  # cue_version 1: round 1 renders the model
    assert dm.cue_version == 2 and model.helix_log["mvs_round"] == 1.0
    depths, normals = dm.cue_maps()
    compared = 0
    for i in range(len(dm.train_dataset)):
        camera = dm.train_dataset.cameras[i]
        out = model.eval().render(camera)
        rays = camera.generate_rays(0)
        n = out["normal"].reshape(-1, 3)
        facing = (n * rays.directions).sum(-1) < -0.3
        opaque = (out["accumulation"].reshape(-1) >= 0.5) & facing
        d = depths[i].reshape(-1)
        assert torch.allclose(d[opaque], out["depth"].reshape(-1)[opaque], rtol=1e-4, atol=1e-5)
        assert ((normals[i].reshape(-1, 3)[opaque] * n[opaque]).sum(-1) > 0.999).all()
        compared += int(opaque.sum())
    assert compared > 500


def test_exact_resume_across_an_mvs_refresh(tiny_scene, tmp_path, quiet_config):
    """Rounds at steps 0, 5 and 10; a run stopped after step 7 has round 1's buffers in its
    checkpoint and, resumed, trains exactly like the uninterrupted run, round 2 included."""
    steps, changes = 14, {"model.helix.refresh_every": 5}
    full = trainer(quiet_config, tiny_scene, tmp_path / "a", steps, **changes)
    snapshots: list[torch.Tensor] = []
    full.callbacks.append(Callback(lambda s, **_: snapshots.append(full.datamanager.depths.clone()), where=Where.AFTER_STEP, every=5, start=0))
    full.train()
    assert full.datamanager.cue_version == 3 and len(snapshots) == 3
    assert not torch.equal(snapshots[0], snapshots[1]) and not torch.equal(snapshots[1], snapshots[2])  # every round changed the buffers

    stop = trainer(quiet_config, tiny_scene, tmp_path / "b", steps, **changes)
    stop.callbacks.append(Callback(lambda s, **_: stop.request_stop(), start=7, every=100))
    with pytest.raises(KeyboardInterrupt):
        stop.train()
    state = load_train_state(find_checkpoint(stop.run_dir)[1])["datamanager"]
    assert state["cue_version"] == 2 and torch.equal(state["cue_depths"], snapshots[1])
    assert set(state["cue_extra"]) == {"plane_normal"}  # the planar prior's buffer travels with the MVS ones
    resumed = trainer(quiet_config, tiny_scene, tmp_path / "b", steps, load_dir=stop.run_dir, **changes)
    assert resumed.datamanager.cue_version == 2 and torch.equal(resumed.datamanager.depths, snapshots[1])
    resumed.train()
    assert resumed.history == full.history[8:]
    assert resumed.datamanager.cue_version == 3
    assert torch.equal(resumed.datamanager.depths, full.datamanager.depths) and torch.equal(resumed.datamanager.normals, full.datamanager.normals)
    assert torch.equal(resumed.datamanager.extra_cues["plane_normal"], full.datamanager.extra_cues["plane_normal"])


@pytest.mark.parametrize("key, value, flag", [
    ("model.helix.image_scale", 1.5, "--model.helix.image-scale"),
    ("model.helix.refresh_every", -1, "--model.helix.refresh-every"),
    ("model.helix.patchmatch", PatchMatchConfig(top_k=4, num_source_views=2), "--model.helix.patchmatch.top-k"),
    ("model.helix.clean", SurfaceCleaningConfig(band=-0.1), "--model.helix.clean.band"),
])
def test_bad_helix_options_are_one_line_errors(tiny_scene, tmp_path, quiet_config, key, value, flag):
    with pytest.raises(ConfigError) as err:
        trainer(quiet_config, tiny_scene, tmp_path, 1, **{key: value})
    assert flag in str(err.value) and "\n" not in str(err.value)


def test_set_cues_checks_sizes(tiny_scene, tmp_path, quiet_config):
    dm = trainer(quiet_config, tiny_scene, tmp_path, 1).datamanager
    n = len(dm.train_dataset)
    with pytest.raises(ValueError, match="one depth map per training image"):
        dm.set_cues([torch.zeros(32, 32)] * (n - 1), [torch.zeros(32, 32, 3)] * (n - 1))
    with pytest.raises(ValueError, match="depth map of \\(16, 16\\) does not match"):
        dm.set_cues([torch.zeros(16, 16)] * n, [torch.zeros(16, 16, 3)] * n)
    with pytest.raises(ValueError, match="plane_normal map of \\(16, 16\\) does not match"):
        dm.set_cues([torch.zeros(32, 32)] * n, [torch.zeros(32, 32, 3)] * n, {"plane_normal": [torch.zeros(16, 16, 3)] * n})
    dm.set_cues([torch.full((32, 32), float(i)) for i in range(n)], [torch.zeros(32, 32, 3)] * n)
    depths, _ = dm.cue_maps()
    assert [float(d[0, 0]) for d in depths] == list(range(n)) and dm.cue_version == 1


QUALITY_STEPS = 300
# rounds at steps 0 and 150, the loss decay at 125 / 188 (the preset's 1250 / 1875 of 3000, scaled)
# PatchMatch at half size with MVS normal weight 0.1: the preset's settings when the thresholds
# were measured (the preset now matches at full size with weight 0.05, better by 1000 steps; at 300
# steps these settings keep the test at 3 minutes)
QUALITY_SCHEDULE = {"model.helix.refresh_every": 150, "model.normal_gate_steps": 150, "model.decay_steps": (125, 188),
                    "model.helix.patchmatch": PatchMatchConfig(patch_radius=2), "model.helix.image_scale": 0.5, "model.mvs_normal_weight": 0.1}
# measured at 300 steps (one thread, marching cubes 96^3, 50k points, F at 2 % of the scene size):
# helixsurf-small F 0.62 / visible F 0.82 / Chamfer 0.041; the same with its three MVS losses off
# (neus-small plus the smooth-L1 colour loss) 0.53 / 0.71 / 0.055; neus-small 0.48 / 0.62 / 0.059.
# The thresholds sit half-way between helixsurf-small and its MVS-free twin.
FSCORE, FSCORE_VISIBLE, CHAMFER = 0.57, 0.76, 0.048


def surface_scores(trainer: Trainer, scene) -> dict[str, float]:
    """F-score and Chamfer-L1 of the marching-cubes mesh against the scene's reference mesh (input
    coordinates), and the F-score against the surface the cameras saw."""
    import trimesh

    from recon.geometry.marching_cubes import extract_mesh
    from recon.geometry.surface_metrics import mesh_metrics, visible_surface_fscore

    with torch.no_grad():
        mesh = extract_mesh(trainer.model.sdf, trainer.outputs.scene_box.aabb, 96, device=trainer.device)
    mesh.vertices = trainer.outputs.transform_to_input(torch.as_tensor(mesh.vertices, dtype=torch.float32)).numpy()
    gt = trimesh.load(scene / "mesh.ply")
    seen = np.asarray(trimesh.load(scene / "sparse_pc.ply").vertices)
    tau = 0.02 * float(gt.extents.max())
    full = mesh_metrics(mesh, gt, num_points=50_000, threshold=tau)
    visible = visible_surface_fscore(mesh, gt, seen, tau, num_points=50_000)
    return {"fscore": full["fscore"], "chamfer_l1": full["chamfer_l1"], "fscore_visible": visible["fscore"]}


@pytest.mark.slow
def test_better_surface_than_neus_at_equal_steps(tmp_path, quiet_config):
    """helixsurf-small on the default synthetic scene for 300 steps (two PatchMatch rounds) against
    the reference mesh: above thresholds that neus-small (the same networks and sampler without the
    MVS supervision) and helixsurf-small with its MVS losses off both miss at the same 300 steps
    (measured, README); MVS supervision that is off, mis-scaled or in the wrong frame fails."""
    from data.synthetic import default_scene_path

    scene = default_scene_path()
    changes = {f"optimizers.{g}.scheduler.max_steps": QUALITY_STEPS for g in ("fields", "variance")}
    t = Trainer(quiet_config(METHOD, scene, tmp_path, QUALITY_STEPS, **changes, **QUALITY_SCHEDULE))
    t.train()
    assert t.datamanager.cue_version == 2
    scores = surface_scores(t, scene)
    assert scores["fscore"] > FSCORE and scores["fscore_visible"] > FSCORE_VISIBLE and scores["chamfer_l1"] < CHAMFER, scores
