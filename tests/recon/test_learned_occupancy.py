"""Learned occupancy estimator: top-1 routing, gradients into the gate, inference skipping, losses."""

from __future__ import annotations

import pytest
import torch

from recon.render.learned_occupancy import (
    LearnedOccupancy,
    OccupancyGate,
    explicit_density_loss,
    imbalanced_occupancy_loss,
    routed_evaluate,
)
from recon.render.rays import accumulate, render_weights

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


class RecordingExpert:
    """An expert that remembers every point it evaluated: density = |x|, colour = x + 1."""

    def __init__(self, scale: float = 1.0):
        self.seen: list[torch.Tensor] = []
        self.scale = scale

    def __call__(self, positions, directions, camera_indices):
        self.seen.append(positions.detach().clone())
        return self.scale * positions.norm(dim=-1), positions + 1.0

    @property
    def points(self) -> torch.Tensor:
        return torch.cat(self.seen) if self.seen else torch.zeros(0, 3)


def _estimator(seed: int = 0, init_occupied: float = 0.5) -> LearnedOccupancy:
    torch.manual_seed(seed)
    gate = OccupancyGate(AABB, num_levels=2, max_res=32, log2_hashmap_size=10, hidden_dim=16, init_occupied=init_occupied)
    with torch.no_grad():  # a gate with varied outputs, so both classes are well populated
        gate.encoding.table.uniform_(-1.0, 1.0)
    return LearnedOccupancy(gate, num_samples=24, target_ratio=0.3)


