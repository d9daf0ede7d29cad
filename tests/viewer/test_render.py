"""Browser camera -> recon camera, frame sizes and output colouring (no server)."""

from __future__ import annotations

import math

import numpy as np
import torch

from recon.cameras import look_at
from recon.rotations import matrix_to_quaternion
from viewer.render import ViewCamera, frame_size, output_image, to_cameras


def test_frame_size_caps_longest_side_and_keeps_aspect():
    assert frame_size(1280, 720, 512) == (512, 288)
    assert frame_size(300, 400, 100) == (75, 100)
    assert frame_size(64, 48, 512) == (64, 48)  # never upscaled


def test_to_cameras_matches_the_browser_view():
    c2w = look_at(torch.tensor([[1.0, -2.0, 0.5]]), torch.zeros(1, 3))[0]
    view = ViewCamera(tuple(matrix_to_quaternion(c2w[:, :3].double()).tolist()), tuple(c2w[:, 3].tolist()), math.radians(60), 800, 600)
    cam = to_cameras(view, 400)
    assert (int(cam.width[0]), int(cam.height[0])) == (400, 300)
    assert torch.allclose(cam.camera_to_worlds[0], c2w, atol=1e-5)
    # The vertical field of view is the browser's: the top image edge is 30 degrees above the axis.
    assert math.isclose(2 * math.degrees(math.atan(150.0 / float(cam.fy[0]))), 60.0, rel_tol=1e-5)
    # The world origin, which the camera looks at, projects to the image centre.
    uv, z = cam.project(torch.zeros(1, 3))
    assert torch.allclose(uv[0], torch.tensor([200.0, 150.0]), atol=1e-3) and float(z[0]) > 0


def test_output_image_background_normal_instance_and_colormap():
    h, w = 4, 5
    acc = torch.zeros(h, w, 1)
    acc[:2] = 1.0
    fg = torch.tensor([0.2, 0.4, 0.6])
    white = torch.ones(3)
    rgb = acc * fg + (1 - acc) * white  # what a model with a white background renders
    out = {"rgb": rgb, "accumulation": acc, "depth": torch.linspace(1, 2, h * w).reshape(h, w, 1),
           "normal": torch.tensor([0.0, 0.0, -1.0]).expand(h, w, 3), "instance": torch.arange(h * w).reshape(h, w, 1) % 3}
    red = output_image(out, "rgb", background=torch.tensor([1.0, 0.0, 0.0]), model_background=white)
    assert np.array_equal(red[3, 0], [255, 0, 0]) and np.abs(red[0, 0].astype(int) - [51, 102, 153]).max() <= 1
    assert np.array_equal(output_image(out, "normal")[0, 0], [128, 128, 0])
    inst = output_image(out, "instance")
    assert np.array_equal(inst[0, 0], [0, 0, 0]) and len({tuple(p) for p in inst.reshape(-1, 3)}) == 3
    depth = output_image(out, "depth", "gray")
    assert depth.shape == (h, w, 3) and np.all(depth[2:] == 0)  # outside the object (accumulation 0): black
    assert depth[0, 0, 0] < depth[1, 4, 0]  # nearer is darker in gray over the object's range
