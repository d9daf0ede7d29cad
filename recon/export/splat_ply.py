"""Gaussian splats as the standard 3DGS PLY file, the interchange format of splat viewers.

The layout is the one the reference implementation of 3D Gaussian Splatting writes (Kerbl et al.,
"3D Gaussian Splatting for Real-Time Radiance Field Rendering", SIGGRAPH 2023;
graphdeco-inria/gaussian-splatting, ``GaussianModel.save_ply``), which SuperSplat, PlayCanvas,
nerfstudio and gsplat read and write. One ``vertex`` element, binary little endian, every property
a ``float`` (float32), in this order::

    x y z                      means
    nx ny nz                   zeros (kept because Inria's and nerfstudio's files have them)
    f_dc_0 f_dc_1 f_dc_2       SH degree-0 coefficient, R G B
    f_rest_0 .. f_rest_{M-1}   the other K-1 SH coefficients, M = 3 (K-1), channel-major:
                               all R coefficients, then all G, then all B
    opacity                    logit (before the sigmoid)
    scale_0 scale_1 scale_2    log scales (before the exp)
    rot_0 rot_1 rot_2 rot_3    quaternion w x y z, as stored (not normalised)

K = (degree + 1)^2, so M is 0, 9, 24 or 45 for degrees 0 to 3.

The reader also takes nerfstudio's splatfacto exports (``ns-export gaussian-splat``): the same
properties in the same order after two header comments, or, with ``--ply-color-mode rgb``,
``red green blue`` (uchar) in place of ``f_dc_*`` and no ``f_rest_*``: those colours become the
degree-0 coefficient ``(c / 255 - 0.5) / C0`` (C0 = 0.2820947917738781, the SH degree-0 constant).

In memory the splats follow gsplat's parameter convention, shared by the whole Gaussian backend:
a mapping of tensors

* ``means [N, 3]``, ``scales [N, 3]`` (log), ``quats [N, 4]`` (w x y z, unnormalised),
* ``opacities [N]`` (logits), ``sh0 [N, 1, 3]``, ``shN [N, K-1, 3]`` (K-1 may be 0).

``shN`` is coefficient-major ([N, K-1, 3]); the file is channel-major, so the writer transposes
to [N, 3, K-1] before flattening, exactly as Inria's ``save_ply`` transposes ``features_rest``.
Writing then reading float32 parameters gives them back bit for bit.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from recon.errors import ReconError, check_declared_size
from recon.atomic import atomic_write

__all__ = [
    "MIN_VISIBLE_ALPHA",
    "SPLAT_PARAM_KEYS",
    "SplatPlyError",
    "check_ply_counts",
    "read_splat_ply",
    "splat_ply_properties",
    "write_splat_ply",
]

SPLAT_PARAM_KEYS: tuple[str, ...] = ("means", "scales", "quats", "opacities", "sh0", "shN")
MIN_VISIBLE_ALPHA: float = 1.0 / 255.0
"""Gaussians whose opacity is below this never reach the compositor (gsplat skips alpha < 1/255)."""

# sigmoid(o) < 1/255  <=>  o < logit(1/255) = -ln(254) ~ -5.5373, compared in float64 so that the
# rule does not depend on float32 rounding inside a sigmoid.
_MIN_VISIBLE_LOGIT: float = -math.log(254.0)

_MAX_HEADER_BYTES = 1 << 20
_PLY_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": None}
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip
_DC = ("f_dc_0", "f_dc_1", "f_dc_2")
_RGB = ("red", "green", "blue")  # nerfstudio's --ply-color-mode rgb, instead of _DC
_SH_C0 = 0.28209479177387814
_F_REST = re.compile(r"f_rest_(\d+)")


class SplatPlyError(ReconError, ValueError):
    """A file that is not a readable standard 3DGS splat PLY, or a destination that is not ``.ply``."""


def splat_ply_properties(num_rest_coeffs: int) -> list[str]:
    """The vertex property names, in file order, for ``num_rest_coeffs`` = K-1 SH coefficients."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * num_rest_coeffs)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def _float32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _param_arrays(params: Mapping) -> tuple[dict[str, np.ndarray], int]:
    """Validate the parameter shapes; returns float32 arrays (opacities [N], shN [N, K-1, 3]) and K."""
    missing = [k for k in SPLAT_PARAM_KEYS[:5] if k not in params]
    if missing:
        raise ValueError(f"splat parameters are missing {', '.join(missing)}")
    a = {k: _float32(params[k]) for k in SPLAT_PARAM_KEYS[:5]}
    n = a["means"].shape[0] if a["means"].ndim == 2 else -1
    expected = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "sh0": (n, 1, 3)}
    for k, shape in expected.items():
        if a[k].shape != shape:
            want = "[" + ", ".join("N" if s == n else str(s) for s in shape) + "]"
            raise ValueError(f"splat parameter {k} must be {want}, got {list(a[k].shape)} (N = {n} from means)")
    if a["opacities"].shape == (n, 1):  # the Inria-style [N, 1] is unambiguous, accept it
        a["opacities"] = a["opacities"].reshape(n)
    if a["opacities"].shape != (n,):
        raise ValueError(f"splat parameter opacities must be [N], got {list(a['opacities'].shape)} (N = {n})")
    shn = _float32(params["shN"]) if params.get("shN") is not None else np.zeros((n, 0, 3), np.float32)
    k = shn.shape[1] + 1 if shn.ndim == 3 else -1
    if shn.ndim != 3 or shn.shape[0] != n or shn.shape[2] != 3 or math.isqrt(k) ** 2 != k:
        raise ValueError(
            f"splat parameter shN must be [N, K-1, 3] with K = (degree+1)^2 (K-1 in 0, 3, 8, 15, ...), "
            f"got {list(shn.shape)} (N = {n})"
        )
    a["shN"] = shn
    return a, k


