"""Spatial partition of a large scene into overlapping blocks (pure geometry, no training).

Follows the data partition of VastGaussian (Lin et al., "VastGaussian: Vast 3D Gaussians for Large
Scene Reconstruction", CVPR 2024, section 3.2) in a simplified form, the same divide-and-merge idea
as CityGaussian (Liu et al., "CityGaussian: Real-time High-quality Large-Scale Scene Rendering with
Gaussians", ECCV 2024, section 3.2):

1. **Ground plane.** Cells are drawn on the plane of the two axes other than the up axis. ``up="auto"``
   takes the coordinate axis along which the sparse points and camera centres together spread least
   (a city, a campus, an aerial capture are flat); recon's parsers orient most datasets so that this
   is z.
2. **Progressive, quantile-based cells** (VastGaussian's "camera-position-based region division"): the
   first ground axis is cut into ``columns`` slabs at quantiles of the balance samples (camera centres
   by default, or the sparse points), then each slab along the second axis into ``rows`` cells at the
   quantiles of the samples inside that slab, so every cell holds about the same number of cameras
   (or points). The outer cells are open (infinite) on their outer sides, so the cells tile the
   whole plane: every camera and every point lies in exactly one cell (half-open ``[lo, hi)``).
3. **Overlap** (VastGaussian's boundary expansion): each cell is expanded on every finite side by
   ``overlap`` times its size along that axis (the size of an open cell is measured to the extent of
   the samples). A point belongs to each block whose expanded cell holds it (those are the block's
   initial points).
4. **Cameras.** A camera belongs to a block when its centre lies in the block's expanded cell
   (VastGaussian's position-based selection), or when at least ``visibility`` of the sparse points it
   sees lie in that expanded cell: a simplified form of VastGaussian's visibility-based selection
   (which projects the cell's bounding box and thresholds the covered image area). Here "sees" means
   the point projects inside the image in front of the camera through its pinhole (lens distortion
   and occlusion are ignored), and the share of the camera's visible points stands in for the share
   of its image the cell covers. This also gives a block the aerial views that look into it from
   outside its airspace (the problem VastGaussian's airspace-aware selection addresses). At most
   ``max_visibility_points`` points (a fixed random subset) are projected, to bound the cost.

Every camera and every point is in at least one block by construction (the cells tile the plane and
each cell is inside its expanded cell); :func:`partition_scene` checks it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from recon.errors import ConfigError

UpAxis = Literal["auto", "x", "y", "z"]
Balance = Literal["cameras", "points"]
AXES = "xyz"


@dataclass
class BlockPartition:
    """The blocks of a scene. Cells live on the ground plane: ``cells[b] = [[lo_0, lo_1], [hi_0, hi_1]]``
    on the ground axes ``ground`` (indices into x y z), ``-inf``/``inf`` where a cell is open.

    cameras[b]: indices (into the cameras given) of block b's training cameras, ascending.
    points[b]: indices of the sparse points inside block b's expanded cell, ascending.
    """

    up: int
    ground: tuple[int, int]
    grid: tuple[int, int]
    overlap: float
    cells: np.ndarray  # [B, 2, 2]
    expanded: np.ndarray  # [B, 2, 2]
    cameras: list[np.ndarray]
    points: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.cells)

    def cell_of(self, xyz: np.ndarray, expanded: bool = False) -> np.ndarray:
        """[N, B] bool: whether each position [N, 3] lies in each block's cell (half-open
        ``[lo, hi)``, so exactly one) or, with ``expanded``, its expanded cell (closed)."""
        g = np.asarray(xyz, dtype=np.float64)[:, list(self.ground)][:, None, :]  # [N, 1, 2]
        if expanded:
            box = self.expanded[None]
            return ((g >= box[:, :, 0]) & (g <= box[:, :, 1])).all(-1)
        box = self.cells[None]
        return ((g >= box[:, :, 0]) & (g < box[:, :, 1])).all(-1)

    def box3d(self, b: int, expanded: bool = True) -> tuple[float, float, float, float, float, float]:
        """Block b's (expanded) cell as a 3D box (min x y z, max x y z), open along the up axis."""
        lo, hi = np.full(3, -np.inf), np.full(3, np.inf)
        cell = (self.expanded if expanded else self.cells)[b]
        lo[list(self.ground)], hi[list(self.ground)] = cell[0], cell[1]
        return (*map(float, lo), *map(float, hi))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """JSON-able description (``inf`` written as the strings ``"inf"``/``"-inf"``)."""
        box = lambda a: [[_num(v) for v in row] for row in a]  # noqa: E731
        return {
            "up": AXES[self.up], "ground": [AXES[i] for i in self.ground], "grid": list(self.grid), "overlap": self.overlap,
            "blocks": [
                {"cell": box(self.cells[b]), "expanded": box(self.expanded[b]), "cameras": self.cameras[b].tolist(), "num_points": int(len(self.points[b]))}
                for b in range(len(self))
            ],
        }


