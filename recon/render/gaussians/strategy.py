"""Adaptive density control of 3D Gaussians: clone, split, prune and opacity reset.

This is the densification of 3D Gaussian Splatting (Kerbl et al., "3D Gaussian Splatting for
Real-Time Radiance Field Rendering", SIGGRAPH 2023, section 5.2) with the semantics and defaults
of gsplat's ``DefaultStrategy`` (nerfstudio-project/gsplat, ``gsplat/strategy/default.py``), so
that a scene trains the same here as with gsplat:

* the statistic is the mean, over the views in which a Gaussian is visible, of the norm of the
  gradient of the loss with respect to its projected 2D mean, in [-1, 1] screen units;
* Gaussians whose statistic exceeds ``grow_grad2d`` are *cloned* when small (largest world scale
  <= ``grow_scale3d`` x scene scale) and *split* when large: two children drawn from the parent's
  own Gaussian, with the parent's scales divided by 1.6, replace the parent;
* Gaussians with opacity below ``prune_opa`` (and, after the first opacity reset, those larger than
  ``prune_scale3d`` x scene scale) are *removed*;
* every ``reset_every`` steps all opacities are capped at ``2 * prune_opa``.

Parameters follow gsplat's convention: a ``torch.nn.ParameterDict`` (or dict) with ``means [N,3]``,
``scales [N,3]`` (log), ``quats [N,4]`` (wxyz), ``opacities [N]`` (logits), ``sh0 [N,1,3]``,
``shN [N,K-1,3]`` and any other per-Gaussian parameter, and one optimizer per name holding exactly
that parameter. Every row operation replaces each parameter by a new ``Parameter`` in the dict and
in its optimizer, and edits the optimizer's per-row moments to match: surviving rows keep their
moments, new rows (clones, split children) start with zero moments, removed rows lose theirs, and
scalar entries such as Adam's ``step`` are kept. The row operations are public functions so that
method-specific strategies (3DCS's K-way split, mesh-bound face splits) reuse the bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.engine import distributed
from recon.rotations import quaternion_to_matrix

__all__ = [
    "DefaultStrategy",
    "duplicate",
    "num_rows",
    "remove",
    "replace_rows",
    "replace_with_children",
    "reset_opacities",
    "split",
]

Params = MutableMapping[str, torch.nn.Parameter]
Optimizers = Mapping[str, torch.optim.Optimizer]
_STATS = ("grad2d", "count", "radii")


@dataclass
class DefaultStrategy:
    """Kerbl et al. 2023 adaptive density control, with gsplat's ``DefaultStrategy`` semantics.

    Usage (``step`` counts from 0; ``info`` is the rasterizer's info dict)::

        strategy.check_sanity(params, optimizers)
        state = strategy.initialize_state(scene_scale)
        for step in range(max_steps):
            image, alpha, info = rasterize(...)
            strategy.step_pre_backward(params, optimizers, state, step, info)
            loss.backward()
            for opt in optimizers.values():
                opt.step(); opt.zero_grad(set_to_none=True)
            strategy.step_post_backward(params, optimizers, state, step, info)

    ``info`` must hold ``means2d`` (the projected means that the rasterizer differentiated,
    [C, N, 2], or [nnz, 2] when packed), ``radii`` ([C, N, 2] or [C, N]; [nnz, 2] or [nnz] when
    packed), ``width``, ``height``, ``n_cameras`` and, when packed, ``gaussian_ids [nnz]``.
    """

    prune_opa: float = 0.005
    """Gaussians with opacity (after the sigmoid) below this are pruned."""
    grow_grad2d: float = 0.0002
    """Gaussians whose mean screen-space gradient norm exceeds this are cloned or split."""
    grow_scale3d: float = 0.01
    """Largest world scale / scene scale at or below which a high-gradient Gaussian is cloned (above: split)."""
    grow_scale2d: float = 0.05
    """Screen radius / image size above which a Gaussian is split (only before refine_scale2d_stop_iter)."""
    prune_scale3d: float = 0.1
    """Largest world scale / scene scale above which a Gaussian is pruned (after the first opacity reset)."""
    prune_scale2d: float = 0.15
    """Screen radius / image size above which a Gaussian is pruned (only before refine_scale2d_stop_iter)."""
    refine_scale2d_stop_iter: int = 0
    """Apply the screen-radius split/prune rules before this step; 0 disables them (as in practice in Inria's code)."""
    refine_start_iter: int = 500
    """Refinement (clone, split, prune) happens only at steps strictly after this one."""
    refine_stop_iter: int = 15_000
    """From this step on nothing happens: no statistics, no refinement, no opacity reset."""
    reset_every: int = 3000
    """Cap all opacities at 2 * prune_opa every this many steps."""
    refine_every: int = 100
    """Refine at steps that are multiples of this."""
    pause_refine_after_reset: int = 0
    """Skip refinement for this many steps after each opacity reset (e.g. the number of training images)."""
    absgrad: bool = False
    """Use the absolute 2D gradient (AbsGS; needs means2d.absgrad from the rasterizer); use grow_grad2d ~6e-4."""
    revised_opacity: bool = False
    """Give split children opacity 1 - sqrt(1 - alpha) (Bulo et al. 2024, arXiv:2404.06109) instead of the parent's."""
    verbose: bool = False
    """Print the number of cloned, split and pruned Gaussians at every refinement."""
    key_for_gradient: Literal["means2d", "gradient_2dgs"] = "means2d"
    """The info entry whose gradient is the statistic (2DGS rasterizers provide 'gradient_2dgs')."""

    def __post_init__(self) -> None:
        for name in ("refine_every", "reset_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DefaultStrategy.{name} must be positive, got {getattr(self, name)}")

    def check_sanity(self, params: Params, optimizers: Optimizers) -> None:
        """Raise ValueError unless every trainable parameter has its own single-parameter optimizer
        and the parameters the rules read (means, scales, quats, opacities) are present."""
        missing = [k for k in ("means", "scales", "quats", "opacities") if k not in params]
        if missing:
            raise ValueError(f"DefaultStrategy needs the parameters {', '.join(missing)}")
        trainable = {k for k, p in params.items() if p.requires_grad}
        if trainable != set(optimizers):
            raise ValueError(
                f"one optimizer per trainable parameter is required: parameters {sorted(trainable)}, "
                f"optimizers {sorted(optimizers)}"
            )
        for name, opt in optimizers.items():
            groups = [g["params"] for g in opt.param_groups]
            if len(groups) != 1 or len(groups[0]) != 1 or groups[0][0] is not params[name]:
                raise ValueError(f"optimizer '{name}' must hold exactly one parameter, params['{name}']")

    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        """The running state: per-Gaussian statistics (allocated at the first step, on the device of
        the gradients) and the scene scale. A dict of tensors and one float, fit for a checkpoint.

        grad2d: [N] sum of screen-space gradient norms; count: [N] number of views in which the
        Gaussian was visible; radii: [N] largest screen radius / max(width, height).
        """
        state: dict[str, Any] = {k: torch.zeros(0) for k in _STATS}
        state["scene_scale"] = float(scene_scale)
        return state

    def is_refine_step(self, step: int) -> bool:
        """Whether ``step_post_backward`` clones, splits and prunes at this step."""
        return (
            self.refine_start_iter < step < self.refine_stop_iter
            and step % self.refine_every == 0
            and step % self.reset_every >= self.pause_refine_after_reset
        )

    def is_reset_step(self, step: int) -> bool:
        """Whether ``step_post_backward`` caps the opacities at this step."""
        return 0 < step < self.refine_stop_iter and step % self.reset_every == 0

    def step_pre_backward(self, params: Params, optimizers: Optimizers, state: dict, step: int, info: dict) -> None:
        """Before ``loss.backward()``: keep the gradient of the projected means (a non-leaf tensor)."""
        if self.key_for_gradient not in info:
            raise KeyError(f"DefaultStrategy needs info['{self.key_for_gradient}'] from the rasterizer")
        info[self.key_for_gradient].retain_grad()

    def step_post_backward(
        self,
        params: Params,
        optimizers: Optimizers,
        state: dict,
        step: int,
        info: dict,
        packed: bool = False,
    ) -> dict[str, int]:
        """After ``loss.backward()`` (before or after the optimizers' step): accumulate the
        statistics, refine on the schedule, reset opacities on the schedule.

        Returns the counts ``{"cloned", "split", "pruned"}`` of this call (zeros off the refine grid).
        """
        counts = {"cloned": 0, "split": 0, "pruned": 0}
        if step >= self.refine_stop_iter:
            return counts
        self._update_state(params, state, info, packed)

        if self.is_refine_step(step):
            counts["cloned"], counts["split"] = self._grow(params, optimizers, state, step)
            counts["pruned"] = self._prune(params, optimizers, state, step)
            for k in _STATS:
                state[k].zero_()
            if self.verbose:
                print(
                    f"step {step}: cloned {counts['cloned']}, split {counts['split']}, pruned {counts['pruned']}; "
                    f"{num_rows(params)} Gaussians"
                )
        if self.is_reset_step(step):
            reset_opacities(params, optimizers, value=2.0 * self.prune_opa)
        return counts

    @torch.no_grad()
    def _update_state(self, params: Params, state: dict, info: dict, packed: bool) -> None:
        needed = ["width", "height", "n_cameras", "radii", self.key_for_gradient] + (["gaussian_ids"] if packed else [])
        missing = [k for k in needed if k not in info]
        if missing:
            raise KeyError(f"DefaultStrategy needs info entries {', '.join(missing)} from the rasterizer")
        means2d = info[self.key_for_gradient]
        grads = getattr(means2d, "absgrad", None) if self.absgrad else means2d.grad
        if grads is None:
            what = "absgrad (rasterize with absgrad=True)" if self.absgrad else "gradient"
            raise RuntimeError(
                f"info['{self.key_for_gradient}'] has no {what}: call step_pre_backward before loss.backward()"
            )
        width, height, n_cameras = info["width"], info["height"], info["n_cameras"]
        # Inria's statistic is the gradient in NDC ([-1, 1] across the image): pixel gradients times
        # half the image size. A batch of C cameras averages its loss over them, hence the factor C.
        scale = grads.new_tensor([width / 2.0 * n_cameras, height / 2.0 * n_cameras])
        grads = grads.detach().float() * scale

        n = num_rows(params)
        for k in _STATS:
            t = state[k]
            if t.shape[0] == 0 and n > 0:
                state[k] = torch.zeros(n, device=grads.device)
            elif t.shape[0] != n:
                raise ValueError(f"strategy state '{k}' has {t.shape[0]} rows for {n} Gaussians")
            else:
                state[k] = t.to(grads.device)

        radii = info["radii"]
        if packed:
            ids = info["gaussian_ids"].long()
            grads = grads.reshape(-1, 2)
            radii = radii.reshape(len(ids), -1).amax(dim=-1)
        else:
            grads = grads.reshape(-1, n, 2)  # [C, N, 2] (leading batch dims flattened)
            radii = radii.reshape(grads.shape[0], n, -1)  # [C, N, 2] or [C, N, 1]
            visible = (radii > 0).all(dim=-1)
            ids = torch.nonzero(visible, as_tuple=True)[1]
            grads = grads[visible]
            radii = radii[visible].amax(dim=-1)
        # This step's increments, summed (radii: maximum) over data-parallel processes before they
        # count, so that every process refines the same Gaussians (a no-op in one process).
        grad2d = torch.zeros_like(state["grad2d"]).index_add_(0, ids, grads.norm(dim=-1))
        count = torch.zeros_like(state["count"]).index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))
        radii = torch.zeros_like(state["radii"]).scatter_reduce_(0, ids, radii.float() / float(max(width, height)), reduce="amax")
        distributed.all_reduce_(grad2d, count)
        distributed.all_reduce_(radii, op="max")
        state["grad2d"] += grad2d
        state["count"] += count
        torch.maximum(state["radii"], radii, out=state["radii"])

    @torch.no_grad()
    def _grow(self, params: Params, optimizers: Optimizers, state: dict, step: int) -> tuple[int, int]:
        grad = state["grad2d"] / state["count"].clamp_min(1)
        is_grad_high = grad > self.grow_grad2d
        is_small = torch.exp(params["scales"]).amax(dim=-1) <= self.grow_scale3d * state["scene_scale"]
        is_clone = is_grad_high & is_small
        is_split = is_grad_high & ~is_small
        if step < self.refine_scale2d_stop_iter:
            is_split |= state["radii"] > self.grow_scale2d
        n_clone, n_split = int(is_clone.sum()), int(is_split.sum())
        if n_clone:
            duplicate(params, optimizers, state, is_clone)
        if n_split:
            # Clones were appended after the originals; they are never split in the same round.
            is_split = torch.cat([is_split, is_split.new_zeros(n_clone)])
            split(params, optimizers, state, is_split, revised_opacity=self.revised_opacity)
        return n_clone, n_split

    @torch.no_grad()
    def _prune(self, params: Params, optimizers: Optimizers, state: dict, step: int) -> int:
        is_prune = torch.sigmoid(params["opacities"].flatten()) < self.prune_opa
        if step > self.reset_every:
            is_too_big = torch.exp(params["scales"]).amax(dim=-1) > self.prune_scale3d * state["scene_scale"]
            if step < self.refine_scale2d_stop_iter:
                is_too_big |= state["radii"] > self.prune_scale2d
            is_prune |= is_too_big
        n_prune = int(is_prune.sum())
        if n_prune:
            remove(params, optimizers, state, is_prune)
        return n_prune


