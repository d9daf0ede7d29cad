"""coherentgs: decoder shapes, the pixel-ray parameterisation, the flow loss and alignment on exact
geometry, depth layers, a 2-view run that beats splat on held-out views of the synthetic scene, and
3 views too far apart for flow depth, which fall back to other weight-free depth and train."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from methods.coherentgs.decoder import ImplicitDecoder, level_sizes, view_encoding
from methods.coherentgs.views import SparseViews, align_depth, camera_rays, depth_layers, flow_loss, world_positions
from recon.cameras import Cameras
from recon.geometry.flow import pixel_grid


@pytest.mark.parametrize("size", [(37, 53), (5, 3), (64, 64), (95, 126)])
def test_decoder_output_shapes_for_odd_sizes(size):
    h, w = size
    dec = ImplicitDecoder(h, w, out_channels=5, ngf=2)
    out = dec(view_encoding(3))
    assert out.shape == (3, 5, h, w)
    assert level_sizes(h, w)[-1] == (h, w) and max(level_sizes(h, w)[0]) <= 2
    assert torch.count_nonzero(out) == 0  # zero head: the residual starts at exactly 0
    torch.nn.init.normal_(dec.head.weight, 0.0, 0.02)
    out = dec(view_encoding(3))
    assert torch.isfinite(out).all() and out.abs().max() > 0 and not torch.allclose(out[0], out[1])


def plane_pair(h: int = 24, w: int = 32):
    """Two cameras 0.3 apart looking at the slanted plane z = 2 + 0.3 x: exact depth and flows.

    Returns cameras, depth [2, H, W], flows [2, 2, H, W, 2] and masks [2, 2, H, W]."""
    f = 30.0
    c2w = torch.zeros(2, 3, 4)
    c2w[:, :3, :3] = torch.eye(3)
    c2w[1, 0, 3] = 0.3
    cams = Cameras(c2w, f, f, w / 2, h / 2, w, h)
    rays = camera_rays(cams)
    origin_x = c2w[:, 0, 3][:, None, None]
    # Ray x = ox + t rx, z = t meets z = 2 + 0.3 x at t = (2 + 0.3 ox) / (1 - 0.3 rx).
    depth = (2 + 0.3 * origin_x) / (1 - 0.3 * rays[..., 0])
    pos = world_positions(depth, rays, c2w)
    flows = torch.zeros(2, 2, h, w, 2)
    masks = torch.zeros(2, 2, h, w)
    for i, j in ((0, 1), (1, 0)):
        uv, _ = cams.project(pos[i].reshape(-1, 3), j)
        flows[i, j] = uv.reshape(h, w, 2) - pixel_grid(h, w)
        target = uv.reshape(h, w, 2)
        masks[i, j] = ((target[..., 0] > 0.5) & (target[..., 0] < w - 0.5) & (target[..., 1] > 0.5) & (target[..., 1] < h - 0.5)).float()
    return cams, depth, flows, masks


def test_flow_loss_is_zero_on_exact_geometry_and_alignment_recovers_scale_and_offset():
    cams, depth, flows, masks = plane_pair()
    pos = world_positions(depth, camera_rays(cams), cams.camera_to_worlds)
    exact = float(flow_loss(pos, 0, [1], flows[0, [1]], masks[0, [1]]))
    wrong = world_positions(depth * torch.tensor([1.0, 1.1])[:, None, None], camera_rays(cams), cams.camera_to_worlds)
    assert exact < 1e-3 * float(flow_loss(wrong, 0, [1], flows[0, [1]], masks[0, [1]]))

    median = depth.flatten(1).median(1).values
    s_true, o_true = torch.tensor([0.8, 1.25]), torch.tensor([0.1, -0.05])
    distorted = (depth - (o_true * median)[:, None, None]) / s_true[:, None, None]  # aligning undoes this
    aligned, s, o = align_depth(distorted, cams, flows, masks, steps=1000, lr_scale=0.05, lr_offset=0.05)
    # Only depth ratios between the views are observable from flow up to the common scale set by the
    # baseline: the recovered depth must equal the true one (to 1 %).
    assert torch.allclose(aligned, depth, rtol=0.01), (s, o)


def test_depth_layers_follow_disparity_clusters():
    depth = torch.ones(40, 40)
    depth[:, 10:20], depth[:, 20:30], depth[:, 30:] = 2.0, 4.0, 8.0
    layers = depth_layers(depth + 0.01 * torch.rand(40, 40), num_layers=4)
    assert layers.shape == (4, 40, 40) and torch.equal(layers.sum(0), torch.ones(40, 40))
    ids = layers.argmax(0)
    for band in (slice(0, 10), slice(10, 20), slice(20, 30), slice(30, 40)):
        assert ids[:, band].unique().numel() == 1
    assert ids[0, ::10].unique().numel() == 4


class _Views:
    """A datamanager stand-in that carries only :class:`SparseViews`."""

    def __init__(self, views: SparseViews):
        self.views = views


def test_every_gaussian_stays_on_its_pixel_ray():
    from methods.coherentgs.model import CoherentGSModelConfig
    from recon.model import SceneInfo

    cams, depth, flows, masks = plane_pair(13, 17)
    layers = torch.stack([depth_layers(d, 3) for d in depth])
    views = SparseViews(torch.rand(2, 13, 17, 3), cams, depth, layers, flows, masks, torch.ones_like(depth, dtype=torch.bool))
    model = CoherentGSModelConfig(num_layers=3, depth_decoder_width=2, opacity_decoder_width=2).setup(scene=SceneInfo(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), num_train_cameras=2))
    model.initialize_from_data(_Views(views))
    with torch.no_grad():  # random decoders: large residuals, still on the rays
        for p in model.depth_decoder.parameters():
            p.normal_(0.0, 0.3)
    g = model.primitives()
    assert g["means"].shape == (2 * 13 * 17, 3) and (g["depth"] - depth).abs().max() > 0.05
    for i in range(2):
        uv, z = cams.project(g["positions"][i].reshape(-1, 3).detach(), i)
        assert torch.allclose(uv, pixel_grid(13, 17).reshape(-1, 2), atol=1e-4)
        assert torch.allclose(z, g["depth"][i].reshape(-1).detach(), rtol=1e-5)


def sparse_synthetic_scene(tmp_path):
    """The default synthetic scene with 2 training views about 40 degrees apart (the pair of its
    training cameras 1.4-2.2 units apart whose midpoint has the nearest other cameras) and, as
    held-out views, the 2 other training cameras nearest that midpoint."""
    from data.synthetic import default_scene_path

    out = tmp_path / "sparse"
    shutil.copytree(default_scene_path(), out)
    meta = json.loads((out / "transforms.json").read_text())
    centres = {f["file_path"]: np.array(f["transform_matrix"])[:3, 3] for f in meta["frames"]}
    names = meta["train_filenames"]
    C = np.stack([centres[n] for n in names])
    best = None
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if not 1.4 < np.linalg.norm(C[a] - C[b]) < 2.2:
                continue
            dist = np.linalg.norm(C - (C[a] + C[b]) / 2, axis=-1)
            dist[[a, b]] = np.inf
            near = np.argsort(dist)[:2]
            if best is None or dist[near[1]] < best[0]:
                best = (dist[near[1]], [names[a], names[b]], [names[i] for i in near])
    meta["train_filenames"], meta["test_filenames"] = best[1], best[2]
    meta["val_filenames"] = best[2]
    (out / "transforms.json").write_text(json.dumps(meta))
    return out


STEPS = 100
LR_FACTOR = 10.0
"""coherentgs learning rates x this for the 100-step run (measured with depth files: held-out PSNR
20.2 dB at x1, 21.8 dB at x10, 8.3 dB at x30, which diverges)."""
MARGIN_OVER_RANDOM_SPLAT_DB = 4.0
"""Measured 21.26 vs 16.26 dB (+5.0 dB)."""
TOLERANCE_VS_POINTS_SPLAT_DB = 1.0
"""Measured 21.26 vs 21.82 dB (-0.56 dB)."""
GAIN_OVER_INIT_DB = 1.0
"""The decoded Gaussians before training: measured 19.52 dB, +1.74 dB after 100 steps."""


@pytest.mark.slow
def test_two_views_with_sfm_depth_beat_random_splat_and_tie_splat_from_the_same_points(tmp_path, quiet_config, one_thread):
    """2 training views of the synthetic scene, 100 steps each, PSNR on the 2 held-out views.

    coherentgs takes its depth from the scene's sparse points (``depth_source=sfm``: weight-free,
    what a COLMAP capture offers; never the ground-truth depth files) on the compressed schedule.
    Against splat with the same views and steps: from 5000 random points (the 3DGS that only the 2
    views inform) coherentgs must win by 4 dB; from the same sparse points it must stay within
    1 dB (those points carry the surface that the held-out cameras see too). It must also improve
    on its own initial Gaussians, so a run that learns nothing fails.

    Not asserted, measured: with depth triangulated from DIS flow (the default when a dataset has
    neither depth files nor points) coherentgs reaches only 13.1 dB here (11.4 dB before flow off its
    epipolar line was dropped): DIS on 64 x 64 images across a 40-degree baseline gives 25-30 %
    median depth error (see methods/coherentgs/README.md).
    """
    from methods.coherentgs import short_schedule
    from recon.engine.evaluate import evaluate_images
    from recon.engine.trainer import Trainer

    scene = sparse_synthetic_scene(tmp_path)
    schedule = {k: v for k, v in short_schedule(STEPS, LR_FACTOR).items() if k != "max_num_iterations"}
    splat = {"optimizers.means.scheduler.max_steps": STEPS}
    runs = {
        "coherentgs": ("coherentgs", {**schedule, "model.multisample_max": 2, "datamanager.depth_source": "sfm"}),
        "splat-random": ("splat", {**splat, "model.init": "random", "model.num_random_points": 5000}),
        "splat-points": ("splat", splat),
    }
    psnr = {}
    for name, (method, changes) in runs.items():
        trainer = Trainer(quiet_config(method, scene, tmp_path / name, STEPS, **changes))
        assert len(trainer.datamanager.train_dataset) == 2
        if method == "coherentgs":
            psnr["coherentgs-init"] = evaluate_images(trainer.model, trainer.datamanager.eval_dataset, progress=False)["mean"]["psnr"]
        trainer.train()
        psnr[name] = evaluate_images(trainer.model, trainer.datamanager.eval_dataset, progress=False)["mean"]["psnr"]
    assert psnr["coherentgs"] > psnr["coherentgs-init"] + GAIN_OVER_INIT_DB, psnr
    assert psnr["coherentgs"] > psnr["splat-random"] + MARGIN_OVER_RANDOM_SPLAT_DB, psnr
    assert psnr["coherentgs"] > psnr["splat-points"] - TOLERANCE_VS_POINTS_SPLAT_DB, psnr


def test_exports_bake_the_decoders(tiny_scene, tmp_path, quiet_config, one_thread):
    """ns-export gaussian-splat writes one Gaussian per training pixel at the decoded positions, and a
    model reloaded from the checkpoint (no preprocessing) renders what the trained one rendered."""
    from methods.coherentgs import coherentgs
    from recon.cli.export import GaussianSplatExport, TSDFExport
    from recon.engine.run import load_run
    from recon.export.splat_ply import read_splat_ply
    from recon.engine.trainer import Trainer

    tiny = coherentgs().test_overrides
    trainer = Trainer(quiet_config("coherentgs", tiny_scene, tmp_path / "run", 5, num_train_views=2, **tiny))
    trainer.train()
    params = trainer.model.splat_parameters()
    assert len(params["means"]) == 2 * 32 * 32
    path = GaussianSplatExport(load_config=trainer.run_dir / "config.yml", output_dir=tmp_path / "exp", device="cpu", frame="normalised").run()
    loaded = read_splat_ply(path)
    assert torch.allclose(loaded["means"], params["means"].float(), atol=1e-6)
    run = load_run(trainer.run_dir / "config.yml", "cpu")
    camera = trainer.datamanager.eval_dataset.cameras[0]
    assert torch.allclose(run.model.render(camera)["rgb"], trainer.model.render(camera)["rgb"], atol=1e-5)
    mesh = TSDFExport(load_config=trainer.run_dir / "config.yml", output_dir=tmp_path / "exp", device="cpu", resolution=32).run()
    assert mesh.is_file() and mesh.stat().st_size > 0


class _Lookup(torch.nn.Module):
    """A stand-in for a pretrained network: returns the stored output of the nearest stored input
    (one input: depth network; two: flow network, outputs indexed by the pair)."""

    def __init__(self, images: torch.Tensor, outputs: torch.Tensor):
        super().__init__()
        self.register_buffer("images", images)
        self.register_buffer("outputs", outputs)

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.images - x).flatten(1) ** 2).mean(1).argmin()

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if b is None:
            return self.outputs[self.nearest(a)][None]
        return self.outputs[self.nearest(a) * self.images.shape[0] + self.nearest(b)][None]


def _save_lookup(path, images, outputs, num_inputs):
    args = (images[:1].clone(),) if num_inputs == 1 else (images[:1].clone(), images[:1].clone())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No complete tensor found")  # torch.export on CPU buffers
        torch.export.save(torch.export.export(_Lookup(images, outputs), args), str(path))
    return path


def test_local_depth_and_flow_networks_and_relative_depth_files(tmp_path, one_thread):
    """depth_source=model runs the user's depth network and fits its relative disparity to metric
    depth; flow_model replaces OpenCV; relative depth files take the same fit. The stand-in networks
    return affine disparity of the true depth and the true flow: the preprocessing must recover the
    true depth (to 1 %, fitted to the scene's sparse points) and use the flows unchanged."""
    from data.datamanager import ImageDataset
    from data.images import load_depth
    from recon.config import get_method, override
    from recon.engine.trainer import load_dataset

    scene = sparse_synthetic_scene(tmp_path)
    cfg = override(get_method("coherentgs").config, data=scene, device="cpu")
    outputs = load_dataset(cfg)
    train = outputs.split("train")
    true = torch.stack([torch.from_numpy(load_depth(p, train.depth_unit_scale_factor)).float() * train.dataparser_scale for p in train.depth_filenames])
    hit = true > 0
    ds = ImageDataset(train, 1.0, load_masks=False)
    images = torch.stack([(ds.image(i) * 255).round().clamp(0, 255) for i in range(len(ds))]).permute(0, 3, 1, 2)
    disparity = torch.where(hit, 3.0 / true.clamp_min(1e-6) + 0.4, torch.full_like(true, 0.4))
    depth_net = _save_lookup(tmp_path / "depth.pt2", images / 255, disparity, 1)

    cams = ds.cameras
    v, h, w = true.shape
    rays = camera_rays(cams)
    flows = torch.zeros(v * v, 2, h, w)
    for i in range(v):
        pos = world_positions(true[i : i + 1], rays[i : i + 1], cams.camera_to_worlds[i : i + 1])[0]
        for j in range(v):
            if i != j:
                uv, _ = cams.project(pos.reshape(-1, 3), j)
                flows[i * v + j] = torch.where(hit[i][..., None], uv.reshape(h, w, 2) - pixel_grid(h, w), 0.0).permute(2, 0, 1)
    flow_net = _save_lookup(tmp_path / "flow.pt2", images, flows, 2)

    def preprocess(**changes):
        return override(cfg.datamanager, relative_depth_reference="sfm", **changes).setup(outputs=outputs, device=torch.device("cpu")).views

    from_model = {"depth_source": "model", "depth_model": depth_net, "depth_model_input_size": 0, "depth_model_normalize": False, "align_steps": 0, "flow_model": flow_net}
    views = preprocess(**from_model, sharpen_depth_edges=False)  # exact disparity: nothing to clean
    err = ((views.depth - true).abs() / true)[hit]
    assert float(err.median()) < 0.01 and float(err.quantile(0.9)) < 0.02, err.quantile(torch.tensor([0.5, 0.9]))
    # A network smears disparity across occlusion edges (points float between the surfaces); the
    # default clean-up snaps them back: surface pixels off by more than 20 % measured 7.6 % without
    # it and 1.3 % with it (median error 0.3 % and 0.6 %).
    smeared = torch.nn.functional.avg_pool2d(disparity[:, None], 3, 1, 1, count_include_pad=False)[:, 0]
    smear_net = _save_lookup(tmp_path / "smeared.pt2", images / 255, smeared, 1)
    gross = {}
    for on in (False, True):
        err = ((preprocess(**{**from_model, "depth_model": smear_net}, sharpen_depth_edges=on).depth - true).abs() / true)[hit]
        assert float(err.median()) < 0.01
        gross[on] = float((err > 0.2).float().mean())
    assert gross[False] > 0.05 and gross[True] < 0.03, gross
    for i in range(v):
        for j in range(v):
            if i != j:
                assert torch.equal(views.flows[i, j], flows[i * v + j].permute(1, 2, 0))
    # consistency masks from the exact flows: on 30 % of view 0's surface pixels (measured 0.305: the
    # views are 40 degrees apart; the rest is occluded, out of view, or within the erosion)
    assert float(views.flow_masks[0, 1][hit[0]].mean()) > 0.25

    # relative depth files (up to scale and shift, in depth): the same fit, in depth space
    relative = tmp_path / "relative"
    relative.mkdir()
    files = []
    for k, path in enumerate(train.depth_filenames):
        files.append(relative / f"{k}.npy")
        np.save(files[-1], (0.5 * true[k] + 0.2).numpy())
    train_ids = outputs.splits["train"]
    names = [files[train_ids.index(k)] if k in train_ids else p for k, p in enumerate(outputs.depth_filenames)]
    outputs = replace(outputs, depth_filenames=names, depth_is_relative=True)
    views = preprocess(depth_source="auto", align_steps=0, sharpen_depth_edges=False)
    err = ((views.depth - true).abs() / true)[hit]
    assert float(err.median()) < 0.01 and float(err.max()) < 0.02  # measured 0.6 % at most (the sparse reference's)


@pytest.mark.parametrize("source", ["sfm", "flow"])
def test_weight_free_depth_puts_transparent_pixels_far_behind(source, tmp_path, quiet_config, one_thread):
    """RGBA captures: pixels that see no surface (alpha < 0.5) must not be hole-filled with the
    depth of their neighbours (their white Gaussians would float in front of the objects in other
    views: 10.4 dB instead of 21.3 dB on the two-view scene above); they go far behind, as the
    misses of depth files do."""
    from data.images import load_image
    from methods.coherentgs.views import BACKGROUND_DEPTH_FACTOR
    from recon.engine.trainer import Trainer

    scene = sparse_synthetic_scene(tmp_path)
    trainer = Trainer(quiet_config("coherentgs", scene, tmp_path / "run", 1, **{"datamanager.depth_source": source}))
    views, dm = trainer.datamanager.views, trainer.datamanager
    for i in range(2):
        alpha = torch.from_numpy(load_image(dm.train_outputs.image_filenames[i])[..., 3].astype(np.float32) / 255)
        surface = alpha >= 0.5
        assert 0.2 < float(surface.float().mean()) < 0.8  # both kinds of pixel are present
        assert torch.equal(views.hits[i].cpu(), surface)
        far = views.depth[i].cpu()[~surface]
        assert float(far.min()) >= BACKGROUND_DEPTH_FACTOR * 0.99 * float(views.depth[i].cpu()[surface].max())


def wide_synthetic_scene(tmp_path, points: bool):
    """The default synthetic scene as a capture of 3 views around it at about the same height: the
    training cameras whose smallest azimuth gap minus twice their spread in elevation is largest
    (gaps of 105-137 degrees, elevations 16-25 degrees), the 2 training cameras nearest the first of
    them held out, no depth files (so ``depth_source=auto`` is flow), with or without its sparse
    points. Returns the folder and, per training view, its ground-truth depth file."""
    from data.synthetic import default_scene_path

    source = default_scene_path()
    out = tmp_path / ("wide" if points else "wide-no-points")
    shutil.copytree(source, out)
    meta = json.loads((out / "transforms.json").read_text())
    frames = {f["file_path"]: f for f in meta["frames"]}
    names = meta["train_filenames"]
    C = np.stack([np.array(frames[n]["transform_matrix"])[:3, 3] for n in names])
    azimuth = np.degrees(np.arctan2(C[:, 1], C[:, 0]))
    elevation = np.degrees(np.arctan2(C[:, 2], np.linalg.norm(C[:, :2], axis=-1)))
    best = None
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            for c in range(b + 1, len(names)):
                ring = np.sort(np.mod(azimuth[[a, b, c]], 360))
                score = np.diff(np.r_[ring, ring[0] + 360]).min() - 2 * np.ptp(elevation[[a, b, c]])
                if best is None or score > best[0]:
                    best = (score, [a, b, c])
    train = [names[i] for i in best[1]]
    dist = np.linalg.norm(C - C[best[1][0]], axis=-1)
    dist[best[1]] = np.inf
    held_out = [names[i] for i in np.argsort(dist)[:2]]
    depth = [source / frames[n]["depth_file_path"] for n in train]
    meta.update(train_filenames=train, val_filenames=held_out, test_filenames=held_out)
    for f in meta["frames"]:
        f.pop("depth_file_path", None)
    if not points:
        meta.pop("ply_file_path")
    (out / "transforms.json").write_text(json.dumps(meta))
    return out, depth


FALLBACK_STEPS = 40
FALLBACK_DEPTH_ERROR = {"sfm": 0.05, "plane": 0.3}
"""Median relative error of a fallback view's initial depth on its surface pixels (measured 0.9 %
from the sparse points, 18 % for the plane)."""


@pytest.mark.slow
@pytest.mark.parametrize("points", [True, False], ids=["sparse-points", "no-points"])
def test_wide_baselines_fall_back_from_flow_depth_and_train(points, tmp_path, quiet_config, one_thread, capsys):
    """Three views 105-137 degrees apart: DIS flow between them triangulates nothing on at least one
    view (every consistent flow vector lies far off its epipolar line), so that view starts from the
    sparse points, or, without points, from a plane at the depth of what the other views see; the
    console says so, the depth is close to the truth, and a short run trains."""
    from data.datamanager import ImageDataset
    from data.images import load_depth, load_image
    from methods.coherentgs import short_schedule
    from methods.coherentgs.views import pairwise_flows, triangulated_depth
    from recon.engine.trainer import Trainer

    scene, depth_files = wide_synthetic_scene(tmp_path, points)
    changes = {k: v for k, v in short_schedule(FALLBACK_STEPS, LR_FACTOR).items() if k != "max_num_iterations"}
    trainer = Trainer(quiet_config("coherentgs", scene, tmp_path / "run", FALLBACK_STEPS, **changes, **{"model.multisample_max": 2}))
    dm = trainer.datamanager
    assert dm.depth_source == "flow" and len(dm.train_dataset) == 3
    fallback = "sfm" if points else "plane"
    assert fallback in dm.view_depth_sources and "flow" in dm.view_depth_sources, dm.view_depth_sources

    # The fallback views really have no flow depth on their surface, with the preprocessing's own settings.
    c = dm.config
    ds = ImageDataset(dm.train_outputs, 1.0, load_masks=False)
    uint8 = (torch.stack([ds.image(i) for i in range(3)]) * 255).round().byte().numpy()
    flows, _, masks = pairwise_flows(uint8, c.flow_method, c.dis_preset, c.flow_erosion, c.flow_mask_threshold, torch.device("cpu"))
    flow_depth, _ = triangulated_depth(flows, masks, ds.cameras, c.triangulation_min_angle, c.triangulation_max_epipolar_error)
    log = capsys.readouterr().err
    for i, name in enumerate(dm.view_depth_sources):
        surface = torch.from_numpy(load_image(dm.train_outputs.image_filenames[i])[..., 3] >= 128)
        assert bool(torch.isfinite(flow_depth[i][surface]).any()) == (name == "flow"), (i, name)
        if name == "flow":
            continue
        assert f"training view {i} ({dm.train_outputs.image_filenames[i].name}): no usable flow depth" in " ".join(log.split())
        true = torch.from_numpy(load_depth(depth_files[i], 1.0)).float() * dm.train_outputs.dataparser_scale  # .npy files in scene units
        hit = (true > 0) & dm.views.hits[i]
        err = float(((dm.views.depth[i] - true).abs() / true)[hit].median())
        assert err < FALLBACK_DEPTH_ERROR[name], err

    trainer.train()
    losses = np.array([loss for _, loss in trainer.history])
    assert np.isfinite(losses).all() and losses[-5:].mean() < 0.9 * losses[:5].mean(), losses
    with torch.no_grad():
        for camera in dm.eval_dataset.cameras:
            out = trainer.model.render(camera)
            assert torch.isfinite(out["rgb"]).all() and torch.isfinite(out["depth"]).all()


def test_ns_train_coherentgs_on_three_wide_views_does_not_stop(tmp_path):
    """The issue's command line on a capture whose views are too far apart for flow depth."""
    scene, _ = wide_synthetic_scene(tmp_path, points=True)
    args = ["--data", scene, "--num-train-views", "3", "--output-dir", tmp_path / "out", "--timestamp", "t", "--max-num-iterations", "3",
            "--steps-per-save", "0", "--steps-per-eval-image", "0", "--no-eval-at-end", "--device", "cpu", "--logging.no-progress-bar",
            "--model.depth-decoder-width", "2", "--model.opacity-decoder-width", "2", "--datamanager.align-steps", "0"]
    proc = subprocess.run([sys.executable, "-m", "recon.cli.train", "coherentgs", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "no usable flow depth" in " ".join(proc.stderr.split())
    assert (tmp_path / "out" / scene.name / "coherentgs" / "t" / "checkpoints").is_dir()


def test_epipolar_error_of_exact_and_displaced_flow():
    """Exact flow lies on its epipolar lines; the plane pair's baseline is along x, so its epipolar
    lines are the image rows and moving every target 3 px down puts it 3 px off."""
    from methods.coherentgs.views import epipolar_error

    cams, _, flows, masks = plane_pair()
    K, c2w = cams.intrinsics_matrices(), cams.camera_to_worlds
    on = epipolar_error(flows[0, 1], K[0], c2w[0], K[1], c2w[1])[masks[0, 1] > 0]
    off = epipolar_error(flows[0, 1] + torch.tensor([0.0, 3.0]), K[0], c2w[0], K[1], c2w[1])[masks[0, 1] > 0]
    assert float(on.abs().max()) < 1e-3 and torch.allclose(off, torch.full_like(off, 3.0), atol=1e-3)
