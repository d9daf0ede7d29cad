"""recon.geometry.local_models: user-supplied depth / flow networks (torch.export, TorchScript) and the fit of
relative depth to sparse metric depth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from recon.errors import DataError
from recon.geometry.local_models import depth_discontinuities, depth_from_model, fit_relative_depth, flow_from_model, load_network, sharpen_depth_edges


def _plane_depth(h: int = 40, w: int = 50) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return 2.0 + 0.03 * u + 0.02 * v + 0.3 * torch.sin(u / 7.0)


def test_fit_recovers_depth_from_affine_disparity_despite_outliers():
    z = _plane_depth()
    relative = (1.0 / z - 0.1) / 0.25  # 1/z = 0.25 rel + 0.1
    gen = torch.Generator().manual_seed(0)
    valid = torch.rand(z.shape, generator=gen) < 0.3
    reference = z * (1 + 0.01 * torch.randn(z.shape, generator=gen, dtype=torch.float64))
    outliers = torch.rand(z.shape, generator=gen) < 0.4  # 40 % of the reference is garbage
    reference = torch.where(outliers, torch.rand(z.shape, generator=gen, dtype=torch.float64) * 10 + 0.5, reference)
    depth, a, b = fit_relative_depth(relative, reference, valid, "disparity")
    assert a == pytest.approx(0.25, rel=0.02) and b == pytest.approx(0.1, abs=0.01)
    assert float(((depth - z).abs() / z).max()) < 0.02
    # plain least squares over the same pixels is far off: the outliers matter
    x, y = relative[valid], 1.0 / reference[valid]
    sol = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), y[:, None]).solution[:, 0]
    assert abs(float(sol[0]) - 0.25) > 0.05

    exact, a, b = fit_relative_depth(0.5 * z + 3.0, z, valid, "depth")  # z = 2 rel - 6
    assert a == pytest.approx(2.0, rel=1e-6) and b == pytest.approx(-6.0, rel=1e-6)
    assert torch.allclose(exact, z, rtol=1e-6)
    with pytest.raises(ValueError, match="at least 10 pixels"):
        fit_relative_depth(relative, z, torch.zeros_like(valid), "disparity")


class _Disparity(torch.nn.Module):
    """Returns 1 / (1 + mean colour) at a fixed 7x9 resolution: checks input handling and resizing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 1.0 / (1.0 + x.mean(1, keepdim=True))
        return torch.nn.functional.interpolate(out, size=(7, 9), mode="bilinear", align_corners=False)[:, 0]


