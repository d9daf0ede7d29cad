"""Hash-grid NeRF: nerfstudio's nerfacto recipe (Tancik et al. 2023) built from instant-ngp's hash
encoding (Müller et al. 2022) and mip-NeRF 360's proposal networks, scene contraction and
distortion loss (Barron et al. 2022); or, with ``sampler="occupancy"``, instant-ngp's own sampling:
a fixed-step march through the cells of an occupancy grid (Müller et al. 2022, sec. 4, with
nerfacc's OccGridEstimator semantics, Li et al. 2023) and packed volume rendering."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from recon.cameras import RayBundle
from recon.engine.callbacks import Callback, Where
from recon.fields.hash_field import HashDensityField, HashFieldOptions
from recon.errors import ConfigError
from recon.model import Export, RayModel, RayModelConfig, SceneInfo
from recon.render.occupancy import OccupancyGrid
from recon.render.packed import accumulate_packed, expected_depth_packed, render_weights_packed
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
        contraction = c.contraction_fn()
        self.field = c.hash_nerf_field(aabb, scene.num_train_cameras)
        if c.sampler == "proposal":
            self.proposals = nn.ModuleList(
                HashDensityField(aabb, contraction, num_levels=5, max_res=res, log2_hashmap_size=c.proposal_log2_hashmap_size, implementation=c.implementation)
                for res in c.proposal_max_res
            )
            if len(self.proposals) != len(c.num_proposal_samples):
                raise ValueError("proposal_max_res and num_proposal_samples need one entry per proposal network")
            self.sampler = ProposalSampler(c.num_proposal_samples, c.num_nerf_samples, spacing=c.spacing)
        elif c.sampler == "occupancy":
            self.grid = OccupancyGrid(aabb, resolution=c.grid_resolution, levels=c.grid_levels)
            self.render_step_size = c.render_step_size if c.render_step_size is not None else float((aabb[1] - aabb[0]).norm()) / 1000
        else:
            raise ConfigError(f"model.sampler must be 'proposal' or 'occupancy', got {c.sampler!r}")
        self.register_buffer("aabb", aabb.clone(), persistent=False)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"fields": list(self.field.parameters())}
        if self.config.sampler == "proposal":
            groups["proposal_networks"] = list(self.proposals.parameters())
        return groups

    def callbacks(self) -> list[Callback]:
        c = self.config
        if c.sampler == "occupancy":
            def refresh(step: int, **_: Any) -> None:
                self.grid.update(step, self._occupancy_value, occ_thre=c.occ_thre, ema_decay=c.grid_ema_decay, warmup_steps=c.grid_warmup_steps)

            return [Callback(refresh, where=Where.BEFORE_STEP, every=c.grid_update_every)]

        def anneal(step: int, **_: Any) -> None:
            self.sampler.step_cb(step)
            self.sampler.set_anneal(anneal_schedule(step, c.proposal_anneal_slope, c.proposal_anneal_steps))

        return [Callback(anneal, where=Where.BEFORE_STEP)]

    def check_datamanager(self, datamanager: Any) -> None:
        super().check_datamanager(datamanager)
        if self.config.implementation == "tcnn" and self.device.type != "cuda":
            raise ConfigError(f"--model.implementation tcnn needs a CUDA device, but this run is on {self.device.type} (use auto or torch)")

    def _occupancy_value(self, positions: Tensor) -> Tensor:
        """positions [M, 3] -> [M]: sigma * render_step_size, the approximate opacity of one step
        (nerfacc's unit for occ_thre)."""
        return self.field.density(positions)[0] * self.render_step_size

    def _bounds(self, rays: RayBundle) -> tuple[Tensor, Tensor]:
        if self.scene.near is not None and self.scene.far is not None:
            return torch.full_like(rays.z_scale, self.scene.near), torch.full_like(rays.z_scale, self.scene.far)
        if self.config.contraction == "none":
            near, far, _ = intersect_aabb(rays.origins, rays.directions, self.aabb)
            return near, far
        return torch.full_like(rays.z_scale, self.config.near_plane), torch.full_like(rays.z_scale, self.config.far_plane)

    def render_rays(self, rays: RayBundle) -> dict[str, Any]:
        if self.config.sampler == "occupancy":
            return self._render_occupancy(rays)
        return self._render_proposal(rays)

    def _render_proposal(self, rays: RayBundle) -> dict[str, Any]:
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

    def _render_occupancy(self, rays: RayBundle) -> dict[str, Any]:
        c, num_rays = self.config, len(rays)
        near, far = self._bounds(rays)

        def sigma_fn(t0: Tensor, t1: Tensor, ray_indices: Tensor) -> Tensor:
            mids = 0.5 * (t0 + t1)
            return self.field.density(rays.origins[ray_indices] + rays.directions[ray_indices] * mids[:, None])[0]

        ray_indices, t0, t1 = self.grid.sample(
            rays.origins, rays.directions, near, far, step_size=self.render_step_size, cone_angle=c.cone_angle,
            alpha_thre=c.alpha_thre, sigma_fn=sigma_fn, early_stop_eps=c.early_stop_eps, stratified=self.training,
        )
        directions = rays.directions[ray_indices]
        positions = rays.origins[ray_indices] + directions * (0.5 * (t0 + t1))[:, None]
        density, rgb = self.field(positions, directions, rays.camera_indices[ray_indices])
        weights, _ = render_weights_packed(density, t0, t1, ray_indices, num_rays)
        acc = accumulate_packed(weights, None, ray_indices, num_rays)
        return {
            "rgb": accumulate_packed(weights, rgb, ray_indices, num_rays) + (1.0 - acc) * self.background,
            "accumulation": acc,
            "depth": expected_depth_packed(weights, t0, t1, ray_indices, num_rays) * rays.z_scale[:, None],
            "num_samples": torch.bincount(ray_indices, minlength=num_rays),
        }

    def losses(self, batch: dict[str, Any], outputs: dict[str, Any], step: int) -> dict[str, Tensor]:
        c = self.config
        losses = {"rgb": torch.mean((outputs["rgb"] - batch["rgb"]) ** 2)}
        if c.sampler == "occupancy":
            return losses
        if c.interlevel_loss_mult > 0:
            losses["interlevel"] = c.interlevel_loss_mult * interlevel_loss(outputs["weights_list"], outputs["bins_list"])
        if c.distortion_loss_mult > 0:
            losses["distortion"] = c.distortion_loss_mult * distortion_loss(outputs["weights"], outputs["t_starts"], outputs["t_ends"]).mean()
        return losses

    def metrics(self, batch: dict[str, Any], outputs: dict[str, Any]) -> dict[str, float]:
        values = super().metrics(batch, outputs)
        if "num_samples" in outputs:
            values["samples_per_ray"] = float(outputs["num_samples"].float().mean())
        return values


@dataclass
class NerfHashModelConfig(HashFieldOptions, RayModelConfig):
    """nerfacto's defaults (nerfstudio ``nerfacto`` preset) unless noted; the occupancy sampler's
    options default to nerfstudio's ``instant-ngp`` model. The field's options are
    :class:`recon.fields.hash_field.HashFieldOptions`."""

    sampler: Literal["proposal", "occupancy"] = "proposal"
    """proposal: nerfacto's proposal networks; occupancy: instant-ngp's fixed-step march through an
    occupancy grid (no proposal networks, no interlevel or distortion loss)."""
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
    interlevel_loss_mult: float = 1.0
    """Weight of the proposal (interlevel) loss."""
    distortion_loss_mult: float = 0.002
    """Weight of the distortion loss."""
    background: Literal["auto", "white", "black"] = "auto"
    """Colour behind the volume; auto = the dataset's background for RGBA images, else black."""
    eval_num_rays_per_chunk: int = 4096
    """Rays per chunk when rendering whole images."""
    grid_resolution: int = 128
    """Occupancy sampler: cells per axis of each grid level."""
    grid_levels: int = 4
    """Occupancy sampler: nested grid levels; level l covers the scene box scaled by 2^l (1 suits a
    bounded scene)."""
    render_step_size: float | None = None
    """Occupancy sampler: marching step (normalised world units); None = scene-box diagonal / 1000."""
    cone_angle: float = 0.004
    """Occupancy sampler: a step starting at distance t is max(render_step_size, cone_angle * t) long;
    0 keeps steps constant."""
    alpha_thre: float = 0.01
    """Occupancy sampler: drop samples whose opacity is below alpha_thre, or below the grid's mean
    value as an opacity when that is smaller (early in training)."""
    early_stop_eps: float = 1e-4
    """Occupancy sampler: drop samples whose transmittance is below this."""
    occ_thre: float = 0.01
    """Occupancy sampler: a cell is occupied when its density x render_step_size exceeds
    min(occ_thre, mean over the grid)."""
    grid_update_every: int = 16
    """Occupancy sampler: steps between grid refreshes."""
    grid_warmup_steps: int = 256
    """Occupancy sampler: refreshes before this step evaluate every cell; later ones a random quarter
    plus up to a quarter of the occupied cells."""
    grid_ema_decay: float = 0.95
    """Occupancy sampler: decay of a cell's running maximum density at each refresh."""


NerfHashModelConfig._target = NerfHashModel
