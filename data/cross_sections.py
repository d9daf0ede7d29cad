"""Planar cross-sections: the OReX ``.csl`` format, reading, writing, and slicing meshes into it.

A cross-section is a plane plus closed contours of the solid's boundary on it; OReX (Sawdayee,
Vaxman, Bermano, CVPR 2023) learns an inside/outside field from a handful of such planes. This
module is the data side only: :func:`read_csl` / :func:`write_csl` for the file format,
:func:`slice_mesh` to make cross-sections from a watertight mesh (synthetic tests, new inputs),
and the 2-D helpers (:meth:`CrossSection.to_2d`, :meth:`CrossSection.contains`) that the samplers
build on.

The ``.csl`` format
-------------------
Whitespace-separated tokens; line breaks carry no meaning to this reader and blank lines are
ignored; there are no comments. Layout (the text after ``#`` annotates this description, it is
not part of the format)::

    CSLC                                  # header
    <n_planes> <n_labels>
    # then, for each plane p = 1 .. n_planes:
    <p> <n_verts> <n_components> A B C D  # plane A x + B y + C z + D = 0
    <x> <y> <z>                           # n_verts times: the plane's vertices
    <n>[h<parent>] <label> <i_1> .. <i_n> # n_components times: one closed contour

* A contour lists ``n`` 0-based indices into *its own plane's* vertex list; the closing edge
  ``i_n -> i_1`` is implicit.
* A hole is written ``<n>h<parent>`` (e.g. ``40h0``): ``parent`` is the 0-based index, within
  the same plane, of the component that encloses it. Outer contours run counter-clockwise and
  holes clockwise, seen from the side the plane normal points to.
* Labels: the shipped OReX files use 1 for outer contours and 2 for holes (``n_labels`` = 2);
  multi-material files (Abdomen) have more labels, but OReX treats every non-hole contour as
  "inside", and so does :meth:`CrossSection.contains`. Labels are kept as read, not validated
  against ``n_labels`` (the shipped files write label 2 with ``n_labels`` = 2).
* A plane with 0 vertices (and 0 components) is accepted and then says "nothing of the solid on
  this plane"; its plane comes from A, B, C, D. OReX's own reader rejects such planes and its
  writer omits them, so :func:`slice_mesh` skips empty planes unless asked to keep them.

Robustness, from the quirks of the files OReX ships (haimsaw/OReX, ``Data/``):
A, B, C, D are **not trusted**. Some files have D with the wrong sign or non-unit normals, so
every non-empty plane is re-fitted to its vertices (SVD about the vertex centroid). The given
A, B, C only choose the sign of the fitted normal (when they are not degenerate: non-zero and not
nearly parallel to the plane); otherwise the normal's largest component is made positive. A plane
whose vertices deviate from the fitted plane by more than ``1e-3`` of their extent (bounding-box
diagonal) is an error rather than a warning: such a file is garbled (swapped coordinates,
vertices of two planes mixed), and silently flattening it would train on wrong contours.
Vertices are kept as read (not projected onto the fitted plane), so they can be compared with a
reference mesh in the file's own units.

Malformed files raise :class:`recon.errors.DataError` with the file path and ``line N`` of the
offending token: wrong header, truncation (reported at the last line that holds a token),
non-numeric or non-finite numbers, vertex indices out of range, contours with fewer than 3
vertices, hole parents that do not exist, planes that are not planar or are degenerate, and
extra tokens after the declared number of planes (a plane-count mismatch).

Units and normalisation
-----------------------
Files come in their own units (the heart is mm-scale, ``eight_15`` is already in [-1, 1]).
:meth:`CrossSections.normalized` applies OReX's rule (its 2025 commit ``089db1f7``): subtract the
mean of all vertices, then divide by ``1.1 * max|v - mean|`` when that maximum is >= 1 (else
keep the scale 1). The mapping is kept in :attr:`CrossSections.normalization`,
``x_normalised = (x - center) / scale``; :meth:`CrossSections.to_input` undoes it. Centring
shifts results relative to reference meshes (the shipped STLs are in the raw CSL coordinates),
so evaluation must map predictions back with ``to_input`` first.

Polygon test
------------
:meth:`CrossSection.contains` is OReX's rule: inside = (union of outer contours) minus (union of
holes), each contour tested with the even-odd crossing-number rule. An island inside a hole
(depth 2) therefore counts as outside, as in OReX (its code notes the same limitation).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import trimesh
import tyro

from recon.errors import DataError
from recon.atomic import atomic_write

__all__ = [
    "Contour",
    "CrossSection",
    "CrossSections",
    "Normalization",
    "axis_planes",
    "random_planes",
    "read_csl",
    "slice_mesh",
    "thin_cylinders",
    "write_csl",
]

log = logging.getLogger(__name__)

HEADER = "CSLC"
OUTER_LABEL = 1
HOLE_LABEL = 2
# Coplanarity: largest vertex distance from the fitted plane, relative to the plane's extent.
COPLANAR_RTOL = 1e-3
# Vertices whose second singular value is below this fraction of the first lie on a line.
_COLLINEAR_RTOL = 1e-9
# Bound on (point, edge) pairs evaluated at once by the polygon test (~8 bytes * a few arrays each).
_MAX_PAIRS = 1 << 20


# -- data classes ------------------------------------------------------------------------------


@dataclass
class Contour:
    """One closed contour of a cross-section.

    indices: [n] int64 indices into the plane's ``vertices`` (closing edge implicit).
    label: the file's label (1 = outer, 2 = hole in the shipped files).
    parent: index of the enclosing component within the plane for a hole, else None.
    """

    indices: np.ndarray
    label: int = OUTER_LABEL
    parent: int | None = None

    @property
    def is_hole(self) -> bool:
        return self.parent is not None

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class CrossSection:
    """One plane with its contours.

    normal: [3] unit float64 plane normal; the plane is ``normal . x + offset = 0``.
    offset: the plane's ``d``.
    vertices: [V, 3] float64 contour vertices (as read; on the plane up to the file's precision).
    contours: closed contours indexing ``vertices``.
    basis: [2, 3] orthonormal in-plane axes (u, v) with u x v = normal, so counter-clockwise in
        (u, v) is counter-clockwise seen from the normal's side. A fixed function of the normal
        (not OReX's PCA axes, whose sign and order are arbitrary for round contours), so frames
        survive write -> read; rotate in 2-D if principal axes are wanted.
    origin: [3] the vertex centroid (a point on the plane); the 2-D frame's origin.

    Build one with :meth:`from_vertices`, which derives the plane, basis and origin.
    """

    normal: np.ndarray
    offset: float
    vertices: np.ndarray
    contours: list[Contour]
    basis: np.ndarray
    origin: np.ndarray

    @classmethod
    def from_vertices(
        cls,
        vertices: np.ndarray,
        contours: Sequence[Contour],
        normal: np.ndarray | None = None,
        offset: float | None = None,
        normal_hint: np.ndarray | None = None,
    ) -> CrossSection:
        """Cross-section whose plane is ``normal``/``offset`` if given, else fitted to the vertices.

        vertices: [V, 3]; contours index them.
        normal, offset: an exact plane (e.g. the slicing plane); ``offset`` only matters when
            there are no vertices, otherwise the plane passes through the vertex centroid.
        normal_hint: [3] when fitting, the fitted normal's sign is chosen to agree with it
            (unless it is zero or nearly in-plane; then the largest component is made positive).

        Raises ValueError for fewer than 3 vertices (or collinear ones) without a given normal;
        :func:`read_csl` turns those into DataErrors with a line number.
        """
        verts = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
        if normal is not None:
            n = np.asarray(normal, dtype=np.float64).reshape(3)
            norm = float(np.linalg.norm(n))
            if not norm > 0:
                raise ValueError("plane normal is zero")
            n = n / norm
            d = None if offset is None else float(offset) / norm
            if len(verts):
                # The centroid, moved onto the given plane (a no-op for vertices already on it).
                origin = verts.mean(0)
                if d is not None:
                    origin = origin - (n @ origin + d) * n
            else:
                origin = -(d or 0.0) * n
        else:
            if len(verts) < 3:
                raise ValueError(f"{len(verts)} vertices cannot define a plane")
            origin = verts.mean(0)
            _, s, vt = np.linalg.svd(verts - origin, full_matrices=False)
            if s[1] <= _COLLINEAR_RTOL * s[0]:
                raise ValueError("the plane's vertices are collinear (or coincide), its plane is undefined")
            n = _orient_normal(vt[2], normal_hint)
        basis = _plane_basis(n)
        return cls(
            normal=n,
            offset=float(-n @ origin),
            vertices=verts,
            contours=list(contours),
            basis=basis,
            origin=origin,
        )

    @property
    def plane(self) -> np.ndarray:
        """[4] (A, B, C, D) with unit (A, B, C): the plane ``A x + B y + C z + D = 0``."""
        return np.append(self.normal, self.offset)

    @property
    def outer(self) -> list[Contour]:
        return [c for c in self.contours if not c.is_hole]

    @property
    def holes(self) -> list[Contour]:
        return [c for c in self.contours if c.is_hole]

    def residual(self) -> float:
        """Largest distance of a vertex from the plane (0 for an empty plane)."""
        if not len(self.vertices):
            return 0.0
        return float(np.abs(self.vertices @ self.normal + self.offset).max())

    def to_2d(self, points: np.ndarray) -> np.ndarray:
        """[P, 3] -> [P, 2] coordinates in the plane's (u, v) frame (orthogonal projection)."""
        return (np.asarray(points, dtype=np.float64).reshape(-1, 3) - self.origin) @ self.basis.T

    def to_3d(self, uv: np.ndarray) -> np.ndarray:
        """[P, 2] in-plane coordinates -> [P, 3] points on the plane."""
        return self.origin + np.asarray(uv, dtype=np.float64).reshape(-1, 2) @ self.basis

    def contour_uv(self, i: int) -> np.ndarray:
        """[n, 2] the i-th contour's vertices in the plane's 2-D frame, in contour order."""
        return self.to_2d(self.vertices[self.contours[i].indices])

    def uv_bounds(self, pad: float = 0.0) -> np.ndarray:
        """[2, 2] (min row, max row) of the vertices' 2-D bounding box, padded by ``pad`` of its
        extent on every side; raises ValueError for a plane without vertices."""
        if not len(self.vertices):
            raise ValueError("a plane without vertices has no bounds")
        uv = self.to_2d(self.vertices)
        lo, hi = uv.min(0), uv.max(0)
        ext = np.maximum(hi - lo, 1e-12)
        return np.stack([lo - pad * ext, hi + pad * ext])

    def edges(self) -> np.ndarray:
        """[E, 2] int64 vertex-index pairs of every contour edge (closing edges included)."""
        if not self.contours:
            return np.zeros((0, 2), dtype=np.int64)
        return np.concatenate([np.stack([c.indices, np.roll(c.indices, -1)], 1) for c in self.contours])

    def contains(self, uv: np.ndarray) -> np.ndarray:
        """[P] bool: which 2-D points [P, 2] are inside the cross-section.

        Inside = in the union of the outer contours and not in the union of the holes; each
        contour by the even-odd (crossing number) rule. Islands inside holes are not handled (they
        count as outside), as in OReX. Points exactly on a contour may go either way.
        """
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        inside = np.zeros(len(uv), dtype=bool)
        in_hole = np.zeros(len(uv), dtype=bool)
        for c in self.contours:
            poly = self.to_2d(self.vertices[c.indices])
            target = in_hole if c.is_hole else inside
            target |= _polygon_contains(poly, uv)
        return inside & ~in_hole

    def transformed(self, center: np.ndarray, scale: float) -> CrossSection:
        """A copy with every point mapped ``x -> (x - center) / scale`` (normal and basis unchanged)."""
        origin = (self.origin - center) / scale
        return replace(
            self,
            vertices=(self.vertices - center) / scale,
            origin=origin,
            offset=float(-self.normal @ origin),
            contours=[replace(c, indices=c.indices.copy()) for c in self.contours],
        )


@dataclass
class Normalization:
    """``x_normalised = (x - center) / scale``; the identity by default."""

    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0

    def apply(self, points: Any) -> Any:
        """[..., 3] input-unit points -> normalised (numpy arrays or torch tensors)."""
        return (points - _like(self.center, points)) / self.scale

    def invert(self, points: Any) -> Any:
        """[..., 3] normalised points -> input units (numpy arrays or torch tensors)."""
        return points * self.scale + _like(self.center, points)

    def then(self, other: Normalization) -> Normalization:
        """The normalisation that applies ``self`` and then ``other``."""
        return Normalization(center=self.center + self.scale * other.center, scale=self.scale * other.scale)


@dataclass
class CrossSections:
    """All the planes of one input.

    sections: the planes, in file order.
    n_labels: the file's label count (2 for inside/outside files).
    normalization: maps the file's (input) units to these sections' coordinates.
    source: the file it was read from, if any.
    """

    sections: list[CrossSection]
    n_labels: int = 2
    normalization: Normalization = field(default_factory=Normalization)
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.sections)

    def all_vertices(self) -> np.ndarray:
        """[N, 3] every plane's vertices, concatenated in plane order."""
        if not self.sections:
            return np.zeros((0, 3))
        return np.concatenate([s.vertices for s in self.sections])

    def bounds(self) -> np.ndarray:
        """[2, 3] (min row, max row) of all vertices; raises ValueError when there are none."""
        v = self.all_vertices()
        if not len(v):
            raise ValueError("cross-sections without vertices have no bounds")
        return np.stack([v.min(0), v.max(0)])

    def normalized(self, center: bool = True) -> CrossSections:
        """A copy inside [-1, 1]^3 by OReX's rule; see the module docstring.

        Subtract the mean of all vertices (unless ``center`` is False, e.g. for inputs already
        in [-1, 1] that should stay aligned with their reference mesh), then divide by
        ``1.1 * max|v|`` when that maximum is >= 1. The result's ``normalization`` composes with
        this one's, so ``to_input`` always returns the original file's units.
        """
        v = self.all_vertices()
        c = v.mean(0) if (center and len(v)) else np.zeros(3)
        m = float(np.abs(v - c).max()) if len(v) else 0.0
        s = 1.1 * m if m >= 1.0 else 1.0
        step = Normalization(center=c, scale=s)
        return replace(
            self,
            sections=[sec.transformed(c, s) for sec in self.sections],
            normalization=self.normalization.then(step),
        )

    def plane_iou(self, inside: Any, resolution: int = 256, pad: float = 0.1) -> np.ndarray:
        """[len(self)] how well a solid reproduces every plane's contours: per plane, the IoU of
        the cross-section's inside and ``inside`` on a ``resolution`` x ``resolution`` grid of
        pixel centres over the plane's vertices' 2-D bounding box, padded by ``pad`` of its
        extent on every side (NaN for a plane where neither is inside anywhere).

        inside: a function of points [P, 3] (these sections' coordinates) -> [P] bool, e.g. a
        field's ``sdf(x) < 0`` or ``recon.geometry.surface_metrics.points_inside`` of a mesh.
        The metric of issue 32 ("on-plane IoU"): a reconstruction from these contours should
        reproduce them, so this is near 1 for a good one, whatever the shape between planes."""
        out = np.full(len(self.sections), np.nan)
        ticks = (np.arange(resolution) + 0.5) / resolution
        for k, sec in enumerate(self.sections):
            if not len(sec.vertices):
                continue
            lo, hi = sec.uv_bounds(pad)
            grid = np.stack(np.meshgrid(lo[0] + ticks * (hi[0] - lo[0]), lo[1] + ticks * (hi[1] - lo[1]), indexing="ij"), -1).reshape(-1, 2)
            truth = sec.contains(grid)
            pred = np.asarray(inside(sec.to_3d(grid)), dtype=bool).reshape(-1)
            union = int((truth | pred).sum())
            if union:
                out[k] = float((truth & pred).sum()) / union
        return out

    def to_input(self, points: Any) -> Any:
        """[..., 3] points in these sections' coordinates -> the input file's units."""
        return self.normalization.invert(points)

    def from_input(self, points: Any) -> Any:
        """[..., 3] points in the input file's units -> these sections' coordinates."""
        return self.normalization.apply(points)


# -- reading -----------------------------------------------------------------------------------

_COMPONENT = re.compile(r"^(\d+)(?:[hH](\d+))?$")


class _Tokens:
    """Whitespace tokens with the 1-based line each came from, for error messages."""

    def __init__(self, text: str, path: Path):
        self.path = path
        self.tokens: list[str] = []
        self.lines: list[int] = []
        for line_no, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            self.tokens.extend(parts)
            self.lines.extend([line_no] * len(parts))
        self.pos = 0

    def error(self, message: str, line: int) -> DataError:
        return DataError(f"line {line}: {message}", self.path)

    def line(self, pos: int | None = None) -> int:
        """Line of the token at ``pos`` (the next one by default), or of the last token at EOF."""
        pos = self.pos if pos is None else pos
        if pos < len(self.lines):
            return self.lines[pos]
        return self.lines[-1] if self.lines else 1

    def take(self, count: int, what: str) -> tuple[list[str], int]:
        """The next ``count`` tokens and the index of the first; DataError at end of file."""
        if self.pos + count > len(self.tokens):
            raise self.error(f"the file ends here, before {what} (truncated file?)", self.line(len(self.tokens)))
        start = self.pos
        self.pos += count
        return self.tokens[start : self.pos], start

    def int(self, what: str, minimum: int = 0) -> tuple[int, int]:
        (tok,), pos = self.take(1, what)
        try:
            value = int(tok)
        except ValueError:
            raise self.error(f"expected an integer ({what}), got {tok!r}", self.lines[pos]) from None
        if value < minimum:
            raise self.error(f"{what} must be >= {minimum}, got {value}", self.lines[pos])
        return value, pos

    def floats(self, count: int, what: str) -> np.ndarray:
        toks, start = self.take(count, what)
        try:
            # One C-level conversion for the whole block (fast for large files) ...
            values = np.array(toks, dtype=np.float64)
        except ValueError:
            values = None
        if values is None or not np.isfinite(values).all():
            # ... and a per-token pass only to locate the culprit.
            for k, tok in enumerate(toks):
                try:
                    ok = np.isfinite(float(tok))
                except ValueError:
                    raise self.error(f"expected a number ({what}), got {tok!r}", self.lines[start + k]) from None
                if not ok:
                    raise self.error(f"non-finite number {tok!r} ({what})", self.lines[start + k])
        return values


def read_csl(path: str | Path) -> CrossSections:
    """Read a ``.csl`` file (format and checks: see the module docstring).

    Returns the planes in file order, in the file's units (``normalization`` is the identity;
    call :meth:`CrossSections.normalized` for OReX's [-1, 1] scaling).
    Raises DataError("line N: ...", path) for malformed files.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("CSL file not found" if not path.exists() else "not a file", path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", path) from None
    tok = _Tokens(text, path)

    (header,), pos = tok.take(1, f"the header {HEADER!r}")
    if header != HEADER:
        raise tok.error(f"expected the header {HEADER!r}, got {header[:40]!r} (not a CSL file?)", tok.lines[pos])
    n_planes, count_pos = tok.int("number of planes")
    n_labels, _ = tok.int("number of labels")

    sections = []
    for p in range(1, n_planes + 1):
        sections.append(_read_plane(tok, p, n_planes))
    if tok.pos < len(tok.tokens):
        raise tok.error(
            f"unexpected token {tok.tokens[tok.pos][:40]!r} after the last of the {n_planes} planes that "
            f"line {tok.lines[count_pos]} declares (plane count does not match the file?)",
            tok.line(),
        )
    return CrossSections(sections=sections, n_labels=n_labels, source=path)


def _read_plane(tok: _Tokens, p: int, n_planes: int) -> CrossSection:
    where = f"plane {p} of {n_planes}"
    _, head_pos = tok.int(f"{where}: plane index")  # the index itself is informative only
    head_line = tok.lines[head_pos]
    n_verts, _ = tok.int(f"{where}: number of vertices")
    n_comp, _ = tok.int(f"{where}: number of components")
    abcd = tok.floats(4, f"{where}: plane parameters A B C D")
    verts = tok.floats(3 * n_verts, f"{where}: {n_verts} vertices (x y z)").reshape(n_verts, 3)

    contours = []
    comp_lines = []
    for k in range(n_comp):
        what = f"{where}, component {k}"
        (count_tok,), pos = tok.take(1, f"{what}: vertex count")
        line = tok.lines[pos]
        m = _COMPONENT.match(count_tok)
        if m is None:
            raise tok.error(f"expected a vertex count like '12' or '12h0' ({what}), got {count_tok[:40]!r}", line)
        n = int(m.group(1))
        parent = None if m.group(2) is None else int(m.group(2))
        if n < 3:
            raise tok.error(f"{what} has {n} vertices; a closed contour needs at least 3", line)
        label, _ = tok.int(f"{what}: label")
        idx_toks, start = tok.take(n, f"{what}: {n} vertex indices")
        try:
            # Out-of-range indices are reported below; clipping keeps a huge one from overflowing int64.
            idx = np.array([min(max(int(t), -1), n_verts) for t in idx_toks], dtype=np.int64)
        except ValueError:
            bad = next(i for i, t in enumerate(idx_toks) if not _is_int(t))
            raise tok.error(
                f"expected a vertex index ({what}), got {idx_toks[bad][:40]!r}", tok.lines[start + bad]
            ) from None
        out = np.nonzero((idx < 0) | (idx >= n_verts))[0]
        if len(out):
            raise tok.error(
                f"vertex index {idx_toks[out[0]][:40]} out of range ({what}; the plane has {n_verts} vertices)",
                tok.lines[start + out[0]],
            )
        contours.append(Contour(indices=idx, label=label, parent=parent))
        comp_lines.append(line)
    for k, (c, line) in enumerate(zip(contours, comp_lines)):
        if c.parent is not None and not (0 <= c.parent < n_comp and c.parent != k):
            raise tok.error(
                f"hole {k} of {where} names parent component {c.parent}, which does not exist "
                f"(the plane has components 0..{n_comp - 1})",
                line,
            )

    if n_verts == 0:
        if n_comp:
            raise tok.error(f"{where} has no vertices but {n_comp} components", head_line)
        if not np.linalg.norm(abcd[:3]) > 0:
            raise tok.error(f"{where} is empty and its plane normal (A, B, C) is zero", head_line)
        return CrossSection.from_vertices(verts, [], normal=abcd[:3], offset=abcd[3])
    try:
        sec = CrossSection.from_vertices(verts, contours, normal_hint=abcd[:3])
    except ValueError as exc:
        raise tok.error(f"{where}: {exc}", head_line) from None
    extent = float(np.linalg.norm(np.ptp(verts, axis=0)))
    residual = sec.residual()
    if residual > COPLANAR_RTOL * extent:
        raise tok.error(
            f"the vertices of {where} are not coplanar: one lies {residual:.3g} from their best-fit plane "
            f"({residual / extent:.2g} of the plane's extent {extent:.3g}; the limit is {COPLANAR_RTOL:g})",
            head_line,
        )
    return sec


def _is_int(t: str) -> bool:
    try:
        int(t)
    except ValueError:
        return False
    return True


# -- writing -----------------------------------------------------------------------------------


def _num(x: float) -> str:
    # Positional (never exponent) notation, because OReX parses numbers as fixed-point; the
    # shortest digits that round-trip, so write -> read is exact.
    return np.format_float_positional(float(x), unique=True, trim="0")


def write_csl(sections: CrossSections, path: str | Path) -> None:
    """Write ``sections`` as a ``.csl`` file, atomically (see :func:`recon.atomic.atomic_write`).

    The plane parameters written are the unit normal and offset of each (fitted) plane, planes are
    numbered 1..K, one component per line; numbers round-trip exactly through :func:`read_csl`.
    The coordinates are those of ``sections`` (normalised ones stay normalised).
    """
    out = [HEADER, f"{len(sections.sections)} {sections.n_labels}", ""]
    for p, sec in enumerate(sections.sections, 1):
        out.append(f"{p} {len(sec.vertices)} {len(sec.contours)} " + " ".join(_num(x) for x in sec.plane))
        out.append("")
        out.extend(" ".join(_num(x) for x in v) for v in sec.vertices.tolist())
        out.append("")
        for c in sec.contours:
            count = f"{len(c.indices)}" + ("" if c.parent is None else f"h{c.parent}")
            out.append(f"{count} {c.label} " + " ".join(str(i) for i in c.indices.tolist()))
        out.append("")
    with atomic_write(path) as tmp:
        Path(tmp).write_text("\n".join(out) + "\n", encoding="utf-8")


# -- slicing meshes ----------------------------------------------------------------------------


def slice_mesh(
    mesh: trimesh.Trimesh,
    planes: Sequence[tuple[Sequence[float], float]] | np.ndarray,
    merge_tol: float | None = None,
    keep_empty: bool = False,
) -> CrossSections:
    """Cross-sections of a watertight mesh by planes.

    mesh: a closed (watertight) triangle mesh.
    planes: ``[(normal [3], offset), ...]`` or an array [K, 4] of (A, B, C, D), each the plane
        ``n . x + d = 0`` (normals need not be unit length).
    merge_tol: distance under which segment endpoints are the same point (default 1e-8 of the
        mesh's bounding-box diagonal: only float noise between neighbouring faces is merged).
    keep_empty: keep planes that miss the mesh as empty sections (OReX cannot read those).

    Each plane's intersection segments (``trimesh.intersections.mesh_plane``) are chained into
    closed loops; outer loops are oriented counter-clockwise and holes clockwise seen from the
    normal's side; a loop inside an odd number of other loops is a hole whose parent is the
    smallest loop containing it (label 2), every other loop is outer (label 1). The planes keep
    the given normals exactly. Open chains (a mesh that is not closed) are dropped with a warning.
    """
    plane_arr = _as_planes(planes)
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    diag = float(np.linalg.norm(np.ptp(verts, axis=0))) if len(verts) else 1.0
    tol = merge_tol if merge_tol is not None else 1e-8 * max(diag, 1e-300)
    sections = []
    for k, (n, d) in enumerate(zip(plane_arr[:, :3], plane_arr[:, 3])):
        segments = trimesh.intersections.mesh_plane(mesh, plane_normal=n, plane_origin=-d * n)
        loops = _chain_segments(np.asarray(segments, dtype=np.float64).reshape(-1, 2, 3), tol, k)
        if not loops:
            if keep_empty:
                sections.append(CrossSection.from_vertices(np.zeros((0, 3)), [], normal=n, offset=d))
            continue
        sections.append(_section_from_loops(loops, n, d))
    return CrossSections(sections=sections, n_labels=2)


def _as_planes(planes: Sequence[tuple[Sequence[float], float]] | np.ndarray) -> np.ndarray:
    """[K, 4] (unit normal, offset) from either accepted plane form."""
    if isinstance(planes, np.ndarray):
        arr = np.asarray(planes, dtype=np.float64).reshape(-1, 4)
    else:
        arr = np.array([[*np.asarray(n, dtype=np.float64).reshape(3), float(d)] for n, d in planes]).reshape(-1, 4)
    norms = np.linalg.norm(arr[:, :3], axis=1)
    if (norms <= 0).any():
        raise ValueError("a plane normal is zero")
    return arr / norms[:, None]


def _chain_segments(segments: np.ndarray, tol: float, plane_index: int) -> list[np.ndarray]:
    """[S, 2, 3] unordered segments -> closed loops, each [L, 3] (L >= 3, no repeated end point).

    Endpoints closer than ``tol`` are one node (neighbouring faces compute the same edge crossing
    with different rounding). Zero-length and duplicate segments (the plane through a mesh vertex
    or along an edge) are dropped; nodes where loops touch (degree 4) are walked through greedily,
    which still splits every edge set into closed loops.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if len(segments) == 0:
        return []
    pts = segments.reshape(-1, 3)
    pairs = cKDTree(pts).query_pairs(tol, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pts), len(pts)))
    _, node_of = connected_components(graph, directed=False)
    edges = node_of.reshape(-1, 2)
    edges = edges[edges[:, 0] != edges[:, 1]]
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    # A representative position per node: the first endpoint that fell into it.
    first = np.full(node_of.max() + 1, -1)
    first[node_of[::-1]] = np.arange(len(pts))[::-1]
    node_pos = pts[first]

    adjacency: dict[int, list[int]] = {}
    for e, (a, b) in enumerate(edges.tolist()):
        adjacency.setdefault(a, []).append(e)
        adjacency.setdefault(b, []).append(e)
    used = np.zeros(len(edges), dtype=bool)
    loops: list[np.ndarray] = []
    n_open = 0
    for e0 in range(len(edges)):
        if used[e0]:
            continue
        used[e0] = True
        start, cur = int(edges[e0, 0]), int(edges[e0, 1])
        chain = [start]
        closed = False
        while True:
            if cur == start:
                closed = True
                break
            chain.append(cur)
            nxt = next((e for e in adjacency[cur] if not used[e]), None)
            if nxt is None:
                break
            used[nxt] = True
            a, b = edges[nxt]
            cur = int(b if a == cur else a)
        if closed and len(chain) >= 3:
            loops.append(node_pos[chain])
        elif not closed:
            n_open += 1
    if n_open:
        log.warning("plane %d: dropped %d open contour chain(s); is the mesh watertight?", plane_index, n_open)
    return loops


