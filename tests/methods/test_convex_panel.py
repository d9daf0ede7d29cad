"""The 3dcs viewer panel ("3D convexes"): render-time sharpness / corner scales, opacity threshold,
hull outlines; frames through the viewer's own path (``viewer.render.frame_outputs``); training
does not see any of it."""

from __future__ import annotations

import math

import torch
from torch import nn

from methods.convex_splatting.model import ConvexSplatModel, ConvexSplatModelConfig
from methods.convex_splatting.panels import _PALETTE, ConvexPanel, ConvexView
from recon.cameras import Cameras
from recon.model import SceneInfo
from viewer.render import frame_outputs

CAMERA = Cameras(torch.eye(4)[:3], 80.0, 80.0, 32.0, 32.0, 64, 64)
"""At the origin looking down +z: a point (x, y, 2) lands on pixel coordinates 32 + 40 (x, y)."""
SQUARE = [(-0.25, -0.25), (0.25, -0.25), (0.25, 0.25), (-0.25, 0.25)]
"""Corners at pixel coordinates 22 and 42 at depth 2: a 20-pixel square."""


def convex_model(convexes, opacities, delta=0.5, sigma=0.025, depths=None, colours=None) -> ConvexSplatModel:
    """A 3dcs model holding exactly ``convexes`` (lists of (x, y) corners, each at its depth, default
    2) with the given activated opacities, delta and sigma; grey unless ``colours`` [N, 3] is given.
    delta 0.5, sigma 0.025 at depth 2 on a 20-pixel edge: an edge ramp about 2 pixels wide."""
    n, k = len(convexes), len(convexes[0])
    g = torch.Generator().manual_seed(0)
    scene = SceneInfo(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), num_train_cameras=1, points3d=torch.rand(10, 3, generator=g).numpy(),
                      points3d_rgb=(torch.rand(10, 3, generator=g) * 255).byte().numpy(), metadata={"camera_extent": 2.0})  # fmt: skip
    model = ConvexSplatModel(ConvexSplatModelConfig(num_points=k, sh_degree=0), scene)
    depths = depths or [2.0] * n
    points = torch.tensor([[(x, y, z) for x, y in corners] for corners, z in zip(convexes, depths)])
    rgb = torch.full((n, 3), 0.5) if colours is None else torch.as_tensor(colours, dtype=torch.float32)
    values = {
        "points": points, "delta": torch.full((n,), math.log(delta)), "sigma": torch.full((n,), math.log(sigma)),
        "opacities": torch.logit(torch.as_tensor(opacities, dtype=torch.float32)), "mask": torch.full((n,), 5.0),
        "sh0": ((rgb - 0.5) / 0.28209479177387814)[:, None, :], "shN": torch.zeros(n, 0, 3),
    }  # fmt: skip
    model.params = nn.ParameterDict({name: nn.Parameter(v) for name, v in values.items()})
    return model


def frame(model, view: ConvexView | None = None):
    """A frame of ``model`` through the viewer's path with a ConvexPanel set to ``view``."""
    panel = ConvexPanel(view)
    return frame_outputs(model, CAMERA, [panel]), panel


def soft_pixels(alpha: torch.Tensor, peak: float) -> int:
    return int(((alpha > 0.05 * peak) & (alpha < 0.95 * peak)).sum())


def test_default_and_neutral_views_are_the_models_render_bit_exactly(one_thread):
    """The default view leaves the frame to ``model.render``; a view that renders itself but
    changes nothing (scales 2^0, a threshold below every opacity) gives the same tensors bit for bit."""
    model = convex_model([SQUARE, [(x + 0.2, y + 0.1) for x, y in SQUARE]], [0.7, 0.9], depths=[2.0, 2.5])
    expected = model.render(CAMERA)
    assert ConvexPanel().render(model, CAMERA) is None
    for view in (ConvexView(), ConvexView(min_opacity=0.01)):
        out, _ = frame(model, view)
        for key in ("rgb", "depth", "accumulation"):
            assert torch.equal(out[key], expected[key]), (view, key)
    assert float(expected["accumulation"].max()) > 0.9 and float(expected["rgb"].std()) > 0.1


def test_sharpness_scale_hardens_the_edges_and_keeps_the_boundary(one_thread):
    """sigma x 2^s: fewer partly covered pixels and a steeper edge as s grows, the same pixels above
    half coverage (the boundary phi = 0 does not move), the parameters untouched."""
    model = convex_model([SQUARE], [0.99], delta=0.005, sigma=2.5)  # rounded corners: the boundary has a shape to keep
    before = {k: v.detach().clone() for k, v in model.params.items()}
    soft, steepest, inside = [], [], []
    for s in (-2.0, -1.0, 0.0, 1.0, 2.0):
        alpha = frame(model, ConvexView(sharpness_log2=s, min_opacity=1e-6))[0]["accumulation"][..., 0]
        soft.append(soft_pixels(alpha, 0.99))
        steepest.append(float(alpha.diff(dim=1).abs().max()))
        inside.append(alpha > 0.495)
    assert all(a > b for a, b in zip(soft, soft[1:])), soft
    assert all(a < b for a, b in zip(steepest, steepest[1:])), steepest
    assert all(torch.equal(m, inside[2]) for m in inside) and 150 < int(inside[2].sum()) < 400
    assert all(torch.equal(before[k], v) for k, v in model.params.items())


