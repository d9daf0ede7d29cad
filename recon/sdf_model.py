"""NeuS (Wang et al., "NeuS: Learning Neural Implicit Surfaces by Volume Rendering for Multi-view
Reconstruction", NeurIPS 2021) as a recon model.

An SDF MLP (geometric init) and an IDR-style colour network are rendered along rays with the NeuS
opacity (logistic CDF of the SDF, learned sharpness ``s``). Samples per ray: ``num_samples`` uniform
ones in [near, far], then ``num_importance`` more in ``up_sample_steps`` rounds of importance
sampling with NeuS weights at a fixed, doubling sharpness ``base_inv_s * 2^i`` (paper sec. 3.4,
"hierarchical sampling"). Losses: L1 colour, eikonal (Gropp et al. 2020) on all sample gradients,
optional mask BCE, and, when the data has depth / normal maps and their weights are set, MonoSDF's
cue losses (Yu et al., "MonoSDF: Exploring Monocular Geometric Cues for Neural Implicit Surface
Reconstruction", NeurIPS 2022): a scale- and shift-invariant depth loss per image and an L1 +
cosine normal loss. Optional per-image appearance codes in the colour network (``appearance_dim``).
See methods/neus/README.md for the departures from the official release.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.cameras import Cameras, RayBundle
from recon.engine.callbacks import Callback, Where
from recon.errors import ConfigError
from recon.fields.sdf_field import ColorNetwork, SDFField, SDFFieldConfig
from recon.losses import eikonal_loss, normal_cue_loss, scale_shift_invariant_depth_loss
from recon.model import Export, Output, RayModel, RayModelConfig, SceneInfo
from recon.render.rays import accumulate, expected_depth, intersect_aabb, intervals_from_points, pdf_samples, stratified_samples
from recon.render.sdf import LearnedBeta, LearnedVariance, cosine_anneal, neus_alpha, neus_alpha_from_gradients, weights_from_alpha
from recon.render.volsdf_sampler import ErrorBoundConfig, error_bounded_samples


def _neus_field_defaults() -> SDFFieldConfig:
    # NeuS's SDF network: 8 hidden layers of 256 (9 linear layers), skip at 4, 6 bands, radius 0.5.
    return SDFFieldConfig(num_layers=9, hidden_dim=256, skips=(4,), bias=0.5, frequencies=6, feature_dim=256, weight_norm=True)


class NeuSModel(RayModel):
    """NeuS: SDF field + colour network + learned variance; see :class:`NeuSModelConfig`."""

    config: "NeuSModelConfig"
    exports = frozenset({Export.MARCHING_CUBES, Export.TSDF, Export.POINTCLOUD})
    image_outputs = (Output.RGB, Output.DEPTH, Output.ACCUMULATION, Output.NORMAL)
    field_class: type[SDFField] = SDFField

    def __init__(self, config: "NeuSModelConfig", scene: SceneInfo):
        super().__init__(config, scene)
        self.field = self.field_class(config.field)
        self.color = ColorNetwork(
            feature_dim=config.field.feature_dim,
            hidden_dim=config.color_hidden_dim,
            num_layers=config.color_num_layers,
            dir_frequencies=config.dir_frequencies,
            weight_norm=config.color_weight_norm,
            appearance_dim=config.appearance_dim,
        )
        # per-image appearance codes (MonoSDF / ObjectSDF++: U(+-1e-4)); views outside the training
        # set (evaluation, the viewer, exports) are rendered with the mean code
        self.appearance = None
        if config.appearance_dim > 0:
            self.appearance = nn.Embedding(max(scene.num_train_cameras, 1), config.appearance_dim)
            nn.init.uniform_(self.appearance.weight, -1e-4, 1e-4)
        if config.density not in ("neus", "volsdf"):
            raise ValueError(f"density must be 'neus' or 'volsdf', got {config.density!r}")
        if config.sampler not in ("neus", "error-bounded") or (config.sampler == "error-bounded" and config.density != "volsdf"):
            raise ConfigError(f"sampler must be 'neus' or 'error-bounded' (the latter with density volsdf), got {config.sampler!r} with {config.density!r}")
        # The learned sharpness of the opacity: NeuS's variance, or VolSDF's Laplace scale beta.
        self.variance = LearnedVariance(config.init_variance) if config.density == "neus" else LearnedBeta(config.init_beta)
        self.register_buffer("aabb", scene.aabb.float().clone(), persistent=False)
        # Persistent, so that a model loaded from a checkpoint renders with the ratio it trained with.
        self.register_buffer("cos_anneal_ratio", torch.tensor(0.0 if config.anneal_end > 0 else 1.0))

    # ------------------------------------------------------------------ training plumbing
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        codes = list(self.appearance.parameters()) if self.appearance is not None else []
        return {"fields": list(self.field.parameters()) + list(self.color.parameters()) + codes, "variance": list(self.variance.parameters())}

    def set_anneal(self, step: int, **_: Any) -> None:
        """BEFORE_STEP hook: the cosine-anneal ratio of this step (linear 0 -> 1 over ``anneal_end``)."""
        self.cos_anneal_ratio.fill_(cosine_anneal(step, self.config.anneal_end))

    def callbacks(self) -> list[Callback]:
        return [Callback(self.set_anneal, where=Where.BEFORE_STEP)]

    # ------------------------------------------------------------------ sampling
    def _bounds(self, rays: RayBundle) -> tuple[Tensor, Tensor]:
        if self.scene.near is not None and self.scene.far is not None:
            return torch.full_like(rays.z_scale, self.scene.near), torch.full_like(rays.z_scale, self.scene.far)
        near, far, _ = intersect_aabb(rays.origins, rays.directions, self.aabb)
        return near, far

    def _sdf_at(self, rays: RayBundle, t: Tensor) -> Tensor:
        pts = rays.origins[:, None] + rays.directions[:, None] * t[..., None]
        return self.field.sdf(pts.reshape(-1, 3)).reshape(t.shape)

    @staticmethod
    def _upsample_weights(t: Tensor, sdf: Tensor, inv_s: float) -> Tensor:
        """NeuS weights of the S-1 intervals between sorted points t [R, S] with SDF values sdf [R, S].

        The slope of each interval is the finite difference of the SDF, replaced by the previous
        interval's when that one is steeper downwards, and clamped to [-1e3, 0] (only entering
        surfaces count, as with the annealed ratio = 1). The interval-end SDFs are extrapolated from
        the midpoint with this slope (the official release does the same).
        """
        dt = t[:, 1:] - t[:, :-1]
        mid_sdf = 0.5 * (sdf[:, 1:] + sdf[:, :-1])
        slope = (sdf[:, 1:] - sdf[:, :-1]) / (dt + 1e-5)
        prev_slope = torch.cat([torch.zeros_like(slope[:, :1]), slope[:, :-1]], -1)
        slope = torch.minimum(slope, prev_slope).clamp(-1e3, 0.0)
        half = slope * dt * 0.5
        alpha = neus_alpha(mid_sdf - half, mid_sdf + half, inv_s)
        return weights_from_alpha(alpha)[0]

    @torch.no_grad()
    def sample(self, rays: RayBundle) -> tuple[Tensor, Tensor, Tensor]:
        """Sorted sample intervals (t_starts, t_ends) [R, S_total] and the ray bounds near [R]."""
        c = self.config
        near, far = self._bounds(rays)
        if c.sampler == "error-bounded":
            beta = self.variance().detach()
            t = error_bounded_samples(self.field.sdf, rays.origins, rays.directions, near, far, beta, c.error_bound, perturb=self.training)
            starts, ends = intervals_from_points(t, near, far)
            return starts, ends, near
        s0, e0 = stratified_samples(near, far, c.num_samples, perturb=self.training)
        t = 0.5 * (s0 + e0)
        if c.num_importance > 0 and c.up_sample_steps > 0:
            sdf = self._sdf_at(rays, t)
            per_step = [c.num_importance // c.up_sample_steps] * c.up_sample_steps
            per_step[-1] += c.num_importance - sum(per_step)
            for i, n in enumerate(per_step):
                if n <= 0:
                    continue
                w = self._upsample_weights(t, sdf, c.base_inv_s * 2.0**i)
                t_new = pdf_samples(t, w, n, perturb=False)  # NeuS samples deterministically here
                sdf_new = self._sdf_at(rays, t_new)
                t, order = torch.sort(torch.cat([t, t_new], -1), -1)
                sdf = torch.cat([sdf, sdf_new], -1).gather(-1, order)
        starts, ends = intervals_from_points(t, near, far)
        return starts, ends, near

    # ------------------------------------------------------------------ rendering
    def render_rays(self, rays: RayBundle, create_graph: bool | None = None) -> dict[str, Tensor]:
        """Render rays [R]; outputs are [R, C] plus ``gradients`` [R*S, 3] and ``weights`` [R, S]."""
        if create_graph is None:
            create_graph = self.training and torch.is_grad_enabled()
        starts, ends, _ = self.sample(rays)
        mids = 0.5 * (starts + ends)
        r, s = mids.shape
        pts = (rays.origins[:, None] + rays.directions[:, None] * mids[..., None]).reshape(-1, 3)
        sdf, feature, grad, channels = self._field_at(pts, create_graph)
        dirs = rays.directions[:, None].expand(r, s, 3).reshape(-1, 3)
        codes = self._appearance_codes(rays.camera_indices)  # [R, A] or the mean [1, A] (or None)
        if codes is not None and codes.shape[0] == r:
            codes = codes.repeat_interleave(s, 0)
        rgb = self.color(pts, grad, dirs, feature, codes).reshape(r, s, 3)
        cos = (grad * dirs).sum(-1).reshape(r, s)
        if self.config.density == "volsdf":
            # VolSDF (Yariv et al. 2021): density = Laplace CDF of -sdf / beta, alpha = 1 - exp(-density * delta).
            alpha = 1.0 - torch.exp(-self.variance.density(sdf.reshape(r, s)) * (ends - starts))
        else:
            alpha = neus_alpha_from_gradients(sdf.reshape(r, s), cos, ends - starts, self.variance(), float(self.cos_anneal_ratio))
        weights, transmittance = weights_from_alpha(alpha)
        acc = accumulate(weights)
        color = accumulate(weights, rgb) + (1.0 - acc) * self.background
        normals = accumulate(weights, F.normalize(grad, dim=-1).reshape(r, s, 3))
        depth = expected_depth(weights, starts, ends) * rays.z_scale[:, None]
        out = {"rgb": color, "accumulation": acc, "depth": depth, "normal": normals, "weights": weights, "gradients": grad, "mids": mids}
        if self.training:  # the rays that cross the surface (MonoSDF's depth-loss mask)
            sdf_rs = sdf.detach().reshape(r, s)
            out["crosses"] = (sdf_rs.min(-1).values < 0) & (sdf_rs.max(-1).values > 0)
        if channels is not None:
            out.update(self._channel_outputs(channels.reshape(r, s, -1), transmittance, ends - starts))
        return out

    def _appearance_codes(self, camera_indices: Tensor | None) -> Tensor | None:
        """Appearance codes [R, A] of training rays, or the mean code [1, A] when not training (or
        when ``camera_indices`` is None); None without appearance codes."""
        if self.appearance is None:
            return None
        if self.training and camera_indices is not None:
            return self.appearance(camera_indices.long().clamp(0, self.appearance.num_embeddings - 1))
        return self.appearance.weight.mean(0, keepdim=True)

    def cue_losses(self, batch: dict[str, Any], outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """MonoSDF's depth and normal cue losses for the batches that carry ``depth`` / ``normal``
        (the datamanager's ``load_cues``; 0 marks a pixel without a value).

        Both apply only to the rays that cross the surface (MonoSDF's depth mask, used for the normals
        too: a ray that meets no surface yet has a depth and normal normalised by a near-zero
        accumulation; without this mask a 400-step objectsdf run on ground-truth cues collapsed,
        benchmarks/RESULTS.md). Relative (monocular) depth: the scale- and
        shift-invariant loss per image on MonoSDF's target ``50 D + 0.5`` (so the official weight 0.1
        means the same). Metric depth: half the MSE of the rendered z-depth. Normals: L1 + (1 - cos)
        of the rendered normal against the cue (world frame)."""
        c, out = self.config, {}
        crosses = outputs.get("crosses")
        if c.mono_depth_weight > 0 and "depth" in batch:
            target = batch["depth"].reshape(-1).to(outputs["depth"])
            pred = outputs["depth"].reshape(-1)
            valid = target > 0 if crosses is None else (target > 0) & crosses
            if self.scene.depth_is_relative:
                loss = scale_shift_invariant_depth_loss(pred, 50.0 * target + 0.5, valid, batch["rays"].camera_indices)
            else:
                m = valid.to(pred.dtype)
                loss = (m * (pred - target) ** 2).sum() / (2.0 * m.sum()).clamp_min(1.0)
            out["mono_depth"] = c.mono_depth_weight * loss
        if c.mono_normal_weight > 0 and "normal" in batch:
            target = batch["normal"].reshape(-1, 3).to(outputs["normal"])
            valid = target.norm(dim=-1) > 0.5 if crosses is None else (target.norm(dim=-1) > 0.5) & crosses
            out["mono_normal"] = c.mono_normal_weight * normal_cue_loss(outputs["normal"], target, valid)
        return out

    def _field_at(self, points: Tensor, create_graph: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The field at the samples [N, 3]: (sdf [N], feature [N, F], d sdf / d points [N, 3], the
        per-channel SDFs [N, C] of a multi-channel field or None); subclasses with channels override it."""
        return *self.field.gradient(points, create_graph=create_graph), None

    def _channel_outputs(self, channels: Tensor, transmittance: Tensor, deltas: Tensor) -> dict[str, Tensor]:
        """Outputs of a multi-channel field from its SDFs [R, S, C] and the scene's transmittance
        and interval lengths [R, S] (a subclass's hook; NeuS has one channel)."""
        return {}

    def losses(self, batch: dict[str, Any], outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        c = self.config
        out = {
            # beta 0 is the plain L1 (torch's smooth_l1_loss takes its L1 path)
            "rgb": F.smooth_l1_loss(outputs["rgb"], batch["rgb"], beta=c.rgb_smooth_l1_beta),
            "eikonal": c.eikonal_weight * eikonal_loss(outputs["gradients"]),
        }
        if c.mask_weight > 0 and "alpha" in batch:
            acc = outputs["accumulation"].clamp(1e-3, 1.0 - 1e-3)
            out["mask"] = c.mask_weight * F.binary_cross_entropy(acc, batch["alpha"].reshape(acc.shape).to(acc))
        return {**out, **self.cue_losses(batch, outputs)}

    def check_datamanager(self, datamanager: Any) -> None:
        super().check_datamanager(datamanager)
        c = self.config
        if (c.mono_depth_weight > 0 or c.mono_normal_weight > 0) and not getattr(datamanager.config, "load_cues", False):
            raise ConfigError("model.mono_depth_weight / mono_normal_weight need the depth and normal maps in the batches:"
                              " add --datamanager.load-cues True")

    def metrics(self, batch: dict[str, Any], outputs: dict[str, Tensor]) -> dict[str, float]:
        sharpness = {"inv_s": float(self.variance().detach())} if self.config.density == "neus" else {"beta": float(self.variance().detach())}
        return {**super().metrics(batch, outputs), **sharpness, "cos_anneal_ratio": float(self.cos_anneal_ratio)}

    @torch.no_grad()
    def render(self, camera: Cameras) -> dict[str, Tensor]:
        # The colour network needs the SDF gradient even here: SDFField.gradient enables grad
        # locally without keeping a graph, and RayModel.render detaches every output.
        image = super().render(camera)
        image[Output.NORMAL.value] = F.normalize(image[Output.NORMAL.value], dim=-1)
        return image

    def sdf(self, points: Tensor) -> Tensor:
        return self.field.sdf(points)

    @torch.no_grad()
    def surface_colors(self, points: Tensor, chunk: int = 1 << 16) -> Tensor:
        """Colours [N, 3] of surface points [N, 3] (mesh vertices) seen head-on: the colour network
        with the view direction against the SDF normal (used to colour exported meshes)."""
        out = []
        for i in range(0, len(points), chunk):
            p = points[i : i + chunk]
            _, feature, grad = self.field.gradient(p, create_graph=False)
            out.append(self.color(p, grad, -F.normalize(grad, dim=-1), feature, self._appearance_codes(None)))
        return torch.cat(out) if out else points.new_zeros(0, 3)


@dataclass
class NeuSModelConfig(RayModelConfig):
    """NeuS hyper-parameters; defaults follow the official release's DTU configuration."""

    field: SDFFieldConfig = field(default_factory=_neus_field_defaults)
    """SDF network (NeuS: 8 hidden layers x 256, skip at 4, 6 frequency bands, sphere radius 0.5)."""
    color_hidden_dim: int = 256
    """Width of the colour network."""
    color_num_layers: int = 5
    """Linear layers of the colour network, output included (NeuS: 4 hidden + output)."""
    color_weight_norm: bool = True
    """Weight-normalise the colour network."""
    dir_frequencies: int = 4
    """Frequency bands of the view-direction encoding (NeuS: 4)."""
    density: Literal["neus", "volsdf"] = "neus"
    """Opacity from the SDF: NeuS's logistic form (learned inv_s, cosine annealing) or VolSDF's
    Laplace-CDF density with a learned beta (the ``volsdf`` preset)."""
    init_variance: float = 0.3
    """Initial variance parameter; inv_s = exp(10 * variance) (NeuS: 0.3, s ~ 20)."""
    init_beta: float = 0.1
    """Initial Laplace scale of the VolSDF density (VolSDF / MonoSDF: 0.1); used when density is volsdf."""
    num_samples: int = 64
    """Uniform (stratified) samples per ray in [near, far]."""
    num_importance: int = 64
    """Importance samples per ray, added over ``up_sample_steps`` rounds."""
    up_sample_steps: int = 4
    """Rounds of NeuS importance sampling (round i uses inv_s = base_inv_s * 2^i)."""
    base_inv_s: float = 64.0
    """Fixed sharpness of the first up-sampling round."""
    sampler: Literal["neus", "error-bounded"] = "neus"
    """neus: ``num_samples`` uniform + ``num_importance`` NeuS up-sampled samples; error-bounded:
    VolSDF's error-bounded sampler (:mod:`recon.render.volsdf_sampler`, with density volsdf only;
    sample counts in ``error_bound``)."""
    error_bound: ErrorBoundConfig = dataclasses.field(default_factory=ErrorBoundConfig)  # (`field` is a config field here)
    """Sample counts and tolerance of the error-bounded sampler (defaults: VolSDF's, 98 samples per ray)."""
    anneal_end: int = 50_000
    """Steps over which the cosine-anneal ratio ramps from 0 to 1 (0: no annealing, ratio 1)."""
    rgb_smooth_l1_beta: float = 0.0
    """Colour loss: smooth L1 with this beta (HelixSurf: 0.1); 0 is the plain L1 of NeuS and MonoSDF."""
    eikonal_weight: float = 0.1
    """Weight of the eikonal loss on the gradients at all samples."""
    mask_weight: float = 0.0
    """Weight of the BCE between accumulation and the image alpha (used only when batches have alpha)."""
    background: Literal["auto", "white", "black"] = "auto"
    """Colour behind the surface; auto = the dataset's background for RGBA images, else black."""
    eval_num_rays_per_chunk: int = 1024
    """Rays per chunk when rendering whole images."""
    appearance_dim: int = 0
    """Per-image appearance code length in the colour network (MonoSDF / ObjectSDF++: 32; 0: none).
    Views outside the training set are rendered with the mean code."""
    mono_depth_weight: float = 0.0
    """Weight of the depth cue loss (MonoSDF: 0.1), when batches carry depth (``datamanager.load_cues``)."""
    mono_normal_weight: float = 0.0
    """Weight of the normal cue loss, L1 + cosine (MonoSDF: 0.05 each), when batches carry normals."""


NeuSModelConfig._target = NeuSModel
