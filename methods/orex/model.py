"""OReX network and loss (Sawdayee, Vaxman, Bermano, "OReX: Object Reconstruction from Planar
Cross-sections Using Neural Fields", CVPR 2023).

An occupancy classifier of 3D points whose logit ("outside" is positive, so the surface is the
0-level and the field is negative inside) is refined by a small recurrent step T times, with a
BCE loss on every step (deep supervision) and a hinge on the gradient norm of the final logit
against the "ripple" artefacts the paper analyses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.model import Export, Model, ModelConfig, SceneInfo


class LearnableFrequencyEncoding(nn.Module):
    """``[x, cos(x * f_c), sin(x * f_s)]`` with learnable per-band frequencies (paper sec. 3.2;
    initialised to 1, 2, 4, 8, 16, no pi). in: [..., 3]; out: [..., 3 * (1 + 2 * bands)]."""

    def __init__(self, bands: int):
        super().__init__()
        init = 2.0 ** torch.arange(bands, dtype=torch.get_default_dtype())
        self.f_cos = nn.Parameter(init.clone())
        self.f_sin = nn.Parameter(init.clone())

    @property
    def out_dim(self) -> int:
        return 3 * (1 + 2 * self.f_cos.numel())

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, torch.cos(x[..., None] * self.f_cos).flatten(-2), torch.sin(x[..., None] * self.f_sin).flatten(-2)], -1)


def step_embedding(t: int, dim: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Fixed embedding of the refinement step: [sin(2^k t), cos(2^k t)], k < dim / 2."""
    freqs = 2.0 ** torch.arange(dim // 2, dtype=dtype, device=device)
    return torch.cat([torch.sin(freqs * t), torch.cos(freqs * t)])


class OReXModel(Model):
    """See :class:`OReXModelConfig`. Batches are ``{"points": [B, 3], "labels": [B]}`` with labels
    0 inside, 1 outside, 0.5 on a contour, in the normalised frame of the cross-sections."""

    config: "OReXModelConfig"
    exports = frozenset({Export.MARCHING_CUBES})

    def __init__(self, config: "OReXModelConfig", scene: SceneInfo):
        super().__init__(config, scene)
        c = config
        self.encoding = LearnableFrequencyEncoding(c.frequency_bands)
        layers: list[nn.Module] = []
        d = self.encoding.out_dim + 1 + c.hidden_state_dim
        for _ in range(c.num_layers):
            layers += [nn.Linear(d, c.hidden_dim), nn.LeakyReLU(0.01)]
            d = c.hidden_dim
        layers.append(nn.Linear(d, 1 + c.hidden_state_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # the official initialisation: Xavier weights, U(0, 1) biases
                nn.init.xavier_uniform_(m.weight)
                nn.init.uniform_(m.bias, 0.0, 1.0)
        self.z0 = nn.Parameter(torch.rand(1))
        self.h0 = nn.Parameter(torch.rand(c.hidden_state_dim))
        if c.float64:
            self.double()
        # Face planes [F, 4] (unit outward normal, offset) of the outside hull, for clip_to_hull;
        # derived from the data at every construction, so not part of the checkpoint.
        self.register_buffer("hull_planes", self._hull_planes(scene) if c.clip_to_hull else torch.zeros(0, 4), persistent=False)

    @staticmethod
    def _hull_planes(scene: SceneInfo) -> Tensor:
        from methods.orex.sampling import outside_hull

        sections = scene.metadata.get("cross_sections")
        hull = outside_hull(sections) if sections is not None else None
        if hull is None:
            return torch.zeros(0, 4)
        normals = np.asarray(hull.face_normals)
        offsets = -(normals * np.asarray(hull.vertices)[hull.faces[:, 0]]).sum(-1)
        return torch.from_numpy(np.concatenate([normals, offsets[:, None]], 1)).float()

    @property
    def dtype(self) -> torch.dtype:
        return self.z0.dtype

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"fields": list(self.parameters())}

    def logits(self, points: Tensor) -> list[Tensor]:
        """Outside-logits after every refinement step: T tensors [B]."""
        x = self.encoding(points.to(self.dtype))
        z = self.z0.expand(x.shape[0])
        h = self.h0.expand(x.shape[0], -1)
        out = []
        for t in range(self.config.num_iterations):
            h = h + step_embedding(t, self.config.hidden_state_dim, x.dtype, x.device)
            y = self.mlp(torch.cat([x, z[:, None], h], -1))
            z = z + y[:, 0]
            h = y[:, 1:]  # the hidden state is replaced, not accumulated (as in the official code)
            out.append(z)
        return out

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        points = batch["points"].to(self.dtype)
        if self.config.gradient_hinge_weight > 0 and not self._hinge_subset(len(points)):
            points.requires_grad_(True)
        return {"logits": torch.stack(self.logits(points)), "points": points}

    def _hinge_subset(self, batch: int) -> int:
        """How many of the batch's points the hinge is estimated on in a pass of their own (0: all,
        on the main pass)."""
        k = self.config.gradient_hinge_points
        return k if 0 < k < batch else 0

    def losses(self, batch: dict[str, Any], outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        logits = outputs["logits"]
        labels = batch["labels"].to(logits.dtype).expand_as(logits)
        losses = {"bce": F.binary_cross_entropy_with_logits(logits, labels)}  # mean over steps and points
        c = self.config
        if c.gradient_hinge_weight > 0:
            k = self._hinge_subset(len(outputs["points"]))
            if k:  # the batch is drawn at random, so its first k points are a random subset
                points = outputs["points"][:k].detach().requires_grad_(True)
                final = self.logits(points)[-1]
            else:
                points, final = outputs["points"], logits[-1]
            (grad,) = torch.autograd.grad(final.sum(), points, create_graph=True)
            losses["gradient_hinge"] = c.gradient_hinge_weight * torch.relu(grad.norm(dim=-1) - c.gradient_hinge_threshold).mean()
        return {k: v.float() for k, v in losses.items()}

    def metrics(self, batch: dict[str, Any], outputs: dict[str, Tensor]) -> dict[str, float]:
        labels = batch["labels"]
        decided = labels != 0.5
        pred = (outputs["logits"][-1].detach() > 0).to(labels.dtype)
        return {"accuracy": float((pred[decided] == labels[decided]).float().mean())} if decided.any() else {}

    def viewer_panels(self) -> list[Any]:
        """"Cross-sections" (``methods/orex/panels.py``): the input contours and planes, a slice
        through the field, and the empty frame the viewer draws them over (OReX renders no image)."""
        from methods.orex.panels import CrossSectionPanel

        return [CrossSectionPanel(self.scene.metadata.get("cross_sections"), self.scene.aabb)]

    @torch.no_grad()
    def sdf(self, points: Tensor) -> Tensor:
        """The final logit: negative inside, positive outside (chunked); with ``clip_to_hull``,
        outside wherever the point lies outside OReX's outside hull."""
        chunks = [self.logits(p)[-1] for p in points.split(self.config.eval_chunk)]
        logit = torch.cat(chunks).to(points.dtype)
        if len(self.hull_planes):
            planes = self.hull_planes.to(points)
            beyond = (points @ planes[:, :3].T + planes[:, 3]).amax(-1)  # > 0 outside the hull
            logit = torch.maximum(logit, beyond * self.config.hull_clip_sharpness)  # CSG intersection
        return logit


@dataclass
class OReXModelConfig(ModelConfig):
    """OReX hyper-parameters; defaults are the official code's (haimsaw/OReX ``Modules.py``, ``Trainer.py``)."""

    num_iterations: int = 10
    """Refinement steps T (1 gives a plain MLP occupancy field)."""
    frequency_bands: int = 5
    """Learnable frequency bands of the encoding (initialised 1, 2, 4, 8, 16)."""
    hidden_dim: int = 64
    """Width of the recurrent MLP."""
    num_layers: int = 7
    """Hidden layers of the recurrent MLP."""
    hidden_state_dim: int = 32
    """Size of the recurrent hidden state (also the step-embedding size)."""
    gradient_hinge_weight: float = 1e-4
    """Weight of the hinge on the final logit's gradient norm (0 disables)."""
    gradient_hinge_threshold: float = 100.0
    """Gradient norms above this are penalised."""
    gradient_hinge_points: int = 0
    """[ours] Estimate the hinge's mean on this many of the batch's points, in a pass of their own
    (0: on every point, as the official code). The hinge needs a second-order backward through all
    T steps, which doubles a step's cost; a subset estimates the same mean for a fraction of it."""
    float64: bool = True
    """Run the network in double precision, as the official code does."""
    eval_chunk: int = 65536
    """Points per chunk when evaluating the field for meshing."""
    clip_to_hull: bool = True
    """[ours] Mesh (and slice) the field intersected with the outside hull: training labels that
    hull (all contour vertices' convex hull scaled by 1.05) outside but says nothing beyond it, where
    an unclipped field may run on to the scene box (seen on thin parts crossing the outermost planes)."""
    hull_clip_sharpness: float = 1000.0
    """Logit per unit of signed distance to the hull's faces in the intersection max(field, this x
    distance): steep, so inside the hull the field's values change only within |logit| / 1000 of a
    face, and marching cubes places the clipped surface on the hull."""


OReXModelConfig._target = OReXModel
