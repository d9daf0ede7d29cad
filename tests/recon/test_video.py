"""Videos, PNG sequences and colour maps."""

from __future__ import annotations

import imageio.v2 as iio
import numpy as np
import pytest
import torch

from recon.errors import ReconError
from recon.export.video import colormap, write_frames, write_video


def _frames(n: int, h: int, w: int):
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
        f[..., 1] = 255 * i // max(n - 1, 1)
        f[: h // 2, : w // 2, 2] = 200
        yield f


@pytest.mark.parametrize("h,w", [(32, 48), (25, 33)])
def test_write_video_readable(tmp_path, h, w):
    path = write_video(_frames(6, h, w), tmp_path / "clip.mp4", fps=12)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    reader = iio.get_reader(path, format="FFMPEG")
    meta = reader.get_meta_data()
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == 6
    assert frames[0].shape == (h + h % 2, w + w % 2, 3)  # odd sizes padded by one pixel
    assert meta["fps"] == pytest.approx(12)
    assert "h264" in meta.get("codec", "")
    expected = list(_frames(6, h, w))
    # Lossy, but close to the input where not padded.
    assert np.abs(frames[-1][:h, :w].astype(int) - expected[-1].astype(int)).mean() < 8


def test_write_video_errors(tmp_path):
    with pytest.raises(ReconError, match=r"clip\.avi.*\.mp4"):
        write_video(_frames(2, 16, 16), tmp_path / "clip.avi", fps=10)
    with pytest.raises(ValueError):
        write_video([], tmp_path / "empty.mp4", fps=10)

    def mixed():
        yield np.zeros((16, 16, 3), np.uint8)
        yield np.zeros((18, 16, 3), np.uint8)

    with pytest.raises(ValueError):
        write_video(mixed(), tmp_path / "mixed.mp4", fps=10)
    assert list(tmp_path.iterdir()) == []  # failed writes leave no file behind


def test_write_frames(tmp_path):
    frames = list(_frames(3, 10, 12))
    frames[1] = torch.from_numpy(frames[1]).float() / 255.0  # float tensors accepted
    paths = write_frames(frames, tmp_path / "frames")
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png"]
    assert np.array_equal(iio.imread(paths[0]), frames[0])
    assert np.array_equal(iio.imread(paths[2]), frames[2])


def test_colormap():
    depth = torch.linspace(1.0, 5.0, 20).reshape(4, 5, 1)
    mask = torch.ones(4, 5, 1, dtype=torch.bool)
    mask[0, 0] = False
    rgb = colormap(depth, "turbo", mask=mask)
    assert isinstance(rgb, torch.Tensor) and rgb.shape == (4, 5, 3)
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert torch.all(rgb[0, 0] == 0)  # masked pixels are black
    # Turbo runs dark blue -> green/yellow -> dark red.
    lo, mid, hi = rgb[0, 3], rgb.reshape(-1, 3)[10], rgb[-1, -1]
    assert lo[2] > lo[0] and mid[1] > 0.8 and hi[0] > hi[2]
    gray = colormap(depth.numpy()[..., 0], "gray", vmin=1.0, vmax=5.0)
    assert isinstance(gray, np.ndarray) and gray.shape == (4, 5, 3)
    assert gray[0, 0, 0] == 0.0 and gray[-1, -1, 0] == pytest.approx(1.0)
    assert np.allclose(gray[..., 0], gray[..., 2])
    with pytest.raises(ValueError):
        colormap(depth, "viridis")
