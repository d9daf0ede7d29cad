"""Synthetic scene with exact ground truth: the built-in default dataset of recon.

The scene
---------
A few analytic primitives stand on a finite textured ground slab, world units, **+z up**, all
content inside ``[-1, 1]^2 x [-0.5, 0.25]``:

==========  ===  ==============================================================================
name        id   shape, texture (object-local coordinates)
==========  ===  ==============================================================================
ground       1   box 2.0 x 2.0 x 0.1, top face at z = -0.4; two-tone checkerboard (0.25 cells)
sphere       2   radius 0.28; 8 red/yellow longitude stripes, fading at the poles
rounded_box  3   0.4 cube, edge radius 0.04, turned 30 deg about z; green/white 2x2 checker per face
torus        4   major radius 0.26, minor 0.09, lying flat; smooth rainbow around its axis
cylinder     5   radius 0.16, height 0.64, edge radius 0.03, upright; blue/orange 0.16 bands
capsule      6   radius 0.10, segment length 0.4 along x, lying down; magenta-cyan gradient
==========  ===  ==============================================================================

Ids are assigned in the order of :attr:`SyntheticSceneConfig.objects` (2, 3, ...); the ground is
always 1 and background (ray miss) is 0. Objects are sunk 0.01 into the ground so that no faces
are coplanar with it. Every primitive is an exact SDF (rotation/translation keep it exact), so
sphere tracing of the union never overshoots.

Appearance is diffuse and baked: ``rgb = albedo(p_local) * (ambient + (1 - ambient) *
max(0, n . light))`` with one fixed directional light and no shadows, so colour is a
deterministic function of the surface point and view-independent. Texture features are >= ~0.16
world units (>= ~4 px at 64 px and the default camera distance); colour images are anti-aliased by ``supersample^2`` samples per
pixel, while depth / normal / instance / mask come from the single ray through the pixel centre
(the same ray :meth:`recon.cameras.Cameras.generate_rays` makes), so they are exact per pixel.

Cameras sit on an upper-hemisphere band (elevation range, radius with a small per-view jitter)
looking at :attr:`SyntheticSceneConfig.target`: training views on a Fibonacci spiral, test (and
extra val) views picked greedily from a dense candidate spiral to be as far as possible from the
training views, so no test view repeats a training view.

The city block (``scene="city"``, :func:`city_scene_config`): a large-scale scene for occupancy
methods (LeC2O-NeRF). ``city_blocks``^2 blocks between asphalt streets with dashed centre lines,
each block split into 2 x 2 lots holding axis-aligned box buildings of random footprint, height and
facade colour with a grid of windows (some lots stay empty), on a ground slab reaching a street
width beyond the outer streets; instance ids 1 (ground), 2.. (buildings). Views are taken at eye
level along random streets (``street_view_fraction``) and from the air; every split has its own
random stream. ``python -m data.synthetic OUT --scene city --num-train-views 200`` writes one;
``default_scene_path(city_scene_config())`` caches one.

Files (nerfstudio layout)
-------------------------
::

    transforms.json          global intrinsics + frames + splits (see below)
    images/frame_00000.png   RGBA 8-bit, straight (un-premultiplied) alpha = pixel coverage;
                             RGB = 0 where alpha = 0. Composite: rgb * a + bg * (1 - a).
    depth/frame_00000.npy    float32 [H, W] z-depth (OpenCV camera z) in WORLD UNITS, 0 = miss
    normals/frame_00000.npy  float32 [H, W, 3] WORLD-space unit normals, zeros on miss
    instances/frame_00000.png uint8 [H, W] instance id (0 = miss, 1 = ground, 2.. objects)
    masks/frame_00000.png    uint8 [H, W] 255 where the centre ray hits anything (== instance > 0)
    sparse_pc.ply            ~5000 coloured points on the visible GT surface (SfM-like splat init)
    mesh.ply                 GT mesh, same world frame as the poses, one watertight component per
                             instance, vertex colours; face attribute ``instance`` (also below)
    mesh_instances.npy       int32 [F] instance id of every face of mesh.ply
    scene.json               generator version, config (+ hash), objects with poses/params, light

``transforms.json`` keys: ``camera_model`` (``"PINHOLE"`` unless a lens is chosen, then its name
and its ``k1``.. ``p2`` keys), ``fl_x, fl_y, cx, cy, w, h`` (pixels, pixel centres at +0.5), ``frames[i]`` with ``file_path``, ``transform_matrix`` (4x4 camera-to-world
in the **OpenGL/Blender** convention: camera looks down -z, y up; recon parsers convert with
:func:`recon.cameras.opengl_to_opencv`), ``depth_file_path``, ``mask_path``, ``normal_file_path``,
``instance_file_path``; top level ``ply_file_path: "sparse_pc.ply"``, ``train_filenames`` /
``val_filenames`` / ``test_filenames`` (lists of ``file_path`` values; val = the test frames when
``num_val_views == 0``) and the recon extensions ``mesh_file_path: "mesh.ply"`` and
``normal_frame: "world"``.

Lenses and the COLMAP layout: ``camera_model``/``distortion`` (COLMAP's names and coefficient
order) render every image and cue through that lens exactly, with the camera a parser reads back
(``data.parsers.colmap.camera_intrinsics`` makes it). ``layout="colmap"`` writes a capture as
COLMAP gives one instead: ``images/`` (RGB composited onto black), ``sparse/0/{cameras,images,
points3D}.txt`` with one shared camera and the sparse points' tracks (every view that sees a
point within 3 % of its depth), plus ``mesh.ply`` and ``scene.json``; COLMAP's parser holds out
every 8th image rather than the generator's test views.

Depth units: nerfstudio multiplies depth files by ``depth_unit_scale_factor`` (default 1e-3, meant
for millimetre PNGs) -- that factor is a dataparser option, not a transforms.json key. Depth here
is ``.npy`` already in world units, so a parser must use a scale of **1.0** for these files.

Python API
----------
:class:`SyntheticSceneConfig`, :class:`SyntheticScene` (``sdf``, ``object_sdfs``, ``normal``,
``color``, ``trace``, ``render``, ``mesh``, ``cameras``), :func:`generate_scene` (atomic write),
:func:`default_scene_path` (cached generation under ``$RECON_CACHE_DIR`` or ``~/.cache/recon``),
:func:`config_hash`. CLI: ``python -m data.synthetic OUT_DIR [--size 128] [--objects sphere torus]``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import trimesh
import tyro
from PIL import Image
from torch import Tensor

from data.parsers.colmap import camera_intrinsics
from data.parsers.colmap_io import ColmapCamera, ColmapImage, ColmapPoints, write_model
from recon.cameras import Cameras, look_at, opengl_to_opencv
from recon.rotations import matrix_to_quaternion

log = logging.getLogger(__name__)

# Bump whenever the generated content changes, so cached default scenes are regenerated.
GENERATOR_VERSION = 1

ObjectName = Literal["sphere", "rounded_box", "torus", "cylinder", "capsule"]
CameraModelName = Literal["PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE"]
_NUM_COEFFICIENTS = {"PINHOLE": 0, "SIMPLE_RADIAL": 1, "RADIAL": 2, "OPENCV": 4, "FULL_OPENCV": 8, "OPENCV_FISHEYE": 4}
_LATER_FIELDS = ("camera_model", "distortion", "layout", "scene", "city_extent", "city_blocks", "city_street_width", "street_view_fraction")
"""Fields added after GENERATOR_VERSION 1: they enter the config hash only when set, so the cache
folders of scenes made before them keep their names."""
GROUND_TOP_Z = -0.4
_SINK = 0.01  # objects sink this far into the ground: no coplanar faces, a clean contact line
_LIGHT_DIR = (0.5, -0.35, 0.8)
_AMBIENT = 0.35


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads, restoring the previous count afterwards.

    Sphere tracing is many small, compacted ops: one thread is about as fast as several on an idle
    machine, and on a busy one (training beside us) multi-threaded torch can be 100x slower from
    OpenMP oversubscription. Note that the thread count is process-wide while this is active.
    """
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if old != n:
            torch.set_num_threads(old)