def write_splat_ply(path: str | Path, params: Mapping, drop_invisible: bool = True) -> tuple[Path, int]:
    """Write Gaussian splats as a standard 3DGS PLY (see the module docstring), atomically.

    params: gsplat-convention mapping (``means, scales, quats, opacities, sh0`` and optionally
        ``shN``; missing ``shN`` means degree 0); torch tensors or numpy arrays, stored as float32.
        Extra keys are ignored. ``opacities`` may also be [N, 1].
    drop_invisible: also drop Gaussians with sigmoid(opacity) < 1/255 (opacity logit < -ln 254),
        which no renderer draws; nerfstudio's exporter applies the same rule.

    Gaussians with any NaN or Inf attribute are always dropped. Returns ``(path, kept_count)``.
    Raises ValueError for inconsistent shapes and :class:`SplatPlyError` for a non-``.ply`` path.
    """
    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise SplatPlyError("a Gaussian-splat file must have the suffix .ply", path)
    a, k = _param_arrays(params)
    n = a["means"].shape[0]
    columns = [
        a["means"],
        np.zeros((n, 3), np.float32),
        a["sh0"].reshape(n, 3),
        a["shN"].transpose(0, 2, 1).reshape(n, 3 * (k - 1)),  # channel-major, like Inria's save_ply
        a["opacities"].reshape(n, 1),
        a["scales"],
        a["quats"],
    ]
    block = np.concatenate(columns, axis=1).astype("<f4", copy=False)
    keep = np.isfinite(block).all(axis=1)
    if drop_invisible:
        keep &= a["opacities"].astype(np.float64) >= _MIN_VISIBLE_LOGIT
    block = np.ascontiguousarray(block[keep])

    names = splat_ply_properties(k - 1)
    # All properties are little-endian float32, so the [N, F] block viewed as one record per row is
    # byte for byte the PLY body.
    table = block.view(np.dtype([(name, "<f4") for name in names])).reshape(-1)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(table)}"]
    header += [f"property float {name}" for name in names]
    header += ["end_header"]
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        table.tofile(f)
    return path, len(table)