def num_rows(params: Params) -> int:
    """The number of primitives (rows of every entry) of ``params``; parameterisations without
    ``means`` (mesh-bound Gaussians) use these statistics too."""
    return len(next(iter(params.values())))


@torch.no_grad()
def replace_rows(
    params: Params,
    optimizers: Optimizers,
    param_fn: Callable[[str, Tensor], Tensor],
    moment_fn: Callable[[Tensor], Tensor],
    names: list[str] | None = None,
) -> None:
    """Replace ``params[name]`` by ``Parameter(param_fn(name, old))`` for each name, in the dict and
    in ``optimizers[name]``, and map each per-row optimizer state entry (tensors shaped like the
    parameter, e.g. Adam's ``exp_avg``/``exp_avg_sq``) through ``moment_fn``. Other entries (Adam's
    ``step``) are kept as they are. Parameters without an optimizer must be frozen."""
    for name in list(params.keys()) if names is None else names:
        old = params[name]
        new = torch.nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        params[name] = new
        opt = optimizers.get(name)
        if opt is None:
            if old.requires_grad:
                raise ValueError(f"parameter '{name}' is trainable but has no optimizer")
            continue
        found = False
        for group in opt.param_groups:
            found |= any(p is old for p in group["params"])
            group["params"] = [new if p is old else p for p in group["params"]]
        if not found:
            raise ValueError(f"optimizer '{name}' does not hold params['{name}'] (replaced outside the strategy?)")
        moments = opt.state.pop(old, None)
        if moments:
            for key, v in moments.items():
                if key != "step" and isinstance(v, Tensor) and v.shape == old.shape:
                    moments[key] = moment_fn(v)
            opt.state[new] = moments


