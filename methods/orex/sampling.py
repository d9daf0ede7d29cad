"""OReX's training samples and the datamanager that serves them level by level.

Samples are labelled 3D points: 0 inside, 1 outside, 0.5 on a contour (paper sec. 3.3, official
``Sampler.py``). At refinement level l the samples concentrate closer to the contours: radius
``r_l = 0.5 ** e_l`` and per-edge / per-vertex counts ``n_l``. The training set at level l is the
union of the last ``levels_in_use`` levels. Levels advance through hook objects at fixed steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import trimesh
from torch import Tensor

from data.cross_sections import CrossSection, CrossSections
from recon.config import InstantiateConfig
from recon.engine.callbacks import Callback, Where
from recon.errors import DataError

LEVEL_EXPONENTS = (4, 5, 5, 6, 6, 7)
LEVEL_COUNTS = (2, 2, 3, 3, 4, 5)
INSIDE, OUTSIDE, ON_CONTOUR = 0.0, 1.0, 0.5


def _labels(section: CrossSection, uv: np.ndarray) -> np.ndarray:
    return np.where(section.contains(uv), INSIDE, OUTSIDE)


def plane_samples(section: CrossSection, radius: float, count: int, noise_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Samples of one plane at one level: points [N, 3] and labels [N].

    Contour points (``count`` per edge, label 0.5), those points offset by +-radius along the
    in-plane edge normal, ``count`` points on a circle of ``radius`` around each vertex, and
    ``noise_points`` uniform in [-1, 1]^2 of the plane's 2-D frame; the last three labelled by
    the cross-section's inside test.
    """
    uv_parts, label_parts = [], []
    for i in range(len(section.contours)):
        poly = section.contour_uv(i)
        a, b = np.roll(poly, -1, 0), poly  # edge from b to the next vertex a
        j = np.arange(count) / count
        on = (b[:, None] + j[None, :, None] * (a - b)[:, None]).reshape(-1, 2)
        edge = (a - b) / np.maximum(np.linalg.norm(a - b, axis=1, keepdims=True), 1e-12)
        normal = np.repeat(np.stack([-edge[:, 1], edge[:, 0]], 1), count, 0)
        offsets = np.concatenate([on + radius * normal, on - radius * normal])
        angles = 2 * np.pi * np.arange(count) / count
        ring = (b[:, None] + radius * np.stack([np.cos(angles), np.sin(angles)], 1)[None]).reshape(-1, 2)
        uv_parts += [on, offsets, ring]
        label_parts += [np.full(len(on), ON_CONTOUR), _labels(section, offsets), _labels(section, ring)]
    noise = rng.uniform(-1.0, 1.0, size=(noise_points, 2))
    uv_parts.append(noise)
    label_parts.append(_labels(section, noise))
    uv = np.concatenate(uv_parts)
    return section.to_3d(uv), np.concatenate(label_parts)


HULL_SCALE = 1.05
"""OReX labels the convex hull of all contour vertices, scaled by this about the origin, outside."""


def outside_hull(sections: CrossSections) -> trimesh.Trimesh | None:
    """The convex hull of all vertices scaled by :data:`HULL_SCALE` about the origin, or None when
    it is flat (a single plane) or empty."""
    vertices = sections.all_vertices() * HULL_SCALE
    if len(vertices) < 4:
        return None
    try:
        hull = trimesh.convex.convex_hull(vertices)
    except Exception:  # a single plane (flat hull): qhull refuses it
        return None
    return hull if hull.area > 0 and hull.volume > 0 else None


def hull_samples(sections: CrossSections, count: int, seed: int) -> np.ndarray:
    """``count`` points on :func:`outside_hull` (all outside)."""
    hull = outside_hull(sections)
    if hull is None:
        return np.zeros((0, 3))
    points, _ = trimesh.sample.sample_surface(hull, count, seed=seed)
    return np.asarray(points)


