"""3D Gaussian splatting rasterizer: a pure-PyTorch reference (CPU and any torch device) and NVIDIA
Warp kernels (CPU and CUDA) for the projection, binning keys and compositing.

Method: 3D Gaussian Splatting (Kerbl et al. 2023, "3D Gaussian Splatting for Real-Time Radiance Field
Rendering") with EWA projection (Zwicker et al. 2001, "EWA Volume Splatting"), reproducing the
semantics of gsplat 1.5.3 (Ye et al. 2024, "gsplat: An Open-Source Library for Gaussian Splatting"),
non-packed mode, pinhole cameras, so that this reference, the Warp kernels and gsplat's CUDA kernels
render the same scene the same way (``docs/architecture.md``, "Rendering backend"). Written from the papers and from reading
gsplat's kernels; no gsplat code is imported or copied.

Conventions
- viewmats [C, 4, 4] world-to-camera, OpenCV axes (x right, y down, z forward); Ks [C, 3, 3].
- quats (w, x, y, z), normalised internally; scales and opacities already activated.
- Pixel (x, y) has its centre at (x + 0.5, y + 0.5); images are [C, H, W, D].
- conics (a, b, c) = upper triangle of the inverse of the blurred 2D covariance;
  sigma = 0.5 (a dx^2 + c dy^2) + b dx dy.

Pipeline and thresholds (``_constants.py``)
1. ``project_gaussians``: camera z outside [near_plane, far_plane] culls; EWA Jacobian at the centre
   with x/z, y/z clamped to the image bounds +- 0.3 tan(half fov); cov2d += eps2d I (0.3 px);
   antialiased mode multiplies opacity by sqrt(det(cov2d) / det(cov2d + eps2d I)); opacity-aware
   per-axis radius r = ceil(min(3.33, sqrt(2 ln(255 o))) * sqrt(cov2d_ii)) (o < 1/255 culls), culled
   when both radii <= radius_clip or the box misses the image. radii [C, N, 2] int32, 0 = culled.
2. ``isect_tiles`` / ``isect_offset_encode``: every (camera, tile, Gaussian) of the box
   [floor((m - r) / ts), ceil((m + r) / ts)), sorted by (camera, tile, depth).
3. ``rasterize_to_pixels``: front to back per pixel, skip sigma < 0 or alpha < 1/255,
   alpha = min(0.999, o exp(-sigma)), stop before a Gaussian that would take T to <= 1e-4,
   render_alpha = 1 - T_final, colour += T_final * background.
   Two implementations: ``composite.py`` (PyTorch, chunked, the test oracle) and
   ``warp_backend.py`` (Warp, one thread per pixel, hand-written backward kernel, an exp-free
   early-out for pairs certainly below 1/255).
4. ``rasterization``: the whole render; SH colours max(SH(mean - camera centre) + 0.5, 0);
   render modes RGB, D (sum w z), ED (D / max(alpha, 1e-10)), RGB+D, RGB+ED.

Backends (``backend=`` argument of ``rasterization`` / ``rasterize_to_pixels``, else the
``RECON_BACKEND`` environment variable): "torch" always runs the reference; "warp" runs NVIDIA Warp
kernels with hand-written backward kernels: the projection (``warp_projection.py``; with quaternions
and scales, when the cameras need no gradient), the intersection keys of the binning
(``warp_binning.py``; float32) and the compositing (``warp_backend.py``); on the CPU each launch is
cut into blocks that ``torch.get_num_threads()`` threads run concurrently. "gsplat" calls gsplat's
own CUDA ``rasterization`` (float32 CUDA tensors; the optional ``cuda`` extra; gsplat is never
imported for CPU tensors). "auto" (default) uses gsplat for float32 CUDA tensors when it imports,
Warp for CPU tensors (forward + backward 5-8x faster than the reference and a quarter of its working
memory or less, ``benchmarks/RESULTS.md``), the reference otherwise. warp-lang is a dependency: for
CPU tensors "auto" raises ImportError when it does not import rather than run the reference 5-8x
slower unnoticed (``RECON_BACKEND=torch`` runs the reference on purpose). The Warp kernels also run
on CUDA, when asked for (``backend="warp"``).

Differentiable (first order) w.r.t. means, quats, scales / covars, opacities, colors / SH and
backgrounds; every op keeps the input dtype (float64 for gradcheck). The compositing backward is a
hand-written autograd Function (recompute per chunk), so memory is bounded by the chunk size, not by
the number of intersections.

Known differences from gsplat 1.5.3
- Culled Gaussians (radii 0) get means2d / conics / compensations 0 (gsplat leaves them undefined);
  depths holds the camera z of every Gaussian.
- Non-packed mode only, pinhole only, no leading batch dimensions, no ``absgrad``/``sparse_grad``/
  ``distributed``/``channel_chunk``; SH degree <= 3 (gsplat allows 4).
- Radii and tile ranges are computed in the input dtype (gsplat: float32); the depth sort compares
  depths in their dtype (gsplat: the float32 bit pattern). Results agree except at exact ties.
- gsplat's main branch after 1.5.3 (1.6.0) uses MAX_ALPHA = 0.99 and floors the compensation at
  0.005; this follows the released 1.5.3 (0.999, no floor).
"""

from ._constants import (
    ALPHA_THRESHOLD,
    GAUSSIAN_EXTEND,
    MAX_ALPHA,
    TRANSMITTANCE_THRESHOLD,
)
from .binning import isect_offset_encode, isect_tiles
from .projection import (
    Projection,
    project_gaussians,
    quat_scale_to_covar,
)
from .rendering import (
    RENDER_MODES,
    rasterization,
    rasterize_to_pixels,
    resolve_backend,
    spherical_harmonics,
)
from .warp_backend import rasterize_to_pixels_warp, warp_available

__all__ = [
    "ALPHA_THRESHOLD",
    "GAUSSIAN_EXTEND",
    "MAX_ALPHA",
    "RENDER_MODES",
    "TRANSMITTANCE_THRESHOLD",
    "Projection",
    "isect_offset_encode",
    "isect_tiles",
    "project_gaussians",
    "quat_scale_to_covar",
    "rasterization",
    "rasterize_to_pixels",
    "rasterize_to_pixels_warp",
    "resolve_backend",
    "spherical_harmonics",
    "warp_available",
]
