"""OReX: cross-sections of a known shape in, a closed mesh of that shape out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from data.cross_sections import axis_planes, read_csl, slice_mesh, thin_cylinders, write_csl
from recon.engine.trainer import Trainer
from recon.geometry.marching_cubes import extract_mesh
from recon.cli.export import MarchingCubesExport
from recon.geometry.surface_metrics import points_inside, volumetric_iou

SHORT = {"datamanager.steps_per_level": (60, 60, 100, 100, 120, 160), "optimizers.fields.scheduler.max_steps": 600}
"""orex-small's levels cut to 600 steps (the preset's 3000 / 5): what the quality tests can afford."""


@pytest.fixture(scope="module")
def torus_csl(tmp_path_factory):
    """A flat torus (R 0.5, r 0.2) cut by 9 horizontal and 4 vertical planes, in input units x2."""
    torus = trimesh.creation.torus(major_radius=0.5, minor_radius=0.2, major_sections=64, minor_sections=32)
    torus.apply_scale(2.0)  # input units outside [-1, 1]: exercises the normalisation and its inverse
    vertical = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.1], [1.0, 1.0, 0.0, -0.9], [1.0, -1.0, 0.0, 0.7]]
    planes = np.concatenate([axis_planes(torus, axis=2, count=9), vertical])
    path = tmp_path_factory.mktemp("orex") / "torus.csl"
    write_csl(slice_mesh(torus, planes), path)
    return path, torus


def test_batches_and_levels(torus_csl, tmp_path, quiet_config):
    path, _ = torus_csl
    trainer = Trainer(quiet_config("orex-small", path, tmp_path, 1))
    dm = trainer.datamanager
    batch = dm.next_train(0)
    assert batch["points"].shape == (4096, 3) and set(torch.unique(batch["labels"]).tolist()) <= {0.0, 0.5, 1.0}
    on_contour = batch["points"][batch["labels"] == 0.5]
    assert len(on_contour) and on_contour.abs().max() <= 1.0 / 1.1 + 1e-6  # the input, normalised by OReX's rule
    n0 = len(dm.points)
    dm.set_level(3)  # union of levels 1..3
    assert len(dm.points) > n0 and dm.state_dict()["level"] == 3


def test_balanced_batches_give_every_plane_the_same_share(torus_csl, tmp_path, quiet_config):
    """``balance_planes``: a plane with few contour vertices gets as many samples per batch as one
    with many (issue 32's small cross-sections), the hull keeps its share of the set, and every
    drawn sample is one of the current level's; without it, shares follow the sample counts."""
    path, _ = torus_csl
    trainer = Trainer(quiet_config("orex-small", path, tmp_path, 1, **{"datamanager.batch_size": 60_000}))
    dm = trainer.datamanager
    assert dm.config.balance_planes
    sections = dm.sections
    normals = torch.tensor(np.stack([s.normal for s in sections.sections]))
    offsets = torch.tensor([s.offset for s in sections.sections])

    def shares(points):  # the plane each point lies on (-1: none, i.e. the hull)
        dist = (points.double() @ normals.T + offsets).abs()
        best = dist.argmin(-1)
        best[dist.min(-1).values > 1e-6] = -1
        return torch.bincount(best + 1, minlength=len(sections) + 1).double() / len(points)

    pool = shares(dm.points)
    drawn = shares(dm.next_train(0)["points"])
    plane_share = (1 - pool[0]) / len(sections)
    assert pool[1:].max() > 1.5 * pool[1:].min()  # the torus's planes differ in size
    torch.testing.assert_close(drawn[1:], torch.full_like(drawn[1:], float(plane_share)), atol=0.006, rtol=0)
    assert abs(drawn[0] - pool[0]) < 0.006
    dm.config.balance_planes = False
    torch.testing.assert_close(shares(dm.next_train(1)["points"]), pool, atol=0.006, rtol=0)


def test_hinge_on_a_subset_is_the_hinge_of_those_points(torus_csl, tmp_path, quiet_config):
    """``gradient_hinge_points``: the hinge estimated on the batch's first k points in a pass of
    their own equals the full computation restricted to those points."""
    path, _ = torus_csl
    trainer = Trainer(quiet_config("orex-small", path, tmp_path, 1, **{"model.gradient_hinge_threshold": 0.5}))
    model, batch = trainer.model, trainer.datamanager.next_train(0)
    k = model.config.gradient_hinge_points
    assert 0 < k < len(batch["points"])
    subset = model.losses(batch, model(batch), 0)["gradient_hinge"]
    model.config.gradient_hinge_points = 0
    head = {key: v[:k] for key, v in batch.items()}
    full = model.losses(head, model(head), 0)["gradient_hinge"]
    assert float(full.detach()) > 0
    torch.testing.assert_close(subset, full, rtol=1e-5, atol=0)


def test_field_is_clipped_to_the_outside_hull(torus_csl, tmp_path, quiet_config):
    """Training labels the 1.05x convex hull of the contours outside and says nothing beyond it:
    the meshed field is clipped there (an untrained field inside everywhere becomes the hull)."""
    from methods.orex.sampling import HULL_SCALE, outside_hull

    path, _ = torus_csl
    trainer = Trainer(quiet_config("orex-small", path, tmp_path, 1))
    model = trainer.model
    model.logits = lambda p: [torch.full(p.shape[:1], -5.0, dtype=p.dtype)]  # inside everywhere
    hull = outside_hull(trainer.datamanager.sections)
    box = torch.rand(20_000, 3, dtype=torch.float64) * 2 - 1
    from scipy.spatial import Delaunay

    inside_hull = torch.from_numpy(Delaunay(hull.vertices).find_simplex(box.numpy()) >= 0)
    assert 0.05 < inside_hull.float().mean() < 0.95
    assert ((model.sdf(box) < 0) == inside_hull).float().mean() > 0.999
    mesh = extract_mesh(model.sdf, trainer.outputs.scene_box.aabb, 48)
    cell = float((trainer.outputs.scene_box.aabb[1] - trainer.outputs.scene_box.aabb[0]).max()) / 47
    beyond = (np.asarray(mesh.vertices) @ hull.face_normals.T - (hull.face_normals * hull.triangles[:, 0]).sum(-1)).max(-1)
    assert mesh.is_watertight and beyond.max() < cell and abs(mesh.volume - hull.volume) < 0.1 * hull.volume
    unclipped = Trainer(quiet_config("orex-small", path, tmp_path / "b", 1, **{"model.clip_to_hull": False})).model
    unclipped.logits = model.logits
    assert (unclipped.sdf(box) < 0).all() and HULL_SCALE == 1.05


@pytest.mark.slow
def test_small_preset_recovers_the_torus(torus_csl, tmp_path, quiet_config):
    """IoU against the true shape, orex-small's levels cut to 600 steps. Measured: 0.98
    (orex-small's former 600-step schedule), 0.98 for a plain MLP field; the torus's convex hull,
    i.e. a reconstruction that misses the hole, scores 0.72."""
    path, torus = torus_csl
    run_dir = Trainer(quiet_config("orex-small", path, tmp_path, 600, **SHORT)).train()
    # The user's path: ns-export marching-cubes writes the mesh in the .csl file's units.
    out = MarchingCubesExport(load_config=run_dir / "config.yml", output_dir=tmp_path / "export", resolution=64, device="cpu").run()
    mesh = trimesh.load(out)
    assert mesh.is_watertight
    iou = volumetric_iou(mesh, torus, num_points=40_000)
    assert iou > 0.93, iou


@pytest.mark.slow
def test_mesh_reproduces_the_contours_of_thin_parts(tmp_path, quiet_config):
    """Issue 32: seven disjoint thin tilted cylinders (radius 0.015-0.05) cut by 12 z planes, 84
    small contours. The input *is* those contours, so the mesh must reproduce them: mean on-plane
    IoU of the marching-cubes mesh's inside with the contours' inside, orex-small's levels cut to
    1500 steps (half the preset). Measured: 0.921 (worst plane 0.907) with the preset's 4
    frequency bands; at 600 steps 0.64 with 4 bands and 0.87 with 5 (the smoother encoding needs
    more steps for thin parts), 0.71 with the former learning-rate floor 1e-4 that let thin parts
    stop short of their contours."""
    mesh = thin_cylinders()
    path = tmp_path / "thin.csl"
    write_csl(slice_mesh(mesh, axis_planes(mesh, 2, 12)), path)
    assert all(len(s.contours) == 7 for s in read_csl(path).sections)
    steps = tuple(round(2.5 * s) for s in SHORT["datamanager.steps_per_level"])
    trainer = Trainer(quiet_config("orex-small", path, tmp_path, sum(steps), **{
        "datamanager.steps_per_level": steps, "optimizers.fields.scheduler.max_steps": sum(steps)}))
    trainer.train()
    with torch.no_grad():
        fitted = extract_mesh(trainer.model.sdf, trainer.outputs.scene_box.aabb, 128)
    planes = trainer.datamanager.sections.plane_iou(lambda p: points_inside(fitted, p), resolution=192)
    assert float(np.nanmean(planes)) > 0.85, planes
    assert float(np.nanmin(planes)) > 0.8, planes
