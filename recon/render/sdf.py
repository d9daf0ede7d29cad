"""Opacity and density from a signed distance field (pure PyTorch, stateless helpers + two tiny modules).

Shapes follow :mod:`recon.render.rays`: R rays, S samples per ray. SDF convention: negative inside
the surface, positive outside (object-centric). Two ways to turn an SDF into a rendering:

* **NeuS** (Wang et al. 2021, "NeuS: Learning Neural Implicit Surfaces by Volume Rendering for
  Multi-view Reconstruction"): discrete opacities ``alpha_i`` computed directly from the SDF at the
  ends of each interval through the logistic CDF ``Phi_s(x) = sigmoid(s x)``; the weights then come
  from :func:`weights_from_alpha`.
* **VolSDF** (Yariv et al. 2021, "Volume Rendering of Neural Implicit Surfaces"): a density
  ``sigma = alpha * Psi_beta(-sdf)`` (Laplace CDF), rendered like any NeRF density with
  :func:`recon.render.rays.render_weights`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "LearnedBeta",
    "LearnedVariance",
    "cosine_anneal",
    "laplace_cdf",
    "neus_alpha",
    "neus_alpha_from_gradients",
    "volsdf_density",
    "weights_from_alpha",
]


def neus_alpha(sdf_starts: Tensor, sdf_ends: Tensor, inv_s: Tensor | float, eps: float = 1e-5) -> Tensor:
    """NeuS discrete opacity of each interval (Wang et al. 2021, eq. 13).

    sdf_starts, sdf_ends: [R, S] SDF at the start / end of every interval; inv_s: scalar (or a tensor
    broadcastable to [R, S]) sharpness ``s`` of the logistic CDF ``Phi_s(x) = sigmoid(s * x)``.
    Returns alpha [R, S] in [0, 1]:

        alpha_i = clamp((Phi_s(f(p_i)) - Phi_s(f(p_{i+1})) + eps) / (Phi_s(f(p_i)) + eps), 0, 1)

    The clamp at 0 is what makes the weights vanish where the ray leaves a surface (the SDF grows),
    so only the entering crossing is rendered. ``eps`` (1e-5, as in the official NeuS release) keeps
    the ratio defined deep inside the surface, where both CDFs underflow; eps = 0 gives eq. 13 exactly.
    """
    prev_cdf = torch.sigmoid(sdf_starts * inv_s)
    next_cdf = torch.sigmoid(sdf_ends * inv_s)
    return ((prev_cdf - next_cdf + eps) / (prev_cdf + eps)).clamp(0.0, 1.0)


def neus_alpha_from_gradients(
    sdf_mid: Tensor,
    cos_theta: Tensor,
    deltas: Tensor,
    inv_s: Tensor | float,
    cos_anneal_ratio: float = 1.0,
    eps: float = 1e-5,
) -> Tensor:
    """NeuS opacity from one SDF evaluation per interval (the section-midpoint variant).

    sdf_mid: [R, S] SDF at the interval midpoints; cos_theta: [R, S] directional derivative
    ``grad f . d`` (d the unit ray direction, so it is the cosine between normal and ray for a
    true SDF); deltas: [R, S] interval lengths; inv_s as in :func:`neus_alpha`. Returns alpha [R, S].

    This is the variant used by the official NeuS code and its descendants: instead of evaluating the
    SDF at both interval ends, they are extrapolated linearly from the midpoint,
    ``f_prev = f_mid - c * delta / 2``, ``f_next = f_mid + c * delta / 2``, with the slope

        c = -(relu(-cos * 0.5 + 0.5) * (1 - ratio) + relu(-cos) * ratio).

    ``ratio`` = ``cos_anneal_ratio`` in [0, 1] (see :func:`cosine_anneal`): at 0 the slope is a
    softened, always non-positive ``(cos - 1) / 2`` so that early in training every sample along
    the ray gets some opacity (also the back-facing ones); at 1 it is ``min(cos, 0)``, i.e. only
    ray segments that enter the surface (cos < 0) produce opacity.
    """
    iter_cos = -(torch.relu(-cos_theta * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + torch.relu(-cos_theta) * cos_anneal_ratio)
    half_step = iter_cos * deltas * 0.5
    return neus_alpha(sdf_mid - half_step, sdf_mid + half_step, inv_s, eps=eps)


def weights_from_alpha(alpha: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing weights from per-interval opacities.

    alpha: [R, S] in [0, 1]. Returns ``weights`` [R, S] = T_i * alpha_i and ``transmittance``
    [R, S] with ``T_i = prod_{j<i} (1 - alpha_j + eps)`` (T_0 = 1), computed as an exclusive
    cumulative product. ``eps`` (1e-7, as in NeuS) keeps the cumprod's backward finite when some
    alpha_j = 1 exactly; the weights may then sum to at most ``1 + S * eps``.
    """
    factors = 1.0 - alpha + eps
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), factors[..., :-1]], -1), -1)
    return alpha * transmittance, transmittance