def _section_from_loops(loops: list[np.ndarray], normal: np.ndarray, offset: float) -> CrossSection:
    """CrossSection with oriented loops and hole/parent structure found by containment."""
    verts = np.concatenate(loops)
    sec = CrossSection.from_vertices(verts, [], normal=normal, offset=offset)
    starts = np.cumsum([0] + [len(lp) for lp in loops])
    uv_loops = [sec.to_2d(lp) for lp in loops]
    areas = np.array([_signed_area(uv) for uv in uv_loops])
    # containing[i, j]: loop j contains loop i. Loops of a closed surface's section do not cross,
    # so any vertex of i decides; a majority over a few vertices guards against touching loops.
    m = len(loops)
    containing = np.zeros((m, m), dtype=bool)
    for i in range(m):
        probe = uv_loops[i][np.linspace(0, len(uv_loops[i]) - 1, min(len(uv_loops[i]), 9)).astype(int)]
        for j in range(m):
            if i != j and abs(areas[j]) > abs(areas[i]):
                containing[i, j] = _polygon_contains(uv_loops[j], probe).mean() > 0.5
    contours = []
    for i in range(m):
        idx = np.arange(starts[i], starts[i + 1])
        hole = containing[i].sum() % 2 == 1
        parent = None
        if hole:
            cands = np.nonzero(containing[i])[0]
            parent = int(cands[np.argmin(np.abs(areas[cands]))])
        # Outer loops counter-clockwise (positive area in the right-handed (u, v) frame), holes clockwise.
        if (areas[i] > 0) == hole:
            idx = idx[::-1].copy()
        contours.append(Contour(indices=idx, label=HOLE_LABEL if hole else OUTER_LABEL, parent=parent))
    sec.contours = contours
    return sec


