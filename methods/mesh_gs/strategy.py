"""Mesh-GS's densification, "rendering-guided face split" (Gao et al. 2024, "Mesh-based Gaussian
Splatting for Real-time Large-scale Deformation", sec. 4; the official ``split_mesh_and_gaussian_pro``).

The statistic, schedule and opacity reset are 3DGS's (:class:`DefaultStrategy`: mean screen-space
gradient of the projected mean, refinement every ``refine_every`` steps strictly after
``refine_start_iter`` and before ``refine_stop_iter``, opacities capped at 2 ``prune_opa`` every
``reset_every`` steps). Only the action differs: a Gaussian whose statistic exceeds ``grow_grad2d``
has its (sub-)face split into four by the edge midpoints and is replaced by five children, one
on each sub-face and one on the whole face; every child sits at its face's centroid with zero
normal offset, log scales reduced by log 3.2, the rest copied. There is no clone and no pruning
(the official code has neither). Children start with zero optimizer moments; the step in which
the split happens updates no parameter (all were replaced), as in the official code.

The per-Gaussian geometry travels in ``params`` as frozen entries, so that the row operations of
:mod:`recon.render.gaussians.strategy` keep it in the Gaussians' order: ``face_ids`` [N] (the face
of the original proxy mesh), ``corners`` [N, 3, 3] (the sub-face's corners in barycentric
coordinates of that face) and ``radius`` [N] (the normal offset's bound, +-2 radius).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from recon.geometry.mesh import midpoint_subdivide
from recon.render.gaussians.strategy import DefaultStrategy, Optimizers, Params, replace_with_children

SCALE_DIVISOR = 3.2
"""Each subdivision level divides a Gaussian's scales by this (official)."""


def face_children(name: str, parents: Tensor, with_parent_face: bool, offset_radius: str) -> Tensor:
    """The children [K M, ...] of M Gaussians' entry ``name`` (parents [M, ...]) when their faces are
    split into four, in blocks: the four sub-faces (:func:`midpoint_subdivide`'s order), then,
    when ``with_parent_face``, the whole face (K = 5; else K = 4)."""
    k = 5 if with_parent_face else 4
    if name == "corners":
        kids = midpoint_subdivide(parents).reshape(-1, 3, 3)
        return torch.cat([kids, parents]) if with_parent_face else kids
    if name == "radius" and offset_radius == "face":
        # The bound is the mean edge length of the Gaussian's own face; sub-faces have half the edges.
        halves = (parents / 2).repeat(4)
        return torch.cat([halves, parents]) if with_parent_face else halves
    if name in ("bary", "offset"):
        return parents.new_zeros((k * len(parents), *parents.shape[1:]))
    if name == "scales":
        return (parents - math.log(SCALE_DIVISOR)).repeat(k, 1)
    return parents.repeat(k, *([1] * (parents.dim() - 1)))


@torch.no_grad()
def split_faces(params: Params, optimizers: Optimizers, state: dict, mask: Tensor, offset_radius: str = "face") -> None:
    """Replace each Gaussian selected by ``mask`` [N] by its five face-split children (module docstring);
    unselected Gaussians keep their order and come first, then the children in five blocks."""
    replace_with_children(params, optimizers, state, mask, lambda n, p: face_children(n, p, True, offset_radius), 5)


@dataclass
class FaceSplitStrategy(DefaultStrategy):
    """Face split on the 3DGS statistic, no clone, no prune; gsplat's Strategy hooks (module docstring)."""

    refine_every: int = 200
    """Refine at steps that are multiples of this (official densification_interval 200)."""
    offset_radius: Literal["face", "inherited"] = "face"
    """The children's normal-offset bound: "face" = the mean edge length of their own sub-face (ours),
    "inherited" = the parent's (the official code never shrinks it, so deeply split Gaussians may
    leave their small face by twice the original face's edge length)."""

    max_gaussians: int | None = None
    """Cap on the count [ours; the official code has none]: when the selected splits would pass it,
    only the Gaussians with the largest statistic are split (each split adds four)."""

    def _grow(self, params: Params, optimizers: Optimizers, state: dict, step: int) -> tuple[int, int]:
        grad = state["grad2d"] / state["count"].clamp_min(1)
        mask = grad > self.grow_grad2d
        if self.max_gaussians is not None:
            room = max(0, (self.max_gaussians - len(grad)) // 4)
            if int(mask.sum()) > room:
                keep = torch.topk(torch.where(mask, grad, torch.full_like(grad, -1.0)), room).indices
                mask = torch.zeros_like(mask)
                mask[keep] = True
        n = int(mask.sum())
        if n:
            split_faces(params, optimizers, state, mask, self.offset_radius)
        return 0, n

    def _prune(self, params: Params, optimizers: Optimizers, state: dict, step: int) -> int:
        return 0
