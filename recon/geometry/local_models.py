"""Pretrained networks the user has on disk: monocular depth and optical flow (torch.export or TorchScript files).

recon downloads no weights. Where a method's paper uses a pretrained network (CoherentGS: Depth
Anything and FlowFormer++), the default is weight-free and these loaders run a network only when
the user points to a local file: a ``torch.export`` program (``.pt2``) or a TorchScript archive:

* depth: ``module(image)`` with ``image`` [1, 3, H', W'] float, RGB in [0, 1] (ImageNet-normalised
  when asked), returns [1, H', W'] or [1, 1, H', W'] relative disparity (Depth Anything, MiDaS) or
  depth; resized back to the image size.
* flow: ``module(image0, image1)`` with [1, 3, H, W] float RGB in [0, 255] (RAFT / FlowFormer's
  convention), returns F_{0->1} as [1, 2, H, W], or a list/tuple whose last element is (RAFT's
  per-iteration list).

A network's depth edges are cleaned by :func:`sharpen_depth_edges` (3D Photo Inpainting's sparse
bilateral filter), and relative depth is then made metric by :func:`fit_relative_depth`, a least-squares scale and
shift in disparity (or depth) space against sparse metric depth (MiDaS's alignment, Ranftl et al.,
TPAMI 2022).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RelativeKind = Literal["disparity", "depth"]


def load_network(path: Path | str, what: str) -> Callable[..., object]:
    """The network saved at ``path``, on the CPU: a ``torch.export`` program (``.pt2``, from
    ``torch.export.save``) or a TorchScript archive (any other name, from ``torch.jit.save``).
    A one-line DataError naming the file when it is missing or unreadable."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{what} file not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; archives still load
            warnings.filterwarnings("ignore", "No complete tensor found")  # torch.export.load on CPU-only weights
            if path.suffix == ".pt2":
                return torch.export.load(str(path)).module()
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 -- torch raises RuntimeError, ValueError, zipfile and pickle errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "torch.export program" if path.suffix == ".pt2" else "TorchScript archive"
        raise DataError(f"cannot load the {what} as a {kind} ({first[:200]})", path) from None


def _first_tensor(out: object) -> Tensor | None:
    if isinstance(out, (list, tuple)) and out:
        out = out[-1]
    return out if isinstance(out, Tensor) else None


@torch.no_grad()
def depth_from_model(module: Callable[..., object], image: Tensor, input_size: int = 518, multiple: int = 14, normalize: bool = True, path: Path | None = None) -> Tensor:
    """Run a monocular depth network on ``image`` [H, W, 3] float RGB in [0, 1]; returns its raw
    output [H, W] (relative disparity or depth), bilinearly resized to the image size.

    The input is resized so its shorter side is ``input_size`` and both sides are multiples of
    ``multiple`` (Depth Anything: 518 and 14; ``input_size`` 0 keeps the image size).
    """
    h, w = image.shape[:2]
    x = image.permute(2, 0, 1)[None].float()
    if input_size > 0:
        scale = input_size / min(h, w)
        size = tuple(max(multiple, round(s * scale / multiple) * multiple) for s in (h, w))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    out = _first_tensor(module(x.contiguous()))
    if out is None or out.dim() not in (3, 4) or out.shape[0] != 1 or (out.dim() == 4 and out.shape[1] != 1):
        got = tuple(out.shape) if out is not None else type(out).__name__
        raise DataError(f"the depth network returned {got}; expected [1, H, W] or [1, 1, H, W]", path)
    out = out.reshape(1, 1, *out.shape[-2:]).float()
    out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    if not torch.isfinite(out).all():
        raise DataError("the depth network returned NaN or Inf", path)
    return out


@torch.no_grad()
def flow_from_model(module: Callable[..., object], image0: np.ndarray, image1: np.ndarray, path: Path | None = None) -> np.ndarray:
    """F_{0->1} [H, W, 2] float32 from a flow network and uint8 RGB images [H, W, 3] of one size."""
    if image0.shape != image1.shape:
        raise ValueError(f"flow needs images of one size, got {image0.shape} and {image1.shape}")
    h, w = image0.shape[:2]
    a, b = (torch.from_numpy(np.ascontiguousarray(im[..., :3])).permute(2, 0, 1)[None].float().contiguous() for im in (image0, image1))
    out = _first_tensor(module(a, b))
    if out is None or tuple(out.shape) != (1, 2, h, w):
        got = tuple(out.shape) if out is not None else type(out).__name__
        raise DataError(f"the flow network returned {got}; expected [1, 2, {h}, {w}]", path)
    flow = out[0].permute(1, 2, 0).float().numpy()
    if not np.isfinite(flow).all():
        raise DataError("the flow network returned NaN or Inf", path)
    return np.ascontiguousarray(flow, dtype=np.float32)


