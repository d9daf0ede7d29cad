"""Learned continuous occupancy: a gate network routes each sample to a large or a small expert
(LeC2O-NeRF, Mi & Xu 2024, "Learning Continuous and Compact Large-Scale Occupancy for Urban
Scenes", arXiv 2411.11374; its gating follows the same authors' Switch-NeRF, Mi & Xu 2023, ICLR).

Only the paper's abstract was available; every formula below that it does not state is a
reconstruction, listed with its reasons in ``methods/lec2o/README.md`` ("Decisions"). Dense
layout: R rays, S samples per ray, as in :mod:`recon.render.proposal`.

* :class:`OccupancyGate` — x [..., 3] -> g_occ(x) in (0, 1): a small hash grid and MLP on the
  (optionally contracted) position. Two-way softmax over (occupied, empty) logits equals a sigmoid
  of their difference, so the gate outputs one logit; g_emp = 1 - g_occ.
* :class:`LearnedOccupancy` — the estimator, with the interface of the other two
  (:class:`recon.render.occupancy.OccupancyGrid`, :class:`recon.render.proposal.ProposalSampler`):
  :meth:`~LearnedOccupancy.sample` draws stratified samples, classifies them and optionally
  subdivides the occupied ones (the paper's "point sampling", our reading),
  :meth:`~LearnedOccupancy.route` evaluates each sample with exactly one expert (top-1 routing),
  :meth:`~LearnedOccupancy.losses` returns the imbalanced occupancy loss and the explicit density
  loss. At inference ``skip_empty`` evaluates no network on empty samples (density 0).
* :func:`imbalanced_occupancy_loss`, :func:`explicit_density_loss` — the two losses, stateless.

Routing (Switch-NeRF's top-1 dispatch): sample i goes to the large expert iff g_occ(x_i) >= 1/2,
and the density that expert returns is multiplied by a gate probability; this product is the
photometric loss's path into the gate. On occupied samples it is g_occ. On empty ones
(``empty_scale``) it is g_occ too by default, so a sample routed to the empty expert where the
image wants more density pulls the gate towards "occupied" (d sigma / d g_occ = +sigma_empty);
Switch-NeRF's rule, the probability of the chosen class g_emp = 1 - g_occ, is ``"g_emp"``, under
which that gradient pushes such a sample further into "empty" (d sigma / d g_occ = -sigma_empty)
and only the density loss moves it back. Colours are not scaled (a scaled colour would darken the
image instead of thinning it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from recon.fields.hash_field import Normalise
from recon.fields.hash_grid import HashGridEncoding, Implementation
from recon.fields.mlp import MLP
from recon.render.proposal import stratified_bins

__all__ = [
    "Expert",
    "GatedSamples",
    "LearnedOccupancy",
    "OccupancyGate",
    "explicit_density_loss",
    "imbalanced_occupancy_loss",
    "routed_evaluate",
]

Expert = Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor]]
"""positions [P, 3], unit directions [P, 3], camera indices [P] | None -> density [P], rgb [P, 3]
(the signature of :class:`recon.fields.hash_field.HashNeRFField`)."""


class OccupancyGate(nn.Module):
    """The occupancy network O: positions [..., 3] -> g_occ [...] in (0, 1); 0 outside the box.

    A hash grid of ``num_levels`` levels up to ``max_res`` (2 features each, 2^log2_hashmap_size
    entries) and an MLP of two layers ``hidden_dim`` wide to one logit. The paper's network is
    reported at about 0.15 M parameters; the defaults (8 levels to 128, T = 2^13, 32 wide) have
    about 0.13 M. The output bias starts at ``logit(init_occupied)``, so at first (nearly) every
    sample is occupied and the large network sees the whole scene before the gate prunes it.
    """

    def __init__(
        self,
        aabb: Tensor,
        contraction: Callable[[Tensor], Tensor] | None = None,
        num_levels: int = 8,
        max_res: int = 128,
        log2_hashmap_size: int = 13,
        hidden_dim: int = 32,
        init_occupied: float = 0.9,
        implementation: Implementation = "torch",
    ):
        super().__init__()
        if not 0.0 < init_occupied < 1.0:
            raise ValueError(f"init_occupied must be in (0, 1), got {init_occupied}")
        self.normalise = Normalise(aabb, contraction)
        self.encoding = HashGridEncoding(
            num_levels=num_levels, features_per_level=2, log2_hashmap_size=log2_hashmap_size, min_res=min(16, max_res), max_res=max_res,
            implementation=implementation,
        )
        self.mlp = MLP(self.encoding.out_dim, hidden_dim, 2, 1)
        with torch.no_grad():
            self.mlp.layers[-1].bias.fill_(math.log(init_occupied / (1.0 - init_occupied)))

    def forward(self, positions: Tensor) -> Tensor:
        u, inside = self.normalise(positions)
        return torch.sigmoid(self.mlp(self.encoding(u))[..., 0]) * inside


@dataclass
class GatedSamples:
    """Samples of R rays classified by the gate: S stratified intervals per ray, each split into
    ``subdivisions`` = m parts when occupied (point sampling); an empty interval keeps one part and
    m - 1 inactive, zero-length ones at its end, so the S m intervals of a ray always tile it."""

    t_starts: Tensor
    """[R, S m] interval starts (units of the ray direction's length)."""
    t_ends: Tensor
    """[R, S m] interval ends."""
    positions: Tensor
    """[R, S m, 3] interval midpoints."""
    gate: Tensor
    """[R, S m] g_occ of the parent interval (its midpoint), differentiable w.r.t. the gate."""
    occupied: Tensor
    """[R, S m] bool, the parent's g_occ >= 1/2: the samples routed to the large expert."""
    active: Tensor
    """[R, S m] bool: the samples to evaluate (False only for the placeholders of empty parents)."""
    subdivisions: int = 1
    """m."""

    def coarse(self, values: Tensor) -> Tensor:
        """Per-sample values [R, S m, ...] -> the parents' [R, S, ...] (the first part of each)."""
        R = values.shape[0]
        return values.reshape(R, -1, self.subdivisions, *values.shape[2:])[:, :, 0]


def routed_evaluate(
    positions: Tensor,
    directions: Tensor,
    camera_indices: Tensor | None,
    gate: Tensor,
    occupied: Tensor,
    occupied_expert: Expert,
    empty_expert: Expert | None,
    empty_scale: str = "g_occ",
) -> tuple[Tensor, Tensor]:
    """Top-1 routing of P points: positions, directions [P, 3], camera_indices [P] | None, gate
    g_occ [P], occupied [P] bool -> density [P], rgb [P, 3].

    ``occupied_expert`` evaluates exactly the points with ``occupied``, ``empty_expert`` exactly
    the others; the occupied expert's density is scaled by g_occ, the empty expert's by g_occ
    (``empty_scale="g_occ"``) or by the probability of the class that chose it, 1 - g_occ ("g_emp"). ``empty_expert=None`` skips the empty points: density and colour 0
    there, no network evaluated (inference skipping).
    """
    density = positions.new_zeros(positions.shape[0])
    rgb = positions.new_zeros(positions.shape[0], 3)
    routes = [(occupied, occupied_expert, gate)]
    if empty_expert is not None:
        routes.append((~occupied, empty_expert, 1.0 - gate if empty_scale == "g_emp" else gate))
    for mask, expert, prob in routes:
        idx = torch.nonzero(mask)[:, 0]
        if idx.numel() == 0:
            continue
        cams = camera_indices[idx] if camera_indices is not None else None
        sigma, colour = expert(positions[idx], directions[idx], cams)
        density = density.index_put((idx,), prob[idx] * sigma.reshape(-1).to(density.dtype))
        rgb = rgb.index_put((idx,), colour.to(rgb.dtype))
    return density, rgb


def imbalanced_occupancy_loss(gate: Tensor, occupied: Tensor, ratio: float) -> Tensor:
    """Imbalanced occupancy (gate) loss, our reconstruction; gate g_occ [N], occupied [N] bool.

    Switch-NeRF's balance loss ``K sum_k f_k P_k`` (f_k the fraction of points dispatched to expert
    k, without gradient; P_k the mean gate probability) is minimal at a uniform split. Dividing
    each term by its target share, ``L = f_occ P_occ / r + f_emp P_emp / (1 - r)``, moves the
    balance point to ``f_occ = r``: d L / d P_occ = f_occ / r - f_emp / (1 - r) is positive exactly
    when more than the fraction r is occupied, so the gate lowers its occupancy then and raises it
    when fewer are. At f = P = r the value is 1.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"target occupied ratio must be in (0, 1), got {ratio}")
    f_occ = occupied.to(gate.dtype).mean()
    p_occ = gate.mean()
    return f_occ * p_occ / ratio + (1.0 - f_occ) * (1.0 - p_occ) / (1.0 - ratio)


def explicit_density_loss(density: Tensor, t_starts: Tensor, t_ends: Tensor, empty: Tensor) -> Tensor:
    """Explicit density loss, our reconstruction: the mean opacity ``1 - exp(-sigma delta)`` of
    the samples routed to the empty expert. density, t_starts, t_ends: [...] (density already
    scaled by the gate), empty: [...] bool. Opacity rather than sigma keeps the loss in [0, 1] and
    independent of the sample spacing; 0 when no sample is empty."""
    alpha = 1.0 - torch.exp(-density * (t_ends - t_starts))
    weight = empty.to(alpha.dtype)
    return (alpha * weight).sum() / weight.sum().clamp_min(1.0)


class LearnedOccupancy(nn.Module):
    """The learned-occupancy estimator (see the module docstring).

    Args:
        gate: the occupancy network.
        num_samples: S, samples per ray drawn before routing (the gate sees all of them).
        target_ratio: r, the occupied fraction the imbalanced occupancy loss steers towards.
        spacing: s-space spacing of the samples (:func:`recon.render.proposal.spacing_to_t`):
            "linear" for a bounded box, "piecewise" for a contracted unbounded scene.
        single_jitter: one stratification offset per ray instead of per edge.
        subdivisions: m, point sampling: each occupied interval is split into m equal parts, each
            evaluated by the large expert with its parent's gate value (1: off).
    """

    def __init__(
        self, gate: OccupancyGate, num_samples: int = 128, target_ratio: float = 0.25, spacing: str = "linear", single_jitter: bool = True,
        subdivisions: int = 1, empty_scale: str = "g_occ",
    ):
        super().__init__()
        if empty_scale not in ("g_emp", "g_occ"):
            raise ValueError(f"empty_scale must be g_emp or g_occ, got {empty_scale!r}")
        self.empty_scale = empty_scale
        if not 0.0 < target_ratio < 1.0:
            raise ValueError(f"target_ratio must be in (0, 1), got {target_ratio}")
        if subdivisions < 1:
            raise ValueError(f"subdivisions must be >= 1, got {subdivisions}")
        self.gate = gate
        self.subdivisions = int(subdivisions)
        self.num_samples = int(num_samples)
        self.target_ratio = float(target_ratio)
        self.spacing = spacing
        self.single_jitter = single_jitter

    def sample(
        self, rays_o: Tensor, rays_d: Tensor, near: Tensor, far: Tensor, perturb: bool | None = None, generator: torch.Generator | None = None
    ) -> GatedSamples:
        """Stratified samples on [near, far] (rays_o, rays_d [R, 3]; near, far [R]) and their
        classification. ``perturb`` defaults to ``self.training``. The gate runs with gradients
        when they are enabled (training), so the losses reach it."""
        perturb = self.training if perturb is None else perturb
        bins = stratified_bins(near, far, self.num_samples, perturb, self.spacing, self.single_jitter, generator)
        t0, t1 = bins[:, :-1], bins[:, 1:]
        gate = self.gate(rays_o[:, None, :] + (0.5 * (t0 + t1))[..., None] * rays_d[:, None, :])
        occupied = gate.detach() >= 0.5
        m = self.subdivisions
        R, S = occupied.shape
        # Part k of an occupied interval is [t0 + k/m, t0 + (k+1)/m] of it; an empty interval is its
        # part 0 stretched to the whole, then m - 1 zero-length placeholders at t1.
        k = torch.arange(m + 1, device=t0.device, dtype=t0.dtype) / m
        edges = t0[..., None] + (t1 - t0)[..., None] * torch.where(occupied[..., None], k, (k > 0).to(k.dtype))
        starts, ends = edges[..., :-1].reshape(R, S * m), edges[..., 1:].reshape(R, S * m)
        first = torch.arange(m, device=t0.device) == 0
        active = (occupied[..., None] | first).reshape(R, S * m)
        positions = rays_o[:, None, :] + (0.5 * (starts + ends))[..., None] * rays_d[:, None, :]

        def per_part(x: Tensor) -> Tensor:
            return x[..., None].expand(R, S, m).reshape(R, S * m)

        return GatedSamples(starts, ends, positions, per_part(gate), per_part(occupied), active, m)

    def route(
        self,
        samples: GatedSamples,
        directions: Tensor,
        camera_indices: Tensor | None,
        occupied_expert: Expert,
        empty_expert: Expert | None,
        skip_empty: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Density [R, S m] and rgb [R, S m, 3] of the samples, each active one from one expert
        (:func:`routed_evaluate`), placeholders 0; directions [R, 3], camera_indices [R] | None.

        ``empty_expert=None`` is the one-network ablation: the large expert evaluates the empty
        samples too (scaled as the empty expert's would be). ``skip_empty`` evaluates nothing on them (inference)."""
        R, N = samples.gate.shape  # N = S m
        empty = None if skip_empty else (empty_expert if empty_expert is not None else occupied_expert)
        idx = torch.nonzero(samples.active.reshape(-1))[:, 0]
        ray = torch.div(idx, N, rounding_mode="floor")
        density, rgb = routed_evaluate(
            samples.positions.reshape(-1, 3)[idx], directions[ray], camera_indices[ray] if camera_indices is not None else None,
            samples.gate.reshape(-1)[idx], samples.occupied.reshape(-1)[idx], occupied_expert, empty, self.empty_scale,
        )
        if idx.numel() == R * N:  # no placeholders: every sample was evaluated in order
            return density.reshape(R, N), rgb.reshape(R, N, 3)
        full_density = density.new_zeros(R * N).index_put((idx,), density)
        full_rgb = rgb.new_zeros(R * N, 3).index_put((idx,), rgb)
        return full_density.reshape(R, N), full_rgb.reshape(R, N, 3)

    def losses(self, samples: GatedSamples, density: Tensor) -> dict[str, Tensor]:
        """Unweighted ``occupancy`` (:func:`imbalanced_occupancy_loss` with ``target_ratio`` on the
        gate's decisions, one per parent interval) and ``density`` (:func:`explicit_density_loss` on
        the routed densities [R, S m] of the active empty samples)."""
        return {
            "occupancy": imbalanced_occupancy_loss(samples.coarse(samples.gate), samples.coarse(samples.occupied), self.target_ratio),
            "density": explicit_density_loss(density, samples.t_starts, samples.t_ends, ~samples.occupied & samples.active),
        }