def axis_planes(
    mesh_or_bounds: trimesh.Trimesh | np.ndarray,
    axis: int,
    count: int,
    margin: float = 0.05,
) -> np.ndarray:
    """[count, 4] evenly spaced planes perpendicular to ``axis`` (0, 1, 2 = x, y, z), normal +axis.

    mesh_or_bounds: a mesh or bounds [2, 3]; the planes span the bounds along ``axis`` minus
        ``margin`` (a fraction of that extent) at both ends, so none grazes the extreme tip.
    A single plane sits in the middle.
    """
    bounds = np.asarray(
        mesh_or_bounds.bounds if hasattr(mesh_or_bounds, "bounds") else mesh_or_bounds, dtype=np.float64
    )
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    lo, hi = bounds[0, axis], bounds[1, axis]
    ext = hi - lo
    pos = np.linspace(lo + margin * ext, hi - margin * ext, count) if count > 1 else np.array([(lo + hi) / 2])
    planes = np.zeros((count, 4))
    planes[:, axis] = 1.0
    planes[:, 3] = -pos
    return planes


def random_planes(
    count: int,
    seed: int = 0,
    mesh_or_bounds: trimesh.Trimesh | np.ndarray | None = None,
    max_tries: int = 1000,
) -> np.ndarray:
    """[count, 4] random planes, OReX ``Slicer.py`` style.

    Normals are normalised ``randn(3)`` draws (uniform on the sphere); the plane's signed distance
    is ``u ~ U(-1, 1)``, as in Slicer, which assumes a mesh normalised to [-1/1.1, 1/1.1]^3. With
    ``mesh_or_bounds`` the distance is scaled to the bounds instead: the plane passes at ``u`` times
    the box's half-width along the normal from the box centre. With a mesh, planes that miss it
    (all vertices on one side) are redrawn, up to ``max_tries`` draws per plane.
    """
    rng = np.random.default_rng(seed)
    mesh = mesh_or_bounds if isinstance(mesh_or_bounds, trimesh.Trimesh) else None
    if mesh_or_bounds is None:
        center, half = np.zeros(3), None
    else:
        b = np.asarray(mesh.bounds if mesh is not None else mesh_or_bounds, dtype=np.float64)
        center, half = b.mean(0), (b[1] - b[0]) / 2
    verts = np.asarray(mesh.vertices, dtype=np.float64) if mesh is not None else None
    planes = []
    tries = 0
    while len(planes) < count:
        tries += 1
        if tries > max_tries * count:
            raise ValueError(f"could not draw {count} planes that cut the mesh in {tries - 1} tries")
        n = rng.standard_normal(3)
        n /= np.linalg.norm(n)
        u = rng.uniform(-1.0, 1.0)
        reach = 1.0 if half is None else float(np.abs(n) @ half)
        d = -(n @ center + u * reach)
        if verts is not None:
            side = verts @ n + d
            if not (side.min() < 0 < side.max()):
                continue
        planes.append([*n, d])
    return np.array(planes).reshape(-1, 4)


