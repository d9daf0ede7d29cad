"""data/images.py: decoding images and cues, and every way a file can be bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.images import composite, image_size, load_depth, load_image, load_instance, load_mask, load_normal
from recon.errors import DataError


def _save(arr: np.ndarray, path: Path, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def test_rgb_and_rgba_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    out = load_image(_save(rgb, tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and np.array_equal(out, rgb)
    assert np.array_equal(load_image(_save(rgba, tmp_path / "b.png")), rgba)
    assert image_size(tmp_path / "a.png") == (7, 5)


def test_greyscale_16bit_and_palette_are_converted(tmp_path: Path) -> None:
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7)
    out = load_image(_save(grey, tmp_path / "g.png"))
    assert out.shape == (5, 7, 3) and np.array_equal(out[..., 1], grey)

    g16 = (np.arange(35, dtype=np.uint16) * 1000).reshape(5, 7)
    out = load_image(_save(g16, tmp_path / "g16.png"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_allclose(out[..., 0], np.round(g16 / 257.0), atol=1)

    la = np.stack([grey, np.full_like(grey, 200)], -1)
    out = load_image(_save(la, tmp_path / "la.png", "LA"))
    assert out.shape == (5, 7, 4) and (out[..., 3] == 200).all()

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png")
    assert out.shape == (2, 2, 4) and out[0, 0, 3] == 0 and tuple(out[0, 1]) == (0, 255, 0, 255)


def test_truncated_missing_and_non_image_name_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    good = _save(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), tmp_path / "good.png")
    bad = tmp_path / "truncated_frame.png"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as exc:
        load_image(bad)
    assert "truncated_frame.png" in str(exc.value)
    with pytest.raises(DataError, match="missing_frame.png"):
        load_image(tmp_path / "missing_frame.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataError, match="notes.png"):
        load_image(text)
    with pytest.raises(DataError, match="notes.png"):
        image_size(text)


def test_load_depth(tmp_path: Path) -> None:
    d = np.linspace(0.5, 3.0, 12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "d.npy", d)
    np.testing.assert_allclose(load_depth(tmp_path / "d.npy"), d)
    np.save(tmp_path / "d1.npy", d[None] * 2)
    np.testing.assert_allclose(load_depth(tmp_path / "d1.npy", 0.5), d)
    mm = (d * 1000).astype(np.uint16)
    _save(mm, tmp_path / "d.png")
    out = load_depth(tmp_path / "d.png", 1e-3)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out, mm / 1000.0, rtol=1e-6)
    nan = d.copy()
    nan[0, 0] = np.nan
    np.save(tmp_path / "n.npy", nan)
    assert load_depth(tmp_path / "n.npy")[0, 0] == 0.0
    (tmp_path / "d.exr").write_bytes(b"\x76\x2f\x31\x01")
    with pytest.raises(DataError, match="d.exr"):
        load_depth(tmp_path / "d.exr")
    np.save(tmp_path / "rgb.npy", np.zeros((3, 4, 3)))
    with pytest.raises(DataError, match="rgb.npy"):
        load_depth(tmp_path / "rgb.npy")


def test_load_mask(tmp_path: Path) -> None:
    m = np.zeros((4, 5), dtype=np.uint8)
    m[1:3, 2:4] = 255
    assert np.array_equal(load_mask(_save(m, tmp_path / "m.png")), m > 0)
    rgb = np.repeat(m[..., None], 3, -1)
    out = load_mask(_save(rgb, tmp_path / "m_rgb.png"))
    assert out.dtype == bool and np.array_equal(out, m > 0)
    np.save(tmp_path / "m.npy", (m > 0).astype(np.float32)[None])
    assert np.array_equal(load_mask(tmp_path / "m.npy"), m > 0)


def test_load_normal(tmp_path: Path) -> None:
    n = np.zeros((4, 5, 3), dtype=np.float32)
    n[..., 2] = -1.0
    n[0, 0] = [0.6, 0.0, -0.8]
    np.save(tmp_path / "signed.npy", n)
    np.testing.assert_allclose(load_normal(tmp_path / "signed.npy"), n, atol=1e-6)
    # MonoSDF layout: [3, H, W] stored in [0, 1]
    np.save(tmp_path / "mono.npy", np.moveaxis((n + 1) / 2, -1, 0))
    out = load_normal(tmp_path / "mono.npy")
    assert out.shape == (4, 5, 3)
    np.testing.assert_allclose(out, n, atol=1e-6)
    png = np.round((n + 1) / 2 * 255).astype(np.uint8)
    out = load_normal(_save(png, tmp_path / "n.png"))
    np.testing.assert_allclose(out, n, atol=0.01)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def test_load_instance(tmp_path: Path) -> None:
    ids = np.arange(20, dtype=np.uint8).reshape(4, 5)
    out = load_instance(_save(ids, tmp_path / "i8.png"))
    assert out.dtype == np.int32 and np.array_equal(out, ids)
    ids16 = ids.astype(np.uint16) * 3000
    assert np.array_equal(load_instance(_save(ids16, tmp_path / "i16.png")), ids16.astype(np.int32))
    np.save(tmp_path / "i.npy", ids.astype(np.int64))
    assert np.array_equal(load_instance(tmp_path / "i.npy"), ids)
    with pytest.raises(DataError, match="rgb_ids.png"):
        load_instance(_save(np.zeros((4, 5, 3), np.uint8), tmp_path / "rgb_ids.png"))


def test_composite() -> None:
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]], dtype=np.uint8)
    out = composite(rgba, (1.0, 1.0, 1.0))
    assert out.dtype == np.float32 and out.shape == (1, 3, 3)
    np.testing.assert_allclose(out[0, 0], [1, 0, 0])
    np.testing.assert_allclose(out[0, 1], [1, 1, 1])
    np.testing.assert_allclose(out[0, 2], [128 / 255 * 0 + (1 - 128 / 255), 1 - 128 / 255, 128 / 255 + (1 - 128 / 255)], atol=1e-6)
    np.testing.assert_allclose(composite(rgba, np.zeros(3))[0, 1], [0, 0, 0])
    np.testing.assert_allclose(composite(rgba, None)[0, 1], [1, 0, 0])
    np.testing.assert_allclose(composite(rgba[..., :3], (1, 1, 1)), rgba[..., :3] / 255.0)
