"""Train/val/test splits and few-shot view selection.

Protocols:

* ``"llff"`` (RegNeRF/FreeNeRF code for LLFF): every 8th image (``i % 8 == 0``) is test; the K
  training views are ``np.round(np.linspace(0, n_train - 1, K))`` over the remaining images.
* ``"dtu"`` (pixelNeRF/RegNeRF split for DTU's 49 views): training views are the first K of
  :data:`DTU_TRAIN_IDS` (in that order), test is every view neither in that list nor in
  :data:`DTU_EXCLUDED_IDS`.
* ``"blender"`` (GeCoNeRF's 3-view NeRF-synthetic lists, :data:`BLENDER_3_VIEWS`): with K = 3
  on a scene the lists name (by the dataset folder's name, ``metadata["scene"]``), those
  positions in the train split; otherwise ``"even"``.
* ``"even"``: K views evenly spaced over the train split, with the LLFF formula.

Split lists in :class:`~data.base.DataparserOutputs` are sorted frame indices, so the chosen DTU
views ``[25, 22, 28]`` appear as ``[22, 25, 28]``; the *choice* follows the protocol order.

Sparse points under few-shot (``points``): RegNeRF, FreeNeRF and CoherentGS compare against
baselines that know only the K views, so by default the points are re-triangulated from the K
views' own keypoints with the known poses (:func:`triangulate_tracks`, the counterpart of COLMAP's
``point_triangulator`` on those images), where the format records keypoints (COLMAP); else they
are the points two of the K views observed (:func:`points_seen_by`; COLMAP and LLFF tracks); else
all. Which keypoints belong to one point still comes from the full model's matching, whose tracks
may link two training views through a held-out one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

import torch

from data.base import DataparserOutputs
from data.images import load_image
from recon.cameras import Cameras
from recon.errors import ConfigError

FewShotProtocol = Literal["llff", "dtu", "blender", "even"]
FewShotPoints = Literal["retriangulate", "train-views", "all"]

TRIANGULATION_MAX_ERROR = 4.0
"""A re-triangulated point is dropped when it reprojects farther than this (pixels of the images as
loaded) from any of its training keypoints (COLMAP's ``filter_max_reproj_error``)."""
TRIANGULATION_MIN_ANGLE = 1.5
"""... or when no two of its training rays are this many degrees apart (COLMAP's ``filter_min_tri_angle``):
along nearly parallel rays the depth is not determined."""

DTU_TRAIN_IDS: tuple[int, ...] = (25, 22, 28, 40, 44, 48, 0, 8, 13)
"""pixelNeRF/RegNeRF training view IDs for DTU, in protocol order (few-shot takes the first K)."""
DTU_EXCLUDED_IDS: tuple[int, ...] = (3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39)
"""DTU views used neither for training nor testing (pixelNeRF: the views with little overlap)."""

BLENDER_3_VIEWS: dict[str, tuple[int, int, int]] = {
    "chair": (66, 73, 59), "drums": (73, 14, 91), "ficus": (65, 73, 99), "hotdog": (3, 75, 76),
    "lego": (4, 16, 99), "materials": (2, 34, 47), "mic": (58, 99, 3), "ship": (2, 67, 89),
}
"""Per-scene 3-view training lists of GeCoNeRF's NeRF-synthetic protocol (Kwak et al. 2023, the
official code's ``input_images`` per scene): positions in the scene's train split."""

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
    return _keep_points(outputs, keep)


def triangulate_tracks(
    tracks: np.ndarray,
    keypoints: np.ndarray,
    cameras: Cameras,
    frames: list[int],
    min_views: int = 2,
    max_error: float = TRIANGULATION_MAX_ERROR,
    min_angle: float = TRIANGULATION_MIN_ANGLE,
) -> tuple[np.ndarray, np.ndarray]:
    """Points triangulated from their observations in ``frames`` alone, with the known cameras.

    tracks [T, 2] int64 (point index, frame index), each pair once; keypoints [T, 2] pixel
    coordinates of those observations (distorted, as recorded); cameras: every frame's camera.
    Every point that at least ``min_views`` of ``frames`` observed is solved by linear triangulation
    (DLT on the undistorted normalised coordinates; Hartley and Zisserman 2004, *Multiple View
    Geometry*, sec. 12.2) and kept when it lies in front of each of those cameras, reprojects within
    ``max_error`` pixels of each keypoint and two of its rays meet at ``min_angle`` degrees or more
    (the acute angle between the lines: opposite rays are as degenerate as parallel ones).
    Returns the kept point indices [P] (ascending) and their positions [P, 3] float64.
    """
    chosen = np.asarray(sorted(frames), dtype=np.int64)
    seen = np.isin(tracks[:, 1], chosen)
    point, frame, uv = tracks[seen, 0], tracks[seen, 1], np.asarray(keypoints, dtype=np.float64)[seen]
    ids, slot = np.unique(point, return_inverse=True)
    enough = (np.bincount(slot, minlength=len(ids)) >= min_views)[slot]
    point, frame, uv = point[enough], frame[enough], uv[enough]
    ids, slot = np.unique(point, return_inverse=True)
    if not len(ids):
        return ids, np.zeros((0, 3))
    cams = cameras[frame.tolist()]
    # Camera-space rays through the keypoints, by the cameras' own lens model (fisheye included).
    d = cams.pixel_directions(torch.arange(len(cams)), torch.from_numpy(uv[:, 0]), torch.from_numpy(uv[:, 1])).double().numpy()
    w2c = cams.world_to_cameras().double().numpy()[:, :3]  # [T', 3, 4], one per observation
    # The algebraic error DLT minimises depends on the world frame: solve in one fixed by the chosen
    # cameras (centred on them, unit spread; Hartley's conditioning), so the points move with the
    # cameras under any similarity, whatever the dataset's normalisation.
    centres = cameras.camera_to_worlds[:, :, 3].double().numpy()
    mean = centres[chosen].mean(0)
    spread = float(np.sqrt(((centres[chosen] - mean) ** 2).sum(1).mean())) or 1.0
    conditioned = np.concatenate([spread * w2c[:, :, :3], w2c[:, :, :3] @ mean[:, None] + w2c[:, :, 3:]], 2)
    # Each observation's ray d is parallel to P.X: dx P3.X = dz P1.X and dy P3.X = dz P2.X (x P3.X =
    # P1.X for x = dx / dz, valid at any angle); the rows are scaled to unit length.
    dx, dy, dz = (d[:, i : i + 1] for i in range(3))
    eqs = np.concatenate([dx * conditioned[:, 2] - dz * conditioned[:, 0], dy * conditioned[:, 2] - dz * conditioned[:, 1]])
    eqs /= np.linalg.norm(eqs, axis=1, keepdims=True)
    normal = np.zeros((len(ids), 4, 4))
    np.add.at(normal, np.r_[slot, slot], eqs[:, :, None] * eqs[:, None, :])
    homogeneous = np.linalg.eigh(normal)[1][:, :, 0]  # eigenvector of the smallest eigenvalue
    good = np.abs(homogeneous[:, 3]) > 1e-12  # else a point at infinity
    xyz = mean + spread * homogeneous[:, :3] / np.where(good, homogeneous[:, 3], 1.0)[:, None]

    depth = np.einsum("tij,tj->ti", w2c[:, :, :3], xyz[slot])[:, 2] + w2c[:, 2, 3]
    good &= np.bincount(slot, weights=depth <= 0, minlength=len(ids)) == 0
    rays = xyz[slot] - centres[frame]
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    widest = np.zeros(len(ids))
    for a, fa in enumerate(chosen):
        at = frame == fa
        if not at.any():
            continue
        projected, _ = cameras.project(torch.from_numpy(xyz[slot[at]]).float(), int(fa))
        error = np.linalg.norm(projected.double().numpy() - uv[at], axis=1)
        good[slot[at][~(error <= max_error)]] = False
        for fb in chosen[a + 1 :]:
            both, ia, ib = np.intersect1d(slot[at], slot[frame == fb], return_indices=True)
            # |cos|: rays from opposite sides are as degenerate as parallel ones (COLMAP does the same).
            cosine = np.clip(np.abs((rays[at][ia] * rays[frame == fb][ib]).sum(-1)), 0.0, 1.0)
            widest[both] = np.fmax(widest[both], np.degrees(np.arccos(cosine)))
    good &= widest >= min_angle
    return ids[good], xyz[good]


def retriangulated(outputs: DataparserOutputs, frames: list[int]) -> DataparserOutputs:
    """``outputs`` whose sparse points are :func:`triangulate_tracks` from ``frames``' keypoints
    (needs ``points3d_tracks`` and ``points3d_keypoints``), coloured by the mean of those frames'
    pixels at the keypoints (COLMAP's colours average every image, held-out ones included); tracks
    and keypoints keep only those frames."""
    tracks, keypoints = outputs.points3d_tracks, outputs.points3d_keypoints
    kept, xyz = triangulate_tracks(tracks, keypoints, outputs.cameras, frames)
    new_index = np.full(len(outputs.points3d), -1, dtype=np.int64)
    new_index[kept] = np.arange(len(kept))
    rows = (new_index[tracks[:, 0]] >= 0) & np.isin(tracks[:, 1], np.asarray(frames, dtype=np.int64))
    tracks = np.stack([new_index[tracks[rows, 0]], tracks[rows, 1]], axis=1)
    keypoints = keypoints[rows]
    total = np.zeros((len(kept), 3))
    for f in np.unique(tracks[:, 1]):
        image = load_image(outputs.image_filenames[f])[..., :3]
        at = tracks[:, 1] == f
        h, w = image.shape[:2]
        col = np.clip(np.floor(keypoints[at, 0]).astype(np.int64), 0, w - 1)
        row = np.clip(np.floor(keypoints[at, 1]).astype(np.int64), 0, h - 1)
        np.add.at(total, tracks[at, 0], image[row, col].astype(np.float64))
    rgb = np.round(total / np.bincount(tracks[:, 0], minlength=len(kept))[:, None].clip(1)).astype(np.uint8)
    return replace(outputs, points3d=xyz.astype(np.float32), points3d_rgb=rgb, points3d_tracks=tracks, points3d_keypoints=keypoints)


def apply_few_shot(outputs: DataparserOutputs, k: int, protocol: FewShotProtocol, points: FewShotPoints = "retriangulate") -> DataparserOutputs:
    """``outputs`` with its train split narrowed to K views by ``protocol``; val/test untouched.

    The sparse points, by ``points``: ``"retriangulate"`` computes them again from the chosen views'
    keypoints alone (:func:`retriangulated`; needs ``points3d_keypoints``), ``"train-views"`` keeps
    those that two or more of the chosen views observed (:func:`points_seen_by`; needs
    ``points3d_tracks``); each falls back to the next where the format lacks what it needs, down to
    ``"all"``. What was done is recorded in ``metadata["few_shot"]["points"]``.

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
    elif protocol in ("llff", "blender", "even"):
        if k > len(train):
            raise ConfigError(f"num_train_views={k} but the train split has only {len(train)} views")
        listed = BLENDER_3_VIEWS.get(str(outputs.metadata.get("scene", ""))) if protocol == "blender" and k == 3 else None
        if listed is not None and max(listed) < len(train):
            chosen = [train[i] for i in listed]
        else:
            chosen = evenly_spaced(train, k)
            protocol = "even" if protocol == "blender" else protocol
    else:
        raise ConfigError(f"unknown few-shot protocol {protocol!r} (llff, dtu, blender or even)")
    splits = dict(outputs.splits)
    splits["train"] = sorted(chosen)
    metadata = dict(outputs.metadata)
    # "train_split": the full train split, for methods whose official code reads its poses (GeCoNeRF's nearby poses).
    metadata["few_shot"] = {"protocol": protocol, "k": int(k), "views": [int(i) for i in chosen], "train_split": [int(i) for i in train]}
    if outputs.points3d is not None:
        if points not in ("retriangulate", "train-views", "all"):
            raise ConfigError(f"unknown few_shot_points {points!r} (retriangulate, train-views or all)")
        before = len(outputs.points3d)
        if points == "retriangulate" and outputs.points3d_tracks is not None and outputs.points3d_keypoints is not None:
            outputs = retriangulated(outputs, chosen)
            how = "re-triangulated from >= 2 training views"
        elif points != "all" and outputs.points3d_tracks is not None:
            outputs = points_seen_by(outputs, chosen)
            how = "seen by >= 2 training views"
        else:
            how = "all" if points == "all" else "all (the format gives no tracks)"
        metadata["few_shot"]["points"] = {"kept": how, "count": len(outputs.points3d), "of": before}
    return replace(outputs, splits=splits, metadata=metadata)


def apply_block(outputs: DataparserOutputs, train_views: list[int] | None, points_box: tuple[float, ...] | None) -> DataparserOutputs:
    """``outputs`` narrowed to one block of a block-partitioned run (``ns-train-blocks``,
    :mod:`recon.blocks`): the train split becomes ``train_views`` (frame indices, each in the train
    split), the sparse points those inside ``points_box`` (min x y z, max x y z; normalised frame;
    infinite sides are open), and the scene box is clipped to the box's finite sides. The
    normalisation, the val/test splits and the frame indexing stay those of the whole dataset, so
    every block trains in one common frame and their results can be merged. What was kept is in
    ``metadata["block"]``. ConfigError for a view outside the train split or an empty selection."""
    if train_views is None and points_box is None:
        return outputs
    splits, metadata = dict(outputs.splits), dict(outputs.metadata)
    info: dict = {}
    if train_views is not None:
        train = set(outputs.splits.get("train", []))
        views = sorted({int(i) for i in train_views})
        outside = [i for i in views if i not in train]
        if outside:
            raise ConfigError(f"train_views: frame(s) {outside[:5]} are not in the train split ({len(train)} views)")
        if not views:
            raise ConfigError("train_views is empty: a block needs at least one training view")
        splits["train"] = views
        info["train_views"] = len(views)
    scene_box = outputs.scene_box
    if points_box is not None:
        box = np.asarray(points_box, dtype=np.float64).reshape(2, 3)
        if not (box[0] <= box[1]).all():
            raise ConfigError(f"points_box: each min must not exceed its max, got {points_box}")
        if outputs.points3d is not None:
            pts = np.asarray(outputs.points3d, dtype=np.float64)
            keep = ((pts >= box[0]) & (pts <= box[1])).all(1)
            outputs = _keep_points(outputs, keep)
            info["points"] = int(keep.sum())
        aabb = scene_box.aabb.clone()
        lo, hi = torch.as_tensor(np.maximum(box[0], aabb[0].double().numpy())), torch.as_tensor(np.minimum(box[1], aabb[1].double().numpy()))
        if (lo < hi).all():  # a box beside the content keeps the content box
            aabb = torch.stack([lo, hi]).to(aabb.dtype)
        scene_box = replace(scene_box, aabb=aabb)
    metadata["block"] = info
    return replace(outputs, splits=splits, metadata=metadata, scene_box=scene_box)


def _keep_points(outputs: DataparserOutputs, keep: np.ndarray) -> DataparserOutputs:
    """``outputs`` with only the sparse points where ``keep`` [P] is true; tracks and keypoints follow."""
    tracks, rgb, keypoints = outputs.points3d_tracks, outputs.points3d_rgb, outputs.points3d_keypoints
    kept_tracks = None
    if tracks is not None:
        rows = keep[tracks[:, 0]]
        kept_tracks = np.stack([(np.cumsum(keep) - 1)[tracks[rows, 0]], tracks[rows, 1]], axis=1)
        keypoints = None if keypoints is None else keypoints[rows]
    return replace(
        outputs,
        points3d=outputs.points3d[keep],
        points3d_rgb=None if rgb is None else rgb[keep],
        points3d_tracks=kept_tracks,
        points3d_keypoints=keypoints,
    )