@dataclass(frozen=True)
class SyntheticSceneConfig:
    """Everything that determines a synthetic scene (its hash names the cache folder)."""

    width: int = 64
    """Image width in pixels (small so CPU training is quick)."""
    height: int = 64
    """Image height in pixels."""
    num_train_views: int = 32
    """Training views (Fibonacci spiral over the elevation band)."""
    num_test_views: int = 8
    """Test views, placed in between the training views."""
    num_val_views: int = 0
    """Extra validation views; 0 means the val split is the test frames."""
    radius: float = 3.0
    """Mean camera distance from the target point."""
    radius_jitter: float = 0.05
    """Per-view relative radius jitter (uniform in +-jitter), drawn from the seed."""
    elevation_range: tuple[float, float] = (15.0, 65.0)
    """Camera elevation band above the horizontal plane, degrees."""
    fov_degrees: float = 45.0
    """Horizontal field of view, degrees (square pixels: fy = fx)."""
    target: tuple[float, float, float] = (0.0, 0.0, -0.2)
    """World point every camera looks at (centre of the content)."""
    seed: int = 0
    """Seeds the azimuth offset of the camera pattern, the radius jitter and the sparse points."""
    supersample: int = 3
    """Anti-aliasing: supersample^2 colour samples per pixel (odd keeps the centre ray)."""
    objects: tuple[ObjectName, ...] = ("sphere", "rounded_box", "torus", "cylinder", "capsule")
    """Which objects stand on the ground; instance ids 2, 3, ... follow this order."""
    ground: bool = True
    """Include the ground slab (instance 1)."""
    mesh_resolution: float = 0.01
    """Marching-cubes grid spacing of the GT mesh, world units."""
    num_points: int = 5000
    """Points in ``sparse_pc.ply``."""
    camera_model: CameraModelName = "PINHOLE"
    """Lens model of every camera, by COLMAP's name; images and every cue are rendered through it
    exactly (the rays of :meth:`recon.cameras.Cameras.generate_rays`)."""
    distortion: tuple[float, ...] = ()
    """The model's coefficients in COLMAP's order: SIMPLE_RADIAL k; RADIAL k1 k2; OPENCV k1 k2 p1 p2;
    FULL_OPENCV k1 k2 p1 p2 k3 k4 k5 k6; OPENCV_FISHEYE k1 k2 k3 k4; none for PINHOLE."""
    layout: Literal["nerfstudio", "colmap"] = "nerfstudio"
    """Files written: nerfstudio's transforms.json with every ground-truth cue, or a COLMAP capture
    (images/ composited onto black, sparse/0/ as a text model whose points carry their tracks)."""
    scene: Literal["objects", "city"] = "objects"
    """objects: the primitives of ``objects`` on the ground slab, cameras on a hemisphere band;
    city: a procedural city block (see :func:`city_scene_config`; ``objects`` and ``ground`` are
    then ignored)."""
    city_extent: float = 1.0
    """City: half size of the square of blocks, world units (streets run along its border too)."""
    city_blocks: int = 3
    """City: blocks per side, 1..7; each block holds up to 2 x 2 buildings."""
    city_street_width: float = 0.12
    """City: street width, world units."""
    street_view_fraction: float = 0.5
    """City: share of the views taken along the streets at eye level; the rest look down from the
    air, from the hemisphere band of ``radius`` (times ``city_extent``) and ``elevation_range``."""

    def __post_init__(self) -> None:
        if self.scene == "city" and not (1 <= self.city_blocks <= 7 and 0 < self.city_street_width < 2 * self.city_extent / self.city_blocks and 0 <= self.street_view_fraction <= 1):
            raise ValueError(
                f"city needs 1 <= city_blocks <= 7 (instance ids fit a byte), 0 < city_street_width < the block pitch and street_view_fraction in [0, 1];"
                f" got {self.city_blocks}, {self.city_street_width}, {self.street_view_fraction}"
            )
        want = _NUM_COEFFICIENTS[self.camera_model]
        if len(self.distortion) != want:
            raise ValueError(f"camera_model {self.camera_model} takes {want} distortion coefficients, got {len(self.distortion)}")
        if self.layout == "nerfstudio" and self.camera_model == "FULL_OPENCV":
            raise ValueError("FULL_OPENCV has no transforms.json form (k4..k6 are rational terms there); use layout colmap")


# -- SDF primitives (local coordinates, [P, 3] -> [P]) ---------------------------------------------


def _length(v: Tensor) -> Tensor:
    """Euclidean norm over the last dim with a gradient that stays finite at 0."""
    return torch.sqrt((v * v).sum(-1).clamp_min(1e-20))


def _sdf_box(p: Tensor, half: tuple[float, float, float], rounding: float = 0.0) -> Tensor:
    q = p.abs() - (torch.tensor(half, dtype=p.dtype, device=p.device) - rounding)
    outside = _length(q.clamp_min(0.0))
    inside = q.max(-1).values.clamp_max(0.0)
    return outside + inside - rounding


def _sdf_sphere(p: Tensor, radius: float) -> Tensor:
    return _length(p) - radius


def _sdf_torus(p: Tensor, major: float, minor: float) -> Tensor:
    q = torch.stack([_length(p[:, :2]) - major, p[:, 2]], -1)
    return _length(q) - minor


def _sdf_rounded_cylinder(p: Tensor, radius: float, half_height: float, rounding: float) -> Tensor:
    # 2-D rounded-rectangle SDF in the (radial, z) half plane: exact for a solid of revolution.
    d = torch.stack([_length(p[:, :2]) - (radius - rounding), p[:, 2].abs() - (half_height - rounding)], -1)
    return d.max(-1).values.clamp_max(0.0) + _length(d.clamp_min(0.0)) - rounding


def _sdf_capsule(p: Tensor, half_length: float, radius: float) -> Tensor:
    q = p.clone()
    q[:, 0] = p[:, 0] - p[:, 0].clamp(-half_length, half_length)
    return _length(q) - radius


# -- textures (local coordinates, [P, 3] -> [P, 3] albedo in [0, 1]) -------------------------------


def _rgb(*c: float) -> Tensor:
    return torch.tensor(c, dtype=torch.float32)