def _num(v: float) -> float | str:
    return float(v) if np.isfinite(v) else ("inf" if v > 0 else "-inf")


def parse_grid(text: str) -> tuple[int, int]:
    """``"2x3"`` -> (2, 3) (columns along the first ground axis x rows along the second); a one-line
    ConfigError otherwise."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or min(int(p) for p in parts) < 1:
        raise ConfigError(f"--blocks must be COLUMNSxROWS with positive integers (e.g. 2x2), got {text!r}")
    return int(parts[0]), int(parts[1])


def up_axis(camera_centres: np.ndarray, points: np.ndarray | None, up: UpAxis = "auto") -> int:
    """Index of the up axis: the named one, or (auto) the axis along which the points and camera
    centres [N, 3] together have the smallest variance."""
    if up != "auto":
        if up not in AXES:
            raise ConfigError(f"--up must be auto, x, y or z, got {up!r}")
        return AXES.index(up)
    xyz = camera_centres if points is None or len(points) == 0 else np.concatenate([camera_centres, points])
    return int(np.argmin(np.asarray(xyz, dtype=np.float64).var(0)))


def _cuts(values: np.ndarray, n: int) -> np.ndarray:
    """n + 1 boundaries, -inf, the inner quantiles of ``values`` at k / n, inf."""
    inner = np.quantile(values, np.arange(1, n) / n) if len(values) else np.zeros(n - 1)
    return np.concatenate([[-np.inf], inner, [np.inf]])


def grid_cells(samples: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Cells [columns * rows, 2, 2] tiling the plane, from ground-plane samples [N, 2]: columns at
    quantiles of the first coordinate, then rows at quantiles of the second within each column
    (VastGaussian's progressive division). Block index b = column * rows + row."""
    columns, rows = grid
    cells = []
    xcuts = _cuts(samples[:, 0], columns)
    for i in range(columns):
        inside = samples[(samples[:, 0] >= xcuts[i]) & (samples[:, 0] < xcuts[i + 1]), 1]
        ycuts = _cuts(inside if len(inside) else samples[:, 1], rows)
        cells += [[[xcuts[i], ycuts[j]], [xcuts[i + 1], ycuts[j + 1]]] for j in range(rows)]
    return np.asarray(cells, dtype=np.float64)


def expand_cells(cells: np.ndarray, overlap: float, extent: np.ndarray) -> np.ndarray:
    """Cells [B, 2, 2] grown on each finite side by ``overlap`` x their size; an open side stays
    open, and an open cell's size is measured to ``extent`` [2, 2] (the samples' bounds)."""
    lo = np.maximum(cells[:, 0], extent[0])
    hi = np.minimum(cells[:, 1], extent[1])
    pad = overlap * np.maximum(hi - lo, 0.0)
    return np.stack([cells[:, 0] - pad, cells[:, 1] + pad], 1)


def visible_share(
    camera_to_worlds: np.ndarray, intrinsics: np.ndarray, points: np.ndarray, inside: np.ndarray, chunk: int = 64
) -> np.ndarray:
    """[C, B]: for each camera, the share of the points it sees (projected in front of it and inside
    its image through the pinhole ``intrinsics`` [C, 6] = fx fy cx cy width height) that lie in each
    block (``inside`` [P, B] bool); 0 for a camera that sees none. Shapes: c2w [C, 3, 4] OpenCV, points [P, 3]."""
    C, B = len(camera_to_worlds), inside.shape[1]
    out = np.zeros((C, B))
    pts = np.asarray(points, dtype=np.float64)
    weights = inside.astype(np.float64)
    for s in range(0, C, chunk):
        c2w = np.asarray(camera_to_worlds[s : s + chunk], dtype=np.float64)
        R, t = c2w[:, :, :3], c2w[:, :, 3]
        cam = np.einsum("cji,cpj->cpi", R, pts[None] - t[:, None])  # R^T (p - t): [c, P, 3]
        fx, fy, cx, cy, w, h = (np.asarray(intrinsics[s : s + chunk, k], dtype=np.float64)[:, None] for k in range(6))
        z = cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = fx * cam[..., 0] / z + cx
            v = fy * cam[..., 1] / z + cy
        seen = (z > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)  # [c, P]
        counts = seen.sum(1, keepdims=True)
        out[s : s + chunk] = (seen.astype(np.float64) @ weights) / np.maximum(counts, 1)
    return out


