"""``rasterize_convexes``: the whole smooth-convex render of N convexes into C cameras."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recon.render.backend import forced_backend
from recon.render.gaussians import RENDER_MODES, isect_offset_encode, isect_tiles, spherical_harmonics
from recon.render.gaussians.rendering import AUTO_WARP_DEVICES, depth_channels, expected_depth, resolve_backend

from .composite import rasterize_convexes_to_pixels
from .projection import project_convexes
from .warp_composite import rasterize_convexes_to_pixels_warp


def resolve_convex_backend(backend: str | None, device: torch.device | None = None, dtype: torch.dtype | None = None) -> str:
    """The convex compositor to run, "torch" or "warp", for tensors on ``device``.

    ``backend`` (else RECON_BACKEND) as :func:`recon.render.gaussians.rendering.resolve_backend`:
    "torch" the reference; "warp" the Warp kernels (ImportError when warp-lang does not import);
    "auto" (and RECON_BACKEND=nerfacc) Warp for CPU tensors (ImportError when warp-lang does not
    import), the reference elsewhere (Warp on CUDA only when asked for, as for Gaussians).
    "gsplat" is a ValueError: gsplat has no convex rasterizer."""
    explicit = backend is not None
    name = (backend if explicit else forced_backend()).strip().lower()
    source = f"backend={backend!r}" if explicit else f"RECON_BACKEND={name}"
    if name == "gsplat":
        raise ValueError(f"{source}: gsplat has no smooth-convex rasterizer; use 'auto', 'warp' or 'torch'")
    if name not in ("torch", "warp", "auto") and not (name == "nerfacc" and not explicit):
        raise ValueError(f"backend must be None, 'auto', 'torch' or 'warp', got {backend!r}")
    device = torch.device("cpu") if device is None else torch.device(device)
    if name != "warp" and device.type not in AUTO_WARP_DEVICES:
        return "torch"
    return resolve_backend(backend, device, dtype)


def rasterize_convexes(
    points: Tensor,
    delta: Tensor,
    sigma: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    scaling_exponent: float = 1.0,
    sh_degree: int | None = None,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    backend: str | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Render N smooth convexes into C pinhole cameras.

    points [N, K, 3] (3 <= K <= 8); delta, sigma, opacities [N] activated (opacity already times
    the mask); colors [N, D] post-activation, or SH coefficients [N, (d + 1)^2, 3] with
    ``sh_degree`` d, evaluated in the direction from the camera centre to the convex's centre;
    viewmats [C, 4, 4] world-to-camera (OpenCV); Ks [C, 3, 3]; backgrounds [C, D] or None.
    ``render_mode`` as :func:`recon.render.gaussians.rasterization` (D = sum w z of the centres).

    Returns render_colors [C, H, W, X], render_alphas [C, H, W, 1] and ``meta`` ("radii",
    "box_centers", "depths", "centers2d", "edges", "edge_mask", "flatten_ids", "isect_offsets", ...).
    Differentiable w.r.t. points, delta, sigma, opacities, colors / SH and backgrounds.

    ``backend``: None reads RECON_BACKEND (default "auto"); "torch" composites with the reference,
    "warp" with the Warp kernels, "auto" Warp for CPU tensors (:func:`resolve_convex_backend`); with
    "warp" the projection is Warp kernels too (the edge functions in torch when the cameras need a
    gradient); SH and binning run in torch for both. ``meta["backend"]`` names the backend.
    """
    backend_name = resolve_convex_backend(backend, points.device, points.dtype)
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if width <= 0 or height <= 0 or tile_size <= 0:
        raise ValueError(f"width, height and tile_size must be positive, got {width}, {height}, {tile_size}")
    N = points.shape[0]
    C = viewmats.shape[0]
    if opacities.shape != (N,):
        raise ValueError(f"opacities must be [N={N}], got {tuple(opacities.shape)}")
    dtype = points.dtype
    proj = project_convexes(
        points, delta, sigma, viewmats, Ks, width, height, opacities=opacities, near_plane=near_plane,
        far_plane=far_plane, scaling_exponent=scaling_exponent, backend=backend_name,
    )
    centers = points.mean(1)
    if sh_degree is None:
        if not (colors.dim() == 2 and colors.shape[0] == N):
            raise ValueError(f"colors must be [N, D], got {tuple(colors.shape)}")
        colors = colors[None].expand(C, N, colors.shape[-1])
    else:
        if not (colors.dim() == 3 and colors.shape[0] == N):
            raise ValueError(f"SH colors must be [N, K, 3], got {tuple(colors.shape)}")
        campos = torch.linalg.inv(viewmats)[:, :3, 3]
        colors = torch.clamp_min(spherical_harmonics(sh_degree, centers[None] - campos[:, None], colors[None]) + 0.5, 0.0)
    colors = colors.to(dtype)
    if backgrounds is not None and backgrounds.shape != (C, colors.shape[-1]):
        raise ValueError(f"backgrounds must be [C={C}, D={colors.shape[-1]}], got {tuple(backgrounds.shape)}")
    colors, backgrounds = depth_channels(colors, proj.depths, backgrounds, render_mode)

    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_convex, isect_ids, flatten_ids = isect_tiles(
        proj.box_centers, proj.radii, proj.depths, tile_size, tile_width, tile_height, backend=backend_name
    )
    isect_offsets = isect_offset_encode(isect_ids, C, tile_width, tile_height)
    opac = opacities.to(dtype)[None, :].expand(C, N)
    composite = rasterize_convexes_to_pixels_warp if backend_name == "warp" else rasterize_convexes_to_pixels
    render_colors, render_alphas = composite(
        proj.edges, proj.edge_mask, proj.sharp_delta, proj.sharp_sigma, colors, opac, width, height, tile_size,
        isect_offsets, flatten_ids, backgrounds=backgrounds,
    )
    render_colors = expected_depth(render_colors, render_alphas, render_mode)
    meta = {
        "radii": proj.radii,
        "box_centers": proj.box_centers,
        "centers2d": proj.centers2d,
        "depths": proj.depths,
        "edges": proj.edges,
        "edge_mask": proj.edge_mask,
        "tiles_per_convex": tiles_per_convex,
        "flatten_ids": flatten_ids,
        "isect_offsets": isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": C,
        "backend": backend_name,
    }
    return render_colors, render_alphas, meta
