"""Occupancy grid: update on a known scene, empty-space skipping matches dense marching."""

import math

import pytest
import torch

from recon.render.occupancy import OccupancyGrid
from recon.render.packed import (
    accumulate_packed,
    expected_depth_packed,
    render_weights_packed,
)
from recon.render.rays import intersect_aabb

CENTRE = torch.tensor([0.1, -0.05, 0.0])
RADIUS = 0.3


def sigma(x: torch.Tensor) -> torch.Tensor:
    # Smooth bump supported on a sphere: zero outside, 40 at the centre. It falls off steeply
    # (cubically) towards the surface because the grid update probes each cell at single random
    # points, so a cell that only grazes the sphere can stay empty; what it hides must be negligible.
    r2 = ((x - CENTRE) ** 2).sum(-1) / RADIUS**2
    return 40.0 * (1.0 - r2).clamp_min(0.0) ** 3


def _grid(res=32, updates=32):
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=res)
    g = torch.Generator().manual_seed(0)
    for step in range(updates):
        grid.update(step, sigma, occ_thre=0.01, warmup_steps=256, generator=g)
    return grid


def _rays(R=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.tensor([0.0, 0.0, -3.0]).expand(R, 3).clone()
    target = CENTRE + (torch.rand(R, 3, generator=g) * 2 - 1) * 0.3  # most rays hit the sphere, some miss
    d = target - o
    return o, d / d.norm(dim=-1, keepdim=True)


def test_update_covers_sphere_and_little_else():
    grid = _grid()
    res = grid.resolution
    cell = 2.0 / res
    centres = (grid._cell_coords.float() + 0.5) * cell - 1.0
    dist = (centres - CENTRE).norm(dim=-1)
    occ = grid.binary.reshape(-1)
    half_diag = 0.5 * math.sqrt(3) * cell
    assert occ[dist < RADIUS - half_diag].all()  # every cell fully inside is occupied
    assert not occ[dist > RADIUS + half_diag].any()  # nothing that cannot touch the sphere
    sphere_cells = (4 / 3) * math.pi * RADIUS**3 / cell**3
    assert occ.sum() < 1.6 * sphere_cells


def test_post_warmup_update_keeps_occupied_and_decays():
    grid = _grid(res=16, updates=2)
    before = grid.binary.clone()
    g = torch.Generator().manual_seed(1)
    grid.update(1000, sigma, warmup_steps=256, generator=g)
    # Occupied cells are re-evaluated at a jittered point; the EMA max keeps cells in the sphere's core.
    assert (grid.binary & before).sum() >= 0.9 * before.sum()
    grid2 = _grid(res=16, updates=1)
    for step in range(300, 400):
        grid2.update(step, lambda x: torch.zeros(x.shape[0]), warmup_steps=256, generator=g)
    # Content that vanished decays; occupied cells are re-evaluated at every update (so they decay
    # at the full EMA rate) even though the threshold min(occ_thre, mean) follows the mean down.
    assert 0 < grid2.density.max() <= 40 * 0.95**100 * 1.0001


def _render(est, o, d, step, *samples):
    R = o.shape[0]
    ri, ts, te = samples or est.sample(o, d, near=0.0, far=10.0, step_size=step)
    assert (ri[1:] >= ri[:-1]).all()
    x = o[ri] + 0.5 * (ts + te)[:, None] * d[ri]
    w, _ = render_weights_packed(sigma(x), ts, te, ri, R)
    return ri.numel(), accumulate_packed(w, None, ri, R), expected_depth_packed(w, ts, te, ri, R)


def _dense_estimator():
    est = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=1)
    est.binary.fill_(True)  # every step kept = dense uniform marching
    return est


