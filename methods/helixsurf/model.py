"""HelixSurf's model (Liang, Huang, Ding & Jia, CVPR 2023): the SDF backend's NeuS model supervised by
multi-view stereo, with the helix loop as a training hook.

The per-pixel MVS depth and normals reach the model the way every depth/normal cue does, as
``batch["depth"]`` (z-depth) and ``batch["normal"]`` (world frame), 0 where a pixel has none; here
the datamanager's buffers are filled and refreshed by :func:`methods.helixsurf.helix.mvs_round`
(see :meth:`HelixSurfModel.helix_round`). The losses added to NeuS's colour and eikonal terms
(HelixSurf's ``train.py``, as the method spec records it):

- MVS depth: ``mean_r c_r |t_D - t_mvs|`` over the rays with an MVS depth, t the distance along the
  ray, ``c_r = 1 - mean_rgb |C_hat - C|`` the photometric confidence (detached: the release
  leaves it attached, so the depth loss can push the colour error up, quirk H1). The weight halves
  at the first decay step and again at the second, when the per-ray error is also clamped.
- MVS normal: ``mean_r c_r |n_hat - n_mvs|_1`` with n_hat the SDF gradient at the rendered surface
  point ``o + t_D d`` (detached point), on rays whose cosine to the MVS normal exceeds
  ``min(0.8, step / normal_gate_steps)``; the weight halves at the first decay step.
- plane normal (the planar prior): ``mean_r |n_hat - n_plane|_1`` on the rays of planar regions
  (``batch["plane_normal"]``, :mod:`recon.geometry.planar`) whose cosine exceeds 0.8, pixels
  without an MVS depth included: textureless planes get a normal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from methods.helixsurf.helix import HelixLoopConfig, mvs_round
from recon.engine.callbacks import Callback, Where
from recon.errors import ConfigError, DataError
from recon.sdf_model import NeuSModel, NeuSModelConfig


class HelixSurfModel(NeuSModel):
    """NeuS with MVS depth/normal losses and the PatchMatch rounds of the helix loop."""

    config: "HelixSurfModelConfig"

    def __init__(self, config: "HelixSurfModelConfig", scene: Any):
        super().__init__(config, scene)
        config.helix.check()
        self._datamanager: Any = None
        self.helix_log: dict[str, float] = {}
        """The latest round's index, kept fraction, supervised fraction and seconds (logged as metrics)."""
        self.helix_rounds: list[dict[str, float]] = []
        """:attr:`helix_log` of every round this process ran (not checkpointed: for reports)."""

    def check_datamanager(self, datamanager: Any) -> None:
        super().check_datamanager(datamanager)
        if not hasattr(datamanager, "set_cues"):
            raise ConfigError(f"helixsurf needs a ray datamanager with per-pixel cue buffers, not {type(datamanager).__name__}")
        ds = datamanager.train_dataset
        if ds.cameras.has_distortion:
            raise DataError("helixsurf's PatchMatch needs pinhole cameras; this dataset's lenses are distorted (undistort it first)",
                            ds.filenames[0] if ds.filenames else None)
        ds.require_single_size("helixsurf's PatchMatch")
        if len(ds) < 2:
            raise DataError(f"helixsurf's PatchMatch needs at least two training views, the dataset has {len(ds)}")

    def initialize_from_data(self, datamanager: Any) -> None:
        self._datamanager = datamanager  # the helix hook refreshes its cue buffers

    def callbacks(self) -> list[Callback]:
        every = self.config.helix.refresh_every
        rounds = Callback(self.helix_round, where=Where.BEFORE_STEP, every=every, start=0) if every > 0 else \
            Callback(self.helix_round, where=Where.BEFORE_STEP, start=0, stop=1)
        return [*super().callbacks(), rounds]  # after set_anneal: a round renders with this step's ratio

    def helix_round(self, step: int, **_: Any) -> None:
        """BEFORE_STEP hook: the next PatchMatch round (round 0 from random planes, later rounds from
        this model's rendered depth and normals) into the datamanager's depth/normal buffers. The
        round index is the datamanager's ``cue_version``, which its checkpoint state carries."""
        dm = self._datamanager
        if dm is None:
            raise RuntimeError("helix_round before initialize_from_data")
        round_index = dm.cue_version
        ds = dm.train_dataset
        images = [ds.image(i) for i in range(len(ds))]
        points = None if self.scene.points3d is None else torch.as_tensor(self.scene.points3d, dtype=torch.float32)
        maps = mvs_round(images, ds.cameras, self.scene.aabb, self.config.helix, round_index,
                         model=self if round_index > 0 else None, points=points, planar=self.config.plane_normal_weight > 0)
        dm.set_cues(maps.depths, maps.normals, None if maps.plane_normals is None else {"plane_normal": maps.plane_normals})
        valid = torch.cat([d.reshape(-1) for d in maps.depths]) > 0
        planar = {} if maps.plane_normals is None else {
            "planar_fraction": float(torch.cat([n.reshape(-1, 3) for n in maps.plane_normals]).norm(dim=-1).gt(0.5).float().mean())}
        self.helix_log = {"mvs_round": float(round_index), "mvs_kept": maps.kept, "mvs_valid": float(valid.float().mean()), **planar,
                          **{f"mvs_{k}_s": v for k, v in maps.seconds.items()}}
        self.helix_rounds.append(dict(self.helix_log))

    def mvs_losses(self, batch: dict[str, Any], outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """HelixSurf's MVS depth, MVS normal and plane-normal losses (module docstring); none without MVS buffers."""
        c = self.config
        if "depth" not in batch or "normal" not in batch:
            return {}
        rays = batch["rays"]
        target_t = batch["depth"].reshape(-1) / rays.z_scale
        pred_t = outputs["depth"].reshape(-1) / rays.z_scale
        confidence = (1.0 - (outputs["rgb"].detach() - batch["rgb"]).abs().mean(-1)).clamp_min(0.0)
        first, second = c.decay_steps
        decay = 1.0 if step < first else 0.5 if step < second else 0.25
        out: dict[str, Tensor] = {}
        valid = target_t > 0
        if c.mvs_depth_weight > 0:
            m = valid.to(pred_t.dtype)
            err = (pred_t - target_t).abs()
            if step >= first:
                err = err.clamp(max=c.depth_clamp)
            out["mvs_depth"] = c.mvs_depth_weight * decay * (m * confidence * err).sum() / m.sum().clamp_min(1.0)
        planes = batch.get("plane_normal")
        planar = planes.reshape(-1, 3).norm(dim=-1) > 0.5 if planes is not None and c.plane_normal_weight > 0 else torch.zeros_like(valid)
        if c.mvs_normal_weight <= 0 and not bool(planar.any()):
            return out
        # the SDF's normal at the rendered surface point (detached point), on the rays a normal term uses
        used = (valid if c.mvs_normal_weight > 0 else torch.zeros_like(valid)) | planar
        surface = (rays.origins + rays.directions * pred_t[:, None]).detach()
        n_hat = torch.zeros_like(surface)
        n_hat[used] = F.normalize(self.field.gradient(surface[used], create_graph=True)[2], dim=-1)
        if c.mvs_normal_weight > 0:
            gate = min(0.8, step / max(c.normal_gate_steps, 1))
            term = _gated_l1(n_hat, batch["normal"].reshape(-1, 3), valid, confidence, gate)
            out["mvs_normal"] = c.mvs_normal_weight * (1.0 if step < first else 0.5) * term
        if planes is not None and c.plane_normal_weight > 0:
            out["plane_normal"] = c.plane_normal_weight * _gated_l1(n_hat, planes.reshape(-1, 3), planar, torch.ones_like(confidence), 0.8)
        return out

    def losses(self, batch: dict[str, Any], outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        return {**super().losses(batch, outputs, step), **self.mvs_losses(batch, outputs, step)}

    def metrics(self, batch: dict[str, Any], outputs: dict[str, Tensor]) -> dict[str, float]:
        return {**super().metrics(batch, outputs), **self.helix_log}


@dataclass
class HelixSurfModelConfig(NeuSModelConfig):
    """HelixSurf: NeuS supervised by PatchMatch MVS depth and normals, re-run every ``helix.refresh_every`` steps."""

    helix: HelixLoopConfig = field(default_factory=HelixLoopConfig)
    """The PatchMatch rounds (when, at what image size, with which PatchMatch settings)."""
    mvs_depth_weight: float = 1.0
    """Weight of the MVS depth loss (HelixSurf: 1.0)."""
    mvs_normal_weight: float = 0.1
    """Weight of the MVS normal loss (HelixSurf: ``mvs_norm_weight`` 0.1)."""
    decay_steps: tuple[int, int] = (5000, 7500)
    """Steps after which the depth weight is x0.5 then x0.25, the normal weight x0.5, and the
    per-ray depth error is clamped at ``depth_clamp`` (HelixSurf: 5000, 7500)."""
    depth_clamp: float = 0.5
    """Largest per-ray depth error after the first decay step (HelixSurf: 0.5)."""
    plane_normal_weight: float = 0.01
    """Weight of the planar prior: L1 of the SDF normal against the plane normal of planar regions,
    where they agree to a cosine of 0.8 (HelixSurf: 0.01); 0 skips the superpixels and plane fitting."""
    normal_gate_steps: int = 12_000
    """The normal loss keeps rays whose cosine to the MVS normal exceeds min(0.8, step / this)
    (HelixSurf: its round length ``n_iters``)."""


HelixSurfModelConfig._target = HelixSurfModel


def _gated_l1(n_hat: Tensor, target: Tensor, mask: Tensor, weight: Tensor, min_cos: float) -> Tensor:
    """``sum_r w_r |n_hat_r - target_r|_1 / #rays`` over the rays [R] in ``mask`` whose normals
    agree to a cosine above ``min_cos`` (HelixSurf's gate: a normal too far off is left alone)."""
    keep = mask & ((n_hat * target).sum(-1).detach() > min_cos)
    k = keep.to(n_hat.dtype)
    return (k * weight * (n_hat - target).abs().sum(-1)).sum() / k.sum().clamp_min(1.0)
