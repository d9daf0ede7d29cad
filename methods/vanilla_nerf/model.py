"""The original NeRF (Mildenhall et al., "NeRF: Representing Scenes as Neural Radiance Fields for
View Synthesis", ECCV 2020): frequency-encoded MLP, coarse and fine networks, stratified then
hierarchical sampling, volume rendering of colour and density."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from recon.cameras import RayBundle
from recon.fields.encodings import FrequencyEncoding
from recon.fields.mlp import MLP
from recon.model import Export, RayModel, RayModelConfig, SceneInfo
from recon.render.ndc import RaySpace, RaySpaceName
from recon.render.rays import accumulate, expected_depth, intervals_from_points, pdf_samples, ray_bounds, render_weights, stratified_samples


class NeRFField(nn.Module):
    """Density from the encoded position; colour from a feature and the encoded direction (paper fig. 7)."""

    def __init__(self, config: "VanillaNeRFModelConfig"):
        super().__init__()
        self.pos_enc = FrequencyEncoding(3, config.position_frequencies)
        self.dir_enc = FrequencyEncoding(3, config.direction_frequencies)
        self.trunk = MLP(self.pos_enc.out_dim, config.hidden_dim, config.num_layers, config.hidden_dim, skips=config.skips)
        self.density_head = nn.Linear(config.hidden_dim, 1)
        self.feature = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.color = MLP(config.hidden_dim + self.dir_enc.out_dim, config.color_hidden_dim, 2, 3, out_activation=nn.Sigmoid())
        self.density_activation = nn.ReLU() if config.density_activation == "relu" else nn.Softplus()

    def forward(self, positions: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        """positions: [R, S, 3]; directions: [R, 3] unit. Returns density [R, S] and rgb [R, S, 3]."""
        h = torch.relu(self.trunk(self.pos_enc(positions)))
        density = self.density_activation(self.density_head(h))[..., 0]
        d = self.dir_enc(directions)[:, None].expand(*positions.shape[:-1], -1)
        rgb = self.color(torch.cat([self.feature(h), d], -1))
        return density, rgb


class VanillaNeRFModel(RayModel):
    """Coarse and fine NeRF fields rendered along rays; see :class:`VanillaNeRFModelConfig`."""

    config: "VanillaNeRFModelConfig"
    exports = frozenset({Export.TSDF, Export.POINTCLOUD})

    def __init__(self, config: "VanillaNeRFModelConfig", scene: SceneInfo):
        super().__init__(config, scene)
        self.coarse = NeRFField(config)
        self.fine = NeRFField(config)
        self.register_buffer("aabb", scene.aabb.float().clone(), persistent=False)
        self.ray_space = RaySpace(config.ray_space, scene.metadata, scene.far)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"fields": list(self.parameters())}

    def _composite(self, field: NeRFField, rays: RayBundle, t_starts: Tensor, t_ends: Tensor, noise: float) -> dict[str, Tensor]:
        mids = 0.5 * (t_starts + t_ends)
        positions = rays.origins[:, None] + rays.directions[:, None] * mids[..., None]
        density, rgb = field(positions, rays.directions)
        if noise > 0:
            density = torch.relu(density + torch.randn_like(density) * noise)
        weights, _ = render_weights(density, t_starts, t_ends)
        acc = accumulate(weights)
        color = accumulate(weights, rgb) + (1.0 - acc) * self.background
        return {"rgb": color, "accumulation": acc, "weights": weights, "t_starts": t_starts, "t_ends": t_ends}

    def render_rays(self, rays: RayBundle) -> dict[str, Tensor]:
        """Coarse then fine rendering of rays [R]; outputs are [R, C]."""
        c = self.config
        perturb = self.training
        noise = c.density_noise if self.training else 0.0
        world = rays
        rays, near, far = self.ray_space.rays(rays, *ray_bounds(rays.origins, rays.directions, self.aabb, self.scene.near, self.scene.far))
        t0, t1 = stratified_samples(near, far, c.num_coarse_samples, perturb)
        coarse = self._composite(self.coarse, rays, t0, t1, noise)
        bins = torch.cat([t0, t1[:, -1:]], -1)
        t_fine = pdf_samples(bins, coarse["weights"].detach(), c.num_fine_samples, perturb)
        # The fine network sees the union of coarse and fine samples (paper sec. 5.2).
        t_all, _ = torch.sort(torch.cat([0.5 * (t0 + t1), t_fine], -1), -1)
        s, e = intervals_from_points(t_all, near, far)
        fine = self._composite(self.fine, rays, s, e, noise)
        depth = self.ray_space.world_distance(world, expected_depth(fine["weights"], s, e)) * world.z_scale[:, None]
        return {"rgb_coarse": coarse["rgb"], "rgb": fine["rgb"], "accumulation": fine["accumulation"], "depth": depth}

    def losses(self, batch: dict[str, Any], outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        target = batch["rgb"]
        return {
            "rgb_coarse": torch.mean((outputs["rgb_coarse"] - target) ** 2),
            "rgb_fine": torch.mean((outputs["rgb"] - target) ** 2),
        }


@dataclass
class VanillaNeRFModelConfig(RayModelConfig):
    """NeRF hyper-parameters; defaults are the paper's (sec. 5.3, appendix A)."""

    num_coarse_samples: int = 64
    """Stratified samples per ray for the coarse network."""
    num_fine_samples: int = 128
    """Extra importance samples per ray for the fine network."""
    position_frequencies: int = 10
    """Frequency bands of the position encoding (L = 10 in the paper)."""
    direction_frequencies: int = 4
    """Frequency bands of the direction encoding (L = 4)."""
    hidden_dim: int = 256
    """Width of the density MLP."""
    num_layers: int = 8
    """Depth of the density MLP."""
    skips: tuple[int, ...] = (4,)
    """Layers that receive the encoded position again."""
    color_hidden_dim: int = 128
    """Width of the colour MLP's hidden layer."""
    density_activation: Literal["relu", "softplus"] = "relu"
    """Density non-linearity: the paper's ReLU, or softplus (as mip-NeRF) which cannot die."""
    density_noise: float = 0.0
    """Std. of Gaussian noise added to densities during training (the paper uses 1.0 on LLFF)."""
    ray_space: RaySpaceName = "auto"
    """Where rays are sampled: ndc (NeRF's normalised device coordinates of forward-facing LLFF
    captures), euclidean (the world), or auto (ndc when the dataset is forward-facing LLFF)."""
    background: Literal["auto", "white", "black"] = "auto"
    """Colour behind the volume; auto = the dataset's background for RGBA images, else black."""
    eval_num_rays_per_chunk: int = 4096
    """Rays per chunk when rendering whole images."""


VanillaNeRFModelConfig._target = VanillaNeRFModel