def _parse_header(
    f, path: Path, error: type[SplatPlyError] = SplatPlyError, comments: list[str] | None = None
) -> tuple[str, list[tuple[str, int, list[tuple[str, str | None, str]]]]]:
    """Returns (format, [(element, count, [(property, type, list count type or None)])]); problems
    raise ``error``; the text of ``comment`` lines is appended to ``comments`` when given (other PLY
    formats, e.g. :mod:`recon.export.convex_ply`, mark themselves with one)."""
    first = f.readline(16).rstrip(b"\r\n")
    if first != b"ply":
        raise error("not a PLY file (it does not start with 'ply')", path)
    fmt = None
    elements: list = []
    read = len(first)
    while True:
        line = f.readline(_MAX_HEADER_BYTES)
        read += len(line)
        if read >= _MAX_HEADER_BYTES:
            raise error("PLY header longer than 1 MiB (not a PLY file?)", path)
        if not line.endswith(b"\n"):  # end of file in the middle of the header
            raise error("truncated PLY header (no end_header)", path)
        try:
            words = line.decode("ascii").split()
        except UnicodeDecodeError:
            raise error("PLY header contains non-ASCII bytes", path) from None
        if words and words[0] == "comment" and comments is not None:
            comments.append(" ".join(words[1:]))
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "end_header":
            break
        if key == "format" and len(words) == 3 and words[1] in _FORMATS:
            fmt = words[1]
        elif key == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif key == "property" and elements and len(words) == 3 and words[1] in _PLY_TYPES:
            elements[-1][2].append((words[2], _PLY_TYPES[words[1]], None))
        elif key == "property" and elements and len(words) == 5 and words[1] == "list":
            elements[-1][2].append((words[4], words[3], words[2]))
        else:
            raise error(f"malformed PLY header line {line.decode('ascii').strip()[:80]!r}", path)
    if fmt is None:
        raise error("PLY header has no supported format line", path)
    return fmt, elements


