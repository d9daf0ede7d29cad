"""Proposal-network sampling and its losses (mip-NeRF 360, Barron et al. 2022; nerfacto).

Dense layout: R rays, sample intervals given by bin edges ``bins`` [R, S + 1] (intervals
``[bins[:, i], bins[:, i + 1]]``) and per-interval weights [R, S].

* :class:`ProposalSampler` — initial samples spaced in a normalised "s-space" (linear, disparity
  or nerfacto's piecewise linear/disparity mapping), then, for each proposal density function,
  render weights and resample by inverse-transform sampling of the padded weight histogram.
* :func:`interlevel_loss` — mip-NeRF 360 eq. 13: the proposal histogram must upper-bound the fine
  weights through the outer measure (eq. 12); gradients flow only into the proposals.
* :func:`distortion_loss` — mip-NeRF 360 eq. 15 in its O(S) prefix-sum form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from recon.render.rays import render_weights

__all__ = [
    "ProposalSampler",
    "anneal_schedule",
    "distortion_loss",
    "interlevel_loss",
    "sample_pdf_edges",
    "spacing_to_t",
    "stratified_bins",
]

DensityFn = Callable[[Tensor], Tensor]  # positions [R, S, 3] -> densities [R, S] or [R, S, 1]


# ----------------------------------------------------------------------------- spacing functions
def _g(t: Tensor, spacing: str) -> Tensor:
    if spacing == "linear":
        return t
    if spacing == "disparity":
        return 1.0 / t
    if spacing == "piecewise":
        # nerfacto: linear up to distance 1, disparity beyond (g maps [0, inf) onto [0, 1)).
        return torch.where(t < 1, t / 2, 1 - 1 / (2 * t.clamp_min(1e-12)))
    raise ValueError(f"unknown spacing {spacing!r}")


def _g_inv(y: Tensor, spacing: str) -> Tensor:
    if spacing == "linear":
        return y
    if spacing == "disparity":
        return 1.0 / y
    if spacing == "piecewise":
        return torch.where(y < 0.5, 2 * y, 1 / (2 - 2 * y).clamp_min(1e-12))
    raise ValueError(f"unknown spacing {spacing!r}")


def spacing_to_t(s: Tensor, near: Tensor, far: Tensor, spacing: str = "linear") -> Tensor:
    """Normalised s [R, K] in [0, 1] -> metric t [R, K] in [near, far] (mip-NeRF 360 eq. 11).

    ``t = g^-1(s g(far) + (1 - s) g(near))`` with g the identity ("linear"), 1/t ("disparity",
    needs near > 0) or nerfacto's "piecewise" mapping (linear below 1, disparity above; suited to
    contracted scenes with near < 1 << far). near, far: [R].
    """
    gn, gf = _g(near, spacing)[:, None], _g(far, spacing)[:, None]
    t = _g_inv(s * gf + (1 - s) * gn, spacing)
    # The round trip through g loses precision at the far end (1 / (2 - 2y) with y -> 1 in float32):
    # pin the end points and clamp the rest into [near, far].
    t = torch.where(s >= 1, far[:, None].expand_as(t), torch.where(s <= 0, near[:, None].expand_as(t), t))
    return torch.minimum(torch.maximum(t, near[:, None]), far[:, None])


def stratified_bins(
    near: Tensor,
    far: Tensor,
    num_samples: int,
    perturb: bool,
    spacing: str = "linear",
    single_jitter: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Edges [R, num_samples + 1] of ``num_samples`` intervals tiling [near, far] (near, far: [R]),
    evenly spaced in s-space (:func:`spacing_to_t`); with ``perturb`` each interior edge moves within
    half a bin of its place (one offset per ray with ``single_jitter``), the end points stay fixed.
    The initial samples of :class:`ProposalSampler` (nerfacto's UniformLinDispPiecewiseSampler)."""
    R, n = near.shape[0], num_samples
    s = torch.linspace(0.0, 1.0, n + 1, device=near.device, dtype=near.dtype).expand(R, n + 1)
    if perturb:
        shape = (R, 1) if single_jitter else (R, n - 1)
        r = torch.rand(shape, device=near.device, dtype=near.dtype, generator=generator) - 0.5
        inner = s[:, 1:-1] + r / n
        s = torch.cat([s[:, :1], inner, s[:, -1:]], -1)
    return spacing_to_t(s, near, far, spacing)


