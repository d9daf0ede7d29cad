"""GeCoNeRF (Kwak, Song & Kim, "GeCoNeRF: Few-shot Neural Radiance Fields via Geometric
Consistency", ICML 2023): a mip-NeRF trained on a few views, regularised by rendering patches at
unobserved poses, warping an input image into them with their rendered depth (sec. 3.2), masking
invalid and occluded pixels (sec. 3.3), and comparing rendered and warped patches in a feature
space (sec. 3.3, eq. 6), with coarse-to-fine encoding annealing and decaying weights (sec. 3.4).

The backbone is recon's mip-NeRF (:mod:`recon.fields.mip_field`), optionally in NDC
(:mod:`recon.render.ndc`); warping and masks are :mod:`recon.geometry.warp`; the feature
extractors :mod:`recon.features`. Decisions where the paper or the release is silent are in
README.md beside this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.geconerf.panels import PatchSnapshot, UnobservedPatchPanel
from methods.geconerf.schedules import consistency_weight, occlusion_threshold
from recon.cameras import RayBundle
from recon.engine.callbacks import Callback, Where
from recon.features import PatchFeatures, VGG19Features, masked_feature_l1
from recon.fields.hash_field import AnnealedHashField
from recon.fields.mip_field import MipNeRFField, render_mip_levels
from recon.geometry.warp import backproject, inverse_warp, occlusion_mask
from recon.model import Export, RayModel, RayModelConfig, SceneInfo
from recon.render.mip import annealing_alpha
from recon.render.ndc import NDC_NEAR_FRACTION, RaySpace, RaySpaceName
from recon.render.rays import ray_bounds

VGG_CONSISTENCY_WEIGHT = 2.3 * 0.005
"""The release's consistency weight with VGG-19 features: 2.3 x prcp_weight (0.005)."""
PATCH_FEATURES_CONSISTENCY_WEIGHT = 0.05
"""Consistency weight with the weight-free features (measured; see README.md)."""
NDC_HASH_BOX = torch.tensor([[-1.5, -1.5, -1.0], [1.5, 1.5, 1.0]])
"""The hash grid's box in NDC: z spans near (-1) to infinity (1); x and y span the reference
camera's image at [-1, 1], padded for the other cameras' rays (points beyond are clamped)."""


def edge_aware_smoothness(depth: Tensor, image: Tensor) -> Tensor:
    """Monodepth's edge-aware smoothness (Godard et al. 2017, eq. 3) of the mean-normalised inverse
    depth of a patch: depth [h, w] > 0, image [h, w, 3] (its gradients gate the penalty)."""
    disp = 1.0 / depth.clamp_min(1e-6)
    disp = disp / disp.mean().clamp_min(1e-6)
    gray = image.mean(-1)
    dx = (disp[:, 1:] - disp[:, :-1]).abs() * torch.exp(-(gray[:, 1:] - gray[:, :-1]).abs())
    dy = (disp[1:] - disp[:-1]).abs() * torch.exp(-(gray[1:] - gray[:-1]).abs())
    return dx.mean() + dy.mean()