def level_samples(sections: CrossSections, level: int, noise_points: int, hull_points: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All samples of one refinement level (deterministic for a seed): points [N, 3], labels [N]
    and the index of the plane each sample belongs to [N] (-1 for the hull's)."""
    rng = np.random.default_rng([seed, level])
    radius, count = 0.5 ** LEVEL_EXPONENTS[level], LEVEL_COUNTS[level]
    parts = [plane_samples(s, radius, count, noise_points, rng) for s in sections.sections]
    hull = hull_samples(sections, hull_points, seed * 100 + level)
    points = np.concatenate([p for p, _ in parts] + [hull])
    labels = np.concatenate([lab for _, lab in parts] + [np.full(len(hull), OUTSIDE)])
    planes = np.concatenate([np.full(len(lab), k) for k, (_, lab) in enumerate(parts)] + [np.full(len(hull), -1)])
    return points, labels, planes


@dataclass
class CrossSectionDataManagerConfig(InstantiateConfig):
    """Labelled points around the contours, regenerated level by level (coarse to fine)."""

    batch_size: int = 16384
    """Points per training batch (drawn uniformly from the current sample set)."""
    steps_per_level: tuple[int, ...] = (600, 600, 1200, 1200, 1800, 2400)
    """Training steps spent at each refinement level (at most 6 levels)."""
    levels_in_use: int = 3
    """The training set is the union of the samples of this many most recent levels."""
    plane_noise_points: int = 2048
    """Uniform samples per plane."""
    hull_points: int = 16384
    """Outside samples on the (enlarged) convex hull of all vertices."""
    balance_planes: bool = False
    """[ours] Every plane gets the same share of each batch (the hull's samples keep their share
    of the set), instead of a share proportional to its sample count, i.e. its number of contour
    vertices: a plane cutting a thin part has few vertices and was fitted worst (issue 32)."""


class CrossSectionDataManager:
    """Serves ``{"points": [B, 3], "labels": [B]}`` batches; see :class:`CrossSectionDataManagerConfig`."""

    def __init__(self, config: CrossSectionDataManagerConfig, outputs: Any, device: torch.device, seed: int = 0):
        if len(config.steps_per_level) > len(LEVEL_EXPONENTS):
            raise ValueError(f"at most {len(LEVEL_EXPONENTS)} refinement levels")
        if not isinstance(getattr(outputs, "sections", None), CrossSections):
            raise DataError("OReX trains on planar cross-sections: pass --data shape.csl (see `python -m data.cross_sections` to slice a mesh)")
        self.config = config
        self.sections: CrossSections = outputs.sections
        self.device = device
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.level = -1
        self.set_level(0)

    def set_level(self, level: int) -> None:
        if level == self.level:
            return
        first = max(0, level - self.config.levels_in_use + 1)
        c = self.config
        parts = [level_samples(self.sections, lv, c.plane_noise_points, c.hull_points, self.seed) for lv in range(first, level + 1)]
        points, labels, planes = (np.concatenate(column) for column in zip(*parts))
        # Grouped by plane (hull last) so that a balanced batch draws a group, then a member.
        order = np.argsort(np.where(planes < 0, len(self.sections), planes), kind="stable")
        self.points, self.labels = torch.from_numpy(points[order]), torch.from_numpy(labels[order])
        sizes = np.bincount(np.where(planes < 0, len(self.sections), planes), minlength=len(self.sections) + 1)
        self.group_sizes = torch.from_numpy(sizes)
        self.group_starts = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        self.level = level

    def callbacks(self) -> list[Callback]:
        """One hook per level boundary (the coarse-to-fine schedule)."""
        boundaries = np.cumsum(self.config.steps_per_level)[:-1]
        return [
            Callback(lambda step, level=i + 1, **_: self.set_level(level), where=Where.BEFORE_STEP, start=int(b), stop=int(b) + 1)
            for i, b in enumerate(boundaries)
        ]

    def next_train(self, step: int) -> dict[str, Tensor]:
        n = self.config.batch_size
        if self.config.balance_planes:
            idx = self._balanced_indices(n)
        else:
            idx = torch.randint(len(self.points), (n,), generator=self.generator)
        return {"points": self.points[idx].to(self.device), "labels": self.labels[idx].to(self.device)}

    def _balanced_indices(self, n: int) -> Tensor:
        """``n`` sample indices: the hull group with its share of the set, every non-empty plane
        equally likely otherwise, uniform within a group."""
        sizes = self.group_sizes.double()
        weights = torch.where(sizes[:-1] > 0, 1.0, 0.0) * (1.0 - sizes[-1] / sizes.sum()) / max(int((sizes[:-1] > 0).sum()), 1)
        weights = torch.cat([weights, (sizes[-1] / sizes.sum())[None]])
        group = torch.multinomial(weights, n, replacement=True, generator=self.generator)
        within = (torch.rand(n, generator=self.generator, dtype=torch.float64) * sizes[group]).long()
        return self.group_starts[group] + torch.minimum(within, self.group_sizes[group] - 1)

    def describe(self) -> str:
        return f"{len(self.sections)} cross-sections ({len(self.points)} samples at level 0)"

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state(), "level": torch.tensor(self.level)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
        self.set_level(int(state["level"]))


CrossSectionDataManagerConfig._target = CrossSectionDataManager
