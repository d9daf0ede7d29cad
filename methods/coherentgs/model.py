"""CoherentGS (Paliwal, Ye, Tsai, Kalantari et al. 2024, "CoherentGS: Sparse Novel View Synthesis with
Coherent 3D Gaussians", ECCV) on recon's Gaussian backend.

One isotropic Gaussian per pixel of every training view, held on its pixel ray: its z-depth is the
aligned initial depth plus a residual that an implicit convolutional decoder produces per depth
layer (single-view coherence); opacities get an offset from a second decoder; scales follow the
depth (reset every 100 steps for the first part of training). Losses: multi-scale L1 + D-SSIM,
total variation of the rendered disparity over the depth layers, and the flow loss between the
views' world-position maps (multi-view coherence). No densification. Spec:
departures from the paper and the official code (avinashpaliwal/CoherentGS) in README.md beside this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.coherentgs.decoder import ImplicitDecoder, view_encoding
from methods.coherentgs.views import camera_rays, flow_loss, world_positions
from recon.engine.callbacks import Callback, Where
from recon.errors import ConfigError
from recon.losses import multiscale_l1, total_variation
from recon.model import SceneInfo
from recon.primitives import PrimitiveModel, PrimitiveModelConfig
from recon.render.gaussians.helpers import rgb_to_sh

# Per number of training views (2, 3, 4): official decoder widths and base opacity.
DEPTH_NGF = {2: 10, 3: 15, 4: 18}
OPACITY_NGF = {2: 6, 3: 10, 4: 12}
INIT_OPACITY = {2: 0.6, 3: 0.5, 4: 0.35}


def pick(table: dict[int, Any], views: int) -> Any:
    """The table's value for ``views`` training views (clamped to the table's 2..4 range)."""
    return table[min(max(views, min(table)), max(table))]


class CoherentGSModel(PrimitiveModel):
    """See :class:`CoherentGSModelConfig` and the module docstring.

    The per-pixel state exists once the training views are known (:meth:`initialize_from_data`) or
    a checkpoint is loaded (:meth:`load_checkpoint_state`); its buffers hold the views' cameras,
    pixel rays, initial depth and layer masks, so a loaded model renders and exports on its own.
    Per-primitive parameters: log scales, quaternions, SH (means and opacities come from the
    decoders, see :meth:`primitives`).
    """

    config: "CoherentGSModelConfig"

    def __init__(self, config: "CoherentGSModelConfig", scene: SceneInfo):
        super().__init__(config, scene)
        self._build(0, 3, 3, config.num_layers)

    # ------------------------------------------------------------------ state
    def _build(self, views: int, height: int, width: int, layers: int) -> None:
        """(Re)create every per-pixel tensor and both decoders for ``views`` images of H x W."""
        c = self.config
        n = views * height * width
        ngf_d = c.depth_decoder_width or pick(DEPTH_NGF, views)
        ngf_o = c.opacity_decoder_width or pick(OPACITY_NGF, views)
        self.depth_decoder = ImplicitDecoder(height, width, layers, ngf_d, 2 * c.encoding_frequencies)
        self.opacity_decoder = ImplicitDecoder(height, width, layers, ngf_o, 2 * c.encoding_frequencies)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        self.params = nn.ParameterDict(
            {
                "scales": nn.Parameter(torch.zeros(n, 3)),
                "quats": nn.Parameter(quats),
                "sh0": nn.Parameter(torch.zeros(n, 1, 3), requires_grad=c.train_dc),
                "shN": nn.Parameter(torch.zeros(n, (c.sh_degree + 1) ** 2 - 1, 3)),
            }
        )
        buffers = {
            "grid_shape": torch.tensor([views, height, width, layers]),
            "code": view_encoding(max(views, 1), c.encoding_frequencies)[:views],
            "depth_init": torch.zeros(views, height, width),
            "layers": torch.zeros(views, layers, height, width),
            "rays": torch.zeros(views, height, width, 3),
            "c2w": torch.zeros(views, 3, 4),
            "intrinsics": torch.zeros(views, 4),  # fx, fy, cx, cy
            "base_opacity": torch.tensor(0.0),
            "residual_scale": torch.zeros(views),
        }
        for name, value in buffers.items():
            device = getattr(self, name).device if hasattr(self, name) else value.device
            self.register_buffer(name, value.to(device))

    @property
    def num_views(self) -> int:
        return int(self.grid_shape[0])

    @torch.no_grad()
    def initialize_from_data(self, datamanager: Any) -> None:
        views = getattr(datamanager, "views", None)
        if views is None:
            raise ConfigError("coherentgs needs its own datamanager (CoherentGSDataManager), which prepares flows, depth and layers")
        c = self.config
        v, h, w = views.images.shape[:3]
        device = self.device
        self._build(v, h, w, views.layers.shape[1])
        self.to(device)
        cams = views.cameras.to(device)
        self.depth_init.copy_(views.depth)
        self.layers.copy_(views.layers)
        self.rays.copy_(camera_rays(cams))
        self.c2w.copy_(cams.camera_to_worlds)
        self.intrinsics.copy_(torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], -1))
        alpha0 = c.init_opacity if c.init_opacity is not None else pick(INIT_OPACITY, v)
        self.base_opacity.fill_(math.log(alpha0 / (1 - alpha0)))
        self.residual_scale.copy_(c.residual_depth_scale * torch.stack([d[h].median() for d, h in zip(views.depth, views.hits, strict=True)]))
        self.params["sh0"].copy_(rgb_to_sh(views.images.reshape(-1, 3))[:, None, :])
        self.reset_scales()

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        # Checkpoints written before the move onto PrimitiveModel kept these at the top level.
        state = {f"params.{k}" if k in ("scales", "quats", "sh0", "shN") else k: v for k, v in state.items()}
        v, h, w, layers = (int(x) for x in state["grid_shape"])
        if (v, h, w, layers) != tuple(int(x) for x in self.grid_shape):
            device = self.device
            self._build(v, h, w, layers)
            self.to(device)
        super().load_checkpoint_state(state)

    # ------------------------------------------------------------------ the Gaussians
    def decoded(self) -> tuple[Tensor, Tensor]:
        """Per-pixel z-depth [V, H, W] and opacity [V, H, W] from the decoders.

        depth = D_init + R_n tanh(f)_layer, opacity = sigmoid(o0 + 100 tanh(g)_layer): the layer
        masks are one-hot, so the official mask-weighted average picks the pixel's own layer.
        """
        code = self.code
        f = torch.tanh(self.depth_decoder(code))
        g = torch.tanh(self.opacity_decoder(code))
        norm = self.layers.sum(1) + 1e-10
        residual = (self.layers * f).sum(1) / norm
        depth = self.depth_init + self.residual_scale[:, None, None] * residual
        logit = self.base_opacity + self.config.opacity_offset_scale * (self.layers * g).sum(1) / norm
        return depth, torch.sigmoid(logit)

    def scale_from_depth(self, depth: Tensor) -> Tensor:
        """Isotropic radius [V, H, W] = 1.2 tan(fov_y / 2) D / H = 0.6 D / f_y (official code)."""
        return self.config.scale_factor * 0.5 * depth / self.intrinsics[:, 1, None, None]

    @torch.no_grad()
    def reset_scales(self) -> None:
        depth, _ = self.decoded()
        r = torch.log(self.scale_from_depth(depth).clamp_min(1e-10)).reshape(-1, 1)
        self.params["scales"].copy_(r.expand(-1, 3))

    def primitives(self) -> dict[str, Tensor]:
        """Means [N, 3], quats [N, 4], scales [N, 3] (activated), opacities [N], and the per-view
        world-position maps [V, H, W, 3] that the flow loss compares and z-depth [V, H, W]."""
        depth, opacity = self.decoded()
        positions = world_positions(depth, self.rays, self.c2w)
        return {
            "means": positions.reshape(-1, 3),
            "quats": self.params["quats"],
            "scales": torch.exp(self.params["scales"]),
            "opacities": opacity.reshape(-1),
            "positions": positions,
            "depth": depth,
        }

    # ------------------------------------------------------------------ training plumbing
    def extra_param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"depth_decoder": list(self.depth_decoder.parameters()), "opacity_decoder": list(self.opacity_decoder.parameters())}

    def method_callbacks(self) -> list[Callback]:
        c = self.config

        def reset(step: int, **_: Any) -> None:
            self.reset_scales()

        def multisample(step: int, **_: Any) -> None:
            # The global RNG: its state is in every checkpoint, so a resumed run draws the same k.
            self.supersample = int(torch.randint(1, c.multisample_max + 1, (1,))) if step >= c.multisample_start else 1

        hooks = []
        if c.multisample_max > 1:
            hooks.append(Callback(multisample, where=Where.BEFORE_STEP))
        if c.scale_reset_every > 0:
            hooks.append(Callback(reset, where=Where.AFTER_STEP, every=c.scale_reset_every, start=c.scale_reset_every - 1, stop=c.scale_reset_until))
        return hooks

    def l1(self, pred: Tensor, gt: Tensor) -> Tensor:
        return multiscale_l1(pred, gt) if self.config.multiscale_l1 else F.l1_loss(pred, gt)

    def losses(self, batch: dict[str, Any], outputs: dict[str, Any], step: int) -> dict[str, Tensor]:
        c = self.config
        out = super().losses(batch, outputs, step)
        if c.tv_weight > 0:
            disparity = 1.0 / (outputs["depth"][..., 0] + 1.0)
            gamma = min(1.0, c.tv_gamma_start + (1.0 - c.tv_gamma_start) * step / max(c.tv_ramp_steps, 1))
            layered = total_variation(batch["layers"] * disparity[None])
            out["tv"] = c.tv_weight * (gamma * layered + (1.0 - gamma) * total_variation(disparity))
        if c.flow_weight > 0 and batch["partners"]:
            positions = outputs["primitives"]["positions"]
            out["flow"] = c.flow_weight * flow_loss(positions, batch["index"], batch["partners"], batch["flows"], batch["flow_masks"])
        return out


@dataclass
class CoherentGSModelConfig(PrimitiveModelConfig):
    """The official code's values unless noted; steps count from the end of the alignment."""

    num_layers: int = 5
    """Depth layers per view (C); must match the datamanager's."""
    encoding_frequencies: int = 10
    """Frequencies of the per-view code (its size is twice this)."""
    depth_decoder_width: int | None = None
    """ngf of the depth decoder; None: 10 / 15 / 18 for 2 / 3 / 4 views."""
    opacity_decoder_width: int | None = None
    """ngf of the opacity decoder; None: 6 / 10 / 12 for 2 / 3 / 4 views."""
    residual_depth_scale: float = 15.0
    """Bound of the residual depth, as a multiple of the view's median initial depth [ours]; the
    official 50 depth units is about 15 median depths of LLFF in its coordinates."""
    opacity_offset_scale: float = 100.0
    """Factor on tanh of the opacity decoder's output (logit offset)."""
    init_opacity: float | None = None
    """Base opacity (not trained); None: 0.6 / 0.5 / 0.35 for 2 / 3 / 4 views."""
    scale_factor: float = 1.2
    """Isotropic radius = factor x tan(fov_y / 2) x depth / H."""
    scale_reset_every: int = 100
    """Steps between resetting the radii from the current depth; 0 never."""
    scale_reset_until: int = 8000
    """Last step of the radius resets (official: iteration 15 000 = training step 8000); free afterwards."""
    train_dc: bool = True
    """Optimise the SH DC colour (the paper); the released code keeps it at the pixel colour."""
    sh_degree_start: int | None = 8000
    """Step at which the SH degree first rises (official 15 000 = training step 8000)."""
    multisample_start: int = 5000
    """Step from which each step renders at a random k x the resolution and average-pools (official 12 001)."""
    multisample_max: int = 4
    """Largest supersampling factor k (uniform in 1..k); 1 disables multisampling."""
    multiscale_l1: bool = True
    """Multi-scale L1 (5 levels, weights 1, 1/4, 1/8, 1/16, 1/32) instead of plain L1."""
    tv_weight: float = 5.0
    """Weight of the multi-view total variation of the rendered disparity."""
    tv_gamma_start: float = 0.35
    """Layered-TV blend at step 0 (official code 0.35, from its iteration offset; the paper ramps from 0)."""
    tv_ramp_steps: int = 13000
    """Steps over which the blend ramps to 1."""
    flow_weight: float = 0.1
    """Weight of the flow loss (paper 0.1; the released code applies 0.1 twice: 0.01)."""
    background: Literal["auto", "white", "black"] = "white"
    """Colour behind the Gaussians (official: white)."""


CoherentGSModelConfig._target = CoherentGSModel