class _Flow(torch.nn.Module):
    """RAFT-style: a list of refinements; the last is (image1 - image0) mean, per channel 0/1."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
        d = (b - a).mean(1, keepdim=True)
        return [torch.zeros_like(a[:, :2]), torch.cat([d, -d], 1)]


class _Wrong(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a[:, :1]


def test_torchscript_loading_running_and_errors(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.pt: depth network file not found"):
        load_network(tmp_path / "nothing.pt", "depth network")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match=r"junk\.pt: cannot load the flow network as a TorchScript archive"):
        load_network(junk, "flow network")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
        torch.jit.script(_Disparity()).save(str(tmp_path / "depth.pt"))
        torch.jit.script(_Wrong()).save(str(tmp_path / "wrong.pt"))
    depth_net = load_network(tmp_path / "depth.pt", "depth network")
    image = torch.full((30, 41, 3), 0.5)
    out = depth_from_model(depth_net, image, input_size=28, normalize=False)
    assert out.shape == (30, 41) and torch.allclose(out, torch.full_like(out, 1 / 1.5))
    normalised = depth_from_model(depth_net, image, input_size=0, normalize=True)
    mean = float(np.mean([(0.5 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)]))
    assert torch.allclose(normalised, torch.full_like(normalised, 1 / (1 + mean)), atol=1e-5)

    a = np.full((12, 16, 3), 10, np.uint8)
    example = (torch.zeros(1, 3, 12, 16), torch.zeros(1, 3, 12, 16))
    torch.export.save(torch.export.export(_Flow(), example), str(tmp_path / "flow.pt2"))
    flow_net = load_network(tmp_path / "flow.pt2", "flow network")
    flow = flow_from_model(flow_net, a, a + 5)
    assert flow.shape == (12, 16, 2) and flow.dtype == np.float32
    assert np.allclose(flow[..., 0], 5.0) and np.allclose(flow[..., 1], -5.0)  # [0, 255] input range

    (tmp_path / "junk.pt2").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"junk\.pt2: cannot load the flow network as a torch.export program"):
        load_network(tmp_path / "junk.pt2", "flow network")
    wrong = load_network(tmp_path / "wrong.pt", "flow network")
    with pytest.raises(DataError, match=r"wrong\.pt.*returned \(1, 1, 12, 16\); expected \[1, 2, 12, 16\]"):
        flow_from_model(wrong, a, a, tmp_path / "wrong.pt")


def reference_sharpen(disparity: np.ndarray, sizes, threshold: float, offset: float) -> np.ndarray:
    """The sparse bilateral clean-up written pixel by pixel, from its description: per pass, the
    discontinuities of d / max + offset; a pixel whose window (replicated border) holds one becomes
    the upper median of the window's other pixels."""
    peak = disparity.max()
    x = disparity / peak + offset
    h, w = x.shape
    for size in sizes:
        inv = 1.0 / x
        edge = np.zeros_like(x, dtype=bool)
        for i in range(h):
            for j in range(w):
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    a, b = i + di, j + dj
                    if 0 <= a < h and 0 <= b < w and abs(inv[a, b] - inv[i, j]) > threshold:
                        edge[i, j] = True
        m = size // 2
        out = x.copy()
        for i in range(h):
            for j in range(w):
                rows = np.clip(np.arange(i - m, i + m + 1), 0, h - 1)
                cols = np.clip(np.arange(j - m, j + m + 1), 0, w - 1)
                win, bad = x[np.ix_(rows, cols)].ravel(), edge[np.ix_(rows, cols)].ravel()
                if bad.any() and (~bad).any():
                    good = np.sort(win[~bad])
                    out[i, j] = good[len(good) // 2]
        x = out
    return (x - offset) * peak


def test_sharpen_depth_edges_snaps_a_smeared_edge_and_matches_the_pixelwise_definition():
    """A network's disparity ramps across an occlusion edge (points floating between the surfaces);
    the clean-up (3D Photo Inpainting's sparse bilateral filter, as CoherentGS uses it) snaps every
    ramp pixel to one of the two surfaces and leaves the surfaces and a smooth slope alone."""
    h, w = 24, 32
    near, far = 1.0, 0.25
    col = torch.arange(w, dtype=torch.float64)
    slope = 0.002 * torch.arange(h, dtype=torch.float64)[:, None]  # a gently tilted ground: no discontinuity
    d = torch.where(col < 14, near, far).expand(h, w) + slope
    ramp = torch.tensor([0.85, 0.65, 0.45, 0.35])
    d = d.clone()
    d[:, 14:18] = ramp[None] + slope
    out = sharpen_depth_edges(d)
    assert depth_discontinuities(d / d.max() + 0.2, 0.1)[:, 14:18].all()
    surfaces = torch.stack([near + slope.expand(h, w), far + slope.expand(h, w)])
    snapped = (out[None] - surfaces).abs().min(0).values
    assert float(snapped.max()) < 0.01, "a ramp value survived"
    # beyond a window's reach of the edge band (columns 13-18) nothing changes
    assert torch.allclose(out[:, :10], d[:, :10], rtol=0, atol=1e-12) and torch.allclose(out[:, 22:], d[:, 22:], rtol=0, atol=1e-12)
    assert (out[:, 14] > 0.9).all() and (out[:, 17] < 0.3).all()  # each side keeps its own surface
    smooth = 0.5 + 0.003 * col[None] + slope
    assert torch.allclose(sharpen_depth_edges(smooth), smooth, rtol=0, atol=1e-12)

    # A random piecewise map against the pixel-by-pixel definition (both passes and window sizes).
    gen = torch.Generator().manual_seed(3)
    blocks = torch.rand(4, 5, generator=gen, dtype=torch.float64) + 0.1
    rough = torch.nn.functional.interpolate(blocks[None, None], size=(14, 17), mode="bilinear", align_corners=False)[0, 0]
    rough = rough + 0.01 * torch.rand(14, 17, generator=gen, dtype=torch.float64)
    expected = reference_sharpen(rough.numpy(), (5, 3), 0.3, 0.2)
    got = sharpen_depth_edges(rough, (5, 3), threshold=0.3)
    assert not np.allclose(expected, rough.numpy()), "the random map has no edges: the comparison would be empty"
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="odd"):
        sharpen_depth_edges(rough, (4,))
