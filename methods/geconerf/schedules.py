"""GeCoNeRF's schedules as pure functions of the training step (Kwak, Song & Kim, "GeCoNeRF:
Few-shot Neural Radiance Fields via Geometric Consistency", ICML 2023, sec. 3.4 "progressive
training"; constants from the official release's scripts and ``reg_train_step``)."""

from __future__ import annotations

import math


def consistency_weight(step: int, base: float, decay_steps: int) -> float:
    """lambda_c(t) = base exp(-t / decay_steps): 0.0115 exp(-t / 20000) in the release
    (2.3 x prcp_weight 0.005)."""
    return base * math.exp(-step / decay_steps) if decay_steps > 0 else base


def occlusion_threshold(step: int, start: float, decay_steps: int) -> float:
    """tau(t) = start exp(-t / decay_steps): 2 exp(-t / 25000) in the release (in its world units)."""
    return start * math.exp(-step / decay_steps) if decay_steps > 0 else start


def pose_divergence(step: int, start_deg: float, end_deg: float, steps: int) -> float:
    """theta_div(t), degrees: from ``start_deg`` to ``end_deg`` linearly over ``steps``, then
    constant (3 + 6 t / 120000 in the release's Blender pose generator)."""
    return end_deg if steps <= 0 else start_deg + (end_deg - start_deg) * min(step / steps, 1.0)