def partition_scene(
    camera_to_worlds: np.ndarray,
    intrinsics: np.ndarray,
    points: np.ndarray | None,
    grid: tuple[int, int] = (2, 2),
    overlap: float = 0.2,
    up: UpAxis = "auto",
    balance: Balance = "cameras",
    visibility: float | None = 0.25,
    max_visibility_points: int = 20_000,
    seed: int = 0,
) -> BlockPartition:
    """Partition cameras (c2w [C, 3, 4] OpenCV, intrinsics [C, 6] = fx fy cx cy width height) and
    sparse points [P, 3] (or None) into ``grid`` = (columns, rows) overlapping blocks; see the module
    docstring. ``visibility`` None adds no camera by visibility. One-line ConfigError for a grid with
    more blocks than cameras, a negative overlap, a visibility outside (0, 1], or balancing on points
    without points."""
    camera_to_worlds = np.asarray(camera_to_worlds, dtype=np.float64)
    centres = camera_to_worlds[:, :, 3]
    pts = np.zeros((0, 3)) if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 3)
    columns, rows = grid
    num_blocks = columns * rows
    if num_blocks > len(centres):
        raise ConfigError(f"--blocks {columns}x{rows} makes {num_blocks} blocks but there are only {len(centres)} training cameras")
    if not (np.isfinite(overlap) and overlap >= 0):
        raise ConfigError(f"--overlap must be a non-negative ratio of the cell size, got {overlap}")
    if visibility is not None and not 0 < visibility <= 1:
        raise ConfigError(f"--visibility must be in (0, 1] (a share of the points a camera sees), got {visibility}")
    if balance == "points" and len(pts) == 0:
        raise ConfigError("--balance points needs sparse points, and this dataset has none (use --balance cameras)")
    if balance not in ("cameras", "points"):
        raise ConfigError(f"--balance must be cameras or points, got {balance!r}")
    axis = up_axis(centres, pts, up)
    ground = tuple(i for i in range(3) if i != axis)
    samples = (centres if balance == "cameras" else pts)[:, list(ground)]
    cells = grid_cells(samples, grid)
    everything = np.concatenate([centres, pts])[:, list(ground)]
    extent = np.stack([everything.min(0), everything.max(0)])
    expanded = expand_cells(cells, overlap, extent)
    result = BlockPartition(axis, ground, grid, float(overlap), cells, expanded, [], [])  # type: ignore[arg-type]
    cams_in = result.cell_of(centres, expanded=True)  # [C, B]
    pts_in = result.cell_of(pts, expanded=True) if len(pts) else np.zeros((0, num_blocks), dtype=bool)
    if visibility is not None and len(pts):
        pick = np.random.default_rng(seed).permutation(len(pts))[:max_visibility_points]
        share = visible_share(camera_to_worlds, np.asarray(intrinsics, dtype=np.float64), pts[pick], pts_in[pick])
        cams_in |= share >= visibility
    result.cameras = [np.flatnonzero(cams_in[:, b]) for b in range(num_blocks)]
    result.points = [np.flatnonzero(pts_in[:, b]) for b in range(num_blocks)]
    if not cams_in.any(1).all() or (len(pts) and not pts_in.any(1).all()):
        raise AssertionError("block partition left a camera or a point out")  # the cells tile the plane
    empty = [b for b in range(num_blocks) if len(result.cameras[b]) == 0]
    if empty:
        raise ConfigError(f"block(s) {empty} of --blocks {columns}x{rows} hold no camera (--balance {balance}); use fewer blocks or --balance cameras")
    return result