def thin_cylinders(radii: Sequence[float] = (0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.035), length: float = 1.0) -> trimesh.Trimesh:
    """A test shape with many thin parts (issue 32): one closed cylinder (32 sides) per radius,
    disjoint, each tilted about 14 degrees from z in its own direction, their centres spread
    along x in [-0.45, 0.45] and in y by 0.3 sin(1.7 i). Slice it with z planes (``axis_planes(mesh,
    2, n)``) for a multi-component input whose every contour is a small ellipse."""
    parts = []
    n = len(radii)
    for i, r in enumerate(radii):
        cyl = trimesh.creation.cylinder(radius=float(r), height=length, sections=32)
        axis = np.array([0.25 * np.cos(i), 0.25 * np.sin(i), 1.0])
        cyl.apply_transform(trimesh.geometry.align_vectors([0.0, 0.0, 1.0], axis / np.linalg.norm(axis)))
        x = -0.45 + 0.9 * i / max(n - 1, 1)
        cyl.apply_translation([x, 0.3 * np.sin(1.7 * i), 0.0])
        parts.append(cyl)
    return trimesh.util.concatenate(parts)


# -- geometry helpers --------------------------------------------------------------------------


def _orient_normal(n: np.ndarray, hint: np.ndarray | None) -> np.ndarray:
    """``n`` with its sign agreeing with ``hint``; without a usable hint, largest component > 0."""
    n = n / np.linalg.norm(n)
    if hint is not None:
        h = np.asarray(hint, dtype=np.float64).reshape(3)
        hn = np.linalg.norm(h)
        # A hint nearly in the plane (|cos| small) is a garbled file; its sign says nothing.
        if hn > 0 and abs(n @ h) / hn > 1e-3:
            return n if n @ h > 0 else -n
    return n if n[np.argmax(np.abs(n))] > 0 else -n


