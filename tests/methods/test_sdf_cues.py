"""Depth / normal cues and per-image appearance codes of the SDF backend (recon.sdf_model, used by
neus, volsdf and objectsdf): the data channel (``datamanager.load_cues``) puts each pixel's depth
and world-frame normal in ray batches, in the normalised frame; MonoSDF's cue losses vanish for
consistent renders and not otherwise; appearance codes separate training images."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from data.datamanager import RayDataManagerConfig
from data.parsers import AutoParserConfig
from recon.cameras import RayBundle
from recon.engine.trainer import Trainer
from recon.errors import ConfigError


@pytest.fixture(scope="module")
def cue_batch(tiny_scene):
    outputs = AutoParserConfig().load(tiny_scene)
    assert outputs.depth_filenames and outputs.normal_filenames  # the synthetic scene writes both
    dm = RayDataManagerConfig(train_num_rays_per_batch=4096, load_cues=True).setup(outputs=outputs, device=torch.device("cpu"))
    return outputs, dm.next_train(0)


def test_depth_and_normal_cues_land_on_the_reference_surface(tiny_scene, cue_batch):
    """Each ray's depth puts its point on the ground-truth mesh (so the depth is a z-depth in the
    normalised frame: a wrong scale or a ray distance would miss it), and its normal is the mesh's
    normal there, rotated into the normalised frame."""
    outputs, batch = cue_batch
    rays: RayBundle = batch["rays"]
    hit = batch["depth"] > 0
    assert 0.2 < hit.float().mean() < 0.95
    assert torch.equal(hit, batch["normal"].norm(dim=-1) > 0.5)  # both maps have values on the same pixels
    points = rays.origins[hit] + rays.directions[hit] * (batch["depth"][hit] / rays.z_scale[hit])[:, None]
    mesh = trimesh.load(tiny_scene / "mesh.ply")
    surface, faces = trimesh.sample.sample_surface(mesh, 1_000_000, seed=0)
    distance, nearest = cKDTree(surface).query(outputs.transform_to_input(points).numpy())
    face = faces[nearest]
    extent = float(mesh.extents.max())
    assert np.median(distance) < 3e-3 * extent and np.quantile(distance, 0.9) < 1e-2 * extent, np.quantile(distance, [0.5, 0.9, 1])
    # the mesh's normal at the nearest face, in the normalised frame (a rotation: the frame's R)
    rotation = outputs.dataparser_transform[:, :3].float()
    reference = torch.as_tensor(mesh.face_normals[face], dtype=torch.float32) @ rotation.T
    cos = (reference * batch["normal"][hit]).sum(-1)
    assert cos.median() > 0.99 and (cos > 0.9).float().mean() > 0.9, cos.quantile(torch.tensor([0.1, 0.5]))


def test_camera_frame_normals_are_rotated_into_the_world(tiny_scene, cue_batch, tmp_path):
    """MonoSDF stores normals in each camera's (OpenCV) frame: written that way, they load as the
    same world-frame normals as the world-frame files."""
    from data.datamanager import ImageDataset
    from data.images import load_normal

    outputs, _ = cue_batch
    train = outputs.split("train")
    world = ImageDataset(train, load_masks=False, load_cues=True).normals
    files = []
    for i, path in enumerate(train.normal_filenames):
        n_input = torch.from_numpy(load_normal(path))  # world normals in the input frame
        n_world = n_input @ train.dataparser_transform[:, :3].float().T
        n_cam = n_world @ train.cameras.camera_to_worlds[i, :3, :3].float()  # R^T n, row-wise
        files.append(tmp_path / f"{i:06d}_normal.npy")
        np.save(files[-1], np.moveaxis((n_cam.numpy() + 1.0) / 2.0, -1, 0))  # MonoSDF: [3, H, W] in [0, 1]
    camera = dataclasses.replace(train, normal_filenames=files, metadata={**train.metadata, "normal_frame": "camera"})
    loaded = ImageDataset(camera, load_masks=False, load_cues=True).normals
    for a, b in zip(world, loaded):
        valid = a.norm(dim=-1) > 0.5  # [0, 1] storage has no "no value": compare where the world files have one
        assert valid.any() and (a[valid] - b[valid]).abs().max() < 1e-4


def test_cue_of_the_wrong_size_is_a_one_line_error(tiny_scene, tmp_path):
    from recon.errors import DataError

    copy = tmp_path / "scene"
    shutil.copytree(tiny_scene, copy)
    first = sorted((copy / "depth").iterdir())[0]
    np.save(first, np.ones((5, 7), np.float32))
    with pytest.raises(DataError, match="depth map is 7x5 but its image is 32x32") as err:
        RayDataManagerConfig(load_cues=True).setup(outputs=AutoParserConfig().load(copy), device=torch.device("cpu"))
    assert first.name in str(err.value) and "\n" not in str(err.value)


def _model(tiny_scene, tmp_path, method="neus-small", **changes):
    from tests.methods.conftest import make_quiet_config

    return Trainer(make_quiet_config(method, tiny_scene, tmp_path, 2, **changes))


def test_cue_losses_vanish_for_consistent_renders(tiny_scene, tmp_path, cue_batch):
    """Relative depth: a render that is an affine map of the cue, a different one per image, has
    zero loss (one map for all images would not fit it), a non-affine one does not; metric depth: zero only for the same depth; normals:
    zero for the same directions."""
    _, batch = cue_batch
    trainer = _model(tiny_scene, tmp_path, **{"model.mono_depth_weight": 0.1, "model.mono_normal_weight": 0.05,
                                             "datamanager.load_cues": True})
    model = trainer.model
    depth, cams = batch["depth"], batch["rays"].camera_indices
    scale = 0.5 + cams.float() * 0.1
    outputs = {"depth": (depth * scale + 0.2)[:, None], "normal": batch["normal"] * 2.0, "crosses": depth > 0}
    model.scene.depth_is_relative = True
    rel = model.cue_losses(batch, outputs)
    assert rel["mono_depth"].item() < 1e-6 and rel["mono_normal"].item() < 1e-6
    # one scale for every image would not fit these renders; a render that is no affine map does not fit per image
    from recon.losses import scale_shift_invariant_depth_loss

    assert scale_shift_invariant_depth_loss(outputs["depth"][:, 0], 50 * depth + 0.5, depth > 0).item() > 1e-2
    assert model.cue_losses(batch, {**outputs, "depth": (depth**2)[:, None]})["mono_depth"].item() > 1e-3
    model.scene.depth_is_relative = False
    assert model.cue_losses(batch, {**outputs, "depth": depth[:, None]})["mono_depth"].item() < 1e-12
    assert model.cue_losses(batch, outputs)["mono_depth"].item() > 1e-3
    flipped = model.cue_losses(batch, {**outputs, "normal": -batch["normal"]})
    assert flipped["mono_normal"].item() > 0.05 * 2.0


def test_cue_weights_need_the_cues_in_the_batches(tiny_scene, tmp_path):
    with pytest.raises(ConfigError, match="load-cues") as err:
        _model(tiny_scene, tmp_path, **{"model.mono_depth_weight": 0.1}).train()
    assert "\n" not in str(err.value)


def test_training_with_cues_and_appearance_codes(tiny_scene, tmp_path):
    """volsdf with depth/normal cues and 8-d appearance codes trains; each training image's rays see
    its own code, anything else the mean code; the codes are optimised and checkpointed."""
    trainer = _model(tiny_scene, tmp_path, **{"model.mono_depth_weight": 0.1, "model.mono_normal_weight": 0.05,
                                             "datamanager.load_cues": True, "model.appearance_dim": 8,
                                             "model.density": "volsdf", "model.anneal_end": 0})
    model = trainer.model
    start = model.appearance.weight.detach().clone()
    assert start.shape == (8, 8) and start.abs().max() <= 1e-4
    batch = trainer.datamanager.next_train(0)
    losses = model.losses(batch, model(batch), 0)
    assert {"mono_depth", "mono_normal"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    trainer.train()
    assert not torch.equal(model.appearance.weight.detach(), start)  # optimised
    # distinct codes change a training ray's colour; outside training the mean code is used
    with torch.no_grad():
        model.appearance.weight.copy_(torch.randn(8, 8))
    rays = batch["rays"][:16]
    other = dataclasses.replace(rays, camera_indices=(rays.camera_indices + 1) % 8)
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = model.render_rays(rays)["rgb"]
        torch.manual_seed(0)
        b = model.render_rays(other)["rgb"]
    assert (a - b).abs().max() > 1e-3
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.render_rays(rays)["rgb"], model.render_rays(other)["rgb"])
    state = model.state_dict()
    assert torch.equal(state["appearance.weight"], model.appearance.weight)
