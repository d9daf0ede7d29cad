"""Camera trajectories for rendering videos (``ns-render``), and their JSON files.

All paths return :class:`recon.cameras.Cameras` in recon's OpenCV convention (x right, y down,
z forward) with pinhole intrinsics: lens distortion of the source cameras is dropped because a
rendered video has no reason to reproduce it. Every frame of a path has the same image size.

Shapes: C input cameras, N frames.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.cameras import MAX_IMAGE_SIDE, Cameras, look_at, opengl_to_opencv
from recon.errors import ReconError
from recon.atomic import atomic_write
from recon.rotations import matrix_to_quaternion, quaternion_slerp, quaternion_to_matrix

__all__ = [
    "CameraPath",
    "spiral_path",
    "interpolate_path",
    "orbit_path",
    "average_pose",
    "focus_point",
    "load_camera_path_json",
    "save_camera_path_json",
]


# ---------------------------------------------------------------------------------------------
# Scene analysis
# ---------------------------------------------------------------------------------------------
def average_pose(cameras: Cameras) -> Tensor:
    """[3, 4] OpenCV c2w at the mean camera centre, looking along the mean viewing direction,
    with the mean image-down direction (re-orthogonalised): the "average camera" of LLFF / NeRF.
    """
    c2w = cameras.camera_to_worlds
    center = c2w[:, :, 3].mean(0)
    z = F.normalize(c2w[:, :, 2].sum(0), dim=-1)
    down = c2w[:, :, 1].sum(0)
    x = F.normalize(torch.cross(down, z, dim=-1), dim=-1)
    y = torch.cross(z, x, dim=-1)
    return torch.stack([x, y, z, center], dim=-1)


def focus_point(cameras: Cameras) -> Tensor | None:
    """[3] least-squares point closest to all optical axes, or None if they are (nearly) parallel.

    Minimises sum_i |(I - d_i d_i^T)(p - o_i)|^2 over p, the usual "focus of attention" of
    object-centric captures.
    """
    c2w = cameras.camera_to_worlds.double()
    o, d = c2w[:, :, 3], F.normalize(c2w[:, :, 2], dim=-1)
    P = torch.eye(3, dtype=o.dtype, device=o.device) - d[:, :, None] * d[:, None, :]
    A, b = P.sum(0), (P @ o[:, :, None]).sum(0)[:, 0]
    eig = torch.linalg.eigvalsh(A)
    if len(cameras) < 2 or eig[0] < 1e-3 * eig[-1]:
        return None
    return torch.linalg.solve(A, b).to(cameras.camera_to_worlds.dtype)


def _pinhole(c2w: Tensor, fx, fy, cx, cy, width: int, height: int) -> Cameras:
    n = c2w.shape[0]
    return Cameras(c2w.float(), fx, fy, cx, cy, torch.full((n,), int(width)), torch.full((n,), int(height)))


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------
def spiral_path(
    cameras: Cameras,
    num_frames: int,
    radius_scale: float = 1.0,
    rots: float = 2.0,
    zrate: float = 0.5,
    focus_distance: float | None = None,
) -> Cameras:
    """LLFF-style spiral for forward-facing captures (the idea of ``render_path_spiral`` in
    Mildenhall et al. 2020, "NeRF", and LLFF, Mildenhall et al. 2019).

    The average camera (:func:`average_pose`) is moved on a spiral in its own x/y plane,
    ``offset = (cos a * rx, -sin a * ry, -sin(a * zrate) * rz) * radius_scale`` for
    ``a`` in ``[0, 2 pi rots)``, where ``(rx, ry, rz)`` are the 90th percentiles of the absolute
    camera offsets from the average centre (in the average camera's frame); every frame looks at
    the focus point ``centre + focus_distance * forward`` with the average image-up direction.

    ``focus_distance`` defaults to the distance along the average viewing direction to the point
    closest to all optical axes (:func:`focus_point`) when that is well defined and in front;
    otherwise to the distance to the projection of the world origin (recon scenes are centred),
    and failing that to 1.

    Intrinsics and image size are those of the first camera. Returns N = ``num_frames`` cameras.
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    device = cameras.device
    cameras = cameras.to("cpu")  # a path is a handful of poses: compute on the CPU
    avg = average_pose(cameras)
    R, center = avg[:, :3], avg[:, 3]
    forward, down = R[:, 2], R[:, 1]
    if focus_distance is None:
        p = focus_point(cameras)
        focus_distance = float((p - center) @ forward) if p is not None else -1.0
        if focus_distance <= 1e-6:
            focus_distance = float(-center @ forward)
        if focus_distance <= 1e-6:
            focus_distance = 1.0
    # Spread of the cameras in the average camera's frame sets the spiral radii.
    local = (cameras.camera_to_worlds[:, :, 3] - center) @ R
    radii = torch.quantile(local.abs(), 0.9, dim=0) * radius_scale
    angles = torch.linspace(0.0, 2 * math.pi * rots, num_frames + 1)[:-1]
    offs = torch.stack([torch.cos(angles), -torch.sin(angles), -torch.sin(angles * zrate)], -1) * radii
    eyes = center + offs @ R.T
    target = (center + focus_distance * forward)[None]
    c2w = look_at(eyes, target, -down)
    c0 = cameras[0]
    return _pinhole(c2w, c0.fx, c0.fy, c0.cx, c0.cy, int(c0.width), int(c0.height)).to(device)


def _nearest_neighbour_order(centers: Tensor) -> list[int]:
    """Greedy tour starting at camera 0: always go to the nearest unvisited camera."""
    remaining = list(range(1, len(centers)))
    order = [0]
    while remaining:
        d = (centers[remaining] - centers[order[-1]]).norm(dim=-1)
        order.append(remaining.pop(int(d.argmin())))
    return order


def _catmull_rom(p: Tensor, seg: Tensor, t: Tensor, tension: float = 0.0) -> Tensor:
    """Cardinal spline through key points p [K, 3]; ``tension`` 0 is the uniform Catmull-Rom spline
    (Catmull & Rom 1974), 1 gives straight segments (zero tangents: easing in and out at each key).

    seg: [N] segment index in [0, K-2]; t: [N] local parameter in [0, 1]. Cubic Hermite segments with
    key tangents ``(1 - tension) (p[i+1] - p[i-1]) / 2``; the end tangents use mirrored phantom
    points, so the curve passes through every key.
    """
    ext = torch.cat([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]], dim=0)  # phantom ends
    p0, p1, p2, p3 = ext[seg], ext[seg + 1], ext[seg + 2], ext[seg + 3]
    m1, m2 = (1.0 - tension) * 0.5 * (p2 - p0), (1.0 - tension) * 0.5 * (p3 - p1)
    t = t[:, None]
    t2, t3 = t * t, t * t * t
    return (2 * t3 - 3 * t2 + 1) * p1 + (t3 - 2 * t2 + t) * m1 + (-2 * t3 + 3 * t2) * p2 + (t3 - t2) * m2


