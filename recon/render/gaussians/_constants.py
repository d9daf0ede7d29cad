"""Thresholds of the 3DGS rasterizer, as in gsplat 1.5.3 (``gsplat/cuda/include/Common.h`` and the
literals in ``RasterizeToPixels3DGSFwd.cu`` / ``ProjectionEWA3DGSFused.cu`` / ``Utils.cuh``).

gsplat's main branch after 1.5.3 (1.6.0, commit c5ff586b) lowered MAX_ALPHA to 0.99 and floors the
antialiasing compensation at 0.005; the PyPI release 1.5.3 (and Inria's 3DGS) use the values here.
"""

ALPHA_THRESHOLD = 1.0 / 255.0  # a Gaussian is skipped at a pixel where its alpha is below this
MAX_ALPHA = 0.999  # alpha = min(MAX_ALPHA, opacity * exp(-sigma))
TRANSMITTANCE_THRESHOLD = 1e-4  # a pixel stops before the Gaussian that would take T to <= this
GAUSSIAN_EXTEND = 3.33  # screen radius in standard deviations (upper bound of the opacity-aware rule)
FOV_MARGIN = 0.3  # the EWA Jacobian clamps x/z, y/z to the image bounds + 0.3 * tan(half fov)