# ----------------------------------------------------------------------------- pdf sampling
def sample_pdf_edges(
    bins: Tensor,
    weights: Tensor,
    num_samples: int,
    perturb: bool,
    single_jitter: bool = True,
    padding: float = 0.01,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Resample ``num_samples`` intervals from a weight histogram: returns sorted edges [R, num_samples + 1].

    bins: [R, S + 1]; weights: [R, S]. The histogram is padded with ``padding`` (nerfacto's
    ``histogram_padding``) so empty regions keep some samples. The quantiles u are evenly spaced in
    [0, 1] (so the edges span the full range) and, with ``perturb``, jittered by less than one
    spacing: one offset per ray with ``single_jitter`` (keeps the edges sorted cheaply), otherwise one
    per edge followed by a sort. We use our own quantiles rather than ``rays.pdf_samples`` because
    its perturbed quantiles are not sorted and its endpoints are not guaranteed.
    """
    R, n = weights.shape[0], num_samples + 1
    w = weights.detach() + padding
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1).clamp_max(1.0)
    cdf[:, -1] = 1.0
    if perturb:
        step = 1.0 / n
        base = torch.linspace(0.0, 1.0 - step, n, device=bins.device, dtype=bins.dtype)
        shape = (R, 1) if single_jitter else (R, n)
        u = base + torch.rand(shape, device=bins.device, dtype=bins.dtype, generator=generator) * step
        u = torch.cat([torch.zeros_like(u[:, :1]), u[:, 1:-1], torch.ones_like(u[:, :1])], -1)
        if not single_jitter:
            u = torch.sort(u, -1).values
    else:
        u = torch.linspace(0.0, 1.0, n, device=bins.device, dtype=bins.dtype).expand(R, n)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    lo = (idx - 1).clamp(0, cdf.shape[-1] - 1)
    hi = idx.clamp(0, cdf.shape[-1] - 1)
    c_lo, c_hi = cdf.gather(-1, lo), cdf.gather(-1, hi)
    b_lo, b_hi = bins.gather(-1, lo), bins.gather(-1, hi)
    frac = ((u - c_lo) / (c_hi - c_lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    return (b_lo + frac * (b_hi - b_lo)).detach()


def anneal_schedule(step: int, slope: float = 10.0, num_steps: int = 1000) -> float:
    """nerfacto's proposal weight annealing exponent: 0 -> 1 over ``num_steps`` (Schlick bias curve
    ``slope x / ((slope - 1) x + 1)``); the proposal weights are raised to this power before
    resampling so early training samples nearly uniformly."""
    x = min(max(step / num_steps, 0.0), 1.0)
    return slope * x / ((slope - 1.0) * x + 1.0)


# ----------------------------------------------------------------------------- sampler
class ProposalSampler(nn.Module):
    """Hierarchical proposal sampling (mip-NeRF 360 sec. 3; nerfacto's ProposalNetworkSampler).

    Args:
        num_proposal_samples: samples per ray fed to each proposal density (one entry per proposal).
        num_nerf_samples: samples per ray returned for the radiance field.
        single_jitter: one jitter offset per ray instead of per sample.
        spacing: initial sample spacing: "linear", "disparity" or "piecewise" (nerfacto's
            UniformLinDispPiecewise spacing).
        histogram_padding: added to proposal weights before resampling.
        update_sched: step -> number of steps between proposal-network updates (nerfacto ramps 1 -> 5
            over 5000 steps). On steps without an update the proposal densities run under
            ``no_grad`` (the interlevel loss then has no gradient and may be skipped).
    """

    def __init__(
        self,
        num_proposal_samples: Sequence[int] = (256, 96),
        num_nerf_samples: int = 48,
        single_jitter: bool = True,
        spacing: str = "piecewise",
        histogram_padding: float = 0.01,
        update_sched: Callable[[int], int] = lambda step: 1,
    ) -> None:
        super().__init__()
        self.num_proposal_samples = tuple(int(n) for n in num_proposal_samples)
        self.num_nerf_samples = int(num_nerf_samples)
        self.single_jitter = single_jitter
        self.spacing = spacing
        self.histogram_padding = histogram_padding
        self.update_sched = update_sched
        self.anneal = 1.0
        self._steps_since_update = 0
        self._step = 0

    def set_anneal(self, anneal: float) -> None:
        """Exponent applied to proposal weights before resampling (see :func:`anneal_schedule`)."""
        self.anneal = float(anneal)

    def step_cb(self, step: int) -> None:
        """Call once per training step with the global step (drives ``update_sched``)."""
        self._step = step

    def forward(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        near: Tensor,
        far: Tensor,
        density_fns: Sequence[DensityFn],
        perturb: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """Sample intervals for the radiance field.

        rays_o, rays_d: [R, 3]; near, far: [R]; density_fns: one per proposal level, positions
        [R, S, 3] (interval midpoints) -> densities. ``perturb`` defaults to ``self.training``.

        Returns ``t_starts, t_ends`` [R, num_nerf_samples] and, per proposal level, ``weights_list``
        [R, S_l] and ``bins_list`` [R, S_l + 1]. For :func:`interlevel_loss` append the radiance
        field's weights and ``torch.cat([t_starts, t_ends[:, -1:]], -1)``.
        """
        if len(density_fns) != len(self.num_proposal_samples):
            raise ValueError("need one density function per proposal level")
        perturb = self.training if perturb is None else perturb
        update = False
        if self.training:
            update = self._steps_since_update >= self.update_sched(self._step) - 1 or self._step < 10
            self._steps_since_update = 0 if update else self._steps_since_update + 1

        weights_list: list[Tensor] = []
        bins_list: list[Tensor] = []
        bins: Tensor | None = None
        weights: Tensor | None = None
        counts = [*self.num_proposal_samples, self.num_nerf_samples]
        for level, n in enumerate(counts):
            if bins is None:
                bins = stratified_bins(near, far, n, perturb, self.spacing, self.single_jitter, generator)
            else:
                assert weights is not None
                # Clamped: a ray grazing the box has intervals of zero length whose weights round to
                # -1e-7, and a negative base to the fractional annealing power is NaN.
                w = weights.detach().clamp_min(0.0) ** self.anneal  # annealed histogram, no gradient into resampling
                bins = sample_pdf_edges(
                    bins, w, n, perturb, self.single_jitter, self.histogram_padding, generator
                )
            if level == len(self.num_proposal_samples):
                break
            starts, ends = bins[:, :-1], bins[:, 1:]
            pos = rays_o[:, None, :] + (0.5 * (starts + ends))[..., None] * rays_d[:, None, :]
            with torch.set_grad_enabled(update and torch.is_grad_enabled()):
                dens = density_fns[level](pos).reshape(starts.shape)
                weights, _ = render_weights(dens, starts, ends)
            weights_list.append(weights)
            bins_list.append(bins)
        assert bins is not None
        return bins[:, :-1], bins[:, 1:], weights_list, bins_list


# ----------------------------------------------------------------------------- losses
def _outer_bound(t_fine: Tensor, t_prop: Tensor, w_prop: Tensor) -> Tensor:
    """Outer measure (mip-NeRF 360 eq. 12): for each fine interval [R, S] the sum of proposal
    weights over proposal intervals that overlap it. t_fine [R, S + 1]; t_prop [R, P + 1];
    w_prop [R, P]."""
    cw = torch.cat([torch.zeros_like(w_prop[:, :1]), torch.cumsum(w_prop, -1)], -1)  # [R, P + 1]
    t_prop = t_prop.contiguous()
    # Last proposal edge <= fine start, first proposal edge >= fine end.
    lo = (torch.searchsorted(t_prop, t_fine[:, :-1].contiguous(), right=True) - 1).clamp(0, cw.shape[-1] - 1)
    hi = torch.searchsorted(t_prop, t_fine[:, 1:].contiguous(), right=False).clamp(0, cw.shape[-1] - 1)
    return cw.gather(-1, hi) - cw.gather(-1, lo)


def interlevel_loss(weights_list: Sequence[Tensor], bins_list: Sequence[Tensor], eps: float = 1e-7) -> Tensor:
    """Proposal loss (mip-NeRF 360 eq. 13), summed over proposal levels, mean over rays.

    weights_list / bins_list: per level [R, S_l] / [R, S_l + 1]; the LAST entry is the radiance
    field. ``L = sum_i max(0, w_i - bound_i)^2 / w_i`` with ``bound`` the outer measure of the
    proposal histogram over fine interval i. The fine weights and all bins are detached (the paper's
    stop-gradient): this loss trains only the proposal densities.
    """
    w_fine = weights_list[-1].detach()
    t_fine = bins_list[-1].detach()
    loss = w_fine.new_zeros(())
    for w_prop, t_prop in zip(weights_list[:-1], bins_list[:-1]):
        bound = _outer_bound(t_fine, t_prop.detach(), w_prop)
        loss = loss + ((w_fine - bound).clamp_min(0.0) ** 2 / (w_fine + eps)).sum(-1).mean()
    return loss


def distortion_loss(weights: Tensor, t_starts: Tensor, t_ends: Tensor) -> Tensor:
    """Distortion regulariser (mip-NeRF 360 eq. 15), per ray [R, 1].

    ``L = sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (t_end_i - t_start_i)`` with m the interval
    midpoints, evaluated in O(S) with prefix sums (eq. 15 assumes sorted, disjoint intervals):
    ``sum_{i,j} = 2 sum_i w_i (m_i W_{<i} - (w m)_{<i})``. The paper applies it to normalised
    s-distances; pass whatever parameterisation the caller wants regularised (nerfstudio passes t).
    """
    mids = 0.5 * (t_starts + t_ends)
    wm = weights * mids
    w_before = torch.cumsum(weights, -1) - weights
    wm_before = torch.cumsum(wm, -1) - wm
    pairwise = 2.0 * (weights * (mids * w_before - wm_before)).sum(-1, keepdim=True)
    self_term = (weights**2 * (t_ends - t_starts)).sum(-1, keepdim=True) / 3.0
    return pairwise + self_term