def _rays(R: int = 40, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    origins = torch.tensor([0.0, 0.0, -3.0]).expand(R, 3).clone()
    target = (torch.rand(R, 3, generator=g) * 2 - 1) * 0.6
    directions = torch.nn.functional.normalize(target - origins, dim=-1)
    return origins, directions, torch.full((R,), 1.5), torch.full((R,), 4.5)


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    keys = x[:, 0] * 1e6 + x[:, 1] * 1e3 + x[:, 2]
    return x[torch.argsort(keys)]


def test_each_sample_goes_to_exactly_one_expert():
    est = _estimator()
    o, d, near, far = _rays()
    samples = est.sample(o, d, near, far, perturb=True)
    occupied = samples.occupied
    assert 0.2 < occupied.float().mean() < 0.8  # both experts get work
    large, small = RecordingExpert(), RecordingExpert(scale=0.5)
    density, rgb = est.route(samples, d, None, large, small)
    pos = samples.positions.reshape(-1, 3).detach()
    occ = occupied.reshape(-1)
    assert len(large.points) + len(small.points) == len(pos)
    torch.testing.assert_close(_sorted_rows(large.points), _sorted_rows(pos[occ]), rtol=0, atol=0)
    torch.testing.assert_close(_sorted_rows(small.points), _sorted_rows(pos[~occ]), rtol=0, atol=0)
    # Each sample's output comes from its own expert, its density scaled by the occupancy probability
    # (the default empty_scale, g_occ; test_gradients_reach_the_gate covers g_emp).
    g = samples.gate.reshape(-1).detach()
    expected = torch.where(occ, g * pos.norm(dim=-1), g * 0.5 * pos.norm(dim=-1))
    torch.testing.assert_close(density.reshape(-1).detach(), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rgb.reshape(-1, 3), pos + 1.0)


def test_gradients_reach_the_gate():
    """The photometric path: rendered colour -> routed density -> gate probability -> gate weights.
    Per sample d sigma / d g_occ is +sigma_large for occupied samples and -sigma_empty for empty ones."""
    est = _estimator()
    o, d, near, far = _rays()
    samples = est.sample(o, d, near, far, perturb=False)
    samples.gate.retain_grad()
    density, rgb = est.route(samples, d, None, RecordingExpert(), RecordingExpert(scale=0.5))
    weights, _ = render_weights(density, samples.t_starts, samples.t_ends)
    accumulate(weights, rgb).sum().backward()
    grads = [p.grad for p in est.gate.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)

    # Density alone: d (sum density) / d g_occ is exactly the routed expert's density, with the sign
    # of the probability that scales it: g_occ on occupied samples; on empty ones g_occ (default: more
    # density wanted pulls the gate towards "occupied") or g_emp = 1 - g_occ (Switch-NeRF's rule:
    # towards "empty").
    for scale, sign in (("g_occ", 1.0), ("g_emp", -1.0)):
        est.empty_scale = scale
        samples = est.sample(o, d, near, far, perturb=False)
        samples.gate.retain_grad()
        density, _ = est.route(samples, d, None, RecordingExpert(), RecordingExpert(scale=0.5))
        density.sum().backward()
        norm = samples.positions.detach().norm(dim=-1)
        expected = torch.where(samples.occupied, norm, sign * 0.5 * norm)
        torch.testing.assert_close(samples.gate.grad, expected)
        gate = samples.gate.detach()
        torch.testing.assert_close(density.detach(), torch.where(samples.occupied, gate * norm, 0.5 * norm * (gate if scale == "g_occ" else 1 - gate)))


def test_inference_skips_empty_samples():
    est = _estimator().eval()
    o, d, near, far = _rays()
    with torch.no_grad():
        samples = est.sample(o, d, near, far)
        large, small = RecordingExpert(), RecordingExpert()
        density, rgb = est.route(samples, d, None, large, small, skip_empty=True)
    assert not small.seen
    assert len(large.points) == int(samples.occupied.sum())
    assert (density[~samples.occupied] == 0).all() and (rgb[~samples.occupied] == 0).all()
    # The one-network ablation sends empty samples to the large expert, still exactly once each.
    large = RecordingExpert()
    with torch.no_grad():
        est.route(samples, d, None, large, None)
    assert len(large.points) == samples.occupied.numel()


def test_samples_tile_the_ray_and_follow_the_gate():
    est = _estimator()
    o, d, near, far = _rays(R=8)
    s = est.sample(o, d, near, far, perturb=True)
    assert s.t_starts.shape == (8, 24) and s.positions.shape == (8, 24, 3)
    torch.testing.assert_close(s.t_starts[:, 0], near)
    torch.testing.assert_close(s.t_ends[:, -1], far)
    torch.testing.assert_close(s.t_starts[:, 1:], s.t_ends[:, :-1])
    assert torch.equal(s.occupied, s.gate.detach() >= 0.5)
    outside = torch.tensor([[5.0, 0.0, 0.0], [0.0, -1.5, 0.2]])
    assert (est.gate(outside) == 0).all()  # outside the box is empty


def test_imbalanced_occupancy_loss_balances_at_the_target_ratio():
    r = 0.3
    # At f = P = r the value is 1, and as a function of P (with f = P) it is smallest at P = r.
    values = [float(imbalanced_occupancy_loss(torch.full((10,), p), torch.arange(10) < round(10 * p), r)) for p in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert values[2] == pytest.approx(1.0) and min(values) == values[2]
    # The gradient on every gate probability lowers occupancy when too many samples are occupied
    # and raises it when too few are.
    for f_occ, sign in ((0.6, 1.0), (0.1, -1.0)):
        gate = torch.full((100,), 0.5, requires_grad=True)
        occupied = torch.arange(100) < int(100 * f_occ)
        imbalanced_occupancy_loss(gate, occupied, r).backward()
        assert (torch.sign(gate.grad) == sign).all()
        torch.testing.assert_close(gate.grad, torch.full((100,), (f_occ / r - (1 - f_occ) / (1 - r)) / 100))
    with pytest.raises(ValueError, match="ratio"):
        imbalanced_occupancy_loss(gate, occupied, 1.0)


def test_explicit_density_loss_is_the_mean_opacity_of_empty_samples():
    density = torch.tensor([[1.0, 2.0, 0.0, 4.0]])
    t0 = torch.tensor([[0.0, 0.5, 1.0, 1.5]])
    t1 = t0 + 0.5
    empty = torch.tensor([[True, False, True, True]])
    alpha = 1 - torch.exp(-density * 0.5)
    expected = (alpha[0, 0] + alpha[0, 2] + alpha[0, 3]) / 3
    torch.testing.assert_close(explicit_density_loss(density, t0, t1, empty), expected)
    assert float(explicit_density_loss(density, t0, t1, torch.zeros_like(empty))) == 0.0


def test_point_sampling_subdivides_occupied_intervals():
    """With m = 3 subdivisions an occupied interval becomes three equal parts, each evaluated by the
    large expert with its parent's gate value; an empty one stays whole (two inactive placeholders
    that no expert sees); the intervals still tile [near, far]; the occupancy loss counts parents."""
    est = _estimator()
    o, d, near, far = _rays(R=20)
    torch.manual_seed(3)
    plain = est.sample(o, d, near, far, perturb=True)
    est.subdivisions = 3
    torch.manual_seed(3)
    s = est.sample(o, d, near, far, perturb=True)
    assert s.t_starts.shape == (20, 72) and s.subdivisions == 3
    torch.testing.assert_close(s.t_starts[:, 0], near)
    torch.testing.assert_close(s.t_ends[:, -1], far)
    torch.testing.assert_close(s.t_starts[:, 1:], s.t_ends[:, :-1])
    parent_occupied = plain.occupied
    assert torch.equal(s.coarse(s.occupied), parent_occupied) and torch.equal(s.coarse(s.gate), plain.gate)
    parts = (s.t_ends - s.t_starts).reshape(20, 24, 3)
    whole = plain.t_ends - plain.t_starts
    torch.testing.assert_close(parts[parent_occupied], (whole[parent_occupied] / 3)[:, None].expand(-1, 3))
    torch.testing.assert_close(parts[~parent_occupied][:, 0], whole[~parent_occupied])
    assert (parts[~parent_occupied][:, 1:] == 0).all()
    assert torch.equal(s.active.reshape(20, 24, 3), parent_occupied[..., None] | (torch.arange(3) == 0))

    large, small = RecordingExpert(), RecordingExpert(scale=0.5)
    density, _ = est.route(s, d, None, large, small)
    assert len(large.points) == 3 * int(parent_occupied.sum()) and len(small.points) == int((~parent_occupied).sum())
    assert (density[~s.active] == 0).all()
    torch.testing.assert_close(est.losses(s, density)["occupancy"], est.losses(plain, est.route(plain, d, None, large, small)[0])["occupancy"])
