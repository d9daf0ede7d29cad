"""``rasterization``: the full 3DGS render (projection, SH colour, binning, compositing).

Same call and outputs as gsplat 1.5.3 ``gsplat.rendering.rasterization`` in non-packed mode
(Ye et al. 2024), with the projection and compositing steps on the PyTorch reference or on the Warp
kernels (``warp_projection.py``, ``warp_backend.py``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.fields.spherical_harmonics import eval_sh
from recon.render.backend import forced_backend, gsplat_module

from .binning import isect_offset_encode, isect_tiles
from .composite import rasterize_to_pixels as _rasterize_to_pixels_torch
from .projection import project_gaussians
from .warp_backend import rasterize_to_pixels_warp, require_warp
from .warp_projection import project_gaussians_warp

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")
MAX_SH_DEGREE = 3


def spherical_harmonics(degrees_to_use: int, dirs: Tensor, coeffs: Tensor, masks: Tensor | None = None) -> Tensor:
    """View-dependent colour from SH coefficients (gsplat's ``spherical_harmonics``).

    degrees_to_use: SH degree 0..3 counted from zero as in 3DGS (uses (degree + 1)^2 coefficients);
    dirs [..., 3] view directions (normalised here; need not be unit); coeffs [..., K, D] with
    K >= (degree + 1)^2 (leading dims broadcast with dirs'); masks [...] (optional): rows where it is
    False give 0. Returns [..., D] = sum_k coeffs_k Y_k(dir), WITHOUT 3DGS's +0.5 offset.

    The basis is the real SH basis with the Condon-Shortley phase in 3DGS's order and signs
    (Kerbl et al. 2023; Sloan 2013, "Efficient Spherical Harmonic Evaluation"), which is
    ``recon.fields.spherical_harmonics``'s basis; that module counts bands, so degree d here is its
    ``degree = d + 1``. Its polynomials equal gsplat's on unit vectors, hence the normalisation.
    """
    if not isinstance(degrees_to_use, int) or not 0 <= degrees_to_use <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be an int in 0..{MAX_SH_DEGREE}, got {degrees_to_use!r}")
    n_coeffs = (degrees_to_use + 1) ** 2
    if coeffs.shape[-2] < n_coeffs:
        raise ValueError(f"SH degree {degrees_to_use} needs {n_coeffs} coefficients, got {coeffs.shape[-2]}")
    out = eval_sh(coeffs, F.normalize(dirs, dim=-1), degree=degrees_to_use + 1)
    if masks is not None:
        out = torch.where(masks[..., None], out, torch.zeros_like(out))
    return out


# "auto": gsplat's CUDA kernels for float32 CUDA tensors when gsplat imports; the Warp kernels for CPU
# tensors (forward + backward 5-8x faster than the reference on a 2-core CPU, benchmarks/RESULTS.md);
# else the torch reference. warp-lang is a dependency, not an optional extra: on the CPU a Warp that
# does not import is a broken installation and raises, since falling back to the reference would only
# show as training 5-8x slower. The Warp CUDA kernels run only when asked for (backend="warp") until
# the GPU test tier has run them.
AUTO_WARP_DEVICES = ("cpu",)


def depth_channels(colors: Tensor, depths: Tensor, backgrounds: Tensor | None, render_mode: str) -> tuple[Tensor, Tensor | None]:
    """The per-primitive channels to composite for ``render_mode``: colors [C, N, D] and the camera
    z ``depths`` [C, N] appended (RGB+D, RGB+ED) or alone (D, ED); backgrounds [C, D] get 0 for depth."""
    C = depths.shape[0]
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], -1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], -1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)
    return colors, backgrounds


def expected_depth(render_colors: Tensor, render_alphas: Tensor, render_mode: str) -> Tensor:
    """ED modes: the last channel (accumulated depth) divided by max(alpha, 1e-10)."""
    if render_mode in ("ED", "RGB+ED"):
        return torch.cat([render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], -1)
    return render_colors


def resolve_backend(backend: str | None, device: torch.device | None = None, dtype: torch.dtype | None = None) -> str:
    """The Gaussian backend to run, "torch", "warp" or "gsplat", for tensors on ``device``.

    ``backend`` (else RECON_BACKEND): "torch" forces the reference; "warp" forces the Warp kernels
    (ImportError when warp-lang does not import); "gsplat" forces gsplat's CUDA kernels (ValueError
    for CPU or non-float32 tensors, ImportError when gsplat does not import); "auto" (and
    RECON_BACKEND=nerfacc, which concerns the volume-rendering scans) picks as described above
    (ImportError for CPU tensors when warp-lang does not import)."""
    explicit = backend is not None
    name = (backend if explicit else forced_backend()).strip().lower()
    source = f"backend={backend!r}" if explicit else f"RECON_BACKEND={name}"
    device = torch.device("cpu") if device is None else torch.device(device)
    if name == "torch":
        return "torch"
    if name == "auto" or (name == "nerfacc" and not explicit):
        if device.type == "cuda" and dtype in (None, torch.float32) and gsplat_module(torch.empty(0, device=device)) is not None:
            return "gsplat"
        if device.type in AUTO_WARP_DEVICES:
            require_warp(source)
            return "warp"
        return "torch"
    if name == "warp":
        require_warp(source)
        return "warp"
    if name == "gsplat":
        if device.type != "cuda":
            raise ValueError(f"{source}: gsplat's kernels are CUDA-only and these tensors are on {device.type}; use 'auto', 'warp' or 'torch'")
        if dtype not in (None, torch.float32):
            raise ValueError(f"{source}: gsplat computes in float32, got {dtype}; use 'torch' or 'warp' for other dtypes")
        if gsplat_module(torch.empty(0, device=device)) is None:
            raise ImportError(f"{source}: gsplat does not import; install the CUDA extra (pip install 'recon[cuda]') or use 'auto'")
        return "gsplat"
    raise ValueError(f"backend must be None, 'auto', 'torch', 'warp' or 'gsplat', got {backend!r}")


def rasterize_to_pixels(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    image_width: int,
    image_height: int,
    tile_size: int,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    backgrounds: Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Composite binned 2D Gaussians into images (gsplat's ``rasterize_to_pixels``, non-packed).

    means2d [C, N, 2], conics [C, N, 3], colors [C, N, D], opacities [C, N]; isect_offsets
    [C, tile_height, tile_width] and flatten_ids [M] from :func:`isect_tiles` /
    :func:`isect_offset_encode`; backgrounds [C, D] or None.
    Returns render_colors [C, H, W, D] and render_alphas [C, H, W, 1] (= 1 - final transmittance).
    Differentiable w.r.t. means2d, conics, colors, opacities and backgrounds (first order only).
    ``backend``: None (RECON_BACKEND, default "auto"), "auto", "torch", "warp" or "gsplat"; see
    :func:`rasterization`. All give the same results up to rounding.
    """
    args = (means2d, conics, colors, opacities, image_width, image_height, tile_size, isect_offsets, flatten_ids)
    name = resolve_backend(backend, means2d.device, means2d.dtype)
    if name == "gsplat":
        return gsplat_module(means2d).rasterize_to_pixels(*args, backgrounds=backgrounds)
    if name == "warp":
        return rasterize_to_pixels_warp(*args, backgrounds=backgrounds)
    return _rasterize_to_pixels_torch(*args, backgrounds=backgrounds)


def rasterization(
    means: Tensor,
    quats: Tensor | None,
    scales: Tensor | None,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    covars: Tensor | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Render N 3D Gaussians into C pinhole cameras (gsplat 1.x ``rasterization``, non-packed).

    Inputs: means [N, 3]; quats [N, 4] (w, x, y, z; normalised here) and scales [N, 3] (activated,
    > 0), or ``covars`` [N, 3, 3] instead of both; opacities [N] (activated, in (0, 1)); colors
    [N, D] or [C, N, D] (post-activation), or SH coefficients [N, K, 3] / [C, N, K, 3] when
    ``sh_degree`` (0..3) is given; viewmats [C, 4, 4] world-to-camera (OpenCV: x right, y down,
    z forward); Ks [C, 3, 3]; width, height in pixels; backgrounds [C, D] or None.

    With ``sh_degree`` the colour is max(SH(dir) + 0.5, 0) with dir = mean - camera centre.
    ``render_mode``: "RGB" colours, "D" accumulated z-depth sum(w z), "ED" expected depth
    D / max(alpha, 1e-10) (0 where nothing was hit), "RGB+D" / "RGB+ED" both (depth last; the
    depth channel's background is 0). ``rasterize_mode="antialiased"`` multiplies the opacities by
    sqrt(det(cov2d) / det(cov2d + eps2d I)) (Yu et al. 2024, Mip-Splatting); "classic" does not.

    Returns render_colors [C, H, W, X] (X = D, 1 or D + 1), render_alphas [C, H, W, 1] and ``meta``:
    "radii" [C, N, 2] int32, "means2d" [C, N, 2] (non-leaf: ``meta["means2d"].retain_grad()``
    before backward gives the screen-space gradients densification uses), "depths" [C, N],
    "conics" [C, N, 3], "opacities" [C, N] (after compensation), "compensations" ([C, N] or None),
    "tiles_per_gauss" [C, N], "isect_ids" [M], "flatten_ids" [M], "isect_offsets" [C, th, tw],
    "tile_width", "tile_height", "tile_size", "width", "height", "n_cameras", "camera_ids" and
    "gaussian_ids" (None: non-packed) and "backend".

    ``backend``: None reads RECON_BACKEND (default "auto"). "gsplat" calls gsplat's own
    ``rasterization`` (CUDA, float32; the ``cuda`` extra), "torch" runs the PyTorch reference,
    "warp" the Warp kernels (projection when ``covars`` is None and the cameras need no gradient,
    the intersection keys of the binning (the sort is torch's) and compositing; SH colours stay in
    torch); "auto" gsplat for float32 CUDA tensors when it imports, Warp for CPU tensors (ImportError
    when warp-lang does not import), else torch. ``meta["backend"]`` names the one that ran.
    """
    backend_name = resolve_backend(backend, means.device, means.dtype)
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    if backend_name == "gsplat":
        return _rasterization_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
            far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d, sh_degree=sh_degree, tile_size=tile_size,
            backgrounds=backgrounds, render_mode=render_mode, rasterize_mode=rasterize_mode, covars=covars,
        )
    if width <= 0 or height <= 0 or tile_size <= 0:
        raise ValueError(f"width, height and tile_size must be positive, got {width}, {height}, {tile_size}")
    N = means.shape[0]
    C = viewmats.shape[0]
    if opacities.shape != (N,):
        raise ValueError(f"opacities must be [N={N}], got {tuple(opacities.shape)}")
    dtype = means.dtype

    # The Warp projection covers quaternions + scales with fixed cameras; full covariances or cameras
    # that need gradients (pose optimisation) take the reference projection.
    warp_projection = backend_name == "warp" and covars is None and not (viewmats.requires_grad or Ks.requires_grad)
    project = project_gaussians_warp if warp_projection else functools.partial(project_gaussians, covars=covars)
    radii, means2d, depths, conics, compensations = project(
        means,
        quats,
        scales,
        viewmats,
        Ks,
        width,
        height,
        opacities=opacities,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
        calc_compensations=rasterize_mode == "antialiased",
    )
    opac = opacities.to(dtype)[None, :].expand(C, N)
    if compensations is not None:
        opac = opac * compensations

    if sh_degree is None:
        if colors.dim() == 2 and colors.shape[0] == N:
            colors = colors[None].expand(C, N, colors.shape[-1])
        elif not (colors.dim() == 3 and colors.shape[:2] == (C, N)):
            raise ValueError(f"colors must be [N, D] or [C, N, D], got {tuple(colors.shape)}")
    else:
        if colors.dim() == 3 and colors.shape[0] == N:
            coeffs = colors[None]  # [1, N, K, 3] broadcasts over cameras
        elif colors.dim() == 4 and colors.shape[:2] == (C, N):
            coeffs = colors
        else:
            raise ValueError(f"SH colors must be [N, K, 3] or [C, N, K, 3], got {tuple(colors.shape)}")
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3] camera centres
        dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
        colors = spherical_harmonics(sh_degree, dirs, coeffs)
        colors = torch.clamp_min(colors + 0.5, 0.0)  # 3DGS: offset first, then clamp
    colors = colors.to(dtype)

    if backgrounds is not None and backgrounds.shape != (C, colors.shape[-1]):
        raise ValueError(f"backgrounds must be [C={C}, D={colors.shape[-1]}], got {tuple(backgrounds.shape)}")
    colors, backgrounds = depth_channels(colors, depths, backgrounds, render_mode)

    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_gauss, isect_ids, flatten_ids = isect_tiles(
        means2d, radii, depths, tile_size, tile_width, tile_height, backend=backend_name
    )
    isect_offsets = isect_offset_encode(isect_ids, C, tile_width, tile_height)

    render_colors, render_alphas = rasterize_to_pixels(
        means2d,
        conics,
        colors,
        opac,
        width,
        height,
        tile_size,
        isect_offsets,
        flatten_ids,
        backgrounds=backgrounds,
        backend=backend_name,
    )
    render_colors = expected_depth(render_colors, render_alphas, render_mode)

    meta = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "compensations": compensations,
        "tile_width": tile_width,
        "tile_height": tile_height,
        "tiles_per_gauss": tiles_per_gauss,
        "isect_ids": isect_ids,
        "flatten_ids": flatten_ids,
        "isect_offsets": isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": C,
        "backend": backend_name,
    }
    return render_colors, render_alphas, meta


def _rasterization_gsplat(*args, **kwargs) -> tuple[Tensor, Tensor, dict]:
    """gsplat 1.5's ``rasterization`` (non-packed), with this module's meta keys."""
    gsplat = gsplat_module(args[0])
    colors, alphas, meta = gsplat.rasterization(*args, packed=False, **kwargs)
    meta = dict(meta)
    meta.setdefault("compensations", None)
    meta["backend"] = "gsplat"
    return colors, alphas, meta