def _plane_basis(n: np.ndarray) -> np.ndarray:
    """[2, 3] right-handed in-plane axes (u, v), u x v = n, a fixed function of the unit normal.

    u is the first coordinate axis with |n_k| < 0.6 (every unit vector has one, since some
    |n_k| <= 1/sqrt(3)), projected into the plane. A choice that depends on n only, and only
    through a threshold far from typical values, makes the frame reproducible: after write -> read
    the re-fitted normal differs by float noise, which would flip an argmin between tied
    components or a PCA axis of a round contour. Axis planes get natural frames: (x, y) for +z.
    """
    k = int(np.nonzero(np.abs(n) < 0.6)[0][0])
    u = np.eye(3)[k] - n[k] * n
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(n, u)])


def _signed_area(uv: np.ndarray) -> float:
    """Shoelace area of a closed polygon [n, 2]: positive when counter-clockwise."""
    x, y = uv[:, 0] - uv[:, 0].mean(), uv[:, 1] - uv[:, 1].mean()  # centred: less cancellation
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _polygon_contains(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """[P] bool: even-odd (crossing number) test of points [P, 2] against a closed polygon [E, 2].

    A horizontal ray to +u from each point; an edge counts when it straddles the point's v (half-
    open, so a vertex shared by two edges is counted once) and crosses to the right of the point.
    """
    out = np.zeros(len(pts), dtype=bool)
    if len(poly) < 3 or not len(pts):
        return out
    lo, hi = poly.min(0), poly.max(0)
    cand = np.nonzero(((pts >= lo) & (pts <= hi)).all(1))[0]  # outside the bbox -> outside
    if not len(cand):
        return out
    a = poly
    b = np.roll(poly, -1, axis=0)
    dv = b[:, 1] - a[:, 1]
    safe = np.where(dv == 0, 1.0, dv)  # horizontal edges never straddle; avoid 0/0
    slope = (b[:, 0] - a[:, 0]) / safe
    chunk = max(1, _MAX_PAIRS // len(poly))
    for s in range(0, len(cand), chunk):
        idx = cand[s : s + chunk]
        pu, pv = pts[idx, 0:1], pts[idx, 1:2]
        straddle = (a[:, 1] > pv) != (b[:, 1] > pv)
        u_cross = a[:, 0] + (pv - a[:, 1]) * slope
        out[idx] = (np.count_nonzero(straddle & (pu < u_cross), axis=1) & 1).astype(bool)
    return out


def _like(center: np.ndarray, points: Any) -> Any:
    """``center`` as the same kind of array as ``points`` (torch tensors keep dtype and device)."""
    if type(points).__module__.startswith("torch"):
        import torch

        return torch.as_tensor(center, dtype=points.dtype, device=points.device)
    return center


# -- CLI ---------------------------------------------------------------------------------------


@dataclass
class SliceArgs:
    """Slice a watertight mesh into planar cross-sections and write them as a .csl file."""

    mesh: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="MESH")]]
    """Input mesh (any format trimesh reads; should be watertight)."""
    out: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="OUT.csl")]]
    """Output .csl file."""
    axis: Literal["x", "y", "z"] = "z"
    """Axis of the parallel planes (ignored with --random)."""
    count: int = 15
    """Number of parallel planes."""
    random: int | None = None
    """Instead of parallel planes, this many random planes (OReX Slicer style)."""
    seed: int = 0
    """Seed of the random planes."""
    margin: float = 0.05
    """Parallel planes keep this fraction of the extent away from both ends."""
    normalize: bool = False
    """First centre the mesh on its vertex mean and divide by 1.1 max|v| (as OReX's Slicer)."""
    mesh_out: Path | None = None
    """Also write the (possibly normalised) mesh that was sliced, e.g. as a reference STL."""


