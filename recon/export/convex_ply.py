"""Smooth convexes (3D Convex Splatting) as a lossless PLY file, and the similarity transform of their parameters.

3D Convex Splatting (Held et al., "3D Convex Splatting: Radiance Field Rendering with 3D Smooth
Convexes", CVPR 2025) has no interchange format (the official code saves torch state dicts), so
this layout is ours, modelled on the standard 3DGS PLY (:mod:`recon.export.splat_ply`). One
``convex`` element (not ``vertex``, so that splat viewers do not take the records for Gaussians),
binary little endian, every property a ``float`` (float32), raw parameter values, in this order::

    p0_x p0_y p0_z .. p{K-1}_x p{K-1}_y p{K-1}_z   the K points (3 <= K <= 8)
    delta sigma                                     log smoothness, log sharpness (before the exp)
    opacity mask                                    logits (before the sigmoid)
    f_dc_0 f_dc_1 f_dc_2                            SH degree-0 coefficient, R G B
    f_rest_0 .. f_rest_{M-1}                        the other SH coefficients, channel-major as in 3DGS PLYs

and a header comment that marks the file and carries what rendering needs besides the parameters::

    comment recon-3dcs K=6 scaling_exponent=1.0 mask_threshold=0.01 frame=input

(``scaling_exponent`` p: the indicator's perspective-aware scaling d^p; ``mask_threshold``: the
straight-through mask is 1 where sigmoid(mask) exceeds it; ``frame``: informative, "input" for the
input poses' coordinates or "normalised" for recon's internal frame). Writing then reading float32
parameters gives them back bit for bit.

Scale. The indicator's edge functions are in (pixel) units that do not change when the world and
its cameras are scaled together, but the depth factor s = d^p does: under x -> lambda x the image
stays the same only when delta and sigma are divided by lambda^p, so their logs shift by
-p log(lambda) (:func:`transform_convexes`). Exports in the input poses' frame apply this.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recon.atomic import atomic_write
from recon.export.splat_ply import _FORMATS, SplatPlyError, _float32, _parse_header, _read_ascii, _read_binary, splat_ply_properties
from recon.render.convex import MAX_POINTS
from recon.render.gaussians.transform import move_points, proper_rotation, rotate_colors

__all__ = [
    "CONVEX_PARAM_KEYS", "ConvexPly", "ConvexPlyError", "convex_ply_properties", "read_convex_ply", "transform_convexes",
    "write_convex_ply",
]

CONVEX_PARAM_KEYS: tuple[str, ...] = ("points", "delta", "sigma", "opacities", "mask", "sh0", "shN")
"""The raw parameters: points [N, K, 3], delta [N] and sigma [N] (logs), opacities [N] and mask [N]
(logits), sh0 [N, 1, 3], shN [N, (d+1)^2 - 1, 3] (the layout of ``ConvexSplatModel.params``)."""
MARKER = "recon-3dcs"
ELEMENT = "convex"
MIN_POINTS = 3
_SETTING = re.compile(r"(\w+)=(\S+)")
_POINT = re.compile(r"p(\d+)_[xyz]")


class ConvexPlyError(SplatPlyError):
    """A file that is not a readable 3DCS convex PLY (one line naming the file and the problem)."""


@dataclass(frozen=True)
class ConvexPly:
    """What a convex PLY holds: ``params`` (:data:`CONVEX_PARAM_KEYS`, float32) and the render settings."""

    params: dict[str, Tensor]
    scaling_exponent: float
    mask_threshold: float
    frame: str

    @property
    def num_points(self) -> int:
        return int(self.params["points"].shape[1])

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.params["shN"].shape[1] + 1) - 1


def convex_ply_properties(num_points: int, num_rest_coeffs: int) -> list[str]:
    """The ``convex`` property names, in file order, for K points and K_sh - 1 rest SH coefficients."""
    names = [f"p{k}_{axis}" for k in range(num_points) for axis in "xyz"]
    names += ["delta", "sigma", "opacity", "mask"]
    return names + splat_ply_properties(num_rest_coeffs)[6 : 9 + 3 * num_rest_coeffs]  # f_dc_*, f_rest_*


def _param_arrays(params: Mapping) -> dict[str, np.ndarray]:
    missing = [k for k in CONVEX_PARAM_KEYS if k not in params]
    if missing:
        raise ValueError(f"convex parameters are missing {', '.join(missing)}")
    a = {k: _float32(params[k]) for k in CONVEX_PARAM_KEYS}
    pts = a["points"]
    if pts.ndim != 3 or pts.shape[2] != 3 or not MIN_POINTS <= pts.shape[1] <= MAX_POINTS:
        raise ValueError(f"convex points must be [N, K, 3] with K in {MIN_POINTS}..{MAX_POINTS}, got {list(pts.shape)}")
    n = pts.shape[0]
    shn = a["shN"]
    if shn.ndim != 3 or shn.shape[0] != n or shn.shape[2] != 3 or math.isqrt(shn.shape[1] + 1) ** 2 != shn.shape[1] + 1:
        raise ValueError(f"convex parameter shN must be [N, (d+1)^2 - 1, 3], got {list(shn.shape)} (N = {n})")
    for key, shape in {"delta": (n,), "sigma": (n,), "opacities": (n,), "mask": (n,), "sh0": (n, 1, 3)}.items():
        if a[key].shape != shape:
            raise ValueError(f"convex parameter {key} must be {list(shape)}, got {list(a[key].shape)}")
    return a


def write_convex_ply(path: str | Path, params: Mapping, *, scaling_exponent: float, mask_threshold: float, frame: str = "input") -> Path:
    """Write every convex's raw parameters (:data:`CONVEX_PARAM_KEYS`, torch or numpy, stored as
    float32) as a convex PLY (module docstring), atomically; nothing is dropped. Returns the path.

    Raises ValueError for inconsistent shapes and :class:`ConvexPlyError` for a non-``.ply`` path."""
    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise ConvexPlyError("a convex file must have the suffix .ply", path)
    a = _param_arrays(params)
    n, k = a["points"].shape[:2]
    rest = a["shN"].shape[1]
    columns = [
        a["points"].reshape(n, 3 * k), a["delta"][:, None], a["sigma"][:, None], a["opacities"][:, None], a["mask"][:, None],
        a["sh0"].reshape(n, 3), a["shN"].transpose(0, 2, 1).reshape(n, 3 * rest),  # channel-major, as 3DGS PLYs
    ]
    block = np.ascontiguousarray(np.concatenate(columns, axis=1).astype("<f4", copy=False))
    header = [
        "ply", "format binary_little_endian 1.0",
        f"comment {MARKER} K={k} scaling_exponent={float(scaling_exponent)!r} mask_threshold={float(mask_threshold)!r} frame={frame}",
        "comment 3D Convex Splatting (Held et al. 2025): points p*_xyz, log delta, log sigma, opacity and mask logits, SH as in 3DGS PLYs",
        f"element {ELEMENT} {n}", *(f"property float {name}" for name in convex_ply_properties(k, rest)), "end_header",
    ]
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(block.tobytes())
    return path


def _settings(comments: list[str], elements, path: Path) -> dict[str, str]:
    """The key=value pairs of the marker comment; a one-line error when the file is not a 3DCS export."""
    marked = [c for c in comments if c.split()[:1] == [MARKER]]
    if not marked:
        names = {name for name, _, _ in elements}
        vertex = next((props for name, _, props in elements if name == "vertex"), [])
        if {"x", "y", "z", "f_dc_0", "opacity", "scale_0", "rot_0"} <= {p for p, _, _ in vertex}:
            why = "it is a standard 3DGS splat PLY (open it with ns-viewer --splat)"
        elif "face" in names:
            why = "it is a mesh PLY (open it with ns-viewer --mesh)"
        else:
            why = f"no '{MARKER}' header comment"
        raise ConvexPlyError(f"not a 3DCS export: {why}", path)
    settings = dict(_SETTING.findall(marked[0]))
    missing = [key for key in ("K", "scaling_exponent", "mask_threshold") if key not in settings]
    if missing:
        raise ConvexPlyError(f"not a 3DCS export: its '{MARKER}' comment lacks {', '.join(missing)}", path)
    return settings


def _number(settings: dict[str, str], key: str, kind, path: Path):
    try:
        value = kind(settings[key])
    except ValueError:
        raise ConvexPlyError(f"{key}={settings[key]!r} in the '{MARKER}' comment is not a number", path) from None
    if not math.isfinite(value):
        raise ConvexPlyError(f"{key}={settings[key]} in the '{MARKER}' comment is not finite", path)
    return value


def read_convex_ply(path: str | Path) -> ConvexPly:
    """Read a convex PLY written by :func:`write_convex_ply` (binary or ascii, properties in any
    order and of any numeric type, extra properties ignored) into float32 tensors.

    Raises :class:`ConvexPlyError` (a :class:`~recon.export.splat_ply.SplatPlyError`, so a
    :class:`~recon.errors.ReconError`: one line naming the file) for a file that is not a PLY, a
    PLY that is not a 3DCS export (a standard splat PLY, a mesh...), K outside 3..8, missing
    properties, or truncated data.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvexPlyError("no such file", path)
    comments: list[str] = []
    with open(path, "rb") as f:
        fmt, elements = _parse_header(f, path, ConvexPlyError, comments)
        settings = _settings(comments, elements, path)
        k = _number(settings, "K", int, path)
        if not MIN_POINTS <= k <= MAX_POINTS:
            raise ConvexPlyError(f"K={k} points per convex; 3DCS convexes have {MIN_POINTS} to {MAX_POINTS}", path)
        scaling_exponent = _number(settings, "scaling_exponent", float, path)
        mask_threshold = _number(settings, "mask_threshold", float, path)
        index = next((i for i, (name, _, _) in enumerate(elements) if name == ELEMENT), None)
        if index is None:
            raise ConvexPlyError(f"3DCS PLY has no '{ELEMENT}' element", path)
        props = elements[index][2]
        if any(list_type is not None for _, _, list_type in props):
            raise ConvexPlyError(f"the '{ELEMENT}' element has list properties; convex files have none", path)
        names = [p for p, _, _ in props]
        if len(set(names)) != len(names):
            raise ConvexPlyError(f"the '{ELEMENT}' element declares a property twice", path)
        point_ids = {int(m.group(1)) for p in names if (m := _POINT.fullmatch(p))}
        if point_ids - set(range(k)):
            raise ConvexPlyError(f"K={k} in the header, but the file has point properties up to p{max(point_ids)}", path)
        rest = sum(1 for p in names if re.fullmatch(r"f_rest_\d+", p))
        if rest % 3 or math.isqrt(rest // 3 + 1) ** 2 != rest // 3 + 1:
            raise ConvexPlyError(f"{rest} f_rest properties; a file has 3((degree+1)^2 - 1) of them: 0, 9, 24, 45", path)
        missing = [p for p in convex_ply_properties(k, rest // 3) if p not in names]
        if missing:
            raise ConvexPlyError(f"missing {ELEMENT} properties {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}", path)
        if fmt == "ascii":
            table = _read_ascii(f, path, elements, index, ConvexPlyError)
        else:
            table = _read_binary(f, path, _FORMATS[fmt], elements, index, ConvexPlyError)

    def cols(*keys: str) -> np.ndarray:
        return np.stack([np.asarray(table[p], dtype=np.float32) for p in keys], axis=-1)

    n, m = elements[index][1], rest // 3
    arrays = {
        "points": cols(*(f"p{i}_{axis}" for i in range(k) for axis in "xyz")).reshape(n, k, 3),
        "delta": cols("delta").reshape(n),
        "sigma": cols("sigma").reshape(n),
        "opacities": cols("opacity").reshape(n),
        "mask": cols("mask").reshape(n),
        "sh0": cols("f_dc_0", "f_dc_1", "f_dc_2").reshape(n, 1, 3),
        "shN": (cols(*(f"f_rest_{i}" for i in range(rest))) if rest else np.zeros((n, 0), np.float32)).reshape(n, 3, m).transpose(0, 2, 1),
    }
    params = {key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in arrays.items()}
    return ConvexPly(params, scaling_exponent, mask_threshold, settings.get("frame", "unknown"))


def transform_convexes(params: Mapping[str, Tensor], rotation: Tensor, translation: Tensor, scale: float, scaling_exponent: float) -> dict[str, Tensor]:
    """Apply ``x -> scale * (R x + t)`` to convexes (:data:`CONVEX_PARAM_KEYS`) so that each renders
    the same from the correspondingly moved camera: the points move, log delta and log sigma shift
    by -p log(scale) (module docstring), the SH colours turn with R; opacities and masks stay."""
    rot = proper_rotation(rotation, "transform_convexes")
    out = dict(params)
    out["points"] = move_points(params["points"], rot, translation, scale)
    shift = -scaling_exponent * math.log(scale)
    out["delta"] = params["delta"] + shift
    out["sigma"] = params["sigma"] + shift
    out["sh0"], out["shN"] = rotate_colors(params["sh0"], params["shN"], rot)
    return out
