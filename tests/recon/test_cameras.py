import math

import pytest
import torch

from recon.cameras import Cameras, look_at, opengl_to_opencv, undistort_points, _distort


def make_cameras(distortion=None):
    eye = torch.tensor([[3.0, 0.0, 1.0], [0.0, -2.5, 2.0]])
    c2w = look_at(eye, torch.zeros(1, 3))
    return Cameras(c2w, fx=[50.0, 60.0], fy=[52.0, 61.0], cx=[32.0, 30.5], cy=[24.0, 25.0], width=64, height=48, distortion=distortion)


def test_look_at_points_optical_axis_at_target():
    cams = make_cameras()
    for i in range(len(cams)):
        c2w = cams.camera_to_worlds[i]
        to_target = -c2w[:, 3] / c2w[:, 3].norm()
        assert torch.allclose(c2w[:, 2], to_target, atol=1e-6)
        R = c2w[:, :3]
        assert torch.allclose(R.T @ R, torch.eye(3), atol=1e-6)
        assert torch.det(R) > 0
        # Image "down" (camera +y) points against world up (+z).
        assert c2w[2, 1] < 0


def test_pixel_centre_ray_hits_principal_point():
    cams = make_cameras()
    rays = cams.rays_for_pixels(torch.tensor([0]), cams.cx[:1], cams.cy[:1])
    assert torch.allclose(rays.directions[0], cams.camera_to_worlds[0, :, 2], atol=1e-6)
    assert torch.allclose(rays.z_scale, torch.ones(1))


@pytest.mark.parametrize("distortion", [None, [0.1, -0.05, 0.002, -0.003]])
def test_project_inverts_rays(distortion):
    cams = make_cameras(distortion)
    rays = cams.generate_rays(1)
    assert len(rays) == 64 * 48
    pts = rays.origins + rays.directions * 1.7
    uv, z = cams.project(pts, 1)
    vv, uu = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    assert torch.allclose(uv[:, 0], uu.reshape(-1), atol=1e-3)
    assert torch.allclose(uv[:, 1], vv.reshape(-1), atol=1e-3)
    # z-depth = distance * z_scale
    assert torch.allclose(z, 1.7 * rays.z_scale, atol=1e-5)


def test_undistort_inverts_distort():
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 500, generator=g) - 0.5) * 1.2
    k = torch.tensor([[-0.2, 0.05, 0.001, -0.002]]).expand(500, 4)
    xd, yd = _distort(x, y, k)
    xu, yu = undistort_points(xd, yd, k)
    assert torch.allclose(xu, x, atol=1e-6) and torch.allclose(yu, y, atol=1e-6)


def test_scaled_keeps_field_of_view():
    cams = make_cameras().scaled(0.5)
    assert cams.width.tolist() == [32, 32] and cams.height.tolist() == [24, 24]
    assert math.isclose(float(cams.fx[0]), 25.0) and math.isclose(float(cams.cx[0]), 16.0)


def test_opengl_to_opencv_flips_view_direction():
    c2w = torch.eye(4)[:3]
    cv = opengl_to_opencv(c2w)
    # OpenGL camera looks down -z; in OpenCV the optical axis (+z column) must be world -z.
    assert torch.allclose(cv[:, 2], torch.tensor([0.0, 0.0, -1.0]))


def test_bad_pose_shape_rejected():
    with pytest.raises(ValueError):
        Cameras(torch.zeros(2, 3, 3), 1.0, 1.0, 0.0, 0.0, 4, 4)