def interpolate_path(
    cameras: Cameras,
    num_frames: int,
    order: Sequence[int] | str | None = None,
    positions: str = "catmull_rom",
    tension: float = 0.0,
) -> Cameras:
    """Smooth path through the key cameras.

    order: indices of ``cameras`` to visit (a subset or permutation), ``"nearest"`` for a greedy
        nearest-neighbour tour starting at camera 0, or None to use them as given.
    positions: ``"catmull_rom"`` (C1-smooth, passes through the keys) or ``"linear"``.
    tension: for ``"catmull_rom"``, 0 (the Catmull-Rom spline) to 1 (straight segments between the
        keys, easing in and out of each): the viewer's "smoothness" is ``1 - tension``.

    With K keys, frame f (0-based) sits at path parameter ``s = f (K - 1) / (N - 1)``: key k is
    hit exactly at frame ``k (N - 1) / (K - 1)`` when that is an integer (choose
    ``N = m (K - 1) + 1``). Rotations are slerped between consecutive keys; fx, fy, cx, cy are
    interpolated linearly after rescaling every key to the first key's image size (the size of
    all frames). Distortion is dropped. Returns N = ``num_frames`` cameras.
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    device = cameras.device
    cameras = cameras.to("cpu")
    if order == "nearest":
        idx = _nearest_neighbour_order(cameras.camera_to_worlds[:, :, 3])
    elif order is None:
        idx = list(range(len(cameras)))
    elif isinstance(order, str):
        raise ValueError(f"unknown order {order!r}: give indices, 'nearest' or None")
    else:
        idx = [int(i) for i in order]
    if not idx:
        raise ValueError("interpolate_path needs at least one camera")
    keys = cameras[idx]
    w0, h0 = int(keys.width[0]), int(keys.height[0])
    sx, sy = w0 / keys.width.double(), h0 / keys.height.double()
    intr = torch.stack([keys.fx * sx, keys.fy * sy, keys.cx * sx, keys.cy * sy], -1).double()  # [K, 4]
    c2w = keys.camera_to_worlds.double()
    k = len(keys)
    if k == 1:
        c2w_out = c2w.expand(num_frames, 3, 4)
        i4 = intr.expand(num_frames, 4)
        return _pinhole(c2w_out, i4[:, 0], i4[:, 1], i4[:, 2], i4[:, 3], w0, h0).to(device)

    s = torch.linspace(0.0, k - 1.0, num_frames, dtype=torch.float64) if num_frames > 1 else torch.zeros(1, dtype=torch.float64)
    seg = s.floor().long().clamp(max=k - 2)
    t = s - seg.double()

    quats = matrix_to_quaternion(c2w[:, :, :3])
    # Make consecutive keys lie in the same hemisphere so every segment takes the short arc.
    for i in range(1, k):
        if (quats[i] * quats[i - 1]).sum() < 0:
            quats[i] = -quats[i]
    R = quaternion_to_matrix(quaternion_slerp(quats[seg], quats[seg + 1], t))

    centers = c2w[:, :, 3]
    if positions == "catmull_rom":
        pos = _catmull_rom(centers, seg, t, tension) if k > 2 else centers[seg] + (centers[seg + 1] - centers[seg]) * t[:, None]
    elif positions == "linear":
        pos = centers[seg] + (centers[seg + 1] - centers[seg]) * t[:, None]
    else:
        raise ValueError(f"unknown positions interpolation {positions!r}")
    i4 = intr[seg] + (intr[seg + 1] - intr[seg]) * t[:, None]
    return _pinhole(torch.cat([R, pos[:, :, None]], -1), i4[:, 0], i4[:, 1], i4[:, 2], i4[:, 3], w0, h0).to(device)


def orbit_path(
    center: Sequence[float] | Tensor,
    radius: float,
    elevation: float,
    num_frames: int,
    template: Cameras,
    up: Sequence[float] | Tensor = (0.0, 0.0, 1.0),
    start_azimuth: float = 0.0,
    turns: float = 1.0,
) -> Cameras:
    """Circle around ``center`` at distance ``radius`` and ``elevation`` degrees above the plane
    perpendicular to ``up``, always looking at ``center`` with image-up along ``up``.

    Azimuth starts at ``start_azimuth`` degrees and covers ``turns`` full turns without repeating
    the first frame. Intrinsics and image size come from ``template[0]``. Returns N cameras.
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    c = torch.as_tensor(center, dtype=torch.float32).detach().cpu().reshape(3)
    u = F.normalize(torch.as_tensor(up, dtype=torch.float32).detach().cpu().reshape(3), dim=-1)
    # Orthonormal basis (a, b) of the plane perpendicular to up.
    helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(u[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    a = F.normalize(torch.cross(helper, u, dim=-1), dim=-1)
    b = torch.cross(u, a, dim=-1)
    az = math.radians(start_azimuth) + torch.linspace(0.0, 2 * math.pi * turns, num_frames + 1)[:-1]
    el = math.radians(elevation)
    dirs = math.cos(el) * (torch.cos(az)[:, None] * a + torch.sin(az)[:, None] * b) + math.sin(el) * u
    eyes = c + radius * dirs
    c2w = look_at(eyes, c[None], u)
    t0 = template[0].to("cpu")
    return _pinhole(c2w, t0.fx, t0.fy, t0.cx, t0.cy, int(t0.width), int(t0.height)).to(template.device)


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------
class CameraPath(NamedTuple):
    """A loaded camera path: the frames' cameras and the frame rate."""

    cameras: Cameras
    fps: float


def save_camera_path_json(cameras: Cameras, path: str | Path, fps: float = 30.0) -> Path:
    """Write ``cameras`` as a camera-path JSON file (atomically). Returns the path.

    Schema (nerfstudio-like, but poses are OpenCV and intrinsics are stored exactly)::

        {
          "convention": "opencv",            # or "opengl" (nerfstudio/Blender poses) on load
          "render_width": 640,               # all frames share one image size
          "render_height": 480,
          "fps": 30,
          "seconds": 4.0,                    # informative: len(camera_path) / fps
          "camera_path": [
            {
              "camera_to_world": [16 numbers], # 4x4 row-major, last row 0 0 0 1
              "fl_x": 500.0, "fl_y": 500.0,  # pixels; optional if "fov" is given
              "cx": 320.0, "cy": 240.0,      # pixels; default to the image centre
              "fov": 51.3,                   # vertical field of view in degrees (informative)
              "aspect": 1.3333               # render_width / render_height
            }, ...
          ]
        }

    On load, ``fl_x``/``fl_y`` win over ``fov``; with only ``fov``, ``fl_y = H / (2 tan(fov/2))``
    and ``fl_x = fl_y`` (square pixels). ``render_width`` may be omitted when ``aspect`` is given.
    """
    if len(cameras) == 0:
        raise ValueError("cannot save an empty camera path")
    w, h = int(cameras.width[0]), int(cameras.height[0])
    if bool((cameras.width != w).any() or (cameras.height != h).any()):
        raise ValueError("all cameras of a camera path must have the same image size")
    frames = []
    c2w = cameras.camera_to_worlds.detach().cpu().double()
    for i in range(len(cameras)):
        m = torch.cat([c2w[i], torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)], 0)
        fy = float(cameras.fy[i])
        frames.append(
            {
                "camera_to_world": [float(v) for v in m.reshape(-1)],
                "fl_x": float(cameras.fx[i]),
                "fl_y": fy,
                "cx": float(cameras.cx[i]),
                "cy": float(cameras.cy[i]),
                "fov": math.degrees(2 * math.atan(0.5 * h / fy)),
                "aspect": w / h,
            }
        )
    doc = {
        "convention": "opencv",
        "render_width": w,
        "render_height": h,
        "fps": float(fps),
        "seconds": len(cameras) / float(fps),
        "camera_path": frames,
    }
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    return path


def _num(value, what: str, path: Path, positive: bool = False) -> float:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    # compared before float(): a JSON integer beyond the float range is not finite either
    if not (numeric and abs(value) <= sys.float_info.max and math.isfinite(value)):
        raise ReconError(f"malformed camera path: {what} must be a finite number, got {repr(value)[:40]}", path)
    if positive and value <= 0:
        raise ReconError(f"malformed camera path: {what} must be positive, got {value!r}", path)
    return float(value)


def load_camera_path_json(path: str | Path) -> CameraPath:
    """Read a camera-path JSON file (schema in :func:`save_camera_path_json`).

    Returns ``CameraPath(cameras, fps)`` (unpackable as a tuple). A missing, unreadable or
    malformed file raises :class:`ReconError` naming the file and the problem.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReconError("camera path file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReconError(f"cannot read camera path ({e})", path) from None
    except json.JSONDecodeError as e:
        raise ReconError(f"malformed camera path: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path) from None
    except (ValueError, RecursionError) as e:  # an integer of more than 4300 digits; nesting too deep
        raise ReconError(f"malformed camera path: {str(e).splitlines()[0][:80]}", path) from None
    if not isinstance(doc, dict):
        raise ReconError("malformed camera path: top level must be a JSON object", path)
    frames = doc.get("camera_path")
    if not isinstance(frames, list) or not frames:
        raise ReconError("malformed camera path: 'camera_path' must be a non-empty list", path)
    convention = doc.get("convention", "opencv")
    if convention not in ("opencv", "opengl"):
        raise ReconError(f"malformed camera path: unknown convention {convention!r} (opencv or opengl)", path)
    if "render_height" not in doc:
        raise ReconError("malformed camera path: missing 'render_height'", path)
    h = _num(doc["render_height"], "render_height", path, positive=True)
    fps = _num(doc.get("fps", 30.0), "fps", path, positive=True)
    if "render_width" in doc:
        w = _num(doc["render_width"], "render_width", path, positive=True)
    else:
        first = frames[0] if isinstance(frames[0], dict) else {}
        if "aspect" not in first:
            raise ReconError("malformed camera path: need 'render_width' or a per-frame 'aspect'", path)
        w = round(h * _num(first["aspect"], "camera_path[0].aspect", path, positive=True))
    if h != int(h) or w != int(w):
        raise ReconError("malformed camera path: render_width/render_height must be integers", path)
    if max(w, h) > MAX_IMAGE_SIDE:
        raise ReconError(f"malformed camera path: render size {w:g}x{h:g} is larger than {MAX_IMAGE_SIDE} pixels a side", path)
    w, h = int(w), int(h)

    c2ws, intr = [], []
    for i, fr in enumerate(frames):
        where = f"camera_path[{i}]"
        if not isinstance(fr, dict):
            raise ReconError(f"malformed camera path: {where} must be an object", path)
        m = fr.get("camera_to_world")
        if isinstance(m, list) and len(m) == 4 and all(isinstance(r, list) for r in m):
            m = [v for r in m for v in r]  # also accept a nested 4x4 list
        if not isinstance(m, list) or len(m) not in (12, 16):
            raise ReconError(f"malformed camera path: {where}.camera_to_world must be 16 numbers (4x4 row-major)", path)
        vals = [_num(v, f"{where}.camera_to_world", path) for v in m]
        c2ws.append(torch.tensor(vals, dtype=torch.float64).reshape(-1, 4)[:3])
        if "fl_x" in fr or "fl_y" in fr:
            fx = _num(fr.get("fl_x", fr.get("fl_y")), f"{where}.fl_x", path, positive=True)
            fy = _num(fr.get("fl_y", fr.get("fl_x")), f"{where}.fl_y", path, positive=True)
        elif "fov" in fr:
            fov = _num(fr["fov"], f"{where}.fov", path, positive=True)
            if fov >= 180:
                raise ReconError(f"malformed camera path: {where}.fov must be below 180 degrees", path)
            fy = 0.5 * h / math.tan(math.radians(fov) / 2)
            fx = fy
        else:
            raise ReconError(f"malformed camera path: {where} needs 'fl_x'/'fl_y' or 'fov'", path)
        cx = _num(fr.get("cx", w / 2), f"{where}.cx", path)
        cy = _num(fr.get("cy", h / 2), f"{where}.cy", path)
        intr.append((fx, fy, cx, cy))
    c2w = torch.stack(c2ws)
    rot = c2w[:, :, :3]
    err = (rot.transpose(1, 2) @ rot - torch.eye(3, dtype=rot.dtype)).abs().amax()
    if err > 1e-3:
        raise ReconError("malformed camera path: camera_to_world rotations are not orthonormal", path)
    if convention == "opengl":
        c2w = opengl_to_opencv(c2w)
    it = torch.tensor(intr, dtype=torch.float32)
    cams = _pinhole(c2w, it[:, 0], it[:, 1], it[:, 2], it[:, 3], w, h)
    return CameraPath(cams, fps)
