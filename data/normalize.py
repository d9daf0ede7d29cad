"""Pose normalisation: put every dataset's content into the box [-1, 1]^3.

Every parser ends the same way (:func:`normalize_to_box`):

1. an orientation transform ``[R | t]`` from :func:`auto_orient_and_center` (or identity where the
   format fixes the object frame, e.g. Blender and DTU);
2. a *content box* ``[2, 3]`` in that oriented frame, by one of the rules below;
3. :func:`fit_box`: translate the box centre to the origin and scale so its largest side is 2;
4. :func:`apply_normalization`: move cameras, points, near/far and the scene box, and record the
   total ``dataparser_transform``/``dataparser_scale`` so exports can be mapped back:

       x_normalised = dataparser_scale * (dataparser_transform[:, :3] @ x_input + dataparser_transform[:, 3])

Content-box rules (which parser uses which is in ``data/parsers/README.md``):

* known object bounds, when the format gives them (Blender ``[-1.5, 1.5]^3``; IDR/DTU/MonoSDF:
  the unit sphere that ``scale_mat`` maps onto the object, i.e. ``[-1, 1]^3`` after ``scale_mat^-1``);
* :func:`content_box_from_points`: robust (1st-99th percentile) bounds of a sparse point cloud,
  padded by 5 % of the extent on each side (COLMAP ``points3D``, nerfstudio ``ply_file_path``);
* :func:`content_box_from_frustums`: the camera centres plus every camera's frustum out to its
  far bound (LLFF ``poses_bounds.npy``);
* :func:`content_box_from_cameras`: nerfstudio's cameras-only rule, poses centred and scaled so the
  largest absolute camera coordinate is 1, box ``[-1, 1]^3``.

Shapes: N cameras, P points. Input arrays may be numpy or torch (CPU); results here are numpy
float64 except where a DataparserOutputs is returned.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
import torch

from data.base import DataparserOutputs, SceneBox
from recon.cameras import Cameras
from recon.rotations import rotation_between

OrientMethod = Literal["up", "align", "none"]
CenterMethod = Literal["poses", "focus", "none"]


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _rotation_up_to_z(up: np.ndarray) -> np.ndarray:
    """[3, 3] smallest rotation taking the direction ``up`` [3] onto world +z."""
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return rotation_between(torch.tensor(up, dtype=torch.float64), z).numpy()


def focus_point(c2w: np.ndarray, iterations: int = 5) -> np.ndarray:
    """[3] point closest (least squares) to the optical axes of the cameras that face it.

    c2w: [N, 3, 4] OpenCV camera-to-world. Starts from the mean camera position and repeatedly
    keeps only the cameras looking towards the current estimate (so a few cameras facing away do
    not drag it), like nerfstudio's "focus" centring.
    """
    c2w = _np(c2w)
    origins, dirs = c2w[:, :, 3], c2w[:, :, 2]
    dirs = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    focus = origins.mean(0)
    active = np.ones(len(c2w), dtype=bool)
    for _ in range(iterations):
        proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]  # [N, 3, 3] orthogonal to each axis
        A = proj[active].sum(0)
        b = (proj[active] @ origins[active, :, None]).sum(0)[:, 0]
        if np.linalg.matrix_rank(A) < 3:
            break
        focus = np.linalg.solve(A, b)
        facing = ((focus - origins) * dirs).sum(-1) > 0
        if facing.sum() < 2 or np.array_equal(facing, active):
            break
        active = facing
    return focus


def auto_orient_and_center(
    c2w: np.ndarray | torch.Tensor,
    method: OrientMethod = "up",
    center: CenterMethod = "poses",
) -> np.ndarray:
    """Orientation transform [3, 4] = [R | t] for OpenCV camera-to-worlds ``c2w`` [N, 3, 4].

    method:
      * ``"up"``: rotate (by the smallest rotation) so that the mean camera up vector (-y in
        OpenCV) becomes world +z, as nerfstudio's "up" method;
      * ``"align"``: as "up", then also turn about z so that the mean viewing direction (+z of
        the cameras, made horizontal) becomes world +y; world x is then the mean camera right.
        Suits forward-facing captures, whose content then lies along +y in an axis-aligned box;
      * ``"none"``: no rotation.
    center: ``"poses"`` moves the mean camera position to the origin, ``"focus"`` the point the
    cameras look at (:func:`focus_point`), ``"none"`` leaves the origin.
    """
    c2w = _np(c2w)
    if c2w.ndim != 3 or c2w.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"c2w must be [N, 3, 4], got {c2w.shape}")
    c2w = c2w[:, :3, :4]
    up = -c2w[:, :, 1].mean(0)
    if method == "none" or np.linalg.norm(up) < 1e-9:
        R = np.eye(3)
    elif method == "up":
        R = _rotation_up_to_z(up)
    elif method == "align":
        up = up / np.linalg.norm(up)
        forward = c2w[:, :, 2].mean(0)
        forward = forward - (forward @ up) * up
        if np.linalg.norm(forward) < 1e-9:  # cameras all looking straight up or down
            R = _rotation_up_to_z(up)
        else:
            forward /= np.linalg.norm(forward)
            R = np.stack([np.cross(forward, up), forward, up])  # rows: world x, y, z in input coords
    else:
        raise ValueError(f"unknown orientation method {method!r}")
    if center == "poses":
        origin = c2w[:, :, 3].mean(0)
    elif center == "focus":
        origin = focus_point(c2w)
    elif center == "none":
        origin = np.zeros(3)
    else:
        raise ValueError(f"unknown center method {center!r}")
    return np.concatenate([R, (-R @ origin)[:, None]], axis=1)


def transform_points(transform: np.ndarray, points: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``scale * (R @ p + t)`` for points [P, 3] and transform [3, 4]."""
    T = _np(transform)
    return scale * (_np(points) @ T[:, :3].T + T[:, 3])


