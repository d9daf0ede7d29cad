"""PSNR / SSIM against scikit-image, and LPIPS loading from local files only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from recon.errors import CheckpointError
from recon.image_metrics import LPIPS, LPIPS_ENV_VAR, load_lpips, psnr, ssim


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )


def _pairs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    noisy_a = torch.rand(37, 53, 3, generator=g, dtype=dtype)
    noisy_b = (noisy_a + 0.2 * torch.randn(37, 53, 3, generator=g, dtype=dtype)).clamp(0, 1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48, dtype=dtype), torch.linspace(0, 1, 64, dtype=dtype), indexing="ij")
    smooth_a = torch.stack([xx, yy, 0.5 + 0.5 * torch.sin(6 * xx + 3 * yy)], -1)
    smooth_b = (smooth_a * 0.9 + 0.05 + 0.02 * torch.cos(9 * xx)[..., None]).clamp(0, 1)
    unrelated = torch.rand(37, 53, 3, generator=g, dtype=dtype)
    return [(noisy_a, noisy_b), (smooth_a, smooth_b), (noisy_a, unrelated), (smooth_a, smooth_a)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_ssim_matches_skimage(dtype, tol):
    for a, b in _pairs(dtype):
        ref = _sk_ssim(a.double().numpy(), b.double().numpy())
        got = float(ssim(a, b))
        assert abs(got - ref) < tol, (got, ref)


def test_psnr_matches_skimage():
    for a, b in _pairs()[:3]:
        ref = peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=1.0)
        assert abs(float(psnr(a, b)) - ref) < 1e-8
        assert abs(float(psnr(a.float(), b.float())) - ref) < 1e-3
    a = _pairs()[0][0]
    assert torch.isinf(psnr(a, a))


def test_batched_shapes_and_values():
    pairs = _pairs(torch.float32)
    a = torch.stack([pairs[0][0], pairs[2][0]])  # same size (37x53)
    b = torch.stack([pairs[0][1], pairs[2][1]])
    s, p = ssim(a, b), psnr(a, b)
    assert s.shape == (2,) and p.shape == (2,)
    for i in range(2):
        assert torch.allclose(s[i], ssim(a[i], b[i]), atol=1e-6)
        assert torch.allclose(p[i], psnr(a[i], b[i]), atol=1e-5)
    assert ssim(a[0], b[0]).shape == ()
    assert abs(float(ssim(a[0], a[0])) - 1.0) < 1e-6


def test_ssim_differentiable_and_errors():
    a, b = _pairs(torch.float32)[0]
    a = a.clone().requires_grad_(True)
    (1 - ssim(a, b)).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        ssim(torch.rand(8, 8, 3), torch.rand(8, 8, 3))
    with pytest.raises(ValueError):
        ssim(torch.rand(16, 16, 3), torch.rand(16, 17, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda():
    a, b = _pairs(torch.float32)[0]
    ref_s, ref_p = ssim(a, b), psnr(a, b)
    assert torch.allclose(ssim(a.cuda(), b.cuda()).cpu(), ref_s, atol=1e-5)
    assert torch.allclose(psnr(a.cuda(), b.cuda()).cpu(), ref_p, atol=1e-4)
    m = LPIPS().cuda()
    assert float(m(a.cuda(), a.cuda())) == 0.0


# -- LPIPS ---------------------------------------------------------------------------------------
def _images():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 64, 64, 3, generator=g)
    b = (a + 0.3 * torch.randn(2, 64, 64, 3, generator=g)).clamp(0, 1)
    return a, b


def test_lpips_safetensors_roundtrip(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ref = LPIPS()
    path = tmp_path / "lpips_alex.safetensors"
    ref.save_weights(path)
    a, b = _images()

    model = load_lpips(path)
    assert isinstance(model, LPIPS)
    d_same, d_diff = model(a, a), model(a, b)
    assert d_same.shape == (2,) and torch.all(d_same == 0)
    assert torch.all(d_diff > 0)
    assert torch.allclose(d_diff, ref(a, b))
    assert model(a[0], b[0]).shape == ()

    monkeypatch.setenv(LPIPS_ENV_VAR, str(path))
    via_env = load_lpips()
    assert via_env is not None and torch.allclose(via_env(a, b), d_diff)

    # Gradients reach the inputs (usable as a loss) while the metric's weights stay frozen.
    x = a.clone().requires_grad_(True)
    model(x, b).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_lpips_accepts_reference_package_state_dict(tmp_path):
    torch.manual_seed(1)
    ref = LPIPS()
    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    state = {}
    for k, v in ref.state_dict().items():
        parts = k.split(".")
        if parts[0] == "features":
            state[f"net.slice{slices[int(parts[1])]}.{parts[1]}.{parts[2]}"] = v
        else:
            state[f"{parts[0]}.model.1.weight"] = v
    state["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    state["scaling_layer.scale"] = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    path = tmp_path / "lpips_full.pth"
    torch.save(state, path)
    a, b = _images()
    model = load_lpips(path)
    assert model is not None and torch.allclose(model(a, b), ref(a, b))


def test_lpips_missing_and_bad_files(tmp_path, monkeypatch):
    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # default path ~/.cache/recon/... does not exist
    assert load_lpips() is None

    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="nope.safetensors"):
        load_lpips(missing)
    monkeypatch.setenv(LPIPS_ENV_VAR, str(missing))
    with pytest.raises(CheckpointError, match=LPIPS_ENV_VAR):
        load_lpips()
    monkeypatch.delenv(LPIPS_ENV_VAR)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        load_lpips(corrupt)

    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in LPIPS().state_dict().items() if not k.startswith("lin")}, partial)
    with pytest.raises(CheckpointError, match="miss 5 keys"):
        load_lpips(partial)

    # The default location is used when present.
    default = tmp_path / ".cache" / "recon" / "lpips_alex.safetensors"
    LPIPS().save_weights(default)
    assert isinstance(load_lpips(), LPIPS)