def _mix(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    """Blend colours a, b [3] with weights w [P] -> [P, 3]."""
    return a.to(w) + (b.to(w) - a.to(w)) * w[:, None]


def _tex_ground(p: Tensor) -> Tensor:
    cell = 0.25
    # +0.5 cell offset keeps the slab's side faces (|x| = 1) off a checker boundary.
    k = (torch.floor(p[:, 0] / cell + 0.5) + torch.floor(p[:, 1] / cell + 0.5)).remainder(2)
    base = _mix(_rgb(0.86, 0.82, 0.72), _rgb(0.33, 0.38, 0.50), k)
    tint = 0.85 + 0.15 * (p[:, 0] + 1.0) / 2.0  # slow left-right gradient breaks the symmetry
    return base * torch.stack([tint, torch.ones_like(tint), 2.0 - tint], -1).clamp(0, 1)


def _tex_sphere(p: Tensor) -> Tensor:
    phi = torch.atan2(p[:, 1], p[:, 0])
    k = torch.floor(phi / (2 * math.pi) * 8.0).remainder(2)
    lat = (p[:, 2] / 0.28).clamp(-1, 1)
    # Longitude stripes converge at the poles (aliasing); fade them to the mean colour there.
    k = k + (0.5 - k) * ((lat.abs() - 0.7) / 0.2).clamp(0, 1)
    base = _mix(_rgb(0.88, 0.22, 0.18), _rgb(0.96, 0.80, 0.30), k)
    return base * (0.65 + 0.35 * (1.0 - lat.abs()))[:, None]


def _tex_rounded_box(p: Tensor) -> Tensor:
    # A 2x2 checker on each face, over the face's two in-plane coordinates (a 3-D checker would put
    # a cell boundary exactly on the faces at +-0.2). Adding the face axis makes neighbouring faces
    # differ, which helps tell them apart.
    axis = p.abs().argmax(-1)
    k = torch.floor(p / 0.2)
    k = (k.sum(-1) - k.gather(-1, axis[:, None])[:, 0] + axis).remainder(2)
    return _mix(_rgb(0.18, 0.62, 0.30), _rgb(0.92, 0.95, 0.86), k)


def _tex_torus(p: Tensor) -> Tensor:
    phi = torch.atan2(p[:, 1], p[:, 0])
    offs = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=p.dtype, device=p.device)
    return 0.15 + 0.75 * (0.5 + 0.5 * torch.cos(phi[:, None] + offs))


def _tex_cylinder(p: Tensor) -> Tensor:
    k = torch.floor(p[:, 2] / 0.16 + 0.5).remainder(2)  # band edges at +-0.08, +-0.24: not on the caps
    return _mix(_rgb(0.20, 0.35, 0.82), _rgb(0.96, 0.60, 0.20), k)


def _tex_capsule(p: Tensor) -> Tensor:
    w = ((p[:, 0] + 0.3) / 0.6).clamp(0, 1)
    return _mix(_rgb(0.82, 0.20, 0.62), _rgb(0.20, 0.75, 0.82), w)


@dataclass(frozen=True)
class _Spec:
    """Library entry: shape, its parameters, pose and texture."""

    sdf: Callable[..., Tensor]
    params: dict
    half_extent: tuple[float, float, float]  # local AABB half size
    position: tuple[float, float, float]
    yaw_degrees: float
    texture: Callable[[Tensor], Tensor]


def _on_ground(h: float) -> float:
    """Centre z of an object of local half height ``h`` resting (sunk by _SINK) on the ground."""
    return GROUND_TOP_Z + h - _SINK


_LIBRARY: dict[str, _Spec] = {
    "ground": _Spec(_sdf_box, {"half": (1.0, 1.0, 0.05)}, (1.0, 1.0, 0.05), (0.0, 0.0, GROUND_TOP_Z - 0.05), 0.0, _tex_ground),
    "sphere": _Spec(_sdf_sphere, {"radius": 0.28}, (0.28,) * 3, (-0.42, -0.38, _on_ground(0.28)), 0.0, _tex_sphere),
    "rounded_box": _Spec(
        _sdf_box, {"half": (0.2, 0.2, 0.2), "rounding": 0.04}, (0.2,) * 3, (0.45, -0.35, _on_ground(0.2)), 30.0, _tex_rounded_box
    ),
    "torus": _Spec(
        _sdf_torus, {"major": 0.26, "minor": 0.09}, (0.35, 0.35, 0.09), (0.42, 0.42, _on_ground(0.09)), 0.0, _tex_torus
    ),
    "cylinder": _Spec(
        _sdf_rounded_cylinder,
        {"radius": 0.16, "half_height": 0.32, "rounding": 0.03},
        (0.16, 0.16, 0.32),
        (-0.40, 0.40, _on_ground(0.32)),
        0.0,
        _tex_cylinder,
    ),
    "capsule": _Spec(
        _sdf_capsule, {"half_length": 0.2, "radius": 0.1}, (0.3, 0.1, 0.1), (0.0, 0.0, _on_ground(0.1)), 0.0, _tex_capsule
    ),
}


# -- the city block (scene="city") --------------------------------------------------------------

_WINDOW_PITCH = 0.08
_ASPHALT, _PAVEMENT, _MARKING, _ROOF, _GLASS = (0.22, 0.22, 0.25), (0.62, 0.60, 0.55), (0.92, 0.90, 0.70), (0.42, 0.42, 0.46), (0.12, 0.16, 0.26)
_FACADES = ((0.80, 0.55, 0.42), (0.86, 0.82, 0.70), (0.55, 0.62, 0.72), (0.70, 0.72, 0.60), (0.90, 0.70, 0.50), (0.62, 0.50, 0.58))


def _tex_building(p: Tensor, colour: tuple[float, float, float], top: float) -> Tensor:
    """A facade of ``colour`` with a grid of dark windows every _WINDOW_PITCH; a grey roof (local z =
    ``top``). On a face of constant x the windows run along y and vice versa (``x + y``)."""
    u = ((p[:, 0] + p[:, 1]) / _WINDOW_PITCH).remainder(1.0)
    v = ((p[:, 2] + top) / _WINDOW_PITCH).remainder(1.0)
    window = ((u > 0.3) & (u < 0.75) & (v > 0.35) & (v < 0.8)).to(p.dtype)
    facade = _mix(_rgb(*colour), _rgb(*_GLASS), window)
    return torch.where((p[:, 2] > top - 1e-3)[:, None], _rgb(*_ROOF).to(p).expand_as(facade), facade)


def _street_distance(c: Tensor, extent: float, pitch: float) -> Tensor:
    """Distance [P] of coordinates c [P] to the nearest street centre line -extent + k * pitch."""
    k = (c + extent) / pitch
    return (k - torch.round(k)).abs() * pitch


def _tex_city_ground(p: Tensor, extent: float, blocks: int, street: float) -> Tensor:
    """Asphalt streets with dashed centre lines, pavement inside the blocks."""
    pitch = 2 * extent / blocks
    dx, dy = _street_distance(p[:, 0], extent, pitch), _street_distance(p[:, 1], extent, pitch)
    colour = _mix(_rgb(*_PAVEMENT), _rgb(*_ASPHALT), ((dx < street / 2) | (dy < street / 2)).to(p.dtype))
    dash_x = (dx < 0.015) & ((p[:, 1] / 0.12).remainder(1.0) < 0.5) & (dy > street / 2)
    dash_y = (dy < 0.015) & ((p[:, 0] / 0.12).remainder(1.0) < 0.5) & (dx > street / 2)
    return torch.where((dash_x | dash_y)[:, None], _rgb(*_MARKING).to(p).expand_as(colour), colour)


