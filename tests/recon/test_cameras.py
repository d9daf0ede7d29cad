import math

import pytest
import torch

from recon.cameras import FISHEYE, Cameras, look_at, opengl_to_opencv, undistort_points, _distort


def make_cameras(distortion=None, camera_model=None):
    eye = torch.tensor([[3.0, 0.0, 1.0], [0.0, -2.5, 2.0]])
    c2w = look_at(eye, torch.zeros(1, 3))
    return Cameras(
        c2w, fx=[50.0, 60.0], fy=[52.0, 61.0], cx=[32.0, 30.5], cy=[24.0, 25.0], width=64, height=48, distortion=distortion, camera_model=camera_model
    )


RATIONAL = [0.1, -0.05, 0.002, -0.003, 0.01, 0.05, -0.02, 0.005]
"""FULL_OPENCV-like coefficients (k1, k2, p1, p2, k3, k4, k5, k6)."""
KANNALA_BRANDT = [0.05, -0.01, 0.004, -0.001]
"""OPENCV_FISHEYE-like coefficients (k1, k2, k3, k4)."""


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


@pytest.mark.parametrize(
    "distortion, model", [(None, None), ([0.1, -0.05, 0.002, -0.003], None), (RATIONAL, None), (KANNALA_BRANDT, FISHEYE), (None, FISHEYE)]
)
def test_project_inverts_rays(distortion, model):
    cams = make_cameras(distortion, model)
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


def test_perspective_model_matches_opencv():
    """OpenCV is the reference of the coefficient order and of the rational model."""
    import cv2
    import numpy as np

    g = torch.Generator().manual_seed(1)
    pts = torch.cat([(torch.rand(300, 2, generator=g) - 0.5) * 1.2, torch.ones(300, 1)], -1).double()
    K = np.array([[60.0, 0, 30.5], [0, 61.0, 25.0], [0, 0, 1]])
    ref, _ = cv2.projectPoints(pts.numpy(), np.zeros(3), np.zeros(3), K, np.array(RATIONAL))
    cams = make_cameras([RATIONAL] * 2)
    uv = cams.camera_to_pixels(pts.float(), 1)
    np.testing.assert_allclose(uv.numpy(), ref[:, 0], atol=2e-3)


def test_fisheye_matches_opencv_and_sees_behind_the_sensor_plane():
    import cv2
    import numpy as np

    g = torch.Generator().manual_seed(2)
    pts = torch.cat([(torch.rand(300, 2, generator=g) - 0.5) * 3.0, torch.ones(300, 1)], -1).double()
    K = np.array([[60.0, 0, 30.5], [0, 61.0, 25.0], [0, 0, 1]])
    ref, _ = cv2.fisheye.projectPoints(pts.numpy()[:, None], np.zeros(3), np.zeros(3), K, np.array(KANNALA_BRANDT))
    cams = make_cameras(KANNALA_BRANDT, FISHEYE)
    np.testing.assert_allclose(cams.camera_to_pixels(pts.float(), 1).numpy(), ref[:, 0], atol=2e-3)
    # A 200-degree field: rays up to 100 degrees from the axis come back through their pixels.
    wide = Cameras(torch.eye(4)[:3], 20.0, 20.0, 40.0, 40.0, 80, 80, camera_model=FISHEYE)
    rays = wide.generate_rays(0)
    angle = torch.rad2deg(torch.acos(rays.z_scale))
    assert float(angle.max()) > 100
    uv = wide.camera_to_pixels(rays.directions, 0)
    vv, uu = torch.meshgrid(torch.arange(80) + 0.5, torch.arange(80) + 0.5, indexing="ij")
    assert torch.allclose(uv, torch.stack([uu.reshape(-1), vv.reshape(-1)], -1), atol=1e-3)


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