def check_ply_counts(path: str | Path, error: type[ReconError] = ReconError) -> None:
    """Refuse a PLY file (any PLY: meshes and point clouds too, before another library reads it)
    whose header declares more records than its body can hold: each record takes at least its
    fixed-size properties (binary) or two characters a property (ascii). A file that does not
    start with ``ply`` is left to its reader."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(3) != b"ply":
            return
        f.seek(0)
        fmt, elements = _parse_header(f, path, error)
        available = os.fstat(f.fileno()).st_size - f.tell()
    needed = 0
    for name, count, props in elements:
        if fmt == "ascii":
            record = 2 * len(props)
        else:  # a list property takes at least its count
            record = sum(np.dtype(t if list_type is None else _PLY_TYPES.get(list_type, "u1")).itemsize for _, t, list_type in props)
        needed += count * max(record, 1)
        check_declared_size(needed, available, f"{count} {_plural(name)}", path, error)


def _plural(element: str) -> str:
    return "vertices" if element == "vertex" else f"{element} records"


def _read_binary(
    f, path: Path, endian: str, elements, vertex_index: int, error: type[SplatPlyError] = SplatPlyError
) -> Mapping[str, np.ndarray]:
    """The records of element ``vertex_index`` (any name; elements before it are skipped)."""
    offset = 0
    target, n, props = elements[vertex_index]
    for name, count, before in elements[:vertex_index]:
        if any(list_type is not None for _, _, list_type in before):
            raise error(f"cannot skip element '{name}' with list properties before '{target}'", path)
        offset += count * sum(np.dtype(t).itemsize for _, t, _ in before)
    dtype = np.dtype([(p, endian + t) for p, t, _ in props])
    here, size = f.tell(), os.fstat(f.fileno()).st_size
    check_declared_size(offset + n * max(dtype.itemsize, 1), size - here, f"{n} {_plural(target)}", path, error)
    f.seek(offset, 1)
    return np.frombuffer(f.read(n * dtype.itemsize), dtype=dtype, count=n)


def _read_ascii(f, path: Path, elements, vertex_index: int, error: type[SplatPlyError] = SplatPlyError) -> Mapping[str, np.ndarray]:
    """The records of element ``vertex_index`` of an ascii PLY, as float64 columns."""
    lines = f.read().decode("ascii", errors="replace").splitlines()
    start = sum(count for _, count, _ in elements[:vertex_index])  # ascii: one line per record
    target, n, props = elements[vertex_index]
    rows = [line.split() for line in lines[start : start + n]]
    if len(rows) < n:
        raise error(f"truncated: {n} {_plural(target)} declared, {len(rows)} present", path)
    bad = next((i for i, r in enumerate(rows) if len(r) != len(props)), None)
    if bad is not None:
        raise error(f"{target} {bad} has {len(rows[bad])} values, the header declares {len(props)}", path)
    try:
        values = np.array(rows, dtype=np.float64).reshape(n, len(props))
    except ValueError as e:
        raise error(f"unreadable ascii {target} value ({e})", path) from None
    return {p: values[:, i] for i, (p, _, _) in enumerate(props)}


def read_splat_ply(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a standard 3DGS PLY into gsplat-convention float32 tensors (see the module docstring).

    Accepts binary (little or big endian) and ascii files, properties in any order and of any
    numeric type, extra properties (ignored) and any valid number of ``f_rest_*`` properties: M of
    them give K = M/3 + 1 SH coefficients, so M must be 3 ((degree+1)^2 - 1).
    Returns ``{"means", "scales", "quats", "opacities", "sh0", "shN"}`` with shapes
    [N,3], [N,3], [N,4], [N], [N,1,3], [N,K-1,3].
    Raises :class:`SplatPlyError` (a ValueError), one line naming the file and the problem, for a
    file that is not a PLY, lacks a property of the layout, or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise SplatPlyError("no such file", path)
    with open(path, "rb") as f:
        fmt, elements = _parse_header(f, path)
        vertex_index = next((i for i, (name, _, _) in enumerate(elements) if name == "vertex"), None)
        if vertex_index is None:
            raise SplatPlyError("PLY has no 'vertex' element", path)
        props = elements[vertex_index][2]
        if any(list_type is not None for _, _, list_type in props):
            raise SplatPlyError("the 'vertex' element has list properties; splat files have none", path)
        names = [p for p, _, _ in props]
        if len(set(names)) != len(names):
            raise SplatPlyError("the 'vertex' element declares a property twice", path)
        rgb_colours = not any(p in names for p in _DC) and all(p in names for p in _RGB)
        missing = [p for p in _REQUIRED if p not in names and not (rgb_colours and p in _DC)]
        if missing:
            raise SplatPlyError(f"not a Gaussian-splat PLY: missing vertex properties {', '.join(missing)}", path)
        rest_ids = sorted(int(m.group(1)) for p in names if (m := _F_REST.fullmatch(p)))
        m = len(rest_ids)
        k = m // 3 + 1
        if rest_ids != list(range(m)):
            raise SplatPlyError(f"f_rest properties are not numbered 0 .. {m - 1} without gaps", path)
        if m % 3 or math.isqrt(k) ** 2 != k:
            raise SplatPlyError(
                f"{m} f_rest properties; a standard file has 3((degree+1)^2 - 1) of them: 0, 9, 24, 45, ...", path
            )
        if fmt == "ascii":
            table = _read_ascii(f, path, elements, vertex_index)
        else:
            table = _read_binary(f, path, _FORMATS[fmt], elements, vertex_index)

    def cols(*names: str) -> np.ndarray:
        return np.stack([np.asarray(table[p], dtype=np.float32) for p in names], axis=-1)

    n = len(table["x"])
    rest = cols(*(f"f_rest_{i}" for i in range(m))) if m else np.zeros((n, 0), np.float32)
    arrays = {
        "means": cols("x", "y", "z"),
        "scales": cols("scale_0", "scale_1", "scale_2"),
        "quats": cols("rot_0", "rot_1", "rot_2", "rot_3"),
        "opacities": cols("opacity").reshape(n),
        "sh0": (cols(*_RGB) / 255.0 - 0.5) / _SH_C0 if rgb_colours else cols(*_DC),
        "shN": rest.reshape(n, 3, k - 1).transpose(0, 2, 1),  # channel-major file -> [N, K-1, 3]
    }
    arrays["sh0"] = arrays["sh0"].astype(np.float32).reshape(n, 1, 3)
    return {key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in arrays.items()}