def _city_specs(config: SyntheticSceneConfig) -> list[tuple[str, _Spec]]:
    """The ground and the buildings of the city of ``config``: ``city_blocks``^2 blocks between
    streets, each split into 2 x 2 lots; a lot holds a box building of random footprint (55-90 % of
    the lot), offset, height and facade colour, or (15 %) stays empty, all drawn from ``seed``."""
    rng = np.random.default_rng(config.seed + 7919)
    extent, n, street = config.city_extent, config.city_blocks, config.city_street_width
    pitch = 2 * extent / n
    half_ground = extent + street
    ground = _Spec(_sdf_box, {"half": (half_ground, half_ground, 0.05)}, (half_ground, half_ground, 0.05), (0.0, 0.0, GROUND_TOP_Z - 0.05), 0.0,
                   functools.partial(_tex_city_ground, extent=extent, blocks=n, street=street))
    specs = [("ground", ground)]
    lot = (pitch - street) / 4 - 0.01  # half size of a lot, keeping a strip of pavement
    for i, j in itertools.product(range(n), range(n)):
        block = (-extent + (i + 0.5) * pitch, -extent + (j + 0.5) * pitch)
        for a, b in itertools.product((-1, 1), (-1, 1)):
            if rng.uniform() < 0.15:
                continue
            half = rng.uniform(0.55, 0.9, size=2) * lot
            offset = rng.uniform(-1, 1, size=2) * (lot - half)
            height = float(rng.uniform(0.05, 0.25) * 2 * extent / 2)  # half height
            centre = (block[0] + a * (pitch - street) / 4 + offset[0], block[1] + b * (pitch - street) / 4 + offset[1], _on_ground(height))
            colour = _FACADES[int(rng.integers(len(_FACADES)))]
            extent3 = (float(half[0]), float(half[1]), height)
            specs.append((f"building_{len(specs)}", _Spec(_sdf_box, {"half": extent3}, extent3, tuple(float(c) for c in centre), 0.0,
                                                          functools.partial(_tex_building, colour=colour, top=height))))
    return specs


def _city_cameras(config: SyntheticSceneConfig, count: int, rng: np.random.Generator) -> Tensor:
    """``count`` OpenCV camera-to-worlds [count, 3, 4]: ``street_view_fraction`` of them at eye level
    (0.06 above the ground) on a random street, looking 0.8 ahead along it and slightly down; the
    rest from the air on the hemisphere band, looking at a random point of the city."""
    extent, n, street = config.city_extent, config.city_blocks, config.city_street_width
    pitch = 2 * extent / n
    n_street = int(round(count * config.street_view_fraction))
    axis = rng.integers(2, size=n_street)  # 0: a street along x (y = line), 1: along y
    line = -extent + rng.integers(n + 1, size=n_street) * pitch + rng.uniform(-street / 4, street / 4, size=n_street)
    along = rng.uniform(-extent, extent, size=n_street)
    heading = rng.choice([-1.0, 1.0], size=n_street) * 0.8
    eye_z, look_z = GROUND_TOP_Z + 0.06, GROUND_TOP_Z + 0.03
    eye = np.stack([np.where(axis == 0, along, line), np.where(axis == 0, line, along), np.full(n_street, eye_z)], -1)
    ahead = eye + np.stack([np.where(axis == 0, heading, 0.0), np.where(axis == 0, 0.0, heading), np.full(n_street, look_z - eye_z)], -1)
    n_air = count - n_street
    dirs = _fibonacci_band(n_air, config.elevation_range, float(rng.uniform(0, 2 * math.pi)))
    centre = np.array([0.0, 0.0, GROUND_TOP_Z])
    air_target = centre + np.concatenate([rng.uniform(-0.5, 0.5, size=(n_air, 2)) * extent, np.zeros((n_air, 1))], -1)
    air_eye = centre + dirs * config.radius * extent
    eyes = torch.from_numpy(np.concatenate([eye, air_eye])).float()
    targets = torch.from_numpy(np.concatenate([ahead, air_target])).float()
    return look_at(eyes, targets) if count else torch.zeros(0, 3, 4)


@dataclass
class SceneObject:
    """One posed primitive: ``x_local = rotation^T (x_world - position)``."""

    name: str
    instance_id: int
    spec: _Spec
    rotation: Tensor = field(init=False)  # [3, 3] local -> world
    position: Tensor = field(init=False)  # [3]

    def __post_init__(self) -> None:
        a = math.radians(self.spec.yaw_degrees)
        c, s = math.cos(a), math.sin(a)
        self.rotation = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        self.position = torch.tensor(self.spec.position, dtype=torch.float32)

    def to_local(self, points: Tensor) -> Tensor:
        """World [P, 3] -> local [P, 3]."""
        return (points - self.position.to(points)) @ self.rotation.to(points)

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance [P] of world points [P, 3] (negative inside)."""
        return self.spec.sdf(self.to_local(points), **self.spec.params)

    def albedo(self, points: Tensor) -> Tensor:
        """Texture colour [P, 3] at world points [P, 3]."""
        return self.spec.texture(self.to_local(points))

    def world_bounds(self) -> Tensor:
        """[2, 3] world AABB (min, max)."""
        h = torch.tensor(self.spec.half_extent)
        corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0])] * 3) * h
        w = corners @ self.rotation.T + self.position
        return torch.stack([w.min(0).values, w.max(0).values])

    def local_mesh(self, resolution: float) -> trimesh.Trimesh:
        """Watertight mesh of this object's surface in its local frame."""
        if self.spec.sdf is _sdf_box and not self.spec.params.get("rounding"):
            # Sharp box: exact, subdivided so faces are small (good for sampling / nearest-face queries).
            box = trimesh.creation.box(extents=[2 * e for e in self.spec.half_extent])
            v, f = trimesh.remesh.subdivide_to_size(box.vertices, box.faces, max_edge=0.05)
            mesh = trimesh.Trimesh(v, f, process=True)
            mesh.merge_vertices()
            return mesh
        return _marching_cubes(lambda p: self.spec.sdf(p, **self.spec.params), self.spec.half_extent, resolution)


def _marching_cubes(sdf: Callable[[Tensor], Tensor], half_extent: tuple[float, ...], h: float) -> trimesh.Trimesh:
    """Zero level set of ``sdf`` on a grid of spacing ``h`` covering the half extent plus a margin."""
    from skimage.measure import marching_cubes

    axes = []
    for e in half_extent:
        n = math.ceil((e + 3 * h) / h)
        axes.append(torch.arange(-n, n + 1, dtype=torch.float64) * h)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    # float64 keeps the interpolated vertex positions free of float32 rounding of grid values.
    values = sdf(grid.reshape(-1, 3)).reshape(grid.shape[:3]).numpy()
    verts, faces, _, _ = marching_cubes(values, level=0.0, spacing=(h, h, h), allow_degenerate=False)
    verts = verts + np.array([a[0].item() for a in axes])
    mesh = trimesh.Trimesh(verts, faces, process=True)
    if mesh.volume < 0:  # skimage's winding depends on the sign convention; we want outward normals
        mesh.invert()
    return mesh


# -- cameras -----------------------------------------------------------------------------------


def _fibonacci_band(n: int, elev: tuple[float, float], azimuth0: float, offset: float = 0.5) -> np.ndarray:
    """[n, 3] unit directions, equal-area Fibonacci spiral restricted to an elevation band."""
    z0, z1 = math.sin(math.radians(elev[0])), math.sin(math.radians(elev[1]))
    i = np.arange(n, dtype=np.float64)
    z = z0 + (i + offset) / n * (z1 - z0)
    golden = math.pi * (3.0 - math.sqrt(5.0))
    az = azimuth0 + i * golden
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(az), r * np.sin(az), z], -1)


