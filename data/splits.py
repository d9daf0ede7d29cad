"""Train/val/test splits and few-shot view selection.

Protocols:

* ``"llff"`` (RegNeRF/FreeNeRF code for LLFF): every 8th image (``i % 8 == 0``) is test; the K
  training views are ``np.round(np.linspace(0, n_train - 1, K))`` over the remaining images.
* ``"dtu"`` (pixelNeRF/RegNeRF split for DTU's 49 views): training views are the first K of
  :data:`DTU_TRAIN_IDS` (in that order), test is every view neither in that list nor in
  :data:`DTU_EXCLUDED_IDS`.
* ``"even"``: K views evenly spaced over the train split, with the LLFF formula.

Split lists in :class:`~data.base.DataparserOutputs` are sorted frame indices, so the chosen DTU
views ``[25, 22, 28]`` appear as ``[22, 25, 28]``; the *choice* follows the protocol order.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from data.base import DataparserOutputs
from recon.errors import ConfigError

FewShotProtocol = Literal["llff", "dtu", "even"]

DTU_TRAIN_IDS: tuple[int, ...] = (25, 22, 28, 40, 44, 48, 0, 8, 13)
"""pixelNeRF/RegNeRF training view IDs for DTU, in protocol order (few-shot takes the first K)."""
DTU_EXCLUDED_IDS: tuple[int, ...] = (3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39)
"""DTU views used neither for training nor testing (pixelNeRF: the views with little overlap)."""

LLFF_HOLD = 8
"""Every ``LLFF_HOLD``-th image (``i % 8 == 0``) is a test image (NeRF's ``llffhold``)."""


def interval_splits(n: int, every: int = LLFF_HOLD) -> dict[str, list[int]]:
    """NeRF's ``llffhold`` split of n frames: test = ``i % every == 0``, train = the rest, val = test."""
    if every < 1:
        raise ConfigError(f"eval_every must be at least 1, got {every}")
    test = [i for i in range(n) if i % every == 0]
    train = [i for i in range(n) if i % every != 0]
    if not train:  # fewer than 2 frames: train on everything rather than on nothing
        train = list(range(n))
    return {"train": train, "val": list(test), "test": test}


def dtu_test_ids(frame_ids: list[int]) -> list[int]:
    """Frame positions whose DTU view ID is in the RegNeRF test set (neither train nor excluded)."""
    skip = set(DTU_TRAIN_IDS) | set(DTU_EXCLUDED_IDS)
    return [i for i, fid in enumerate(frame_ids) if fid not in skip]


def dtu_splits(frame_ids: list[int]) -> dict[str, list[int]]:
    """The full-view DTU split: every frame trains (as MonoSDF/NeuS/IDR do for reconstruction),
    test (= val) is the RegNeRF test set. Few-shot then narrows train with :func:`apply_few_shot`."""
    test = dtu_test_ids(frame_ids)
    return {"train": list(range(len(frame_ids))), "val": list(test), "test": test}


def evenly_spaced(indices: list[int], k: int) -> list[int]:
    """K of ``indices`` at ``np.round(np.linspace(0, len - 1, K))`` (RegNeRF's LLFF selection)."""
    picks = np.round(np.linspace(0, len(indices) - 1, k)).astype(int)
    return [indices[i] for i in picks]


def points_seen_by(outputs: DataparserOutputs, frames: list[int], min_views: int = 2) -> DataparserOutputs:
    """``outputs`` keeping only the sparse points that at least ``min_views`` of ``frames``
    observed (by ``points3d_tracks``; outputs without tracks are returned as they are)."""
    tracks = outputs.points3d_tracks
    if outputs.points3d is None or tracks is None:
        return outputs
    num = len(outputs.points3d)
    seen = tracks[np.isin(tracks[:, 1], np.asarray(frames, dtype=np.int64))]
    keep = np.bincount(seen[:, 0], minlength=num)[:num] >= min_views
    new_index = np.cumsum(keep) - 1
    kept_tracks = tracks[keep[tracks[:, 0]]]
    kept_tracks = np.stack([new_index[kept_tracks[:, 0]], kept_tracks[:, 1]], axis=1)
    rgb = outputs.points3d_rgb
    return replace(
        outputs, points3d=outputs.points3d[keep], points3d_rgb=None if rgb is None else rgb[keep], points3d_tracks=kept_tracks
    )


def apply_few_shot(
    outputs: DataparserOutputs, k: int, protocol: FewShotProtocol, points: Literal["train-views", "all"] = "train-views"
) -> DataparserOutputs:
    """``outputs`` with its train split narrowed to K views by ``protocol``; val/test untouched.

    ``points="train-views"`` also keeps only the sparse points that two or more of the chosen views
    observed (:func:`points_seen_by`; needs ``points3d_tracks``), recorded in
    ``metadata["few_shot"]["points"]``.

    For ``"dtu"`` the frames' DTU view IDs are read from ``outputs.metadata["frame_ids"]`` (default:
    the frame position). Raises ConfigError when K < 1 or K exceeds the views available.
    """
    train = sorted(outputs.splits.get("train", []))
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"num_train_views must be a positive integer, got {k!r}")
    if protocol == "dtu":
        frame_ids = list(outputs.metadata.get("frame_ids", range(len(outputs))))
        pos = {fid: i for i, fid in enumerate(frame_ids)}
        candidates = [pos[fid] for fid in DTU_TRAIN_IDS if fid in pos and pos[fid] in set(train)]
        if k > len(candidates):
            raise ConfigError(
                f"num_train_views={k} but the DTU protocol has only {len(candidates)} training views"
                f" (IDs {list(DTU_TRAIN_IDS)}) in this dataset"
            )
        chosen = candidates[:k]
    elif protocol in ("llff", "even"):
        if k > len(train):
            raise ConfigError(f"num_train_views={k} but the train split has only {len(train)} views")
        chosen = evenly_spaced(train, k)
    else:
        raise ConfigError(f"unknown few-shot protocol {protocol!r} (llff, dtu or even)")
    splits = dict(outputs.splits)
    splits["train"] = sorted(chosen)
    metadata = dict(outputs.metadata)
    metadata["few_shot"] = {"protocol": protocol, "k": int(k), "views": [int(i) for i in chosen]}
    if outputs.points3d is not None:
        if points not in ("train-views", "all"):
            raise ConfigError(f"unknown few_shot_points {points!r} (train-views or all)")
        before = len(outputs.points3d)
        if points == "train-views" and outputs.points3d_tracks is not None:
            outputs = points_seen_by(outputs, chosen)
            how = "seen by >= 2 training views"
        else:
            how = "all" if points == "all" else "all (the format gives no tracks)"
        metadata["few_shot"]["points"] = {"kept": how, "count": len(outputs.points3d), "of": before}
    return replace(outputs, splits=splits, metadata=metadata)