class GeCoNeRFModel(RayModel):
    """mip-NeRF with GeCoNeRF's consistency regulariser; see :class:`GeCoNeRFModelConfig`."""

    config: "GeCoNeRFModelConfig"
    exports = frozenset({Export.TSDF, Export.POINTCLOUD})

    def __init__(self, config: "GeCoNeRFModelConfig", scene: SceneInfo):
        super().__init__(config, scene)
        c = config
        self.register_buffer("aabb", scene.aabb.float().clone(), persistent=False)
        self.ray_space = RaySpace(c.ray_space, scene.metadata, scene.far)
        self.field: MipNeRFField | AnnealedHashField
        if c.field == "mip":
            self.field = MipNeRFField(c.min_deg, c.max_deg, c.direction_deg, c.hidden_dim, c.num_layers, c.skips, c.color_hidden_dim)
        elif c.field == "hash":
            box = NDC_HASH_BOX if self.ray_space.is_ndc else self.aabb
            self.field = AnnealedHashField(
                box, c.hash_num_levels, c.hash_max_res, c.hash_log2_hashmap_size, hidden_dim=c.hash_hidden_dim,
                color_hidden_dim=c.hash_hidden_dim, direction_deg=c.direction_deg, implementation=c.hash_implementation,
            )
        else:
            raise ValueError(f"unknown field {c.field!r} (mip or hash)")
        if c.ray_shape not in ("auto", "cone", "cylinder"):
            raise ValueError(f"unknown ray_shape {c.ray_shape!r}")
        self.cylinder = c.ray_shape == "cylinder" or (c.ray_shape == "auto" and self.ray_space.is_ndc)
        self.density_noise = c.density_noise if c.density_noise is not None else (1.0 if self.ray_space.is_ndc else 0.0)
        # The extractor is frozen and rebuilt from the config, so it stays out of the state dict.
        extractor = VGG19Features().load_weights(c.vgg_weights) if c.vgg_weights is not None else PatchFeatures()
        self.__dict__["features"] = extractor
        self.consistency_base = c.consistency_weight if c.consistency_weight is not None else (
            VGG_CONSISTENCY_WEIGHT if c.vgg_weights is not None else PATCH_FEATURES_CONSISTENCY_WEIGHT
        )
        if c.occlusion_unit is not None:
            self.occlusion_unit = c.occlusion_unit
        elif scene.near is not None:
            self.occlusion_unit = NDC_NEAR_FRACTION * scene.near
        else:
            self.occlusion_unit = 0.1 * float((scene.aabb[1] - scene.aabb[0]).norm())
        self.last_patch: PatchSnapshot | None = None
        """The latest regularisation step's patch, for the viewer panel (not saved)."""

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"fields": list(self.field.parameters())}

    def viewer_panels(self) -> list[Any]:
        return [UnobservedPatchPanel(self)]

    def callbacks(self) -> list[Callback]:
        return [Callback(self.set_annealing, where=Where.BEFORE_STEP)]

    def set_annealing(self, step: int, **_: Any) -> None:
        """Coarse-to-fine: the encoding window's position for ``step`` (all bands once it ends)."""
        self.field.anneal_alpha.fill_(annealing_alpha(step, self.field.num_bands, self.config.anneal_steps))

    def render_rays(self, rays: RayBundle, perturb: bool | None = None) -> dict[str, Tensor]:
        """mip-NeRF's two levels on rays [R]; ``depth`` is the z-depth [R, 1] and ``distance`` the
        distance along the world ray [R, 1]. ``perturb`` (default: while training) jitters samples
        and adds density noise."""
        c = self.config
        perturb = self.training if perturb is None else perturb
        world = rays
        rays, near, far = self.ray_space.rays(rays, *ray_bounds(rays.origins, rays.directions, self.aabb, self.scene.near, self.scene.far))
        levels = render_mip_levels(
            self.field, rays, near, far, c.num_samples, c.num_levels, self.background, perturb, self.cylinder,
            self.density_noise if perturb else 0.0, c.resample_padding,
        )
        fine = levels[-1]
        distance = self.ray_space.world_distance(world, fine["distance"])
        out = {"rgb": fine["rgb"], "accumulation": fine["accumulation"], "distance": distance, "depth": distance * world.z_scale[:, None]}
        if len(levels) > 1:
            out["rgb_coarse"] = levels[0]["rgb"]
        return out

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.render_rays(batch["rays"])
        if "patch" in batch:
            out["patch"] = self.render_rays(batch["patch"]["rays"])
        return out

    def losses(self, batch: dict[str, Any], outputs: dict[str, Any], step: int) -> dict[str, Tensor]:
        target = batch["rgb"]
        losses = {"rgb": F.mse_loss(outputs["rgb"], target)}
        if "rgb_coarse" in outputs:
            losses["rgb_coarse"] = self.config.coarse_loss_mult * F.mse_loss(outputs["rgb_coarse"], target)
        if "patch" in batch:
            losses.update(self.patch_losses(batch["patch"], outputs["patch"], step))
        return losses

    @torch.no_grad()
    def warp_patch(self, patch: dict[str, Any], rendered: dict[str, Tensor], step: int) -> tuple[Tensor, Tensor]:
        """The source image warped into the patch [P, 3] by the rendered distances, and the mask [P]
        bool of pixels that are valid (inside the source, opacity >= 0.5) and not occluded from
        the source (stop-gradient, as in the release)."""
        rays: RayBundle = patch["rays"]
        source_camera = patch["source_camera"]
        points = backproject(rays.origins, rays.directions, rendered["distance"][:, 0].detach())
        warped, uv, z, inside = inverse_warp(patch["source_image"], source_camera, points)
        mask = inside & (rendered["accumulation"][:, 0].detach() >= 0.5)
        if self.config.occlusion_check and bool(mask.any()):
            idx = torch.nonzero(mask)[:, 0]
            source_rays = source_camera.rays_for_pixels(torch.zeros_like(idx), uv[idx, 0], uv[idx, 1])
            seen = self.render_rays(source_rays, perturb=False)["distance"][:, 0]
            own = (points[idx] - source_rays.origins).norm(dim=-1)
            tau = occlusion_threshold(step, self.config.occlusion_threshold, self.config.occlusion_decay_steps) * self.occlusion_unit
            mask[idx] = occlusion_mask(seen, own, tau)
        return warped, mask

    def patch_losses(self, patch: dict[str, Any], rendered: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The consistency loss (and the optional smoothness) of one unobserved patch."""
        c = self.config
        h, w = patch["shape"]
        warped, mask = self.warp_patch(patch, rendered, step)
        self.last_patch = PatchSnapshot(
            step, patch["camera"].to("cpu"), rendered["rgb"].detach().reshape(h, w, 3).cpu(), warped.reshape(h, w, 3).cpu(), mask.reshape(h, w).cpu()
        )
        to_image = lambda x: x.reshape(1, h, w, -1).permute(0, 3, 1, 2)  # noqa: E731
        pred, gt, m = to_image(rendered["rgb"]), to_image(warped), to_image(mask.float())
        size = c.feature_size if c.feature_size is not None else (224 if c.vgg_weights is not None else None)
        if size is not None and size != h:
            pred = F.interpolate(pred, size=(size, size), mode="bicubic", align_corners=False)
            gt = F.interpolate(gt, size=(size, size), mode="bicubic", align_corners=False)
            m = F.interpolate(m, size=(size, size), mode="nearest")
        features = self.features.to(pred.device)
        with torch.no_grad():
            target = features(gt)
        out = {"consistency": consistency_weight(step, self.consistency_base, c.weight_decay_steps) * masked_feature_l1(features(pred), target, m)}
        if c.photo_weight > 0:
            valid = mask.float()[:, None]
            out["photo"] = c.photo_weight * ((rendered["rgb"] - warped) ** 2 * valid).sum() / (3 * valid.sum() + 1e-9)
        if c.smoothness_weight > 0:
            depth = rendered["distance"].reshape(h, w)
            out["smoothness"] = c.smoothness_weight * edge_aware_smoothness(depth, rendered["rgb"].detach().reshape(h, w, 3))
        return out


@dataclass
class GeCoNeRFModelConfig(RayModelConfig):
    """GeCoNeRF on mip-NeRF; defaults are the official release's (scripts override its flags)."""

    field: Literal["mip", "hash"] = "mip"
    """The backbone: mip-NeRF's integrated-encoding MLP (the paper), or a hash grid whose levels are
    enabled coarse-to-fine by the same annealing window (:class:`AnnealedHashField`; ours)."""
    hash_num_levels: int = 16
    """Hash-grid levels (field hash); annealed like the encoding's bands (anneal_steps)."""
    hash_max_res: int = 2048
    """Finest hash-grid resolution (field hash)."""
    hash_log2_hashmap_size: int = 19
    """Hash table size per level, log2 (field hash)."""
    hash_hidden_dim: int = 64
    """Width of the hash field's density and colour MLPs (field hash)."""
    hash_implementation: Literal["auto", "torch", "tcnn"] = "auto"
    """Hash-grid code (field hash): tiny-cuda-nn on CUDA when it imports (auto), else PyTorch."""
    num_samples: int = 128
    """Samples per ray at each level."""
    num_levels: int = 2
    """Sampling levels of the one shared network (the first stratified, the next resampled)."""
    min_deg: int = 0
    """Lowest frequency band 2^min_deg of the integrated positional encoding."""
    max_deg: int = 16
    """One past the highest band (16 bands)."""
    direction_deg: int = 4
    """Frequency bands of the view-direction encoding."""
    hidden_dim: int = 256
    """Width of the trunk."""
    num_layers: int = 8
    """Depth of the trunk."""
    skips: tuple[int, ...] = (5,)
    """Trunk layers that get the encoding again (mip-NeRF: after the 5th layer)."""
    color_hidden_dim: int = 128
    """Width of the colour layer."""
    resample_padding: float = 0.01
    """Added to the blurred weights before resampling."""
    coarse_loss_mult: float = 0.1
    """Weight of the first level's colour loss."""
    density_noise: float | None = None
    """Std. of the noise on raw densities while training; None: 1.0 in NDC (the release's LLFF), else 0."""
    ray_space: RaySpaceName = "auto"
    """Where rays are sampled: ndc (forward-facing LLFF captures, near 0 / far 1 in NDC),
    euclidean, or auto (ndc when the dataset is forward-facing LLFF)."""
    ray_shape: Literal["auto", "cone", "cylinder"] = "auto"
    """Pixel footprints: cones, cylinders, or auto (cylinders in NDC, cones otherwise; the release)."""
    background: Literal["auto", "white", "black"] = "auto"
    """Colour behind the volume; auto = the dataset's background for RGBA images, else black."""
    anneal_steps: int = 15_000
    """Coarse-to-fine window: band (or hash level) weights follow alpha = 1 + (L - 1) t / N over the L
    bands or levels (0 disables)."""
    consistency_weight: float | None = None
    """Base weight of the feature consistency loss (decays, see weight_decay_steps); None: 0.0115
    with VGG-19 features (the release), 0.05 with the weight-free ones. 0 trains the bare backbone."""
    weight_decay_steps: int = 20_000
    """The consistency weight is base x exp(-step / N) (the release's decay_param)."""
    occlusion_check: bool = True
    """Mask warped pixels the source camera does not see (render towards them and compare)."""
    occlusion_threshold: float = 2.0
    """Occlusion threshold at step 0, in occlusion units; decays as exp(-step / occlusion_decay_steps)."""
    occlusion_decay_steps: int = 25_000
    """Decay of the occlusion threshold (the release's occ_decay_param)."""
    occlusion_unit: float | None = None
    """Normalised-world length of one occlusion unit; None: 0.75 x the dataset's near bound (the
    release's LLFF world unit), or a tenth of the scene box diagonal without bounds."""
    vgg_weights: Path | None = None
    """Local torchvision VGG-19 state dict (.pth or .safetensors): compare patches in VGG-19's
    pool1 and pool2 features (the paper). Without it: weight-free features (recon.features)."""
    feature_size: int | None = None
    """Resize patches to this side before the features (bicubic); None: 224 with VGG-19 (the
    release), the rendered patch size with the weight-free features."""
    photo_weight: float = 0.0
    """The release's disabled pixel-level variant: masked MSE of rendered vs warped patch (0.15 when
    the release turns it on), added to the feature loss."""
    smoothness_weight: float = 0.0
    """Edge-aware smoothness of the unobserved patch's inverse depth (in the paper, not in the release)."""
    eval_num_rays_per_chunk: int = 2048
    """Rays per chunk when rendering whole images."""


GeCoNeRFModelConfig._target = GeCoNeRFModel
