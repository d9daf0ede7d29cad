"""Occupancy grid for empty-space skipping (pure PyTorch).

Semantics follow Instant-NGP (Müller et al. 2022, sec. 4 "Accelerated ray marching") as packaged by
nerfacc's ``OccGridEstimator`` (Li et al. 2023, "NerfAcc"):

* ``levels`` cubic grids of ``resolution^3`` cells; level 0 covers the given AABB, level ``l`` the
  AABB scaled by ``2^l`` about its centre (unbounded scenes). A point is looked up in the finest
  level containing it.
* ``density`` [levels, res^3] holds an exponential moving maximum of the values returned by the
  caller's ``density_fn`` (nerfacc's convention is ``sigma(x) * render_step_size``, an approximate
  per-step opacity; any non-negative quantity works, ``occ_thre`` is in the same units).
* ``binary`` [levels, res, res, res] marks cells whose value exceeds ``min(occ_thre, mean)``.

Marching is vectorised over (ray, step) with a dense candidate tensor per ray chunk, not a DDA
traversal, so its cost is O(R * max_steps) lookups. The same code runs on CUDA tensors, so CPU and
GPU keep one semantics; only the packed scans it calls dispatch to nerfacc there
(:mod:`recon.render.packed`). This module never imports nerfacc.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from recon.render.packed import render_weights_packed
from recon.render.rays import intersect_aabb

__all__ = ["OccupancyGrid"]

# Number of (ray, step) candidates materialised at once while marching; bounds peak memory
# (~ a few tensors of this many floats).
_CANDIDATE_BUDGET = 1 << 22
_SIGMA_CHUNK = 1 << 16
"""Kept steps per call of ``sigma_fn`` in :meth:`OccupancyGrid.sample`: a chunk of rays crossing a
nearly all-occupied grid (early training, forward-facing captures) keeps millions of steps, whose
field evaluation at once took 23 GB on fern at 504x378 (the filter's result does not depend on the
chunking: it runs without gradients, point by point)."""


class OccupancyGrid(nn.Module):
    """Multi-level binary occupancy grid with EMA updates and packed fixed-step ray marching.

    Args:
        aabb: [6] (xmin, ymin, zmin, xmax, ymax, zmax) or [2, 3] box of level 0. Should be a cube
            for isotropic cells (not required).
        resolution: cells per axis of each level.
        levels: number of nested levels; 1 for bounded scenes.
    """

    density: Tensor
    binary: Tensor
    aabbs: Tensor
    _cell_coords: Tensor

    def __init__(self, aabb: Tensor | list[float], resolution: int = 128, levels: int = 1) -> None:
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        if levels < 1 or resolution < 1:
            raise ValueError("levels and resolution must be >= 1")
        self.resolution = int(resolution)
        self.levels = int(levels)
        centre, half = 0.5 * (aabb[0] + aabb[1]), 0.5 * (aabb[1] - aabb[0])
        scales = 2.0 ** torch.arange(levels, dtype=torch.float32)
        aabbs = torch.stack([centre - half * scales[:, None], centre + half * scales[:, None]], 1)  # [L, 2, 3]
        self.register_buffer("aabbs", aabbs)
        n = self.resolution**3
        self.register_buffer("density", torch.zeros(levels, n))
        self.register_buffer("binary", torch.zeros(levels, resolution, resolution, resolution, dtype=torch.bool))
        # Integer (i, j, k) of every flat cell index; flat = (i * res + j) * res + k.
        r = torch.arange(resolution)
        coords = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("_cell_coords", coords, persistent=False)

    @property
    def num_cells(self) -> int:
        return self.resolution**3

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: Callable[[Tensor], Tensor],
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        chunk: int = 1 << 18,
        generator: torch.Generator | None = None,
    ) -> None:
        """Refresh the grid. When to call it is the caller's schedule (a training
        :class:`recon.engine.callbacks.Callback`; nerfacc and instant-ngp refresh every 16 steps).

        While ``step < warmup_steps`` every cell of every level is evaluated. Afterwards, per level,
        ``res^3 // 4`` uniformly drawn cells plus up to ``res^3 // 4`` of the currently occupied cells
        (all of them if fewer, else a random subset) — nerfacc's scheme: the random cells discover
        new content, the occupied ones let vanished content decay. Each chosen cell is evaluated
        once at a uniformly jittered point inside it (so repeated updates cover the whole cell).

        density_fn: points [M, 3] -> values [M] or [M, 1] (non-negative).
        EMA: ``density <- max(ema_decay * density, new)`` for the evaluated cells only.
        Threshold: ``binary = density > min(occ_thre, mean(density))`` (per whole grid, as nerfacc).

        Known limitation (inherent to single-point probing, as in Instant-NGP): a cell that only
        grazes thin or small content may be missed, and the EMA forgets a maximum after roughly
        ``1 / (1 - ema_decay)`` updates, so repeated updates reduce but do not remove such misses.
        """
        dev = self.density.device
        n_cells = self.num_cells
        for lvl in range(self.levels):
            if step < warmup_steps:
                idx = torch.arange(n_cells, device=dev)
            else:
                quarter = max(n_cells // 4, 1)
                rand_idx = torch.randint(0, n_cells, (quarter,), device=dev, generator=generator)
                occ_idx = torch.nonzero(self.binary[lvl].reshape(-1))[:, 0]
                if occ_idx.numel() > quarter:
                    sel = torch.randint(0, occ_idx.numel(), (quarter,), device=dev, generator=generator)
                    occ_idx = occ_idx[sel]
                # unique: duplicate indices in an index_put are resolved arbitrarily.
                idx = torch.unique(torch.cat([rand_idx, occ_idx]))
            lo, hi = self.aabbs[lvl]
            cell = (hi - lo) / self.resolution
            jitter = torch.rand(idx.numel(), 3, device=dev, generator=generator)
            x = lo + (self._cell_coords[idx].to(lo.dtype) + jitter) * cell
            new = torch.cat([density_fn(x[i : i + chunk]).reshape(-1) for i in range(0, x.shape[0], chunk)])
            old = self.density[lvl, idx]
            self.density[lvl, idx] = torch.maximum(old * ema_decay, new.to(old.dtype).clamp_min(0.0))
        thre = torch.clamp(self.density.mean(), max=occ_thre)
        self.binary.copy_((self.density > thre).reshape(self.binary.shape))

    # ------------------------------------------------------------------ lookup
    def occupied(self, x: Tensor) -> Tensor:
        """Points x [..., 3] -> bool [...]: occupied in the finest level containing x; False outside
        the coarsest level."""
        lo0, hi0 = self.aabbs[0]
        centre, half = 0.5 * (lo0 + hi0), 0.5 * (hi0 - lo0)
        rel = (x - centre) / half  # level-0 box is [-1, 1]^3
        m = rel.abs().amax(-1)
        res = self.resolution
        if self.levels == 1:  # the common bounded case: no per-point level arithmetic
            inside, flat_level = m <= 1.0, 0
        else:
            # Level l covers |rel|_inf <= 2^l, so the finest containing level is ceil(log2 m), >= 0.
            lvl = torch.ceil(torch.log2(m.clamp_min(1e-12))).clamp_min(0).long()
            inside = lvl < self.levels
            lvl = lvl.clamp_max(self.levels - 1)
            rel = rel / (2.0 ** lvl.to(rel.dtype))[..., None]
            flat_level = lvl * res**3
        ijk = ((rel + 1.0) * (0.5 * res)).long().clamp_(0, res - 1)
        # One gather from the flat grid is cheaper than advanced indexing with four index tensors.
        flat = flat_level + (ijk[..., 0] * res + ijk[..., 1]) * res + ijk[..., 2]
        return self.binary.view(-1)[flat] & inside

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        near: float | Tensor = 0.0,
        far: float | Tensor = float("inf"),
        step_size: float = 1e-3,
        cone_angle: float = 0.0,
        alpha_thre: float = 0.0,
        sigma_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
        early_stop_eps: float = 0.0,
        stratified: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """March rays on a lattice of steps and keep the steps whose midpoint is in an occupied cell.

        rays_o, rays_d: [R, 3] (t is measured in units of |rays_d|; use unit directions so that
        ``step_size`` is a distance). near, far: scalars or [R]; marching is restricted to
        ``[t_lo, t_hi] = [max(near, t_enter), min(far, t_exit)]`` of the coarsest level's box. With
        ``stratified`` t_lo is shifted by ``U[0, step_size)`` per ray (as nerfacc does).

        The lattice is instant-ngp's (Müller et al. 2022, sec. 4): from t_lo, a step starting at t
        has length ``max(step_size, cone_angle * t)``, i.e. constant near the camera and growing
        geometrically (by ``1 + cone_angle`` per step) beyond ``step_size / cone_angle``, so that
        distant (contracted) space costs few samples. The last step is clipped to t_hi. Empty cells
        are skipped without leaving the lattice (instant-ngp advances t by whole steps), so the kept
        steps are exactly those of a dense march over [t_lo, t_hi] whose midpoint lies in an
        occupied cell.

        sigma_fn(t_starts [N], t_ends [N], ray_indices [N]) -> sigma [N]: if given, the kept steps
        are filtered as nerfacc's OccGridEstimator does: a step is dropped when its transmittance
        (over all kept steps in front of it) is below ``early_stop_eps``, or when its opacity
        ``1 - exp(-sigma * delta)`` is below ``min(alpha_thre, 1 - exp(-mean grid value))``: with
        grid values in nerfacc's units, sigma * step_size, the mean relaxes the threshold while the
        field is still nearly empty. (nerfacc uses the raw mean, see the comment in the code.)

        Returns packed ``(ray_indices [N] int64 sorted, t_starts [N], t_ends [N])``; not differentiable.
        """
        R = rays_o.shape[0]
        dev, dt = rays_o.device, rays_o.dtype
        t_enter, t_exit, hit = intersect_aabb(rays_o, rays_d, self.aabbs[-1].to(dt))
        near_t = torch.as_tensor(near, dtype=dt, device=dev).expand(R)
        far_t = torch.as_tensor(far, dtype=dt, device=dev).expand(R)
        t_lo = torch.maximum(t_enter, near_t)
        t_hi = torch.minimum(t_exit, far_t)
        if stratified:
            t_lo = t_lo + torch.rand(R, dtype=dt, device=dev, generator=generator) * step_size
        lattice = _Lattice(t_lo, step_size, cone_angle)
        valid_ray = hit & (t_hi > t_lo)
        n_steps = torch.where(valid_ray, lattice.count(t_hi), torch.zeros_like(t_lo)).long()

        out_r, out_s, out_e = [], [], []
        steps_list = n_steps.tolist()  # python ints: the chunking loop below is host-side
        start = 0
        while start < R:
            # Grow the ray chunk until its dense (ray x max steps) candidate block hits the budget.
            end = start + 1
            cur_max = steps_list[start]
            while end < R:
                nxt = max(cur_max, steps_list[end])
                if (end + 1 - start) * max(nxt, 1) > _CANDIDATE_BUDGET:
                    break
                cur_max, end = nxt, end + 1
            if cur_max > 0:
                edges = lattice.edges(slice(start, end), cur_max)  # [C, K + 1]
                hi = t_hi[start:end, None]
                ts, te = edges[:, :-1], torch.minimum(edges[:, 1:], hi)
                # ts < t_hi guards the rounding of the step count on the geometric part.
                keep = (torch.arange(cur_max, device=dev) < n_steps[start:end, None]) & (ts < hi)
                mid = 0.5 * (ts + te)
                pts = rays_o[start:end, None, :] + mid[..., None] * rays_d[start:end, None, :]
                keep &= self.occupied(pts)
                ri, si = torch.nonzero(keep, as_tuple=True)  # row-major: sorted by ray, then t
                out_r.append(ri + start)
                out_s.append(ts[ri, si])
                out_e.append(te[ri, si])
            start = end
        if out_r:
            ray_indices, t_starts, t_ends = torch.cat(out_r), torch.cat(out_s), torch.cat(out_e)
        else:
            ray_indices = torch.zeros(0, dtype=torch.long, device=dev)
            t_starts = t_ends = torch.zeros(0, dtype=dt, device=dev)

        if sigma_fn is not None and ray_indices.numel() > 0 and (alpha_thre > 0 or early_stop_eps > 0):
            n = ray_indices.numel()
            sigmas = torch.cat([sigma_fn(t_starts[i : i + _SIGMA_CHUNK], t_ends[i : i + _SIGMA_CHUNK], ray_indices[i : i + _SIGMA_CHUNK]).reshape(-1)
                                for i in range(0, n, _SIGMA_CHUNK)])
            _, trans = render_weights_packed(sigmas, t_starts, t_ends, ray_indices, R)
            keep = trans >= early_stop_eps
            # nerfacc compares opacities with the raw mean of sigma * step_size; as an opacity that
            # mean is 1 - exp(-mean). The raw mean lies above the opacity of every sample of a
            # uniform field (a freshly initialised one), which would drop them all.
            thre = min(alpha_thre, 1.0 - math.exp(-float(self.density.mean())))
            if thre > 0:
                keep &= 1.0 - torch.exp(-sigmas * (t_ends - t_starts)) >= thre
            ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
        return ray_indices, t_starts, t_ends


class _Lattice:
    """Step edges of :meth:`OccupancyGrid.sample` in closed form: per ray, ``k_c`` constant steps
    of ``step_size`` from ``t_lo`` reach the knee ``t_c >= step_size / cone_angle``; beyond it
    edge ``k`` is ``t_c * (1 + cone_angle)^(k - k_c)``. Without a cone the knee is never reached."""

    def __init__(self, t_lo: Tensor, step_size: float, cone_angle: float):
        if step_size <= 0 or cone_angle < 0:
            raise ValueError(f"need step_size > 0 and cone_angle >= 0, got {step_size}, {cone_angle}")
        self.t_lo, self.step, self.cone = t_lo, step_size, cone_angle
        if cone_angle > 0:
            self.k_c = torch.ceil((step_size / cone_angle - t_lo) / step_size).clamp_min(0.0)
            self.t_c = t_lo + self.k_c * step_size
            self.log_growth = math.log1p(cone_angle)

    def count(self, t_hi: Tensor) -> Tensor:
        """Number of steps [R] (float) that start before t_hi [R]."""
        linear = torch.ceil((t_hi - self.t_lo) / self.step)
        if self.cone == 0:
            return linear
        ratio = (t_hi / self.t_c).clamp_min(1.0)
        geometric = self.k_c + torch.ceil(torch.log(ratio) / self.log_growth)
        return torch.where(t_hi <= self.t_c, linear, geometric)

    def edges(self, rays: slice, num_steps: int) -> Tensor:
        """Edges 0..num_steps [C, num_steps + 1] of the rays in ``rays``."""
        k = torch.arange(num_steps + 1, device=self.t_lo.device, dtype=self.t_lo.dtype)
        linear = self.t_lo[rays, None] + k * self.step
        if self.cone == 0:
            return linear
        k_c, t_c = self.k_c[rays, None], self.t_c[rays, None]
        return torch.where(k <= k_c, linear, t_c * torch.exp((k - k_c) * self.log_growth))