def _farthest_from(existing: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """Greedily pick n candidates [n, 3] maximising the minimum distance to ``existing`` and each other."""
    chosen: list[np.ndarray] = []
    ref = existing
    for _ in range(n):
        d = np.linalg.norm(candidates[:, None] - ref[None], axis=-1).min(1) if len(ref) else np.ones(len(candidates))
        best = candidates[int(np.argmax(d))]
        chosen.append(best)
        ref = np.concatenate([ref, best[None]])
    return np.stack(chosen) if chosen else np.zeros((0, 3))


def make_cameras(config: SyntheticSceneConfig) -> dict[str, Cameras]:
    """Cameras per split ("train", "test", and "val" if ``num_val_views > 0``), OpenCV convention."""
    fx = 0.5 * config.width / math.tan(math.radians(config.fov_degrees) / 2)
    _, _, _, _, distortion, model = _lens(config, fx)
    poses = _city_poses(config) if config.scene == "city" else _hemisphere_poses(config)
    return {name: Cameras(c2w, fx, fx, config.width / 2, config.height / 2, config.width, config.height, distortion, model) for name, c2w in poses.items()}


def _city_poses(config: SyntheticSceneConfig) -> dict[str, Tensor]:
    """Camera-to-worlds per split of a city (:func:`_city_cameras`), each split from its own stream
    of ``seed``, so adding views to one split leaves the others as they were."""
    counts = {"train": config.num_train_views, "test": config.num_test_views, "val": config.num_val_views}
    return {
        name: _city_cameras(config, n, np.random.default_rng([config.seed, k]))
        for k, (name, n) in enumerate(counts.items())
        if n > 0 or name != "val"
    }


def _hemisphere_poses(config: SyntheticSceneConfig) -> dict[str, Tensor]:
    """Camera-to-worlds per split on the hemisphere band, looking at ``target``: training views on a
    Fibonacci spiral, test and val views as far as possible from them."""
    rng = np.random.default_rng(config.seed)
    az0 = float(rng.uniform(0, 2 * math.pi))
    train = _fibonacci_band(config.num_train_views, config.elevation_range, az0)
    candidates = _fibonacci_band(2048, config.elevation_range, az0 + 0.5)
    test = _farthest_from(train, candidates, config.num_test_views)
    val = _farthest_from(np.concatenate([train, test]), candidates, config.num_val_views)
    target = torch.tensor(config.target, dtype=torch.float32)
    out: dict[str, Tensor] = {}
    for name, dirs in (("train", train), ("test", test), ("val", val)):
        if len(dirs) == 0 and name == "val":
            continue
        radii = config.radius * (1 + rng.uniform(-config.radius_jitter, config.radius_jitter, size=len(dirs)))
        eye = target + torch.from_numpy(dirs * radii[:, None]).float()
        out[name] = look_at(eye, target[None]) if len(dirs) else torch.zeros(0, 3, 4)
    return out


def city_scene_config(num_views: int = 200, extent: float = 1.0, blocks: int = 3, size: int = 64, **changes) -> SyntheticSceneConfig:
    """A procedural city block (``scene="city"``) with ``num_views`` training views (a tenth more
    for testing), ``size``-pixel square images, the blocks' square half size ``extent`` and
    ``blocks`` blocks per side, aerial views from 30-70 degrees elevation at 2.6 x the extent;
    ``changes`` set any other field. ``default_scene_path(city_scene_config())`` generates and caches
    it like the default scene."""
    fields = {
        "scene": "city", "num_train_views": num_views, "num_test_views": max(1, num_views // 10), "city_extent": extent,
        "city_blocks": blocks, "width": size, "height": size, "radius": 2.6, "elevation_range": (30.0, 70.0), **changes,
    }
    return SyntheticSceneConfig(**fields)


def _colmap_camera(config: SyntheticSceneConfig, fx: float) -> ColmapCamera:
    """The scene's camera as COLMAP writes it (principal point at the image centre, fy = fx)."""
    single_focal = config.camera_model in ("SIMPLE_RADIAL", "RADIAL")
    head = [fx, config.width / 2, config.height / 2] if single_focal else [fx, fx, config.width / 2, config.height / 2]
    return ColmapCamera(1, config.camera_model, config.width, config.height, np.array(head + list(config.distortion), dtype=np.float64))


def _lens(config: SyntheticSceneConfig, fx: float) -> tuple:
    """(fx, fy, cx, cy, distortion [8], camera model) through the COLMAP parser's own reading of the
    camera, so the scene renders exactly the camera a parser gives back."""
    return camera_intrinsics(_colmap_camera(config, fx), Path("synthetic"))


# -- the scene ---------------------------------------------------------------------------------


class SyntheticScene:
    """The analytic scene of a :class:`SyntheticSceneConfig`: SDF, renderer, GT mesh, cameras."""

    def __init__(self, config: SyntheticSceneConfig | None = None) -> None:
        self.config = config or SyntheticSceneConfig()
        if self.config.scene == "city":
            self.objects = [SceneObject(name, 1 + i, spec) for i, (name, spec) in enumerate(_city_specs(self.config))]
        else:
            self.objects = self._library_objects()
        self.instance_ids = torch.tensor([o.instance_id for o in self.objects])
        b = torch.stack([o.world_bounds() for o in self.objects])
        self.aabb = torch.stack([b[:, 0].min(0).values, b[:, 1].max(0).values])  # [2, 3]
        self.light = torch.tensor(_LIGHT_DIR) / torch.tensor(_LIGHT_DIR).norm()

    def _library_objects(self) -> list[SceneObject]:
        names = (["ground"] if self.config.ground else []) + list(self.config.objects)
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate objects in {self.config.objects}")
        unknown = [n for n in names if n not in _LIBRARY]
        if unknown:
            raise ValueError(f"unknown objects {unknown}; choose from {sorted(set(_LIBRARY) - {'ground'})}")
        if not names:
            raise ValueError("the scene needs at least one object")
        first = 1 if self.config.ground else 2
        return [SceneObject(n, first + i, _LIBRARY[n]) for i, n in enumerate(names)]

    # -- fields ------------------------------------------------------------------------------
    def object_sdfs(self, points: Tensor) -> Tensor:
        """[P, K] signed distance of world points [P, 3] to each of the K objects."""
        return torch.stack([o.sdf(points) for o in self.objects], -1)

    def sdf(self, points: Tensor) -> Tensor:
        """[P] union SDF of world points [P, 3]."""
        out = self.objects[0].sdf(points)
        for o in self.objects[1:]:
            out = torch.minimum(out, o.sdf(points))
        return out

    def instance(self, points: Tensor) -> Tensor:
        """[P] int64 id of the object whose surface is nearest (argmin SDF) to points [P, 3]."""
        return self.instance_ids.to(points.device)[self.object_sdfs(points).argmin(-1)]

    def normal(self, points: Tensor) -> Tensor:
        """[P, 3] unit outward normal = normalised gradient of the union SDF at points [P, 3]."""
        with torch.enable_grad():
            x = points.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.sdf(x).sum(), x)
        return g / _length(g)[:, None]

    def color(self, points: Tensor, normals: Tensor | None = None, instances: Tensor | None = None) -> Tensor:
        """[P, 3] baked colour (texture x Lambert + ambient) at surface points [P, 3]."""
        if normals is None:
            normals = self.normal(points)
        if instances is None:
            instances = self.instance(points)
        albedo = torch.zeros_like(points)
        for o in self.objects:
            m = instances == o.instance_id
            if m.any():
                albedo[m] = o.albedo(points[m])
        lambert = (normals @ self.light.to(points)).clamp_min(0.0)
        return (albedo * (_AMBIENT + (1 - _AMBIENT) * lambert)[:, None]).clamp(0.0, 1.0)

    # -- rendering ---------------------------------------------------------------------------
    def trace(self, origins: Tensor, directions: Tensor, max_steps: int = 256, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
        """Sphere-trace rays [R, 3] (unit directions) against the union SDF.

        Returns distance along the ray t [R] and hit [R] bool. Only rays still marching are
        evaluated each step (compaction), which is what keeps CPU generation fast.
        """
        inv = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
        lo = (self.aabb[0].to(origins) - 0.02 - origins) * inv
        hi = (self.aabb[1].to(origins) + 0.02 - origins) * inv
        t_near = torch.minimum(lo, hi).max(-1).values.clamp_min(0.0)
        t_far = torch.maximum(lo, hi).min(-1).values
        t = t_near.clone()
        hit = torch.zeros(len(origins), dtype=torch.bool, device=origins.device)
        active = torch.nonzero(t_far > t_near).squeeze(-1)
        for _ in range(max_steps):
            if active.numel() == 0:
                break
            d = self.sdf(origins[active] + t[active, None] * directions[active])
            t[active] += d  # also for converged rays: an exact SDF step lands (closer) on the surface
            done = d < eps
            if done.any():
                # A ray can come within eps of a sharp edge and then move away again (a near miss at
                # a silhouette). Only accept rays that are still approaching the surface.
                sub = torch.nonzero(done).squeeze(-1)
                ia = active[sub]
                leaving = ~self._approaching(origins[ia] + t[ia, None] * directions[ia], directions[ia], eps)
                t[ia[leaving]] += 4 * eps
                hit[ia[~leaving]] = True
                done[sub[leaving]] = False
            active = active[~done & (t[active] <= t_far[active])]
        if active.numel():
            # Out of steps: rays creeping along a silhouette. Accept those very close and approaching.
            p = origins[active] + t[active, None] * directions[active]
            hit[active[(self.sdf(p) < 1e-3) & self._approaching(p, directions[active], eps)]] = True
        return t, hit

    def _approaching(self, points: Tensor, directions: Tensor, delta: float) -> Tensor:
        """[R] bool: the SDF decreases along the ray at points [R, 3] (central difference)."""
        return self.sdf(points + delta * directions) < self.sdf(points - delta * directions)

    def shade_rays(self, origins: Tensor, directions: Tensor) -> dict[str, Tensor]:
        """Trace rays [R, 3] and shade the hits.

        Returns t [R], hit [R] bool, rgb [R, 3], normal [R, 3], instance [R] int64 (zeros on miss).
        """
        t, hit = self.trace(origins, directions)
        n = len(origins)
        rgb = torch.zeros(n, 3, device=origins.device)
        normal = torch.zeros(n, 3, device=origins.device)
        instance = torch.zeros(n, dtype=torch.long, device=origins.device)
        if hit.any():
            p = origins[hit] + t[hit, None] * directions[hit]
            normal[hit] = self.normal(p)
            instance[hit] = self.instance(p)
            rgb[hit] = self.color(p, normal[hit], instance[hit])
        return {"t": t, "hit": hit, "rgb": rgb, "normal": normal, "instance": instance}

    @torch.no_grad()
    @torch_threads(1)
    def render(self, cameras: Cameras, supersample: int | None = None, max_rays: int = 1 << 20) -> dict[str, Tensor]:
        """Render C cameras of equal size.

        Returns rgb [C, H, W, 3] (straight colour, 0 on miss), alpha [C, H, W] (coverage of the
        supersample^2 colour samples), and from the pixel-centre ray: depth [C, H, W] (z-depth,
        0 on miss), normal [C, H, W, 3] (world, unit, 0 on miss), instance [C, H, W] int64.
        """
        s = self.config.supersample if supersample is None else supersample
        h, w = int(cameras.height[0]), int(cameras.width[0])
        if not (bool((cameras.height == h).all()) and bool((cameras.width == w).all())):
            raise ValueError("render() needs cameras of one image size")
        # Sample offsets inside a pixel, row-major; with an odd count the middle one is the centre.
        offs = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        oy, ox = torch.meshgrid(offs, offs, indexing="ij")
        offsets = torch.stack([ox.reshape(-1), oy.reshape(-1)], -1)  # [S, 2]
        centre = (s * s) // 2 if s % 2 == 1 else None
        if centre is None:
            offsets = torch.cat([offsets, torch.tensor([[0.5, 0.5]])])
            centre = len(offsets) - 1
        n_samples = len(offsets)
        vv, uu = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        u = (uu.reshape(-1, 1) + offsets[:, 0]).reshape(-1)  # [H*W*S] pixel-major, sample-minor
        v = (vv.reshape(-1, 1) + offsets[:, 1]).reshape(-1)
        per_cam = h * w * n_samples
        cams_per_chunk = max(1, max_rays // per_cam)

        outs: dict[str, list[Tensor]] = {k: [] for k in ("rgb", "alpha", "depth", "normal", "instance")}
        for c0 in range(0, len(cameras), cams_per_chunk):
            idx = torch.arange(c0, min(len(cameras), c0 + cams_per_chunk))
            ci = idx.repeat_interleave(per_cam).to(cameras.device)
            rays = cameras.rays_for_pixels(ci, u.repeat(len(idx)).to(cameras.device), v.repeat(len(idx)).to(cameras.device))
            r = self.shade_rays(rays.origins, rays.directions)
            shape = (len(idx), h, w, n_samples)
            hit = r["hit"].reshape(shape)
            rgb = r["rgb"].reshape(*shape, 3)
            colour_samples = [i for i in range(n_samples) if s % 2 == 1 or i != centre]
            hit_c, rgb_c = hit[..., colour_samples], rgb[..., colour_samples, :]
            count = hit_c.sum(-1)
            outs["rgb"].append(rgb_c.sum(-2) / count.clamp_min(1)[..., None])  # straight (un-premultiplied)
            outs["alpha"].append(count.float() / len(colour_samples))
            depth = torch.where(r["hit"], r["t"] * rays.z_scale, torch.zeros_like(r["t"]))
            outs["depth"].append(depth.reshape(shape)[..., centre])
            outs["normal"].append(r["normal"].reshape(*shape, 3)[..., centre, :])
            outs["instance"].append(r["instance"].reshape(shape)[..., centre])
        return {k: torch.cat(v) for k, v in outs.items()}

    # -- ground truth ------------------------------------------------------------------------
    def cameras(self) -> dict[str, Cameras]:
        """Cameras per split, see :func:`make_cameras`."""
        return make_cameras(self.config)

    @torch_threads(1)
    def mesh(self) -> trimesh.Trimesh:
        """GT mesh in world coordinates: one watertight component per object, concatenated.

        ``mesh.face_attributes["instance"]`` [F] int32 holds instance ids; vertex colours are the
        baked surface colours. Hidden parts (object bottoms sunk into the ground, the ground under
        objects, the slab's underside) are kept: each component is a closed surface.
        """
        parts, ids = [], []
        for o in self.objects:
            m = o.local_mesh(self.config.mesh_resolution)
            v = torch.from_numpy(np.asarray(m.vertices)).double() @ o.rotation.double().T + o.position.double()
            parts.append(trimesh.Trimesh(v.numpy(), np.asarray(m.faces), process=False))
            ids.append(np.full(len(m.faces), o.instance_id, dtype=np.int32))
        mesh = trimesh.util.concatenate(parts)
        inst = np.concatenate(ids)
        # Vertex colours: evaluate each component's texture on its own vertices (not argmin, which
        # is ambiguous where components meet).
        cols = []
        for o, part in zip(self.objects, parts):
            vt = torch.from_numpy(np.asarray(part.vertices)).float()
            inst_v = torch.full((len(vt),), o.instance_id)
            cols.append(self.color(vt, _object_normal(o, vt), inst_v))
        rgb8 = (torch.cat(cols).numpy() * 255 + 0.5).astype(np.uint8)
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.concatenate([rgb8, np.full((len(rgb8), 1), 255, np.uint8)], 1))
        mesh.face_attributes["instance"] = inst
        return mesh


def _object_normal(obj: SceneObject, points: Tensor) -> Tensor:
    """[P, 3] unit gradient of one object's SDF at points [P, 3]."""
    with torch.enable_grad():
        x = points.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(obj.sdf(x).sum(), x)
    return g / _length(g)[:, None]


# -- writing -----------------------------------------------------------------------------------


def config_hash(config: SyntheticSceneConfig) -> str:
    """Short stable hash of the config and generator version (names the cache folder)."""
    fields = asdict(config)
    for name in _LATER_FIELDS:
        if fields[name] == SyntheticSceneConfig.__dataclass_fields__[name].default:
            del fields[name]
    payload = json.dumps({"version": GENERATOR_VERSION, "config": fields}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _c2w_opengl_4x4(c2w_opencv: Tensor) -> list[list[float]]:
    """OpenCV [3, 4] camera-to-world -> OpenGL/Blender 4x4 (y/z camera axes flipped)."""
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :] = opengl_to_opencv(c2w_opencv.double())  # the flip is its own inverse
    return m.tolist()


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)  # PIL writes no timestamps: output bytes are reproducible


def _write_frame(root: Path, name: str, out: dict[str, Tensor], i: int) -> None:
    """Write every per-frame file of render output index ``i``."""
    rgb8 = (out["rgb"][i].numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    a8 = (out["alpha"][i].numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    _save_png(root / "images" / f"{name}.png", np.concatenate([rgb8, a8[..., None]], -1))
    np.save(root / "depth" / f"{name}.npy", out["depth"][i].numpy().astype(np.float32))
    np.save(root / "normals" / f"{name}.npy", out["normal"][i].numpy().astype(np.float32))
    inst = out["instance"][i].numpy()
    _save_png(root / "instances" / f"{name}.png", inst.astype(np.uint8))
    _save_png(root / "masks" / f"{name}.png", np.where(inst > 0, 255, 0).astype(np.uint8))


def _sparse_points(scene: SyntheticScene, cams: Cameras, out: dict[str, Tensor], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points [n, 3] float32 with colours [n, 3] uint8, back-projected from training depth.

    Back-projecting pixel-centre depth puts the points exactly on the visible surface (which is
    the GT mesh surface), like an SfM cloud that only contains what the cameras saw.
    """
    hit = out["instance"] > 0  # [C, H, W]
    cidx, vv, uu = torch.nonzero(hit, as_tuple=True)
    if len(cidx) == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(cidx), generator=g)[:n]
    cidx, vv, uu = cidx[pick], vv[pick], uu[pick]
    rays = cams.rays_for_pixels(cidx, uu.float() + 0.5, vv.float() + 0.5)
    t = out["depth"][cidx, vv, uu] / rays.z_scale
    pts = rays.origins + t[:, None] * rays.directions
    rgb = scene.color(pts, out["normal"][cidx, vv, uu], out["instance"][cidx, vv, uu])
    return pts.numpy().astype(np.float32), (rgb.numpy() * 255 + 0.5).astype(np.uint8)


def _lens_keys(config: SyntheticSceneConfig) -> dict[str, float]:
    """transforms.json's distortion keys of the scene's camera model (nerfstudio's names)."""
    names = {"SIMPLE_RADIAL": ("k1",), "RADIAL": ("k1", "k2"), "OPENCV": ("k1", "k2", "p1", "p2"), "OPENCV_FISHEYE": ("k1", "k2", "k3", "k4")}
    return dict(zip(names.get(config.camera_model, ()), map(float, config.distortion)))


def _tracks(cameras: Cameras, out: dict[str, Tensor], points: np.ndarray) -> list[np.ndarray]:
    """Per camera, the indices of the points it sees: in the image, in front, and within 3 % of the
    depth of the pixel they fall on (so occluded points are not observations)."""
    pts = torch.from_numpy(points).float()
    seen = []
    for i in range(len(cameras)):
        uv, z = cameras.project(pts, i)
        h, w = out["depth"].shape[1:3]
        u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        depth = out["depth"][i][v.clamp(0, h - 1), u.clamp(0, w - 1)]
        visible = inside & (depth > 0) & ((depth - z).abs() < 0.03 * z)
        seen.append(np.flatnonzero(visible.numpy()))
    return seen


def _write_colmap(root: Path, config: SyntheticSceneConfig, cameras: Cameras, out: dict[str, Tensor], points: np.ndarray, colours: np.ndarray) -> None:
    """images/ (RGB composited onto black: COLMAP data has no alpha, and black is the background
    recon's models assume for RGB data) and a COLMAP text model in sparse/0/ whose points keep
    the images that see them."""
    seen = _tracks(cameras, out, points)
    tracks: list[list[tuple[int, int]]] = [[] for _ in range(len(points))]
    images = {}
    for i in range(len(cameras)):
        name = f"frame_{i:05d}.png"
        rgb = out["rgb"][i] * out["alpha"][i][..., None]
        _save_png(root / "images" / name, (rgb.numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8))
        uv, _ = cameras.project(torch.from_numpy(points[seen[i]]).float(), i)
        for j, p in enumerate(seen[i]):
            tracks[p].append((i + 1, j))
        R = cameras.camera_to_worlds[i, :, :3].double().T
        t = -R @ cameras.camera_to_worlds[i, :, 3].double()
        images[i + 1] = ColmapImage(i + 1, matrix_to_quaternion(R).numpy(), t.numpy(), 1, name, uv.double().numpy(), seen[i].astype(np.int64) + 1)
    model_points = ColmapPoints(
        np.arange(1, len(points) + 1, dtype=np.int64), points.astype(np.float64), colours, np.zeros(len(points)),
        [np.array(tr, dtype=np.int32).reshape(-1, 2) for tr in tracks],
    )
    write_model(root / "sparse" / "0", {1: _colmap_camera(config, float(cameras.fx[0]))}, images, model_points, ext=".txt")


@torch_threads(1)
def _write_scene(root: Path, config: SyntheticSceneConfig) -> None:
    """Generate every file of the scene into the (empty) folder ``root``."""
    t0 = time.perf_counter()
    scene = SyntheticScene(config)
    colmap = config.layout == "colmap"
    for sub in ("images",) if colmap else ("images", "depth", "normals", "instances", "masks"):
        (root / sub).mkdir()
    cams = scene.cameras()
    order = [s for s in ("train", "test", "val") if s in cams]
    all_cams = Cameras.cat([cams[s] for s in order])
    out = scene.render(all_cams)

    n_train = len(cams["train"])
    train_out = {key: v[:n_train] for key, v in out.items()}
    pts, cols = _sparse_points(scene, cams["train"], train_out, config.num_points, config.seed)
    mesh = scene.mesh()
    mesh.export(root / "mesh.ply")
    np.save(root / "mesh_instances.npy", mesh.face_attributes["instance"].astype(np.int32))
    if colmap:
        _write_colmap(root, config, all_cams, out, pts, cols)
    else:
        _write_nerfstudio(root, config, cams, order, all_cams, out, pts, cols)
    _write_scene_json(root, config, scene)
    log.info("synthetic scene written to %s in %.1f s", root, time.perf_counter() - t0)


def _write_nerfstudio(
    root: Path, config: SyntheticSceneConfig, cams: dict[str, Cameras], order: list[str], all_cams: Cameras, out: dict[str, Tensor], pts: np.ndarray, cols: np.ndarray
) -> None:
    """Every per-frame file, sparse_pc.ply and transforms.json (layout in the module docstring)."""
    frames, split_files = [], {s: [] for s in ("train", "val", "test")}
    k = 0
    for s in order:
        for _ in range(len(cams[s])):
            name = f"frame_{k:05d}"
            _write_frame(root, name, out, k)
            frames.append(
                {
                    "file_path": f"images/{name}.png",
                    "transform_matrix": _c2w_opengl_4x4(all_cams.camera_to_worlds[k]),
                    "depth_file_path": f"depth/{name}.npy",
                    "mask_path": f"masks/{name}.png",
                    "normal_file_path": f"normals/{name}.npy",
                    "instance_file_path": f"instances/{name}.png",
                }
            )
            split_files[s].append(f"images/{name}.png")
            k += 1
    if not split_files["val"]:
        split_files["val"] = list(split_files["test"])
    trimesh.PointCloud(pts, colors=np.concatenate([cols, np.full((len(cols), 1), 255, np.uint8)], 1)).export(
        root / "sparse_pc.ply"
    )
    fx = float(all_cams.fx[0])
    transforms = {
        "camera_model": config.camera_model,
        "fl_x": fx,
        "fl_y": float(all_cams.fy[0]),
        "cx": float(all_cams.cx[0]),
        "cy": float(all_cams.cy[0]),
        "w": config.width,
        "h": config.height,
        **_lens_keys(config),
        "ply_file_path": "sparse_pc.ply",
        "mesh_file_path": "mesh.ply",  # recon extension: ground-truth mesh, same frame as poses
        "normal_frame": "world",  # recon extension: normals/*.npy are world-space (not camera-space)
        "train_filenames": split_files["train"],
        "val_filenames": split_files["val"],
        "test_filenames": split_files["test"],
        "frames": frames,
    }
    (root / "transforms.json").write_text(json.dumps(transforms, indent=2))


def _write_scene_json(root: Path, config: SyntheticSceneConfig, scene: SyntheticScene) -> None:
    meta = {
        "generator_version": GENERATOR_VERSION,
        "config_hash": config_hash(config),
        "config": asdict(config),
        "up": [0.0, 0.0, 1.0],
        "ground_top_z": GROUND_TOP_Z if config.ground else None,
        "scene_aabb": scene.aabb.tolist(),
        "light": {"direction": scene.light.tolist(), "ambient": _AMBIENT},
        "depth": "z-depth along the OpenCV camera z axis, world units, 0 = miss (.npy float32)",
        "normals": "world-space unit normals, zeros on miss (.npy float32 [H, W, 3])",
        "instances": {"0": "background", **{str(o.instance_id): o.name for o in scene.objects}},
        "objects": [
            {
                "name": o.name,
                "instance_id": o.instance_id,
                "shape": o.spec.sdf.__name__.removeprefix("_sdf_"),
                "params": o.spec.params,
                "position": list(o.spec.position),
                "yaw_degrees": o.spec.yaw_degrees,
                "rotation": o.rotation.tolist(),
                "world_aabb": o.world_bounds().tolist(),
            }
            for o in scene.objects
        ],
    }
    (root / "scene.json").write_text(json.dumps(meta, indent=2))


def generate_scene(out_dir: str | Path, config: SyntheticSceneConfig | None = None, overwrite: bool = False) -> Path:
    """Write the scene of ``config`` to ``out_dir`` atomically and return ``out_dir``.

    Everything is written into a hidden temporary sibling folder that is renamed into place at the
    end, so an interrupted or failing generation never leaves a partial scene behind. An existing
    non-empty ``out_dir`` is an error unless ``overwrite``.
    """
    config = config or SyntheticSceneConfig()
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_scene(tmp, config)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing ``out_dir`` is moved aside first, then deleted."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    trash = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out_dir, trash)
    os.replace(tmp, out_dir)
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink()


def cache_root() -> Path:
    """``$RECON_CACHE_DIR`` (default ``~/.cache/recon``)."""
    return Path(os.environ.get("RECON_CACHE_DIR") or "~/.cache/recon").expanduser()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (no-op where fcntl is missing; the atomic
    rename still keeps concurrent writers from corrupting the scene)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def default_scene_path(config: SyntheticSceneConfig | None = None) -> Path:
    """Cached scene folder ``<cache>/synthetic/<config hash>/``, generated on first use."""
    config = config or SyntheticSceneConfig()
    root = cache_root() / "synthetic"
    path = root / config_hash(config)
    if (path / "transforms.json").is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    locks = cache_root() / "locks"  # kept out of synthetic/ so that holds only scene folders
    locks.mkdir(parents=True, exist_ok=True)
    with _file_lock(locks / f"synthetic-{path.name}.lock"):
        # Re-check under the lock: another process may have finished it while we waited.
        if not (path / "transforms.json").is_file():
            # Holding the lock, any temporary folder of this scene was left by a killed process.
            for stale in root.glob(f".{path.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            log.info("generating the default synthetic scene into %s", path)
            generate_scene(path, config, overwrite=True)
    return path


# -- CLI ---------------------------------------------------------------------------------------


@dataclass
class GenerateArgs:
    """Generate a synthetic scene (nerfstudio layout with exact depth/normal/instance/mesh)."""

    out_dir: tyro.conf.Positional[Path]
    """Folder to write (must be absent or empty unless --overwrite)."""
    scene: Annotated[SyntheticSceneConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=SyntheticSceneConfig)
    size: int | None = None
    """Shortcut: square images of this size (overrides --width/--height)."""
    overwrite: bool = False
    """Replace an existing scene in OUT_DIR."""


def main(argv: list[str] | None = None) -> Path:
    """``python -m data.synthetic OUT_DIR [--size N] [--<config field> ...] [--overwrite]``."""
    args = tyro.cli(GenerateArgs, args=argv)
    config = args.scene
    if args.size is not None:
        config = replace(config, width=args.size, height=args.size)
    t0 = time.perf_counter()
    out = generate_scene(args.out_dir, config, overwrite=args.overwrite)
    print(f"wrote {out} ({config.width}x{config.height}, hash {config_hash(config)}) in {time.perf_counter() - t0:.1f} s")
    return out


if __name__ == "__main__":
    main()
