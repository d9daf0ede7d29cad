"""Packed volume rendering against the dense helpers of recon.render.rays."""

import pytest
import torch

from recon.render.packed import (
    accumulate_packed,
    exclusive_sum_packed,
    expected_depth_packed,
    median_depth_packed,
    pack,
    render_weights_from_alpha_packed,
    render_weights_packed,
)
from recon.render.rays import accumulate, expected_depth, render_weights


def _batch(seed: int, R: int = 7, S: int = 12):
    g = torch.Generator().manual_seed(seed)
    dens = (torch.rand(R, S, generator=g, dtype=torch.float64) * 3).requires_grad_()
    edges = torch.sort(torch.rand(R, S + 1, generator=g, dtype=torch.float64) * 4, -1).values
    rgb = torch.rand(R, S, 3, generator=g, dtype=torch.float64).requires_grad_()
    mask = torch.rand(R, S, generator=g) > 0.35
    mask[2] = False  # a ray without samples
    mask[3] = True
    return dens, edges[:, :-1], edges[:, 1:], rgb, mask


def test_pack_layout():
    mask = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    ri, info = pack(mask)
    assert ri.tolist() == [0, 0, 2, 2, 2]
    assert info.tolist() == [[0, 2], [2, 0], [2, 3]]


def test_packed_matches_dense_with_masked_samples():
    for seed in range(3):
        dens, ts, te, rgb, mask = _batch(seed)
        R = mask.shape[0]
        # Dense reference: masked samples contribute nothing (zero density).
        w_d, _ = render_weights(dens * mask, ts, te)
        col_d = accumulate(w_d, rgb)
        acc_d = accumulate(w_d)
        dep_d = expected_depth(w_d, ts, te)
        loss_d = col_d.sum() + 2 * acc_d.sum() + 0.3 * dep_d.sum()
        g_dens_d, g_rgb_d = torch.autograd.grad(loss_d, [dens, rgb])

        ri, _ = pack(mask)
        w_p, T_p = render_weights_packed(dens[mask], ts[mask], te[mask], ri, R)
        col_p = accumulate_packed(w_p, rgb[mask], ri, R)
        acc_p = accumulate_packed(w_p, None, ri, R)
        dep_p = expected_depth_packed(w_p, ts[mask], te[mask], ri, R)
        assert torch.allclose(w_p, w_d[mask], atol=1e-6)
        assert torch.allclose(col_p, col_d, atol=1e-6)
        assert torch.allclose(acc_p, acc_d, atol=1e-6)
        assert torch.allclose(dep_p, dep_d, atol=1e-6)
        loss_p = col_p.sum() + 2 * acc_p.sum() + 0.3 * dep_p.sum()
        g_dens_p, g_rgb_p = torch.autograd.grad(loss_p, [dens, rgb])
        assert torch.allclose(g_dens_p, g_dens_d, atol=1e-6)
        assert torch.allclose(g_rgb_p, g_rgb_d, atol=1e-6)

        # From alphas: the same weights.
        alphas = 1 - torch.exp(-dens[mask] * (te[mask] - ts[mask]))
        w_a, T_a = render_weights_from_alpha_packed(alphas, ri, R)
        assert torch.allclose(w_a, w_p, atol=1e-6) and torch.allclose(T_a, T_p, atol=1e-6)


def test_float32_large_batch_precision():
    # Many rays: the global prefix sum is large, the per-ray difference must stay accurate.
    g = torch.Generator().manual_seed(0)
    R, S = 4000, 64
    dens = torch.rand(R, S, generator=g) * 5
    ts = torch.arange(S, dtype=torch.float32).expand(R, S) * 0.05
    te = ts + 0.05
    w_d, T_d = render_weights(dens, ts, te)
    ri = torch.arange(R).repeat_interleave(S)
    w_p, T_p = render_weights_packed(dens.flatten(), ts.flatten(), te.flatten(), ri, R)
    assert torch.allclose(T_p, T_d.flatten(), atol=1e-6)
    assert torch.allclose(w_p, w_d.flatten(), atol=1e-6)


def test_alpha_one_is_finite():
    alphas = torch.tensor([0.5, 1.0, 0.3, 0.2], requires_grad=True)
    ri = torch.tensor([0, 0, 0, 1])
    w, T = render_weights_from_alpha_packed(alphas, ri, 2)
    w.sum().backward()
    assert torch.isfinite(alphas.grad).all()
    assert T[2] < 1e-6 and T[3] == 1.0


def test_exclusive_sum_and_median_depth():
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    ri = torch.tensor([0, 0, 2, 2, 2])
    assert exclusive_sum_packed(vals, ri, 3).tolist() == [0.0, 1.0, 0.0, 3.0, 7.0]
    w = torch.tensor([0.2, 0.1, 0.1, 0.5, 0.3])
    ts = torch.tensor([0.0, 1.0, 0.0, 1.0, 2.0])
    te = ts + 1.0
    med = median_depth_packed(w, ts, te, ri, 3)
    # ray 0: total 0.3 < 0.5 -> last sample (mid 1.5); ray 1: empty -> 0; ray 2: crosses at sample 2.
    assert med[:, 0].tolist() == [1.5, 0.0, 1.5]


def test_cpu_tensors_never_import_nerfacc(monkeypatch):
    """Compiled CUDA libraries are never imported for CPU tensors (docs/architecture.md; with nvcc
    present they would start a failing build). The dispatch answers None without trying to import."""
    import recon.render.backend as backend

    def refuse(name):
        raise AssertionError(f"tried to import {name} for CPU tensors")

    monkeypatch.setattr(backend, "_optional_module", refuse)
    assert backend.nerfacc_for(torch.zeros(3)) is None
    dens, t0, t1, _, mask = _batch(0)
    ri, _ = pack(mask)
    render_weights_packed(dens[mask], t0[mask], t1[mask], ri, mask.shape[0])


def test_backend_variable_is_validated(monkeypatch):
    from recon.render.backend import forced_backend

    monkeypatch.setenv("RECON_BACKEND", "Torch")
    assert forced_backend() == "torch"
    monkeypatch.setenv("RECON_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="RECON_BACKEND='cuda-magic' is not one of"):
        forced_backend()


def _gpu_batch():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dens, t0, t1, rgb, mask = _batch(3, R=300, S=64)
    ri, _ = pack(mask)
    to = lambda x: x.detach().float().cuda()  # noqa: E731
    return to(dens[mask]).requires_grad_(), to(t0[mask]), to(t1[mask]), ri.cuda(), mask.shape[0]


@pytest.mark.gpu
def test_nerfacc_scan_matches_torch_reference(monkeypatch):
    """GPU tier: the nerfacc path of the packed scans equals the PyTorch reference (values and grads)."""
    pytest.importorskip("nerfacc")
    dens, t0, t1, ri, r = _gpu_batch()
    w_nerfacc, _ = render_weights_packed(dens, t0, t1, ri, r)
    (g_nerfacc,) = torch.autograd.grad(w_nerfacc.square().sum(), dens)
    monkeypatch.setenv("RECON_BACKEND", "torch")
    w_torch, _ = render_weights_packed(dens, t0, t1, ri, r)
    (g_torch,) = torch.autograd.grad(w_torch.square().sum(), dens)
    assert torch.allclose(w_nerfacc, w_torch, atol=1e-5) and torch.allclose(g_nerfacc, g_torch, atol=1e-4)
