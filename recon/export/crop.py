"""The crop box the viewer saves for ``ns-export ... --crop-from-viewer``, and cropping helpers.

The viewer's crop panel writes ``<run>/viewer_crop.json``::

    {"enabled": true, "frame": "normalised", "min": [x, y, z], "max": [x, y, z]}

an axis-aligned box in recon's normalised world frame (the frame the viewer shows a run in).
Exports crop before they undo the normalisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import trimesh
from torch import Tensor

from recon.errors import ConfigError, ReconError
from recon.atomic import atomic_write

CROP_FILE = "viewer_crop.json"


def write_viewer_crop(run_dir: Path, lo: Tensor, hi: Tensor, enabled: bool) -> Path:
    path = Path(run_dir) / CROP_FILE
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps({"enabled": bool(enabled), "frame": "normalised", "min": lo.tolist(), "max": hi.tolist()}, indent=2))
    return path


def read_viewer_crop(run_dir: Path) -> tuple[Tensor, Tensor]:
    """The active crop box (lo [3], hi [3]) of a run; a clear error when the viewer saved none."""
    path = Path(run_dir) / CROP_FILE
    if not path.is_file():
        raise ConfigError("no crop box saved by the viewer (tick 'Crop viewport' in the viewer's Crop panel first)", path)
    try:
        doc = json.loads(path.read_text())
        lo, hi = torch.tensor(doc["min"], dtype=torch.float32), torch.tensor(doc["max"], dtype=torch.float32)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ReconError(f"malformed crop file ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})", path) from None
    if not doc.get("enabled"):
        raise ConfigError("the viewer's crop box is switched off ('Crop viewport' is not ticked)", path)
    if lo.shape != (3,) or hi.shape != (3,) or bool((hi <= lo).any()):
        raise ReconError(f"crop box is empty or malformed: min {lo.tolist()}, max {hi.tolist()}", path)
    return lo, hi


def inside_box(points: Tensor | np.ndarray, lo: Tensor, hi: Tensor) -> np.ndarray:
    """[P] bool: points [P, 3] inside the box."""
    p = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    return ((p >= lo) & (p <= hi)).all(-1).numpy()


def crop_mesh(mesh: trimesh.Trimesh, lo: Tensor, hi: Tensor) -> trimesh.Trimesh:
    """The faces of ``mesh`` whose three vertices are inside the box (unused vertices dropped)."""
    keep_vertex = inside_box(mesh.vertices, lo, hi)
    keep_face = keep_vertex[mesh.faces].all(1)
    out = mesh.copy()
    out.update_faces(keep_face)
    out.remove_unreferenced_vertices()
    return out