def laplace_cdf(x: Tensor, beta: Tensor | float) -> Tensor:
    """CDF ``Psi_beta(x)`` of the zero-mean Laplace distribution with scale beta (any shape).

    Written with two clamped branches, so neither exponential can overflow and the gradient is
    exact on both sides of 0: ``0.5 exp(x / beta)`` for x <= 0, ``1 - 0.5 exp(-x / beta)`` for x > 0
    (the latter via ``expm1`` for accuracy near 1/2).
    """
    neg = 0.5 * torch.exp(x.clamp_max(0.0) / beta)
    pos = 0.5 - 0.5 * torch.expm1(-x.clamp_min(0.0) / beta)
    return torch.where(x <= 0, neg, pos)


def volsdf_density(sdf: Tensor, beta: Tensor | float, alpha: Tensor | float | None = None) -> Tensor:
    """VolSDF density ``sigma = alpha * Psi_beta(-sdf)`` (Yariv et al. 2021, eq. 2-3); any shape.

    beta: Laplace scale (> 0, scalar or broadcastable); alpha defaults to ``1 / beta`` as in the
    paper, so the density tends to 1/beta deep inside the object, is 1/(2 beta) on the surface and
    decays like ``exp(-sdf / beta) / (2 beta)`` outside. Render with
    :func:`recon.render.rays.render_weights`.
    """
    if alpha is None:
        alpha = 1.0 / beta
    return alpha * laplace_cdf(-sdf, beta)


class LearnedVariance(nn.Module):
    """NeuS's learnable sharpness: a single scalar ``variance`` with ``inv_s = exp(10 * variance)``.

    NeuS (Wang et al. 2021, sec. 3.4) learns the standard deviation 1/s of the logistic density; the
    factor 10 makes the parameter's learning rate effectively larger. ``init_val`` = 0.3 (NeuS and
    HelixSurf default) starts at ``s = exp(3) ~ 20``, i.e. a blurry surface of width ~ 0.05 that
    sharpens during training. forward() -> scalar tensor inv_s, clamped to [1e-6, 1e6].
    """

    def __init__(self, init_val: float = 0.3):
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(float(init_val)))

    def forward(self) -> Tensor:
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)


class LearnedBeta(nn.Module):
    """VolSDF's learnable Laplace scale: ``beta = |beta_param| + beta_min`` (Yariv et al. 2021).

    init 0.1 and beta_min 1e-4 as in VolSDF/MonoSDF; beta_min keeps the density bounded by 1/beta_min.
    forward() -> scalar tensor beta; :meth:`density` applies :func:`volsdf_density` with it.
    """

    def __init__(self, init_val: float = 0.1, beta_min: float = 1e-4):
        super().__init__()
        self.beta_param = nn.Parameter(torch.tensor(float(init_val)))
        self.beta_min = float(beta_min)

    def forward(self) -> Tensor:
        return self.beta_param.abs() + self.beta_min

    def density(self, sdf: Tensor) -> Tensor:
        """sdf: any shape -> sigma, same shape."""
        return volsdf_density(sdf, self())


def cosine_anneal(step: int, end_step: int) -> float:
    """NeuS's ``cos_anneal_ratio``: a linear ramp from 0 at step 0 to 1 at ``end_step`` (then 1).

    Feed it to :func:`neus_alpha_from_gradients`. ``end_step <= 0`` disables annealing (ratio 1).
    NeuS anneals over the first 50k iterations for its "w/o mask" setting.
    """
    if end_step <= 0:
        return 1.0
    return float(min(max(step / end_step, 0.0), 1.0))
