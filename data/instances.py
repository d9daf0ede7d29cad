"""Instance masks as a data channel: raw ids -> contiguous labels, background 0.

A dataset with instance masks gives every pixel a raw instance id (``instance_filenames``: 8/16-bit
PNGs or ``.npy``). Methods that learn per-object fields (ObjectSDF++, Wu et al. ICCV 2023) need
contiguous labels 0..K-1 with the background at 0, and K derived from the data rather than
hard-coded (the official code fixes 46 channels for Replica and 32 for ScanNet, spec Q3).

The label set comes from, in this order:

* ``instance_mapping.txt`` beside the masks or in the dataset root (ObjectSDF++ / sdfstudio layout:
  one line ``raw_id,semantic_class,merged_instance_id`` per raw id). Raw ids map to their merged
  id; the labels are the sorted merged ids, whose smallest (the background, 0) becomes label 0.
  A pixel id that the file does not list is an error naming the mask.
* otherwise the sorted union of the ids in the training masks, with 0 the background whether or
  not any pixel has it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data.images import load_instance
from recon.errors import DataError

if TYPE_CHECKING:
    from data.base import DataparserOutputs

MAPPING_FILE = "instance_mapping.txt"

MAX_LABELS = 256
"""More distinct ids than this in the masks is taken as a wrong file (an RGB or depth image given as
a mask), not as that many objects."""


@dataclass(frozen=True)
class InstanceLabels:
    """raw_ids: sorted merged ids, ``raw_ids[k]`` is the id of label k (``raw_ids[0]`` = 0, the
    background). merge: raw pixel id -> merged id (identity when there is no mapping file).
    classes: merged id -> semantic class, when the mapping file gives one."""

    raw_ids: tuple[int, ...]
    merge: dict[int, int] = field(default_factory=dict)
    classes: dict[int, int] = field(default_factory=dict)
    source: str = "masks"

    @property
    def num_labels(self) -> int:
        """K: labels including the background."""
        return len(self.raw_ids)

    def name(self, label: int) -> str:
        """A file-name-friendly name of a label: ``background`` or ``object_<id>[_class<c>]``."""
        raw = self.raw_ids[label]
        if label == 0:
            return "background"
        cls = self.classes.get(raw)
        return f"object_{raw}" + (f"_class{cls}" if cls is not None else "")

    def remap(self, ids: np.ndarray, path: Path) -> np.ndarray:
        """Raw ids [H, W] -> labels [H, W] int64; an id outside the label set is an error naming ``path``."""
        if self.merge:
            unknown = np.setdiff1d(np.unique(ids), np.fromiter(self.merge, dtype=np.int64))
            if unknown.size:
                raise DataError(f"instance id {int(unknown[0])} is not in {MAPPING_FILE}", path)
            keys = np.fromiter(self.merge, dtype=np.int64)
            vals = np.fromiter(self.merge.values(), dtype=np.int64)
            ids = vals[np.searchsorted(keys, ids)] if keys.size else ids  # merge (keys are sorted)
        table = np.asarray(self.raw_ids, dtype=np.int64)
        idx = np.searchsorted(table, ids).clip(0, len(table) - 1)
        bad = table[idx] != ids
        if bad.any():
            raise DataError(f"instance id {int(ids[bad][0])} was not in the training masks", path)
        return idx.astype(np.int64)


def read_instance_mapping(path: Path) -> InstanceLabels:
    """Parse ObjectSDF++'s ``instance_mapping.txt`` (``raw_id,semantic_class,merged_id`` per line)."""
    merge: dict[int, int] = {}
    classes: dict[int, int] = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the instance mapping ({err})", path) from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            raw, cls, merged = (int(p) for p in parts)
        except ValueError:
            raise DataError(f"line {n} is not 'raw_id,semantic_class,merged_instance_id': {line[:60]!r}", path) from None
        if raw in merge and merge[raw] != merged:
            raise DataError(f"line {n}: raw id {raw} is mapped twice ({merge[raw]} and {merged})", path)
        if raw < 0 or merged < 0:
            raise DataError(f"line {n}: ids must be non-negative", path)
        merge[raw] = merged
        classes.setdefault(merged, cls)
    if not merge:
        raise DataError("the instance mapping has no entries", path)
    merge.setdefault(0, 0)
    merge = dict(sorted(merge.items()))
    raw_ids = tuple(sorted({0, *merge.values()}))
    return InstanceLabels(raw_ids, merge, classes, source=str(path))


def find_mapping(instance_filenames: list[Path], root: Path | None) -> Path | None:
    """``instance_mapping.txt`` in the masks' folder or its parent, or in the dataset root."""
    candidates = []
    if instance_filenames:
        folder = Path(instance_filenames[0]).parent
        candidates += [folder / MAPPING_FILE, folder.parent / MAPPING_FILE]
    if root is not None:
        candidates.append(Path(root) / MAPPING_FILE)
    return next((c for c in candidates if c.is_file()), None)


def instance_labels(instance_filenames: list[Path], root: Path | None = None) -> InstanceLabels:
    """The label set of a dataset's training masks (module docstring)."""
    if not instance_filenames:
        raise DataError("the dataset has no instance masks", root)
    mapping = find_mapping(instance_filenames, root)
    if mapping is not None:
        return read_instance_mapping(mapping)
    ids: set[int] = {0}
    for path in instance_filenames:
        arr = load_instance(path)
        if arr.min() < 0:
            raise DataError("instance ids must be non-negative", path)
        ids.update(int(v) for v in np.unique(arr))
        if len(ids) > MAX_LABELS:
            raise DataError(f"more than {MAX_LABELS} distinct instance ids (is this an instance mask?)", path)
    return InstanceLabels(tuple(sorted(ids)))


def dataset_instance_labels(outputs: "DataparserOutputs") -> InstanceLabels:
    """The label set of a parsed dataset (its training split's masks); one-line error without masks."""
    train = outputs.split("train")
    if not train.instance_filenames:
        raise DataError("this method needs instance masks, and the dataset has none"
                        " (transforms.json: instance_file_path per frame; ObjectSDF++ layout: segs/)",
                        Path(outputs.image_filenames[0]).parent if outputs.image_filenames else None)
    return instance_labels([Path(p) for p in train.instance_filenames])