def main(argv: list[str] | None = None) -> Path:
    """``python -m data.cross_sections MESH OUT.csl [--axis z --count 15 | --random 20 --seed 0] [--normalize]``."""
    from recon.cli import parse_cli

    args = parse_cli(lambda: tyro.cli(SliceArgs, args=argv), "python -m data.cross_sections")
    if not args.mesh.is_file():
        raise DataError("mesh file not found", args.mesh)
    try:
        mesh = trimesh.load(args.mesh, force="mesh", process=True)
    except Exception as exc:  # trimesh raises many kinds for unreadable files
        raise DataError(f"cannot read mesh: {exc}", args.mesh) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DataError("no triangles in the mesh", args.mesh)
    if not mesh.is_watertight:
        log.warning("%s is not watertight; its cross-sections may have open contours", args.mesh)
    if args.normalize:
        v = mesh.vertices - mesh.vertices.mean(0)
        mesh = trimesh.Trimesh(v / (1.1 * np.abs(v).max()), mesh.faces, process=False)
    if args.random is not None:
        planes = random_planes(args.random, seed=args.seed, mesh_or_bounds=mesh)
    else:
        planes = axis_planes(mesh, "xyz".index(args.axis), args.count, margin=args.margin)
    sections = slice_mesh(mesh, planes)
    write_csl(sections, args.out)
    if args.mesh_out is not None:
        with atomic_write(args.mesh_out) as tmp:
            mesh.export(tmp)
    n_c = sum(len(s.contours) for s in sections.sections)
    n_h = sum(len(s.holes) for s in sections.sections)
    print(
        f"wrote {args.out}: {len(sections)} planes, {n_c} contours ({n_h} holes), {len(sections.all_vertices())} vertices"
    )
    return Path(args.out)


if __name__ == "__main__":
    from recon.cli import run_main

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    run_main(main)