def fit_relative_depth(
    relative: Tensor, reference: Tensor, valid: Tensor, kind: RelativeKind = "disparity", tolerance: float = 0.05, hypotheses: int = 512, seed: int = 0
) -> tuple[Tensor, float, float]:
    """Metric z-depth [H, W] from a relative map [H, W] and sparse metric z-depth ``reference`` [H, W]
    on the pixels ``valid`` [H, W] bool.

    ``kind`` "disparity": 1 / z = a * relative + b; "depth": z = a * relative + b. (a, b) by RANSAC
    (``hypotheses`` pixel pairs, a pixel is an inlier when the fitted depth is within ``tolerance``
    of the reference, relative), then least squares on the best hypothesis's inliers: triangulated
    reference depth has gross outliers wherever flow was wrong but consistent. Returns (depth, a, b);
    depth is clamped to [1 %, 100x] of the reference's range where the fit is non-positive or far.
    Raises ValueError with fewer than 10 valid pixels.
    """
    x = relative[valid].double().reshape(-1)
    if x.numel() < 10:
        raise ValueError(f"need at least 10 pixels of reference depth to fit relative depth, got {x.numel()}")
    z = reference[valid].double().reshape(-1)
    y = 1.0 / z if kind == "disparity" else z

    def depth_of(a: Tensor, b: Tensor, v: Tensor) -> Tensor:
        fitted = a * v + b
        return 1.0 / fitted if kind == "disparity" else fitted

    def inliers(a: Tensor, b: Tensor) -> Tensor:  # [K] hypotheses -> [K, N]
        d = depth_of(a[:, None], b[:, None], x[None])
        return ((d - z[None]).abs() <= tolerance * z[None]) & (d > 0)

    gen = torch.Generator().manual_seed(seed)
    i, j = torch.randint(0, x.numel(), (2, hypotheses), generator=gen)
    dx = x[j] - x[i]
    ok = dx.abs() > 1e-12
    a = torch.where(ok, (y[j] - y[i]) / torch.where(ok, dx, torch.ones_like(dx)), torch.zeros_like(dx))
    b = y[i] - a * x[i]
    counts = torch.cat([inliers(a[k : k + 64], b[k : k + 64]).sum(1) for k in range(0, hypotheses, 64)])
    counts[~ok | (a <= 0)] = -1  # the relative map must grow with disparity (or depth)
    best = int(counts.argmax())
    use = inliers(a[best : best + 1], b[best : best + 1])[0]
    if int(use.sum()) < 2:
        use = torch.ones_like(use)
    sol = torch.stack([a[best], b[best]])
    for _ in range(2):  # least squares on the consensus, then once more on its own inliers
        design = torch.stack([x[use], torch.ones_like(x[use])], 1)
        refit = torch.linalg.lstsq(design, y[use][:, None]).solution[:, 0]
        if not (torch.isfinite(refit).all() and refit[0] > 0):
            break
        sol = refit
        refined = inliers(sol[0:1], sol[1:2])[0]
        if int(refined.sum()) < 2:
            break
        use = refined
    a_fit, b_fit = float(sol[0]), float(sol[1])
    lo, hi = 0.01 * float(z.min()), 100.0 * float(z.max())
    fitted = a_fit * relative.double() + b_fit
    depth = 1.0 / fitted.clamp_min(1.0 / hi) if kind == "disparity" else fitted
    return depth.clamp(lo, hi).to(relative.dtype), a_fit, b_fit


def depth_discontinuities(disparity: Tensor, threshold: float) -> Tensor:
    """[H, W] bool: pixels whose inverse map ``1 / disparity`` differs from a 4-neighbour's by more
    than ``threshold`` (both sides of an edge are marked), and pixels with non-positive disparity."""
    bad = ~(disparity > 0)
    inv = 1.0 / disparity.clamp_min(1e-12)
    edge = bad.clone()
    dy = (inv[1:] - inv[:-1]).abs() > threshold
    dx = (inv[:, 1:] - inv[:, :-1]).abs() > threshold
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


def sharpen_depth_edges(disparity: Tensor, sizes: tuple[int, ...] = (7, 7, 5, 5), threshold: float = 0.1, offset: float = 0.2) -> Tensor:
    """Remove the intermediate values a monocular depth network puts across depth edges: the sparse
    bilateral filter of 3D Photo Inpainting (Shih et al., CVPR 2020), as CoherentGS (Paliwal et al.,
    ECCV 2024) applies it to Depth Anything's disparity before anything else.

    ``disparity`` [H, W] (relative; larger = nearer) is normalised to ``d / max(d) + offset``. Each pass
    (one per window size in ``sizes``) finds the discontinuities of that map (:func:`depth_discontinuities`,
    a jump above ``threshold`` in its inverse) and replaces every pixel whose window holds one by the
    median of the window's pixels that are not on a discontinuity; a pixel whose window is all
    discontinuity keeps its value. The result takes only values of the input, so an edge becomes
    a step between the two surfaces instead of a ramp of points floating between them. Returns the
    filtered disparity in the input's units.

    The official preprocessing lists windows (7, 7, 5, 5, 5) but keeps the map from before its
    fifth pass, so (7, 7, 5, 5) is what runs there. Its border handling (the outer ring of pixels
    overwritten by its neighbours) is not reproduced [ours]: windows are padded by replication.
    Non-positive disparities are treated as discontinuities (never a median's input).
    """
    if disparity.ndim != 2:
        raise ValueError(f"expected a disparity map [H, W], got {tuple(disparity.shape)}")
    peak = float(disparity.max())
    if not peak > 0:
        return disparity
    h, w = disparity.shape
    x = disparity.double() / peak + offset
    for size in sizes:
        if size < 3 or size % 2 == 0:
            raise ValueError(f"window sizes must be odd and at least 3, got {size}")
        edge = depth_discontinuities(x, threshold) | ~(disparity > 0)
        if not edge.any():
            break
        m = size // 2
        windows = F.unfold(F.pad(x[None, None], (m, m, m, m), mode="replicate"), size)[0]  # [size * size, H * W]
        excluded = F.unfold(F.pad(edge.double()[None, None], (m, m, m, m), mode="replicate"), size)[0] > 0.5
        count = (~excluded).sum(0)
        ranked = torch.where(excluded, torch.full_like(windows, float("inf")), windows).sort(0).values
        median = ranked.gather(0, (count // 2).clamp_max(size * size - 1)[None])[0]
        replace = excluded.any(0) & (count > 0)
        x = torch.where(replace, median, x.reshape(-1)).reshape(h, w)
    return ((x - offset) * peak).to(disparity.dtype)
