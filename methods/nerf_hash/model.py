"""Hash-grid NeRF with proposal sampling: nerfstudio's nerfacto recipe (Tancik et al. 2023) built
from instant-ngp's hash encoding (Müller et al. 2022) and mip-NeRF 360's proposal networks,
scene contraction and distortion loss (Barron et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from recon.cameras import RayBundle
from recon.engine.callbacks import Callback, Where
from recon.fields.hash_field import HashDensityField, HashNeRFField
from recon.model import Export, RayModel, RayModelConfig, SceneInfo
from recon.render.contraction import contract
from recon.render.proposal import ProposalSampler, anneal_schedule, distortion_loss, interlevel_loss
from recon.render.rays import accumulate, expected_depth, intersect_aabb, render_weights


class NerfHashModel(RayModel):
    """See :class:`NerfHashModelConfig`."""

    config: "NerfHashModelConfig"
    exports = frozenset({Export.TSDF, Export.POINTCLOUD})

    def __init__(self, config: "NerfHashModelConfig", scene: SceneInfo):
        super().__init__(config, scene)
        c = config
        aabb = scene.aabb.float()
        order = {"inf": float("inf"), "l2": 2.0}.get(c.contraction)
        contraction = None if order is None else (lambda x: contract(x, order))
        self.field = HashNeRFField(
            aabb, contraction, num_levels=c.num_levels, max_res=c.max_res, log2_hashmap_size=c.log2_hashmap_size,
            hidden_dim=c.hidden_dim, geo_feature_dim=c.geo_feature_dim, color_hidden_dim=c.color_hidden_dim,
            num_cameras=scene.num_train_cameras, appearance_dim=c.appearance_dim,
        )
        self.proposals = nn.ModuleList(
            HashDensityField(aabb, contraction, num_levels=5, max_res=res, log2_hashmap_size=c.proposal_log2_hashmap_size)
            for res in c.proposal_max_res
        )
        if len(self.proposals) != len(c.num_proposal_samples):
            raise ValueError("proposal_max_res and num_proposal_samples need one entry per proposal network")
        self.sampler = ProposalSampler(c.num_proposal_samples, c.num_nerf_samples, spacing=c.spacing)
        self.register_buffer("aabb", aabb.clone(), persistent=False)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"proposal_networks": list(self.proposals.parameters()), "fields": list(self.field.parameters())}

    def callbacks(self) -> list[Callback]:
        def anneal(step: int, **_: Any) -> None:
            self.sampler.step_cb(step)
            self.sampler.set_anneal(anneal_schedule(step, self.config.proposal_anneal_slope, self.config.proposal_anneal_steps))

        return [Callback(anneal, where=Where.BEFORE_STEP)]

    def _bounds(self, rays: RayBundle) -> tuple[Tensor, Tensor]:
        if self.scene.near is not None and self.scene.far is not None:
            return torch.full_like(rays.z_scale, self.scene.near), torch.full_like(rays.z_scale, self.scene.far)
        if self.config.contraction == "none":
            near, far, _ = intersect_aabb(rays.origins, rays.directions, self.aabb)
            return near, far
        return torch.full_like(rays.z_scale, self.config.near_plane), torch.full_like(rays.z_scale, self.config.far_plane)

    def render_rays(self, rays: RayBundle) -> dict[str, Any]:
        near, far = self._bounds(rays)
        t0, t1, weights_list, bins_list = self.sampler(rays.origins, rays.directions, near, far, list(self.proposals))
        mids = 0.5 * (t0 + t1)
        positions = rays.origins[:, None] + rays.directions[:, None] * mids[..., None]
        density, rgb = self.field(positions, rays.directions[:, None], rays.camera_indices[:, None])
        weights, _ = render_weights(density, t0, t1)
        acc = accumulate(weights)
        return {
            "rgb": accumulate(weights, rgb) + (1.0 - acc) * self.background,
            "accumulation": acc,
            "depth": expected_depth(weights, t0, t1) * rays.z_scale[:, None],
            "weights_list": [*weights_list, weights],
            "bins_list": [*bins_list, torch.cat([t0, t1[:, -1:]], -1)],
            "weights": weights,
            "t_starts": t0,
            "t_ends": t1,
        }

    def losses(self, batch: dict[str, Any], outputs: dict[str, Any], step: int) -> dict[str, Tensor]:
        c = self.config
        losses = {"rgb": torch.mean((outputs["rgb"] - batch["rgb"]) ** 2)}
        if c.interlevel_loss_mult > 0:
            losses["interlevel"] = c.interlevel_loss_mult * interlevel_loss(outputs["weights_list"], outputs["bins_list"])
        if c.distortion_loss_mult > 0:
            losses["distortion"] = c.distortion_loss_mult * distortion_loss(outputs["weights"], outputs["t_starts"], outputs["t_ends"]).mean()
        return losses


@dataclass
class NerfHashModelConfig(RayModelConfig):
    """nerfacto's defaults (nerfstudio ``nerfacto`` preset) unless noted."""

    num_proposal_samples: tuple[int, ...] = (256, 96)
    """Samples per ray for each proposal network."""
    num_nerf_samples: int = 48
    """Samples per ray for the radiance field."""
    proposal_max_res: tuple[int, ...] = (128, 256)
    """Finest hash-grid resolution of each proposal network."""
    proposal_log2_hashmap_size: int = 17
    """Hash table size of the proposal networks (log2)."""
    proposal_anneal_slope: float = 10.0
    """Slope of the proposal-weight annealing."""
    proposal_anneal_steps: int = 1000
    """Steps over which proposal weights are annealed."""
    spacing: Literal["linear", "disparity", "piecewise"] = "piecewise"
    """Initial sample spacing: piecewise = linear up to distance 1, then in disparity."""
    contraction: Literal["inf", "l2", "none"] = "inf"
    """Scene contraction for unbounded scenes; none clips rays to the scene box."""
    near_plane: float = 0.05
    """Ray start when the scene is contracted and the dataset has no bounds."""
    far_plane: float = 1000.0
    """Ray end when the scene is contracted and the dataset has no bounds."""
    num_levels: int = 16
    """Hash-grid levels of the radiance field."""
    max_res: int = 2048
    """Finest hash-grid resolution of the radiance field."""
    log2_hashmap_size: int = 19
    """Hash table size of the radiance field (log2)."""
    hidden_dim: int = 64
    """Width of the density MLP."""
    geo_feature_dim: int = 15
    """Geometry feature passed to the colour MLP."""
    color_hidden_dim: int = 64
    """Width of the colour MLP."""
    appearance_dim: int = 32
    """Per-camera appearance embedding size (0 disables)."""
    interlevel_loss_mult: float = 1.0
    """Weight of the proposal (interlevel) loss."""
    distortion_loss_mult: float = 0.002
    """Weight of the distortion loss."""
    background: Literal["auto", "white", "black"] = "auto"
    """Colour behind the volume; auto = the dataset's background for RGBA images, else black."""
    eval_num_rays_per_chunk: int = 4096
    """Rays per chunk when rendering whole images."""


NerfHashModelConfig._target = NerfHashModel
