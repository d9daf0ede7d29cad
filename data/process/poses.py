"""How far recovered camera poses are from reference poses, up to a similarity transform.

Structure from motion fixes the world only up to rotation, translation and scale, so poses are
compared after the similarity that best maps the recovered camera centres onto the reference ones
(Umeyama 1991, "Least-squares estimation of transformation parameters between two point
patterns", IEEE TPAMI 13(4)). Used by the tests and the benchmark of ``ns-process-data``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R [3, 3], t [3]) minimising sum ||dst - (s R src + t)||^2 over points src, dst [N, 3]
    (N >= 3, not all on a line)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / xs.var(0).sum())
    return s, R, mu_d - s * R @ mu_s


@dataclass
class PoseErrors:
    """Errors of N poses after similarity alignment."""

    rotation_deg: np.ndarray
    """[N] angle between recovered and reference camera orientation, degrees."""
    position: np.ndarray
    """[N] distance between camera centres, as a fraction of the reference cameras' RMS distance
    from their centroid (the size of the capture)."""


def pose_errors(c2w: np.ndarray, reference_c2w: np.ndarray) -> PoseErrors:
    """Errors of camera-to-world poses c2w [N, 3, 4] (or [N, 4, 4]) against reference_c2w in the
    same camera convention, after aligning the centres by a similarity.

    The similarity is fitted twice: to all centres, then to those within 3x the median distance
    (at least 3), so that one badly registered camera does not shift the others' errors; every
    camera's error is reported."""
    centres, ref_centres = c2w[:, :3, 3], reference_c2w[:, :3, 3]
    s, R, t = umeyama(centres, ref_centres)
    dist = np.linalg.norm(s * centres @ R.T + t - ref_centres, axis=-1)
    inliers = dist <= 3 * np.median(dist)
    if inliers.sum() >= 3:
        s, R, t = umeyama(centres[inliers], ref_centres[inliers])
    aligned = (s * centres @ R.T) + t
    size = np.sqrt(((ref_centres - ref_centres.mean(0)) ** 2).sum(-1).mean())
    rel = np.einsum("nji,njk->nik", reference_c2w[:, :3, :3], R @ c2w[:, :3, :3])
    # atan2 of sine and cosine: arccos of the trace alone loses small angles to rounding
    cos = (np.trace(rel, axis1=1, axis2=2) - 1) / 2
    sin = np.linalg.norm(rel[:, [2, 0, 1], [1, 2, 0]] - rel[:, [1, 2, 0], [2, 0, 1]], axis=-1) / 2
    return PoseErrors(np.degrees(np.arctan2(sin, cos)), np.linalg.norm(aligned - ref_centres, axis=-1) / size)