def test_corner_scale_fills_the_convex_out_towards_its_polygon(one_thread):
    """delta x 2^s: the region above half coverage grows towards the 20 x 20 square as s grows
    (the log-sum-exp's corner term shrinks) and never leaves it."""
    model = convex_model([SQUARE], [0.99], delta=0.005, sigma=2.5)
    square = torch.zeros(64, 64, dtype=torch.bool)
    square[22:42, 22:42] = True
    areas = []
    for s in (-1.0, 0.0, 1.0, 2.0, 3.0):
        inside = frame(model, ConvexView(corners_log2=s))[0]["accumulation"][..., 0] > 0.495
        assert not bool((inside & ~square).any())
        areas.append(int(inside.sum()))
    assert all(a < b for a, b in zip(areas, areas[1:])) and areas[-1] >= 390, areas


def test_min_opacity_hides_fainter_convexes(one_thread):
    left = [(x - 0.3, y) for x, y in SQUARE]
    right = [(x + 0.3, y) for x, y in SQUARE]
    both = convex_model([left, right], [0.3, 0.9])
    only_right = convex_model([right], [0.9])
    out, _ = frame(both, ConvexView(min_opacity=0.5))
    expected = only_right.render(CAMERA)
    assert torch.allclose(out["rgb"], expected["rgb"], atol=1e-6) and torch.allclose(out["accumulation"], expected["accumulation"], atol=1e-6)
    assert float(frame(both, ConvexView(min_opacity=0.2))[0]["accumulation"][32, 16]) > 0.25  # still there below the threshold


def test_show_hulls_outlines_the_projected_hull(one_thread):
    """One convex of six points, one inside the other five: the outline is the pentagon, drawn
    one pixel wide in the convex's colour, opaque; every other pixel is the model's render."""
    pentagon = [(0.3 * math.cos(a), 0.3 * math.sin(a)) for a in (2 * math.pi * i / 5 + 0.3 for i in range(5))]
    model = convex_model([pentagon + [(0.05, -0.02)]], [0.9])
    plain = model.render(CAMERA)
    out, panel = frame(model, ConvexView(show_hulls=True))
    assert panel.hulls_drawn == 1
    changed = (out["rgb"] != plain["rgb"]).any(-1)
    # The boundary in pixel coordinates (32 + 40 x, 32 + 40 y) and the pixels it passes through.
    corners = torch.tensor([(32 + 40 * x, 32 + 40 * y) for x, y in pentagon])
    t = torch.linspace(0, 1, 400)[:, None, None]
    boundary = (corners + t * (corners.roll(-1, 0) - corners)).reshape(-1, 2)
    on_boundary = torch.zeros(64, 64, dtype=torch.bool)
    on_boundary[boundary[:, 1].floor().long(), boundary[:, 0].floor().long()] = True
    # Sampled every half pixel: only pixels the boundary passes through, missing at most corners it clips.
    assert not bool((changed & ~on_boundary).any())
    missed = on_boundary & ~changed
    near = torch.nn.functional.max_pool2d(changed[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
    assert int(changed.sum()) > 0.85 * int(on_boundary.sum()) and bool(near[missed].all())
    assert torch.allclose(out["rgb"][changed], _PALETTE[0].expand(int(changed.sum()), 3))
    assert bool((out["accumulation"][changed] == 1).all())
    assert torch.equal(out["rgb"][~changed], plain["rgb"][~changed]) and torch.equal(out["depth"], plain["depth"])


def test_hull_outlines_behind_the_surface_are_hidden(one_thread):
    """A small square 1 unit behind an opaque large one: its outline is hidden where the large one
    covers it and drawn where it sticks out; the front square's outline is drawn on top."""
    big = [(1.5 * x - 0.3, 1.5 * y) for x, y in SQUARE]  # depth 2: pixel columns 5..35, rows 17..47
    small = [(1.5 * x + 0.25, 1.5 * y) for x, y in SQUARE]  # depth 3: columns 28.7..48.7, rows 22..42
    model = convex_model([big, small], [0.99, 0.99], depths=[2.0, 3.0], colours=[[0.9, 0.1, 0.1], [0.1, 0.1, 0.9]])
    out, panel = frame(model, ConvexView(show_hulls=True))
    plain = model.render(CAMERA)
    changed = (out["rgb"] != plain["rgb"]).any(-1)
    assert panel.hulls_drawn == 2
    assert not bool(changed[22, 29:35].any())  # the small square's top edge, behind the big one
    assert bool(changed[22, 36:49].all())  # ... and where it sticks out
    assert bool((out["rgb"][18:47, 35] == _PALETTE[0]).all())  # the big square's right edge, over the small square


def test_training_is_unaffected_by_the_panel(tiny_scene, tmp_path, quiet_config, one_thread):
    """Two identical 3dcs runs (with a densification step); one renders a viewer frame with every
    control moved between all its steps, as the live viewer does: the same parameters bit for bit."""
    from recon.engine.trainer import Trainer

    def run(out, with_panel: bool):
        trainer = Trainer(quiet_config("3dcs-small", tiny_scene, out, 12, **{"model.strategy.refine_start_iter": 5, "model.strategy.refine_every": 5}))
        panel = ConvexPanel(ConvexView(sharpness_log2=2.0, corners_log2=-1.0, min_opacity=0.05, show_hulls=True, max_hulls=50))
        camera = trainer.datamanager.train_dataset.cameras[0]
        if with_panel:
            trainer.between_steps.append(lambda trainer, step: frame_outputs(trainer.model, camera, [panel], trainer.lock))
        initial = trainer.model.num_primitives
        trainer.train()
        return trainer.model, panel, initial

    plain, _, initial = run(tmp_path / "plain", False)
    viewed, panel, _ = run(tmp_path / "viewed", True)
    assert panel.hulls_drawn > 0 and plain.num_primitives != initial  # frames were drawn; densification ran
    assert set(plain.params) == set(viewed.params)
    for name in plain.params:
        assert torch.equal(plain.params[name], viewed.params[name]), name
