"""3D Convex Splatting's densification: split a convex into K children on its sharpness gradient,
prune by mask, opacity and size, reset opacities (Held et al. 2025, sec. 3.4; the official
``scene/convex_model.py`` and ``train.py``, whose values are the defaults).

Statistic: the signed gradient of the loss with respect to the activated sharpness sigma, summed
over the steps in which the convex was visible and divided by their number (the official code
keeps the sign; its densification takes convexes whose mean is at or above the threshold).
A split replaces a convex by K children, one per defining point p_k: child k is centred at
c + shift (p_k - c) and has the points c'_k + scale (p_j - c); its opacity is half the parent's,
its log-sharpness 0.88 x the parent's (sigma' = sigma^0.88), the rest copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recon.engine import distributed
from recon.render.gaussians.strategy import Optimizers, Params, remove, replace_rows, replace_with_children

_STATS = ("grad_sigma", "count")


def point_spread(points: Tensor) -> Tensor:
    """Largest per-axis standard deviation [N] of each convex's points [N, K, 3] about its centre
    (the official ``max_scaling``)."""
    return points.std(dim=1, unbiased=False).amax(-1)


@dataclass
class ConvexStrategy:
    """Split / prune / opacity reset of smooth convexes; gsplat's Strategy hooks."""

    grad_threshold: float = 2.5e-5
    """Split convexes whose mean signed d(loss)/d(sigma) is at or above this (official default)."""
    refine_start_iter: int = 500
    """Refinement happens only at steps strictly after this one."""
    refine_stop_iter: int = 9000
    """Last step of splitting (official densify_until_iter); afterwards only pruning, every ``prune_every_after``."""
    refine_every: int = 200
    """Steps between refinements."""
    prune_every_after: int = 1000
    """After ``refine_stop_iter``: steps between prunings by mask and opacity."""
    split_scale: float = 0.63
    """Children's points at this fraction of the parent's spread (official 0.63; indoor 0.7, outdoor 0.6)."""
    split_shift: float = 1.0
    """Children centred at c + shift (p_k - c) (official 1: on the parent's points)."""
    split_sigma_power: float = 0.88
    """Children's log-sharpness = this x the parent's (sigma' = sigma^0.88; indoor 0.85)."""
    split_opacity: float = 0.5
    """Children's opacity = this x the parent's."""
    prune_mask: float = 0.01
    """Prune convexes whose mask probability sigmoid(m) is at or below this (indoor 0.02)."""
    prune_opa: float = 0.03
    """Prune convexes whose opacity is below this."""
    prune_size: float = 0.3
    """After ``reset_every`` steps: prune convexes whose point spread exceeds this x the scene scale."""
    reset_every: int = 3000
    """Cap all opacities at ``reset_value`` every this many steps, while before ``reset_until``."""
    reset_until: int = 9000
    """No opacity resets from this step on (official reset_opacity_until)."""
    reset_value: float = 0.2
    """The opacity cap of a reset."""
    verbose: bool = False
    """Print the number of split and pruned convexes at every refinement."""

    def __post_init__(self) -> None:
        for name in ("refine_every", "reset_every", "prune_every_after"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ConvexStrategy.{name} must be positive, got {getattr(self, name)}")

    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        """grad_sigma [N]: summed signed d(loss)/d(sigma); count [N]: steps in which it was visible."""
        state: dict[str, Any] = {k: torch.zeros(0) for k in _STATS}
        state["scene_scale"] = float(scene_scale)
        return state

    def step_pre_backward(self, params: Params, optimizers: Optimizers, state: dict, step: int, info: dict) -> None:
        """Keep the gradient of the activated sharpness (a non-leaf tensor) that the renderer used."""
        info["sigma"].retain_grad()

    @torch.no_grad()
    def step_post_backward(self, params: Params, optimizers: Optimizers, state: dict, step: int, info: dict) -> None:
        sigma = info["sigma"]
        n = params["points"].shape[0]
        if step < self.refine_stop_iter and sigma.grad is not None:
            if state["grad_sigma"].numel() != n:
                state["grad_sigma"] = torch.zeros(n, device=sigma.device, dtype=sigma.dtype)
                state["count"] = torch.zeros(n, device=sigma.device, dtype=sigma.dtype)
            visible = (info["radii"] > 0).all(-1).any(0)
            grad, count = torch.where(visible, sigma.grad, torch.zeros_like(sigma.grad)), visible.to(sigma.dtype)
            distributed.all_reduce_(grad, count)  # summed over data-parallel processes: the same splits on each
            state["grad_sigma"] += grad
            state["count"] += count
        if self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0:
            n_split = self._split(params, optimizers, state)
            n_pruned = self._prune(params, optimizers, state, step, by_size=True)
            self._clear(state, params)
            if self.verbose:
                print(f"step {step}: {n_split} convexes split, {n_pruned} pruned, {params['points'].shape[0]} now")
        elif step >= self.refine_stop_iter and step % self.prune_every_after == 0:
            self._prune(params, optimizers, state, step, by_size=False)
            self._clear(state, params)
        if 0 < step < self.reset_until and step % self.reset_every == 0:
            cap = math.log(self.reset_value / (1.0 - self.reset_value))
            replace_rows(params, optimizers, lambda _, p: p.clamp(max=cap), torch.zeros_like, names=["opacities"])

    def _clear(self, state: dict, params: Params) -> None:
        n = params["points"].shape[0]
        device = params["points"].device
        state["grad_sigma"] = torch.zeros(n, device=device)
        state["count"] = torch.zeros(n, device=device)

    def _split(self, params: Params, optimizers: Optimizers, state: dict) -> int:
        if state["grad_sigma"].numel() != params["points"].shape[0]:
            return 0
        mean_grad = state["grad_sigma"] / state["count"].clamp_min(1)
        mask = (mean_grad >= self.grad_threshold) & (state["count"] > 0)
        m = int(mask.sum())
        if m:
            split_convexes(params, optimizers, state, mask, self.split_scale, self.split_shift, self.split_sigma_power, self.split_opacity)
        return m

    def _prune(self, params: Params, optimizers: Optimizers, state: dict, step: int, by_size: bool) -> int:
        mask = (torch.sigmoid(params["mask"]) <= self.prune_mask) | (torch.sigmoid(params["opacities"]) < self.prune_opa)
        if by_size and step > self.reset_every:
            mask |= point_spread(params["points"]) > self.prune_size * state["scene_scale"]
        n = int(mask.sum())
        if n:
            remove(params, optimizers, state, mask)
        return n


@torch.no_grad()
def split_convexes(
    params: Params, optimizers: Optimizers, state: dict, mask: Tensor, scale: float, shift: float, sigma_power: float, opacity_factor: float
) -> None:
    """Replace each convex selected by ``mask [N]`` by K children (module docstring); children are
    in K blocks (all first children, then all second ones, ...)."""
    points = params["points"]
    K = points.shape[1]

    def children(name: str, parents: Tensor) -> Tensor:
        if name == "points":
            center = parents.mean(1, keepdim=True)  # [M, 1, 3]
            rel = parents - center  # [M, K, 3]
            child_centers = center + shift * rel  # [M, K, 3]: child k around parent point k
            kids = child_centers[:, :, None, :] + scale * rel[:, None, :, :]  # [M, K (child), K (point), 3]
            return kids.transpose(0, 1).reshape(-1, K, 3)
        if name == "opacities":
            alpha = (opacity_factor * torch.sigmoid(parents)).clamp(1e-6, 1 - 1e-6)
            return torch.log(alpha / (1 - alpha)).repeat(K, *([1] * (parents.dim() - 1)))
        if name == "sigma":
            return (sigma_power * parents).repeat(K)
        return parents.repeat(K, *([1] * (parents.dim() - 1)))

    replace_with_children(params, optimizers, state, mask, children, K)