def _edit_state(state: MutableMapping[str, Any], n_old: int, fn: Callable[[Tensor], Tensor]) -> None:
    for k, v in state.items():
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n_old:
            state[k] = fn(v)


def _zeros_like_rows(v: Tensor, n: int) -> Tensor:
    return v.new_zeros((n, *v.shape[1:]))


@torch.no_grad()
def duplicate(params: Params, optimizers: Optimizers, state: MutableMapping[str, Any], mask: Tensor) -> None:
    """Clone the Gaussians selected by ``mask [N]``: exact copies appended after the N originals
    (Kerbl et al. 2023, under-reconstruction). Copies start with zero optimizer moments and a copy of
    the originals' statistics."""
    sel = torch.nonzero(mask, as_tuple=True)[0]
    n_old = len(mask)
    replace_rows(
        params, optimizers, lambda _, p: torch.cat([p, p[sel]]), lambda v: torch.cat([v, _zeros_like_rows(v, len(sel))])
    )
    _edit_state(state, n_old, lambda v: torch.cat([v, v[sel]]))


@torch.no_grad()
def split(
    params: Params,
    optimizers: Optimizers,
    state: MutableMapping[str, Any],
    mask: Tensor,
    revised_opacity: bool = False,
) -> None:
    """Replace each Gaussian selected by ``mask [N]`` by two children (Kerbl et al. 2023,
    over-reconstruction): means drawn from the parent's Gaussian N(mu, R S^2 R^T), scales
    S / 1.6, every other parameter copied (opacity optionally revised, see
    :attr:`DefaultStrategy.revised_opacity`).

    Unselected Gaussians keep their order and come first; then the M first children, then the M
    second children. The offsets are ``R @ (S * eps)`` with ``eps = torch.randn(2, M, 3)`` from the
    global generator. Children start with zero optimizer moments and a copy of the parent's statistics.
    """
    sel = torch.nonzero(mask, as_tuple=True)[0]
    means = params["means"]
    scales = torch.exp(params["scales"][sel].detach())
    rotmats = quaternion_to_matrix(F.normalize(params["quats"][sel].detach(), dim=-1))
    eps = torch.randn(2, len(sel), 3, device=means.device, dtype=means.dtype)
    offsets = torch.einsum("mij,bmj->bmi", rotmats, scales * eps)  # [2, M, 3]

    def children(name: str, parents: Tensor) -> Tensor:
        if name == "means":
            return (parents + offsets).reshape(-1, 3)
        if name == "scales":
            return torch.log(scales / 1.6).repeat(2, 1)
        if name == "opacities" and revised_opacity:
            return torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(parents))).repeat(2, *([1] * (parents.dim() - 1)))
        return parents.repeat(2, *([1] * (parents.dim() - 1)))

    replace_with_children(params, optimizers, state, mask, children, 2)


