"""Batched ray sampling and volume rendering against straightforward per-ray references."""

import torch

from recon.render.rays import intersect_aabb, pdf_samples, render_weights, stratified_samples


def test_render_weights_match_loop():
    g = torch.Generator().manual_seed(0)
    dens = torch.rand(5, 16, generator=g) * 3
    edges = torch.sort(torch.rand(5, 17, generator=g) * 4, -1).values
    w, T = render_weights(dens, edges[:, :-1], edges[:, 1:])
    for r in range(5):
        trans = 1.0
        for s in range(16):
            delta = float(edges[r, s + 1] - edges[r, s])
            alpha = 1 - torch.exp(-dens[r, s] * delta)
            assert torch.isclose(T[r, s], torch.tensor(trans), atol=1e-6)
            assert torch.isclose(w[r, s], alpha * trans, atol=1e-6)
            trans *= float(1 - alpha)


def test_stratified_samples_tile_the_interval():
    near, far = torch.tensor([0.5, 1.0]), torch.tensor([2.0, 3.0])
    s, e = stratified_samples(near, far, 8, perturb=True, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(s[:, 0], near) and torch.allclose(e[:, -1], far)
    assert torch.allclose(s[:, 1:], e[:, :-1])
    assert (e > s).all()


def test_pdf_samples_follow_weights():
    bins = torch.linspace(0, 1, 11)[None].repeat(2, 1)
    weights = torch.zeros(2, 10)
    weights[0, 3] = 1.0  # all mass in [0.3, 0.4]
    weights[1] = 1.0  # uniform
    t = pdf_samples(bins, weights, 1000, perturb=True, generator=torch.Generator().manual_seed(0))
    assert ((t[0] >= 0.3 - 1e-4) & (t[0] <= 0.4 + 1e-4)).float().mean() > 0.98
    assert abs(float(t[1].mean()) - 0.5) < 0.03
    for perturb in (False, True):
        t_sorted = pdf_samples(bins, weights, 50, perturb=perturb)
        assert (t_sorted[:, 1:] >= t_sorted[:, :-1]).all()


def test_intersect_aabb():
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    o = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    near, far, hit = intersect_aabb(o, d, aabb)
    assert hit.tolist() == [True, False, True]
    assert torch.allclose(near[[0, 2]], torch.tensor([2.0, 0.0])) and torch.allclose(far[[0, 2]], torch.tensor([4.0, 1.0]))
    assert near[1] == far[1]
