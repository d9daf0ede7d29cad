"""S3IM (Xie et al. 2023): the released semantics against a by-hand oracle, and the option's plumbing."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.synthetic import SyntheticSceneConfig, generate_scene
from recon.config import get_method, override
from recon.engine.trainer import Trainer
from recon.errors import ConfigError
from recon.losses import S3IMConfig, s3im


# -- an independent oracle: explicit loops over orderings, rays, pixels and windows --------------
def orderings(num_rays: int, repeats: int, seed: int) -> list[list[int]]:
    """Batch order, then ``repeats - 1`` permutations drawn in sequence from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [list(range(num_rays))] + [torch.randperm(num_rays, generator=g).tolist() for _ in range(repeats - 1)]


def virtual_image(colours: torch.Tensor, orders: list[list[int]], height: int, column_major: bool = False) -> torch.Tensor:
    """[C, H, W]: the concatenated re-ordered colours written into the image row by row (the release's
    layout), or column by column (a wrong layout, to show that the oracle tells them apart)."""
    sequence = [colours[i] for order in orders for i in order]
    width = len(sequence) // height
    image = torch.zeros(colours.shape[1], height, width, dtype=colours.dtype)
    for k, colour in enumerate(sequence):
        row, col = (k % height, k // height) if column_major else (k // width, k % width)
        image[:, row, col] = colour
    return image


def naive_ssim(x: torch.Tensor, y: torch.Tensor, kernel: int, stride: int, padding: int) -> float:
    """Mean SSIM over windows at every ``stride`` of the zero-padded images; weights exp(-(d - K//2)^2 / 4.5)."""
    w1 = [math.exp(-((i - kernel // 2) ** 2) / (2 * 1.5**2)) for i in range(kernel)]
    w1 = [w / sum(w1) for w in w1]
    c, h, w = x.shape
    xp = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=x.dtype)
    yp = torch.zeros_like(xp)
    xp[:, padding : padding + h, padding : padding + w] = x
    yp[:, padding : padding + h, padding : padding + w] = y
    values = []
    for ch in range(c):
        for top in range(0, xp.shape[1] - kernel + 1, stride):
            for left in range(0, xp.shape[2] - kernel + 1, stride):
                mx = my = sxx = syy = sxy = 0.0
                for a in range(kernel):
                    for b in range(kernel):
                        wt = w1[a] * w1[b]
                        u, v = float(xp[ch, top + a, left + b]), float(yp[ch, top + a, left + b])
                        mx, my, sxx, syy, sxy = mx + wt * u, my + wt * v, sxx + wt * u * u, syy + wt * v * v, sxy + wt * u * v
                vx, vy, cxy = sxx - mx * mx, syy - my * my, sxy - mx * my
                c1, c2 = 0.01**2, 0.03**2
                values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return sum(values) / len(values)


def colour_pair(num_rays: int, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(num_rays, 3, generator=g, dtype=dtype)
    target = (pred + 0.2 * torch.randn(num_rays, 3, generator=g, dtype=dtype)).clamp(0, 1)
    return pred, target


# (rays, kernel, stride, repeats, patch_height): the release's defaults on a small batch, an odd
# window, a stride that differs from the window, and one ordering only (images never square: a
# transposed square image has the same SSIM, which would hide a column-major layout).
CASES = [(128, 4, 4, 10, 64), (40, 3, 2, 3, 8), (60, 5, 3, 4, 12), (48, 4, 4, 1, 6)]


@pytest.mark.parametrize("rays,kernel,stride,repeats,height", CASES)
def test_s3im_equals_ssim_of_the_hand_built_virtual_image(rays, kernel, stride, repeats, height, one_thread):
    pred, target = colour_pair(rays)
    value = s3im(pred, target, kernel, stride, repeats, height, generator=torch.Generator().manual_seed(7))
    orders = orderings(rays, repeats, seed=7)
    x, y = virtual_image(pred, orders, height), virtual_image(target, orders, height)
    pad = (kernel - 1) // 2
    expected = naive_ssim(x, y, kernel, stride, pad)
    assert float(value) == pytest.approx(expected, abs=1e-12)
    # The oracle can tell the release's choices from plausible wrong ones.
    wrong = {
        "column-major layout": naive_ssim(virtual_image(pred, orders, height, True), virtual_image(target, orders, height, True), kernel, stride, pad),
        "stride 1": naive_ssim(x, y, kernel, 1, pad),
        "no padding": naive_ssim(x, y, kernel, stride, 0),
        "padding K // 2": naive_ssim(x, y, kernel, stride, kernel // 2),
    }
    for name, other in wrong.items():
        if name == "padding K // 2" and kernel % 2:
            continue  # the same padding for odd K
        assert abs(other - expected) > 1e-6, name


def test_first_ordering_is_the_batch_order():
    """With one repeat there is no randomness: the virtual image is the batch, row by row."""
    pred, target = colour_pair(48)
    a = s3im(pred, target, repeats=1, patch_height=6)
    b = s3im(pred, target, repeats=1, patch_height=6, generator=torch.Generator().manual_seed(3))
    assert float(a) == float(b) == pytest.approx(naive_ssim(pred.T.reshape(3, 6, 8), target.T.reshape(3, 6, 8), 4, 4, 1), abs=1e-12)


def test_loss_is_zero_for_identical_colours_and_positive_otherwise(one_thread):
    pred, target = colour_pair(256, dtype=torch.float32)
    assert abs(1 - float(s3im(pred, pred.clone()))) < 1e-6
    loss = 1 - s3im(pred, target)
    assert 0 < float(loss) <= 2


def test_gradient_reaches_every_ray(one_thread):
    pred, target = colour_pair(256)
    pred.requires_grad_(True)
    (1 - s3im(pred, target, generator=torch.Generator().manual_seed(0))).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert (pred.grad.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lower_precision_dtypes(dtype, one_thread):
    pred, target = colour_pair(128)
    ref = float(s3im(pred, target, generator=torch.Generator().manual_seed(1)))
    value = s3im(pred.to(dtype), target.to(dtype), generator=torch.Generator().manual_seed(1))
    assert value.dtype == dtype and float(value) == pytest.approx(ref, abs=2e-2 if dtype != torch.float32 else 1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    pred, target = colour_pair(4096, dtype=torch.float32)
    cpu = s3im(pred, target, generator=torch.Generator().manual_seed(2))
    cuda = s3im(pred.cuda(), target.cuda(), generator=torch.Generator().manual_seed(2))
    assert cuda.device.type == "cuda" and float(cuda) == pytest.approx(float(cpu), abs=1e-5)
    assert torch.isfinite(s3im(pred.cuda(), target.cuda())).all()  # the CUDA global RNG path


def test_batch_rule():
    with pytest.raises(ValueError, match="patch_height"):
        s3im(*colour_pair(100))
    S3IMConfig().check_batch(4096)
    S3IMConfig().check_batch(512)
    with pytest.raises(ConfigError) as err:
        S3IMConfig().check_batch(1000)
    message = str(err.value)
    assert "model.s3im" in message and "10*1000" in message and "multiple of 32 (e.g. 1024)" in message and "(e.g. 50)" in message
    S3IMConfig().check_batch(1024)
    S3IMConfig(patch_height=50).check_batch(1000)
    with pytest.raises(ConfigError, match="kernel_size"):
        S3IMConfig(kernel_size=0).check_batch(4096)
    with pytest.raises(ConfigError, match="smaller than"):
        S3IMConfig(kernel_size=8, patch_height=1).check_batch(64)


# -- the option in training ------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    cfg = SyntheticSceneConfig(width=24, height=24, num_train_views=6, num_test_views=2, supersample=1, num_points=300)
    return generate_scene(tmp_path_factory.mktemp("s3im") / "scene", cfg)


def quiet(method: str, scene: Path, out: Path, **changes):
    spec = get_method(method)
    return override(
        spec.config,
        data=scene,
        output_dir=out,
        max_num_iterations=3,
        steps_per_save=0,
        steps_per_eval_image=0,
        eval_at_end=False,
        device="cpu",
        timestamp="run",
        **{"logging.tensorboard": False, "logging.progress_bar": False},
        **{**spec.test_overrides, **changes},
    )


def test_trainer_rejects_an_incompatible_batch_before_writing_anything(scene, tmp_path, one_thread):
    config = quiet("vanilla-nerf", scene, tmp_path / "out", **{"model.s3im.weight": 1.0, "datamanager.train_num_rays_per_batch": 100})
    with pytest.raises(ConfigError, match=r"model\.s3im: patch_height 64 must divide repeats\*rays = 10\*100"):
        Trainer(config)
    assert not (tmp_path / "out").exists()
    Trainer(quiet("vanilla-nerf", scene, tmp_path / "out", **{"datamanager.train_num_rays_per_batch": 100}))  # S3IM off: no rule


def test_cli_reports_an_incompatible_batch_as_one_line(scene, tmp_path):
    env = {**os.environ, "COLUMNS": "100"}
    s3im_flags = ["--model.s3im.weight", "0.5", "--datamanager.train-num-rays-per-batch", "100"]
    args = ["vanilla-nerf", "--data", scene, "--output-dir", tmp_path / "out", "--device", "cpu", *s3im_flags]
    proc = subprocess.run([sys.executable, "-m", "recon.cli.train", *map(str, args)], check=False, capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: model.s3im: patch_height 64"), proc.stderr
    assert "--datamanager.train-num-rays-per-batch" in lines[0] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,base", [("nerf-hash-s3im", "nerf-hash"), ("neus-s3im", "neus")])
def test_presets_switch_s3im_on_and_train(name, base, scene, tmp_path, one_thread):
    spec, base_spec = get_method(name), get_method(base)
    assert spec.config.method_name == name and spec.config.model.s3im.weight > 0
    assert base_spec.config.model.s3im.weight == 0
    assert type(spec.config.model) is type(base_spec.config.model)
    S3IMConfig().check_batch(spec.config.datamanager.train_num_rays_per_batch)
    trainer = Trainer(quiet(name, scene, tmp_path))
    values = [trainer.train_step(step) for step in range(3)]
    assert all("s3im" in v and torch.isfinite(v["s3im"]) and float(v["s3im"]) > 0 for v in values)
    base_values = Trainer(quiet(base, scene, tmp_path / "base")).train_step(0)
    assert "s3im" not in base_values
