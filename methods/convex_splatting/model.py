"""3D Convex Splatting (Held, Vandeghen, Hamdi, Deliège, Cioppa, Giancola, Vedaldi, Ghanem, Van
Droogenbroeck 2025, "3D Convex Splatting: Radiance Field Rendering with 3D Smooth Convexes", CVPR) on
recon's primitive-model base.

Each primitive is a smooth convex: K points (default 6), a smoothness delta and a sharpness sigma,
rendered by :func:`recon.render.convex.rasterize_convexes` (2D hull, LogSumExp indicator), an
opacity times a straight-through binary mask (Lee et al. 2024, "Compact 3D Gaussian
Representation"), and SH colour evaluated towards the centre. Loss: (1 - lambda) L1 + lambda
(1 - SSIM) + beta mean(sigmoid(mask logits)). Densification: :class:`ConvexStrategy`. Departures
from the paper and the official code: README.md beside this file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from methods.convex_splatting.strategy import ConvexStrategy, point_spread
from recon.errors import ConfigError
from recon.export.convex_ply import CONVEX_PARAM_KEYS, read_convex_ply, transform_convexes
from recon.model import Export, SceneInfo
from recon.primitives import PrimitiveModel, PrimitiveModelConfig, initial_points, knn_rms_distance
from recon.render.convex import MAX_POINTS, rasterize_convexes, resolve_convex_backend
from recon.render.gaussians.helpers import rgb_to_sh
from recon.rotations import matrix_to_quaternion


def fibonacci_sphere(k: int) -> Tensor:
    """k unit vectors [k, 3] on the Fibonacci lattice: z_i = 1 - 2i/(k-1), azimuth i pi (3 - sqrt 5)."""
    i = torch.arange(k, dtype=torch.float64)
    z = 1 - 2 * i / max(k - 1, 1)
    rho = torch.sqrt((1 - z * z).clamp_min(0))
    theta = i * math.pi * (3 - math.sqrt(5))
    return torch.stack([rho * torch.cos(theta), rho * torch.sin(theta), z], -1).float()


class ConvexSplatModel(PrimitiveModel):
    """See :class:`ConvexSplatModelConfig` and the module docstring.

    Parameters (one optimizer group each): points [N, K, 3], delta / sigma [N] (logs), opacities [N]
    (logits), mask [N] (logits), sh0 [N, 1, 3], shN [N, (d+1)^2 - 1, 3].
    """

    config: "ConvexSplatModelConfig"
    resolve_rasterizer_backend = staticmethod(resolve_convex_backend)
    exports = PrimitiveModel.exports | {Export.CONVEX_PLY, Export.CONVEX_MESH}

    def __init__(self, config: "ConvexSplatModelConfig", scene: SceneInfo):
        c = config
        if not 3 <= c.num_points <= MAX_POINTS:
            raise ConfigError(f"model.num_points must be 3..{MAX_POINTS}, got {c.num_points}")
        for name in ("init_sigma", "init_delta", "convex_size", "init_opacity"):
            if not getattr(c, name) > 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(c, name)}")
        super().__init__(config, scene)
        centers, rgb = initial_points(scene, c.init, c.num_random_points, c.init_seed)
        n = len(centers)
        spacing = knn_rms_distance(centers).clamp_min(1e-7)  # sqrt(mean squared 3-NN distance)
        points = centers[:, None, :] + (c.convex_size * spacing)[:, None, None] * fibonacci_sphere(c.num_points)[None]
        init = {
            "points": points,
            "delta": torch.log(c.init_delta / spacing),
            "sigma": torch.full((n,), math.log(c.init_sigma)),
            "opacities": torch.logit(torch.full((n,), c.init_opacity)),
            "mask": torch.full((n,), c.init_mask_logit),
            "sh0": rgb_to_sh(rgb)[:, None, :],
            "shN": torch.zeros(n, (c.sh_degree + 1) ** 2 - 1, 3),
        }
        self.params = nn.ParameterDict({name: nn.Parameter(t.contiguous()) for name, t in init.items()})

    @torch.no_grad()
    def initialize_from_data(self, datamanager: Any) -> None:
        ref = self.config.delta_reference_width
        if ref:
            width = float(datamanager.train_dataset.cameras.width.float().mean())
            self.params["delta"].add_(2.0 * math.log(ref / width))

    # ------------------------------------------------------------------ the primitives
    def primitives(self) -> dict[str, Tensor]:
        """points [N, K, 3], delta [N], sigma [N] (activated; its gradient is the densification
        statistic), opacities [N] = sigmoid(o) x the straight-through mask, means [N, 3] (centres),
        mask_probability [N]."""
        p = self.params
        prob = torch.sigmoid(p["mask"])
        hard = (prob > self.config.mask_threshold).to(prob.dtype)
        mask = hard + prob - prob.detach()  # forward: the binary mask; backward: d sigmoid
        return {
            "points": p["points"],
            "delta": torch.exp(p["delta"]),
            "sigma": torch.exp(p["sigma"]),
            "opacities": torch.sigmoid(p["opacities"]) * mask,
            "means": p["points"].mean(1),
            "mask_probability": prob,
        }

    def rasterize_primitives(self, prims, colors, viewmats, Ks, width, height):  # type: ignore[override]
        c = self.config
        image, alpha, meta = rasterize_convexes(
            prims["points"], prims["delta"], prims["sigma"], prims["opacities"], colors, viewmats, Ks, width, height,
            sh_degree=int(self.active_sh_degree), backgrounds=self.background.expand(len(viewmats), 3), render_mode="RGB+D",
            near_plane=c.near_plane, scaling_exponent=c.scaling_exponent,
        )
        meta["sigma"] = prims["sigma"]
        return image, alpha, meta

    def losses(self, batch: dict[str, Any], outputs: dict[str, Any], step: int) -> dict[str, Tensor]:
        out = super().losses(batch, outputs, step)
        if self.config.mask_weight > 0:
            out["mask"] = self.config.mask_weight * outputs["primitives"]["mask_probability"].mean()
        return out

    def lr_multipliers(self) -> dict[str, float]:
        return {"points": self.config.points_lr_scale}

    def viewer_panels(self) -> list[Any]:
        from methods.convex_splatting.panels import ConvexPanel

        return [ConvexPanel()]

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def splat_parameters(self) -> dict[str, Tensor]:
        """One 3D Gaussian per convex, for third-party splat viewers (lossy): the mean at the centre,
        the covariance of the points x ``splat_export_scale``^2, the effective opacity, the SH."""
        prims = self.primitives()
        rel = prims["points"] - prims["means"][:, None]
        cov = torch.einsum("nki,nkj->nij", rel, rel).double() / rel.shape[1]
        evals, evecs = torch.linalg.eigh(cov)
        evecs = torch.where(torch.det(evecs)[:, None, None] < 0, evecs * torch.tensor([-1.0, 1.0, 1.0], dtype=evecs.dtype), evecs)
        scales = self.config.splat_export_scale * torch.sqrt(evals.clamp_min(1e-20))
        p = prims["opacities"].clamp(1e-6, 1 - 1e-6)
        return {
            "means": prims["means"].detach().clone(),
            "scales": torch.log(scales).float(),
            "quats": matrix_to_quaternion(evecs).float(),
            "opacities": torch.log(p / (1 - p)),
            "sh0": self.params["sh0"].detach().clone(),
            "shN": self.params["shN"].detach().clone(),
        }

    @torch.no_grad()
    def convex_parameters(self) -> dict[str, Tensor]:
        """Copies of the raw parameters (``recon.export.convex_ply.CONVEX_PARAM_KEYS``, normalised
        frame): what ``ns-export convex-ply`` writes, losslessly."""
        return {key: self.params[key].detach().clone() for key in CONVEX_PARAM_KEYS}

    @torch.no_grad()
    def load_convex_parameters(self, params: dict[str, Tensor]) -> None:
        """Replace every convex by ``params`` (:meth:`convex_parameters`' layout; any count N, the
        config's K and SH degree), all SH bands active; densification statistics start afresh."""
        K, rest = self.config.num_points, (self.config.sh_degree + 1) ** 2 - 1
        if params["points"].shape[1:] != (K, 3) or params["shN"].shape[1:] != (rest, 3):
            raise ValueError(f"convex parameters must have K = {K} points and {rest} rest SH coefficients, "
                             f"got points {list(params['points'].shape)}, shN {list(params['shN'].shape)}")
        device = self.active_sh_degree.device
        for key in CONVEX_PARAM_KEYS:
            self.params[key] = nn.Parameter(params[key].detach().to(device=device, dtype=torch.float32).clone().contiguous())
        self.active_sh_degree.fill_(self.config.sh_degree)
        self.strategy_state = self._new_strategy_state()

    @torch.no_grad()
    def sharpness(self, focal: float, distance: Tensor | float = 1.0) -> Tensor:
        """How sharply each convex's edges are drawn, kappa [N] = sigma delta (f R)^2 d^(2p - 2), dimensionless.

        f: focal length in pixels; R: the root mean square distance of the points from their centre;
        d: the camera's distance (only for ``scaling_exponent`` p != 1; at p = 1, the official
        value, kappa does not depend on it). Near one edge of pixel length l the indicator is
        sigmoid(-s^2 sigma delta l x) at x pixels from the edge (s = d^p, module docstring of
        ``recon.render.convex.projection``), so for a convex seen face-on with l r ~ R^2 (a regular
        hexagon: l = R, r = 0.87 R) the 73%-to-27% fall spans about 2 / kappa of the inradius r,
        and the indicator at the centre is about sigmoid(0.87 kappa): kappa >> 1 is a convex drawn
        with sharp edges, kappa ~ 1 or less a soft blob. Invariant under a similarity of the scene
        (delta and sigma scale as length^-p)."""
        prims = self.primitives()
        spread2 = (prims["points"] - prims["means"][:, None]).square().sum(-1).mean(-1)
        d = torch.as_tensor(distance, dtype=spread2.dtype, device=spread2.device)
        return prims["sigma"] * prims["delta"] * focal**2 * spread2 * d ** (2 * self.config.scaling_exponent - 2)

    @property
    def num_points(self) -> int:
        return int(self.params["points"].shape[1])

    def spread(self) -> Tensor:
        """Per-convex point spread [N] (for the size pruning and diagnostics)."""
        return point_spread(self.params["points"].detach())


@dataclass
class ConvexSplatModelConfig(PrimitiveModelConfig):
    """The official code's defaults (convexsplatting/convex-splatting ``arguments/__init__.py``) unless noted."""

    num_points: int = 6
    """Points per convex, K (3..8; the official kernel's maximum is 8)."""
    init: Literal["sfm", "random"] = "sfm"
    """Initial convexes: around the dataset's sparse points when it has them (else random), or random in the box."""
    num_random_points: int = 100_000
    """Number of random initial convexes."""
    convex_size: float = 1.2
    """Initial radius of the points' sphere = this x the root mean square distance to the 3 nearest SfM points."""
    init_delta: float = 0.1
    """Initial smoothness delta = this / (root mean square 3-NN distance)."""
    delta_reference_width: float | None = None
    """When set, the initial delta is multiplied by (this / training image width)^2 [ours]: the edge
    functions are in squared pixels, so the official values, set for images about 1000 pixels wide,
    make convexes proportionally softer (and their footprints larger) at lower resolutions. None:
    the official initialisation at any resolution."""
    init_sigma: float = 0.00095
    """Initial sharpness sigma (official default; indoor 0.0009, outdoor 0.001)."""
    init_opacity: float = 0.1
    """Initial opacity."""
    init_mask_logit: float = 1.0
    """Initial mask logit (sigmoid(1) = 0.73)."""
    init_seed: int = 0
    """Seed of the random initialisation."""
    mask_threshold: float = 0.01
    """The straight-through mask is 1 where sigmoid(mask logit) exceeds this."""
    mask_weight: float = 0.0005
    """Weight of the mask loss, beta mean(sigmoid(mask logits))."""
    scaling_exponent: float = 1.0
    """Perspective-aware scaling d^p of delta and sigma (official code: p = 1; the paper's ablation
    reports sqrt(d) best)."""
    points_lr_scale: float = 1.0
    """Factor on the points' learning rate (the official rate is not scaled by the scene extent)."""
    splat_export_scale: float = 1.0
    """Gaussian-splat export: each Gaussian's standard deviations = this x those of the convex's points."""
    strategy: ConvexStrategy = field(default_factory=ConvexStrategy)
    """Densification: K-way split on the sharpness gradient, pruning, opacity resets."""

    def from_convex_ply(self, path: str | Path, device: str | torch.device = "cpu", transform: tuple[Tensor, Tensor, float] | None = None) -> ConvexSplatModel:
        """A model (this config with K, the SH degree, the scaling exponent and the mask threshold of
        the file) holding the convexes of a 3DCS PLY (``ns-export convex-ply``), in the file's frame,
        or moved by ``transform`` = (R [3, 3], t [3], s): x -> s (R x + t) (e.g. a run's dataparser
        transform and scale, back to its normalised frame). Raises ``ConvexPlyError`` (one line) for a
        file that is not one."""
        ply = read_convex_ply(path)
        params = ply.params
        if transform is not None:
            params = transform_convexes(params, *transform, ply.scaling_exponent)
        points = params["points"].reshape(-1, 3)
        aabb = torch.stack([points.amin(0), points.amax(0)]) if len(points) else torch.tensor([[-1.0] * 3, [1.0] * 3])
        config = dataclasses.replace(
            self, num_points=ply.num_points, sh_degree=ply.sh_degree, scaling_exponent=ply.scaling_exponent,
            mask_threshold=ply.mask_threshold, init="random", num_random_points=1,
        )
        model = ConvexSplatModel(config, SceneInfo(aabb=aabb, num_train_cameras=0)).to(device)
        model.load_convex_parameters(params)
        return model.eval()


def load_convex_ply_model(path: str | Path, device: str | torch.device = "cpu", transform: tuple[Tensor, Tensor, float] | None = None) -> ConvexSplatModel:
    """A :class:`ConvexSplatModel` (default ``3dcs`` settings) of a 3DCS PLY: :meth:`ConvexSplatModelConfig.from_convex_ply`."""
    return ConvexSplatModelConfig().from_convex_ply(path, device, transform)


ConvexSplatModelConfig._target = ConvexSplatModel
