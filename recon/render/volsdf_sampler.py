"""VolSDF's error-bounded sampler (Yariv, Gu, Kasten, Lipman, "Volume Rendering of Neural Implicit
Surfaces", NeurIPS 2021, sec. 3.3-3.4 and Algorithm 1), pure PyTorch.

For a VolSDF density sigma = Psi_beta(-d) / beta and a set of samples T on a ray, the opacity
O(t) = 1 - exp(-int_0^t sigma) is approximated by the rectangle rule on T. Because d is
1-Lipschitz, the error of that rule on an interval [t_i, t_i+1] of length delta_i is at most
``E_i = delta_i^2 / (4 beta^2) exp(-d*_i / beta)`` (paper eq. 13), where d*_i is the smallest
|d| the interval can hold given |d| at its ends (0 when the SDF changes sign or the ends are
closer to the surface than the interval is long, else the height of the triangle with sides
|d_i|, |d_i+1|, delta_i). The opacity error at t_k is then at most
``B_k = (exp(sum_{i<k} E_i) - 1) exp(-sum_{i<k} sigma_i delta_i)`` (eq. 14), and the sampler
keeps adding samples until max_k B_k <= eps:

1. ``num_init`` uniform samples in [near, far];
2. up to ``max_iters`` times: if the bound at the current beta is above eps, find by bisection the
   smallest beta+ >= beta whose bound is below eps (``bisect_iters`` steps, starting from a beta+
   that satisfies it for any SDF: sqrt(sum delta^2 / (4 ln(1 + eps)))) and add ``num_add`` samples
   drawn from the per-interval error bound at beta+; stop for rays whose bound at beta is met;
3. ``num_final`` samples by inverse CDF of the weights at beta+ (beta for converged rays), plus
   ``num_extra`` samples drawn at random from the accumulated set (evenly spaced members of it
   without ``perturb``, so that evaluation is deterministic), plus near and far.

With the official numbers (128 / 128 / 5 / 10 / 64 / 32) each ray gets 98 samples (MonoSDF,
ObjectSDF++, sdfstudio). All rays take the same number of iterations (batched): a converged ray
still receives the later rounds' samples, drawn from its weights (they are harmless, and keep
the tensors rectangular).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.render.rays import pdf_samples
from recon.render.sdf import volsdf_density, weights_from_alpha


@dataclass
class ErrorBoundConfig:
    """Sample counts and tolerances of :func:`error_bounded_samples` (defaults: the official ones)."""

    num_init: int = 128
    num_add: int = 128
    max_iters: int = 5
    bisect_iters: int = 10
    eps: float = 0.1
    num_final: int = 64
    num_extra: int = 32


def min_abs_sdf(d: Tensor, delta: Tensor) -> Tensor:
    """d*_i [R, S-1]: the smallest |SDF| a 1-Lipschitz SDF can take on each interval, from the
    values at the samples d [R, S] and the interval lengths delta [R, S-1]."""
    a, b = d[:, :-1].abs(), d[:, 1:].abs()
    s = 0.5 * (a + b + delta)
    area_sq = (s * (s - a) * (s - b) * (s - delta)).clamp_min(0.0)
    height = 2.0 * area_sq.sqrt() / delta.clamp_min(1e-10)
    # the closest point lies inside the interval only if neither end's angle is obtuse
    out = torch.where(a * a >= b * b + delta * delta, b, torch.where(b * b >= a * a + delta * delta, a, height))
    crossing = (d[:, :-1] * d[:, 1:] <= 0) | (a + b <= delta)
    return torch.where(crossing, torch.zeros_like(out), out)


def opacity_error_bound(d: Tensor, t: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """(the bound max_k B_k [R], the per-interval bound B_k [R, S-1]) for SDF values d [R, S] at
    sorted samples t [R, S] and Laplace scales beta [R] (module docstring, eqs. 13-14)."""
    delta = t[:, 1:] - t[:, :-1]
    b = beta[:, None]
    sigma = volsdf_density(d[:, :-1], b)
    free = torch.cumsum(sigma * delta, -1)
    free = torch.cat([torch.zeros_like(free[:, :1]), free[:, :-1]], -1)  # exclusive: up to interval i
    errors = delta**2 / (4.0 * b**2) * torch.exp(-min_abs_sdf(d, delta) / b)
    cum = torch.cumsum(errors, -1).clamp_max(80.0)  # exp stays finite; the bound is then >> eps anyway
    bound = torch.expm1(cum) * torch.exp(-free)
    return bound.max(-1).values, bound


@torch.no_grad()
def error_bounded_samples(
    sdf_fn: Callable[[Tensor], Tensor], origins: Tensor, directions: Tensor, near: Tensor, far: Tensor, beta: float | Tensor,
    config: ErrorBoundConfig | None = None, perturb: bool = False,
) -> Tensor:
    """Sorted sample positions t [R, num_final + num_extra + 2] on rays (origins, directions [R, 3],
    bounds near, far [R]) for the VolSDF density of ``sdf_fn`` (points [N, 3] -> sdf [N]) with
    Laplace scale ``beta`` (module docstring). ``perturb`` (training) jitters the inverse-CDF draws
    and picks the extra samples at random; without it the samples are a function of the inputs."""
    c = config or ErrorBoundConfig()
    r = origins.shape[0]
    beta = torch.as_tensor(beta, dtype=origins.dtype, device=origins.device).reshape(-1).expand(r).clone()

    def sdf_at(t: Tensor) -> Tensor:
        pts = origins[:, None] + directions[:, None] * t[..., None]
        return sdf_fn(pts.reshape(-1, 3)).reshape(t.shape)

    t = near[:, None] + (far - near)[:, None] * torch.linspace(0.0, 1.0, c.num_init, device=origins.device, dtype=origins.dtype)
    d = sdf_at(t)
    beta_plus = beta.clone()
    converged = torch.zeros(r, dtype=torch.bool, device=origins.device)
    for it in range(c.max_iters):
        bound, _ = opacity_error_bound(d, t, beta)
        converged = bound <= c.eps
        beta_plus = beta.clone()
        if not converged.all():
            delta = t[:, 1:] - t[:, :-1]
            hi = (delta.pow(2).sum(-1) / (4.0 * math.log1p(c.eps))).sqrt().maximum(beta)
            lo = beta.clone()
            for _ in range(c.bisect_iters):
                mid = 0.5 * (lo + hi)
                ok = opacity_error_bound(d, t, mid)[0] <= c.eps
                hi = torch.where(ok, mid, hi)
                lo = torch.where(ok, lo, mid)
            beta_plus = torch.where(converged, beta, hi)
        if it == c.max_iters - 1 or converged.all():
            break
        # more samples where the error bound (at beta+) is large; converged rays: where the weights are
        _, per_interval = opacity_error_bound(d, t, beta_plus)
        alpha = 1.0 - torch.exp(-volsdf_density(d[:, :-1], beta[:, None]) * (t[:, 1:] - t[:, :-1]))
        pdf = torch.where(converged[:, None], weights_from_alpha(alpha)[0], per_interval)
        t_new = pdf_samples(t, pdf, c.num_add, perturb=False)
        t, order = torch.sort(torch.cat([t, t_new], -1), -1)
        d = torch.cat([d, sdf_at(t_new)], -1).gather(-1, order)
    # final draw from the weights at beta+ (beta where converged)
    alpha = 1.0 - torch.exp(-volsdf_density(d[:, :-1], beta_plus[:, None]) * (t[:, 1:] - t[:, :-1]))
    final = pdf_samples(t, weights_from_alpha(alpha)[0], c.num_final, perturb=perturb)
    if perturb:
        pick = torch.randint(t.shape[1], (r, c.num_extra), device=t.device)
    else:  # deterministic (evaluation renders the same image twice): evenly spaced members of the set
        pick = torch.linspace(0, t.shape[1] - 1, c.num_extra, device=t.device).round().long().expand(r, c.num_extra)
    extra = t.gather(1, pick)
    out, _ = torch.sort(torch.cat([near[:, None], final, extra, far[:, None]], -1), -1)
    return out
