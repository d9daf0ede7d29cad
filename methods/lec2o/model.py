"""LeC2O-NeRF (Mi & Xu 2024, "Learning Continuous and Compact Large-Scale Occupancy for Urban
Scenes", arXiv 2411.11374): a learned occupancy gate routes samples to a large hash-grid scene
network or a small empty-space network (the heterogeneous mixture of experts of its earlier
version, LeCO-NeRF), trained end to end with an imbalanced occupancy loss and an explicit density
loss; at inference the samples the gate calls empty are skipped. The estimator is
:class:`recon.render.learned_occupancy.LearnedOccupancy`; both experts are
:class:`recon.fields.hash_field.HashNeRFField` (instant-ngp's field as nerfacto arranges it, with
optional per-camera appearance embeddings). Decisions: methods/lec2o/README.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from methods.lec2o.panels import OccupancyPanel
from recon.cameras import RayBundle
from recon.errors import ConfigError
from recon.fields.hash_field import HashFieldOptions, HashNeRFField
from recon.model import Export, RayModel, RayModelConfig, SceneInfo
from recon.render.learned_occupancy import LearnedOccupancy, OccupancyGate
from recon.render.rays import accumulate, expected_depth, ray_bounds, render_weights


class Lec2oModel(RayModel):
    """See :class:`Lec2oModelConfig`."""

    config: "Lec2oModelConfig"
    exports = frozenset({Export.TSDF, Export.POINTCLOUD})

    def __init__(self, config: "Lec2oModelConfig", scene: SceneInfo):
        super().__init__(config, scene)
        c = config
        if not 0.0 < c.target_ratio < 1.0:
            raise ConfigError(f"--model.target-ratio must be in (0, 1), got {c.target_ratio}")
        if c.num_samples < 1 or c.subdivisions < 1:
            raise ConfigError(f"--model.num-samples and --model.subdivisions must be >= 1, got {c.num_samples} and {c.subdivisions}")
        aabb = scene.aabb.float()
        contraction = c.contraction_fn()
        self.field = c.hash_nerf_field(aabb, scene.num_train_cameras)
        self.empty_field = (
            HashNeRFField(
                aabb, contraction, num_levels=c.empty_num_levels, max_res=c.empty_max_res, log2_hashmap_size=c.empty_log2_hashmap_size,
                hidden_dim=c.empty_hidden_dim, geo_feature_dim=c.empty_geo_feature_dim, color_hidden_dim=c.empty_hidden_dim, color_layers=2,
                appearance_dim=0, sh_degree=1, implementation=c.implementation,
            )
            if c.empty_network
            else None
        )
        gate = OccupancyGate(
            aabb, contraction, num_levels=c.gate_num_levels, max_res=c.gate_max_res, log2_hashmap_size=c.gate_log2_hashmap_size,
            hidden_dim=c.gate_hidden_dim, init_occupied=c.gate_init_occupied, implementation=c.implementation,
        )
        spacing = "linear" if c.contraction == "none" else "piecewise"
        self.occupancy = LearnedOccupancy(gate, c.num_samples, c.target_ratio, spacing=spacing, subdivisions=c.subdivisions, empty_scale=c.empty_density_scale)
        self.register_buffer("aabb", aabb.clone(), persistent=False)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        fields = list(self.field.parameters()) + (list(self.empty_field.parameters()) if self.empty_field is not None else [])
        return {"fields": fields, "occupancy": list(self.occupancy.gate.parameters())}

    def viewer_panels(self) -> list[Any]:
        return [OccupancyPanel()]

    def check_datamanager(self, datamanager: Any) -> None:
        super().check_datamanager(datamanager)
        if self.config.implementation == "tcnn" and self.device.type != "cuda":
            raise ConfigError(f"--model.implementation tcnn needs a CUDA device, but this run is on {self.device.type} (use auto or torch)")

    def _bounds(self, rays: RayBundle) -> tuple[Tensor, Tensor]:
        if self.config.contraction != "none" and (self.scene.near is None or self.scene.far is None):
            return torch.full_like(rays.z_scale, self.config.near_plane), torch.full_like(rays.z_scale, self.config.far_plane)
        return ray_bounds(rays.origins, rays.directions, self.aabb, self.scene.near, self.scene.far)

    def render_rays(self, rays: RayBundle) -> dict[str, Any]:
        near, far = self._bounds(rays)
        samples = self.occupancy.sample(rays.origins, rays.directions, near, far)
        skip = not self.training and self.config.skip_empty
        density, rgb = self.occupancy.route(samples, rays.directions, rays.camera_indices, self.field, self.empty_field, skip_empty=skip)
        weights, _ = render_weights(density, samples.t_starts, samples.t_ends)
        acc = accumulate(weights)
        return {
            "rgb": accumulate(weights, rgb) + (1.0 - acc) * self.background,
            "accumulation": acc,
            "depth": expected_depth(weights, samples.t_starts, samples.t_ends) * rays.z_scale[:, None],
            "samples": samples,
            "density": density,
            "num_occupied": samples.coarse(samples.occupied).sum(-1),
            "num_large": (samples.occupied & samples.active).sum(-1),
        }

    def losses(self, batch: dict[str, Any], outputs: dict[str, Any], step: int) -> dict[str, Tensor]:
        c = self.config
        losses = {"rgb": torch.mean((outputs["rgb"] - batch["rgb"]) ** 2)}
        extra = self.occupancy.losses(outputs["samples"], outputs["density"])
        if c.occupancy_loss_mult > 0:
            losses["occupancy"] = c.occupancy_loss_mult * extra["occupancy"]
        if c.density_loss_mult > 0:
            losses["density"] = c.density_loss_mult * extra["density"]
        return losses

    def metrics(self, batch: dict[str, Any], outputs: dict[str, Any]) -> dict[str, float]:
        values = super().metrics(batch, outputs)
        values["large_samples_per_ray"] = float(outputs["num_large"].float().mean())
        values["occupied_fraction"] = float(outputs["num_occupied"].float().mean()) / self.config.num_samples
        return values


@dataclass
class Lec2oModelConfig(HashFieldOptions, RayModelConfig):
    """The scene network takes nerfacto's field defaults (:class:`recon.fields.hash_field.HashFieldOptions`;
    ``implementation`` applies to all three networks); every LeC2O-specific constant is ours (the
    paper's values are unknown, methods/lec2o/README.md)."""

    num_samples: int = 128
    """Stratified samples per ray; the gate classifies all of them."""
    subdivisions: int = 1
    """Point sampling: the large network evaluates each occupied sample's interval in this many
    equal parts (1: off)."""
    target_ratio: float = 0.25
    """r: the fraction of samples the imbalanced occupancy loss steers towards the large network."""
    occupancy_loss_mult: float = 1e-3
    """Weight of the imbalanced occupancy loss (0 turns it off: the ablation)."""
    density_loss_mult: float = 1.0
    """Weight of the explicit density loss on samples routed to the empty network (0: ablation)."""
    empty_network: bool = True
    """Route empty samples to a small empty-space network; False is the one-network ablation (the
    large network evaluates the empty samples too, scaled by empty_density_scale)."""
    empty_density_scale: Literal["g_emp", "g_occ"] = "g_occ"
    """What scales the density of the samples routed to the empty network: the occupancy
    probability g_occ (so a sample the image needs denser pulls the gate towards "occupied"), or
    Switch-NeRF's probability of the chosen class, g_emp = 1 - g_occ (README: decision 2)."""
    skip_empty: bool = True
    """At inference evaluate no network on samples the gate calls empty (their density is 0)."""
    gate_num_levels: int = 8
    """Hash-grid levels of the occupancy gate."""
    gate_max_res: int = 128
    """Finest hash-grid resolution of the occupancy gate."""
    gate_log2_hashmap_size: int = 13
    """Hash table size of the occupancy gate (log2)."""
    gate_hidden_dim: int = 32
    """Width of the occupancy gate's MLP."""
    gate_init_occupied: float = 0.9
    """Initial g_occ everywhere (the gate's output bias): start with the large network seeing the scene."""
    empty_num_levels: int = 2
    """Hash-grid levels of the empty-space network."""
    empty_max_res: int = 32
    """Finest hash-grid resolution of the empty-space network."""
    empty_log2_hashmap_size: int = 12
    """Hash table size of the empty-space network (log2)."""
    empty_hidden_dim: int = 16
    """Width of the empty-space network's MLPs."""
    empty_geo_feature_dim: int = 7
    """Geometry feature of the empty-space network."""
    background: Literal["auto", "white", "black"] = "auto"
    """Colour behind the volume; auto = the dataset's background for RGBA images, else black."""
    eval_num_rays_per_chunk: int = 4096
    """Rays per chunk when rendering whole images."""


Lec2oModelConfig._target = Lec2oModel