@torch.no_grad()
def replace_with_children(
    params: Params,
    optimizers: Optimizers,
    state: MutableMapping[str, Any],
    mask: Tensor,
    children: Callable[[str, Tensor], Tensor],
    n_children: int,
) -> None:
    """Replace each primitive selected by ``mask [N]`` by ``n_children`` new ones.

    ``children(name, parents [M, ...]) -> [n_children * M, ...]`` builds each parameter's children
    in blocks (the M first children, then the M second ones, ...). Unselected primitives keep their
    order and come first. Children start with zero optimizer moments and copies of their parent's
    statistics (the per-row tensors of ``state``)."""
    sel = torch.nonzero(mask, as_tuple=True)[0]
    rest = torch.nonzero(~mask, as_tuple=True)[0]
    n_old, m = len(mask), len(sel)

    def param_fn(name: str, p: Tensor) -> Tensor:
        return torch.cat([p[rest], children(name, p[sel])])

    replace_rows(params, optimizers, param_fn, lambda v: torch.cat([v[rest], _zeros_like_rows(v, n_children * m)]))
    _edit_state(state, n_old, lambda v: torch.cat([v[rest], v[sel].repeat(n_children, *([1] * (v.dim() - 1)))]))


@torch.no_grad()
def remove(params: Params, optimizers: Optimizers, state: MutableMapping[str, Any], mask: Tensor) -> None:
    """Delete the Gaussians selected by ``mask [N]``, with their optimizer moments and statistics."""
    keep = torch.nonzero(~mask, as_tuple=True)[0]
    replace_rows(params, optimizers, lambda _, p: p[keep], lambda v: v[keep])
    _edit_state(state, len(mask), lambda v: v[keep])


@torch.no_grad()
def reset_opacities(params: Params, optimizers: Optimizers, value: float) -> None:
    """Cap every opacity at ``value`` (after the sigmoid) and zero the opacity optimizer's moments
    (Kerbl et al. 2023: the periodic reset that lets the optimizer re-grow the opacities it needs)."""
    cap = math.log(value / (1.0 - value))
    replace_rows(params, optimizers, lambda _, p: p.clamp(max=cap), torch.zeros_like, names=["opacities"])