def transform_poses(transform: np.ndarray, c2w: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Camera-to-worlds [N, 3, 4] moved by ``x -> scale * (R x + t)`` (rotation part not scaled)."""
    T, c2w = _np(transform), _np(c2w)[:, :3, :4]
    out = np.empty_like(c2w)
    out[:, :, :3] = T[:, :3] @ c2w[:, :, :3]
    out[:, :, 3] = scale * (c2w[:, :, 3] @ T[:, :3].T + T[:, 3])
    return out


# -- content boxes (all in the oriented frame, i.e. after the transform given) ------------------
def content_box_from_points(
    points: np.ndarray, transform: np.ndarray | None = None, lo: float = 1.0, hi: float = 99.0, pad: float = 0.05
) -> np.ndarray:
    """[2, 3] robust bounds of points [P, 3]: per-axis ``lo``/``hi`` percentiles, each side pushed
    out by ``pad`` times the extent. Percentiles drop the stray far-away points that sparse
    reconstructions always have, which would otherwise shrink the content to a dot."""
    pts = _np(points)
    if transform is not None:
        pts = transform_points(transform, pts)
    pts = pts[np.isfinite(pts).all(-1)]
    if len(pts) == 0:
        raise ValueError("no finite points")
    box = np.stack([np.percentile(pts, lo, axis=0), np.percentile(pts, hi, axis=0)])
    extent = box[1] - box[0]
    return box + np.stack([-pad * extent, pad * extent])


def content_box_from_cameras(c2w: np.ndarray, transform: np.ndarray | None = None) -> np.ndarray:
    """[2, 3] nerfstudio's cameras-only rule: the cube ``[-m, m]^3`` with m the largest absolute
    camera-position coordinate, so that after fitting, max |translation| = 1 and the box is [-1, 1]^3.
    The box is symmetric about the (already centred) origin, not about the cameras' bounding box."""
    c2w = _np(c2w)
    pos = c2w[:, :3, 3] if transform is None else transform_poses(transform, c2w)[:, :, 3]
    m = float(np.abs(pos).max()) if len(pos) else 0.0
    m = m if m > 1e-12 else 1.0  # one camera at the origin: nothing to scale by
    return np.array([[-m, -m, -m], [m, m, m]])


def content_box_from_frustums(
    c2w: np.ndarray,
    fx: np.ndarray,
    fy: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    far: np.ndarray,
    transform: np.ndarray | None = None,
) -> np.ndarray:
    """[2, 3] bounds of the camera centres and of each camera's four image-corner rays out to its
    z-depth ``far`` [N] (c2w [N, 3, 4] OpenCV; intrinsics [N]); every point a camera sees closer
    than its far bound is then inside the box."""
    c2w = _np(c2w) if transform is None else transform_poses(transform, c2w)
    fx, fy, cx, cy, w, h, far = (np.broadcast_to(_np(v), (len(c2w),)) for v in (fx, fy, cx, cy, width, height, far))
    corners = []
    for u, v in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
        d = np.stack([(u * w - cx) / fx, (v * h - cy) / fy, np.ones(len(c2w))], -1) * far[:, None]
        corners.append((c2w[:, :, :3] @ d[:, :, None])[:, :, 0] + c2w[:, :, 3])
    pts = np.concatenate([c2w[:, :, 3], *corners])
    return np.stack([pts.min(0), pts.max(0)])


def fit_box(orient: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Transform [3, 4], scale and normalised box [2, 3] that map ``box`` (given in the frame after
    ``orient``) onto a box centred at the origin whose largest side is 2 (inside [-1, 1]^3)."""
    orient, box = _np(orient), _np(box)
    centre = box.mean(0)
    extent = float((box[1] - box[0]).max())
    if not np.isfinite(extent) or extent <= 1e-12:
        raise ValueError(f"degenerate content box {box.tolist()}")
    scale = 2.0 / extent
    transform = orient.copy()
    transform[:, 3] -= centre
    return transform, scale, (box - centre) * scale


def apply_normalization(
    outputs: DataparserOutputs,
    transform: np.ndarray | torch.Tensor,
    scale: float,
    scene_box: np.ndarray | None = None,
    c2w: np.ndarray | None = None,
) -> DataparserOutputs:
    """``outputs`` moved by ``x -> scale * (R x + t)`` (transform [3, 4] = [R | t], R a rotation).

    Cameras (positions scaled, rotations turned), points3d, near/far (times ``scale``) and the
    scene box move together; ``dataparser_transform``/``dataparser_scale`` become the composition
    with whatever was recorded before, so calling this twice is the same as calling it once with
    the composed transform. ``scene_box`` [2, 3], if given, is the new box in normalised units;
    otherwise the old box's corners are moved and re-bounded. ``c2w`` [N, 3, 4], if given, is a
    float64 copy of the current camera-to-worlds to move instead of the float32 ones in
    ``outputs.cameras`` (parsers pass it so that large input coordinates, e.g. geo-registered
    models, lose no precision before centring); points3d likewise may arrive as float64 and
    leave as float32. Depth files are not touched:
    ``depth_unit_scale_factor`` keeps converting to input units and the datamanager multiplies by
    ``dataparser_scale``.
    """
    T = _np(transform)
    R, t = T[:, :3], T[:, 3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
        raise ValueError("transform rotation part must be a proper rotation")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be positive, got {scale}")
    cams = outputs.cameras
    current = cams.camera_to_worlds.double().cpu().numpy() if c2w is None else _np(c2w)
    if current.shape != (len(cams), 3, 4):
        raise ValueError(f"c2w must be [{len(cams)}, 3, 4], got {current.shape}")
    moved = transform_poses(T, current, scale)
    new_cams = replace(cams, camera_to_worlds=torch.from_numpy(moved).to(cams.camera_to_worlds))

    points = outputs.points3d
    if points is not None:
        points = transform_points(T, points, scale).astype(np.float32)

    if scene_box is None:
        old = outputs.scene_box.aabb.double().cpu().numpy()
        corners = np.array([[old[i, 0], old[j, 1], old[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        moved = transform_points(T, corners, scale)
        scene_box = np.stack([moved.min(0), moved.max(0)])

    # Compose with the transform already recorded: x_n = s1 s (R R1 x + R t1 + t / s1).
    old_T = outputs.dataparser_transform.double().cpu().numpy()
    old_s = float(outputs.dataparser_scale)
    new_T = np.concatenate([R @ old_T[:, :3], (R @ old_T[:, 3] + t / old_s)[:, None]], axis=1)
    return replace(
        outputs,
        cameras=new_cams,
        points3d=points,
        near=None if outputs.near is None else float(outputs.near) * scale,
        far=None if outputs.far is None else float(outputs.far) * scale,
        scene_box=SceneBox(aabb=torch.as_tensor(np.asarray(scene_box), dtype=torch.float32)),
        dataparser_transform=torch.from_numpy(new_T).float(),
        dataparser_scale=old_s * float(scale),
    )


def normalize_to_box(
    outputs: DataparserOutputs, orient: np.ndarray, box: np.ndarray, c2w: np.ndarray | None = None
) -> DataparserOutputs:
    """Fit ``box`` [2, 3] (content bounds in the frame after ``orient`` [3, 4]) into [-1, 1]^3 and
    apply it to ``outputs`` (:func:`fit_box` then :func:`apply_normalization`; ``c2w`` is the
    optional float64 copy of the cameras' poses)."""
    transform, scale, norm_box = fit_box(orient, box)
    return apply_normalization(outputs, transform, scale, scene_box=norm_box, c2w=c2w)


def camera_arrays(cameras: Cameras) -> dict[str, np.ndarray]:
    """Cameras as float64 numpy arrays (c2w [N, 3, 4], fx, fy, cx, cy, width, height [N])."""
    return {
        "c2w": cameras.camera_to_worlds.double().cpu().numpy(),
        **{k: getattr(cameras, k).double().cpu().numpy() for k in ("fx", "fy", "cx", "cy", "width", "height")},
    }


MIN_POINTS_FOR_BOX = 10
"""Fewer sparse points than this are not trusted to bound the content."""


def normalize_points_or_cameras(
    outputs: DataparserOutputs, c2w: np.ndarray, points: np.ndarray | None, orientation_method: str, center_method: str
) -> DataparserOutputs:
    """Orient and centre by the cameras, then bound the content by the sparse points when there are
    enough of them (robust percentiles), else by the cameras (nerfstudio's rule); see :func:`normalize_to_box`."""
    orient = auto_orient_and_center(c2w, orientation_method, center_method)
    if points is not None and len(points) >= MIN_POINTS_FOR_BOX:
        box = content_box_from_points(points, orient)
    else:
        box = content_box_from_cameras(c2w, orient)
    return normalize_to_box(outputs, orient, box, c2w=c2w)