def test_skipping_is_exact_with_a_conservative_grid():
    # Grid marked analytically: every cell that intersects the sphere. Skipped samples then have
    # exactly zero density, so skipping must reproduce dense marching to round-off.
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=32)
    cell = 2.0 / 32
    lo = grid._cell_coords.float() * cell - 1.0
    closest = torch.maximum(torch.minimum(CENTRE, lo + cell), lo)
    grid.binary.copy_(((closest - CENTRE).norm(dim=-1) < RADIUS).reshape(grid.binary.shape))
    o, d = _rays()
    n_dense, acc_d, dep_d = _render(_dense_estimator(), o, d, 0.01)
    n_skip, acc_s, dep_s = _render(grid, o, d, 0.01)
    assert (acc_d > 0.5).sum() > 0.4 * o.shape[0]  # the scene is actually seen
    assert (acc_s - acc_d).abs().max() < 1e-6
    assert (dep_s - dep_d).abs().max() < 1e-5
    assert n_skip < 0.3 * n_dense


def test_skipping_with_updated_grid_matches_dense():
    # The stochastic update probes each cell at single jittered points, and its EMA forgets old
    # maxima, so cells that merely graze the sphere may stay empty: agreement is close, not exact.
    grid = _grid()
    o, d = _rays()
    n_dense, acc_d, dep_d = _render(_dense_estimator(), o, d, 0.01)
    n_skip, acc_s, dep_s = _render(grid, o, d, 0.01)
    assert (acc_s - acc_d).abs().mean() < 1e-4
    assert (acc_s - acc_d).abs().max() < 5e-3
    hit = acc_d[:, 0] > 0.5  # depth of nearly transparent rays is ill-conditioned
    assert (dep_s[hit] - dep_d[hit]).abs().max() < 1e-3
    assert n_skip < 0.3 * n_dense


def test_alpha_threshold_and_multilevel_lookup():
    grid = _grid()
    o, d = _rays(R=50, seed=1)
    ri, _, _ = grid.sample(o, d, near=0.0, far=10.0, step_size=0.01)

    def sigma_fn(t0, t1, r):
        return sigma(o[r] + 0.5 * (t0 + t1)[:, None] * d[r])

    ri2, ts2, te2 = grid.sample(o, d, near=0.0, far=10.0, step_size=0.01, alpha_thre=0.01, sigma_fn=sigma_fn)
    assert 0 < ri2.numel() < ri.numel()
    assert (1 - torch.exp(-sigma_fn(ts2, te2, ri2) * (te2 - ts2)) >= 0.01).all()

    ml = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8, levels=3)
    ml.binary[1].fill_(True)  # only level 1 (the [-2, 2]^3 shell) is occupied
    pts = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, -3.0, 0.0], [5.0, 0.0, 0.0]])
    assert ml.occupied(pts).tolist() == [False, True, False, False]
    ri3, ts3, te3 = ml.sample(torch.tensor([[-10.0, 0.1, 0.1]]), torch.tensor([[1.0, 0.0, 0.0]]), step_size=0.05)
    mids = -10 + 0.5 * (ts3 + te3)
    assert ((mids.abs() > 1) & (mids.abs() < 2)).all() and ri3.numel() == 40


def _stepwise(t_lo: float, t_hi: float, step: float, cone: float) -> list[tuple[float, float]]:
    """The march one step at a time, as instant-ngp's loop does it: the oracle of the closed form."""
    out, t = [], t_lo
    while t < t_hi:
        dt = max(step, cone * t)
        out.append((t, min(t + dt, t_hi)))
        t += dt
    return out


