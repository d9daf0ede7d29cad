"""Smooth-convex rasterizer (3D Convex Splatting, Held et al. 2025, "3D Convex Splatting: Radiance
Field Rendering with 3D Smooth Convexes", CVPR): a pure-PyTorch reference, which is the test oracle
and the fallback on every device, and Warp projection and compositing kernels with hand-written
backward passes (``warp_projection.py``, ``warp_composite.py``), the default on the CPU
(``RECON_BACKEND`` as for Gaussians).

Pipeline (conventions of the Gaussian backend, :mod:`recon.render.gaussians`: OpenCV cameras, pixel
centres at +0.5, images [C, H, W, D]):

1. ``project_convexes``: hull edges, scaled smoothness / sharpness and a conservative footprint per
   (camera, convex) (``projection.py``);
2. tile binning and depth order: the Gaussian backend's ``isect_tiles`` on the footprint boxes;
3. ``rasterize_convexes_to_pixels``: front-to-back compositing with the LogSumExp indicator
   (``composite.py``; ``rasterize_convexes_to_pixels_warp`` in ``warp_composite.py``);
4. ``rasterize_convexes``: the whole render; SH colours evaluated towards each convex's centre,
   max(SH + 0.5, 0), as 3DGS; render modes RGB, D, ED, RGB+D, RGB+ED.
"""

from .composite import MAX_ALPHA, convex_alpha, rasterize_convexes_to_pixels
from .projection import MAX_POINTS, ConvexProjection, hull_edge_pairs, project_convexes
from .rendering import rasterize_convexes, resolve_convex_backend
from .warp_composite import rasterize_convexes_to_pixels_warp

__all__ = [
    "MAX_ALPHA",
    "MAX_POINTS",
    "ConvexProjection",
    "convex_alpha",
    "hull_edge_pairs",
    "project_convexes",
    "rasterize_convexes",
    "rasterize_convexes_to_pixels",
    "rasterize_convexes_to_pixels_warp",
    "resolve_convex_backend",
]