@pytest.mark.parametrize("cone", [0.0, 0.05])
def test_lattice_matches_stepwise_march(cone):
    # Rays starting inside the box at t = 0.05 cross the knee (t = step / cone = 0.2) of the cone
    # lattice; rays from outside start on its geometric part.
    grid = _dense_estimator().double()
    o = torch.tensor([[0.0, 0.0, -0.9], [0.3, -0.2, -0.8], [0.0, 0.1, -3.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, 1.0], [0.1, 0.2, 1.0], [0.05, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64), dim=-1)
    ri, ts, te = grid.sample(o, d, near=0.05, far=3.7, step_size=0.01, cone_angle=cone)
    t_enter, t_exit, hit = intersect_aabb(o, d, grid.aabbs[0])
    assert hit.tolist() == [True, True, True, False]
    for r in range(len(o)):
        ref = _stepwise(max(0.05, float(t_enter[r])), min(3.7, float(t_exit[r])), 0.01, cone) if hit[r] else []
        got = torch.stack([ts[ri == r], te[ri == r]], -1)
        assert got.shape[0] == len(ref)
        if ref:
            torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-9)
    if cone > 0:  # the cone actually lengthened the far steps
        assert (te - ts).max() > 2 * 0.01


def test_sample_evaluates_sigma_in_bounded_chunks(monkeypatch):
    """The filter's field evaluations go in chunks of at most ``_SIGMA_CHUNK`` steps (an all-occupied
    grid keeps millions: 23 GB at once on fern) and give exactly the unchunked result."""
    import recon.render.occupancy as occupancy

    grid = _grid()
    o, d = _rays()
    sizes = []

    def sigma_fn(t0, t1, r):
        sizes.append(len(r))
        return sigma(o[r] + 0.5 * (t0 + t1)[:, None] * d[r])

    whole = grid.sample(o, d, near=0.0, far=10.0, step_size=0.01, sigma_fn=sigma_fn, early_stop_eps=1e-3)
    assert len(sizes) == 1 and sizes[0] > 1000
    monkeypatch.setattr(occupancy, "_SIGMA_CHUNK", 100)
    sizes.clear()
    chunked = grid.sample(o, d, near=0.0, far=10.0, step_size=0.01, sigma_fn=sigma_fn, early_stop_eps=1e-3)
    assert max(sizes) == 100 and len(sizes) > 10
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked))


def test_sample_filters_like_nerfacc():
    grid = _grid()
    o, d = _rays()

    def sigma_fn(t0, t1, r):
        return sigma(o[r] + 0.5 * (t0 + t1)[:, None] * d[r])

    ri, ts, te = grid.sample(o, d, near=0.0, far=10.0, step_size=0.01)
    w, trans = render_weights_packed(sigma_fn(ts, te, ri), ts, te, ri, o.shape[0])
    ri2, ts2, te2 = grid.sample(o, d, near=0.0, far=10.0, step_size=0.01, sigma_fn=sigma_fn, early_stop_eps=1e-3)
    # Early stopping drops exactly the steps behind transmittance 1e-3 (computed over all kept
    # steps), so the rays lose at most that much opacity.
    assert ri2.numel() == int((trans >= 1e-3).sum()) < ri.numel()
    _, acc2, _ = _render(grid, o, d, 0.01, ri2, ts2, te2)
    assert (accumulate_packed(w, None, ri, o.shape[0]) - acc2).abs().max() < 1e-3

    # A freshly initialised field is nearly uniform. nerfacc's alpha threshold, the raw grid mean
    # of sigma * step, lies above every sample's opacity 1 - exp(-sigma * step) there; as an
    # opacity the mean keeps the samples of the denser half.
    flat = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8)
    flat.binary.fill_(True)
    flat.density.fill_(0.01)

    def nearly_uniform(t0, t1, r):  # sigma * step = 0.01, the grid value, up to 0.1 %
        x = o[r] + 0.5 * (t0 + t1)[:, None] * d[r]
        return 1.0 + 1e-3 * x[:, 0]

    n_all = flat.sample(o, d, near=0.0, far=10.0, step_size=0.01)[0].numel()
    n_kept = flat.sample(o, d, near=0.0, far=10.0, step_size=0.01, alpha_thre=0.01, sigma_fn=nearly_uniform)[0].numel()
    assert 0.3 * n_all < n_kept < 0.7 * n_all
