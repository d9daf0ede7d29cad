"""Hash-grid radiance and density fields (the nerfacto family).

:class:`HashNeRFField` is the field of instant-ngp (Müller et al. 2022) as nerfstudio's nerfacto
arranges it: a multi-resolution hash grid and a one-layer MLP give a density and a geometry
feature; the colour MLP sees that feature, the spherical-harmonics encoded view direction and an
optional per-camera appearance embedding (NeRF-W, Martin-Brualla et al. 2021).
:class:`HashDensityField` is the small density-only field that proposal samplers use
(mip-NeRF 360, Barron et al. 2022). :class:`AnnealedHashField` is a hash grid behind the mip-NeRF
field's interface, with its levels enabled coarse-to-fine (GeCoNeRF's hash-grid variant).

Positions come in normalised world units and are mapped into [0, 1]^3 either by the scene box
(bounded scenes) or, after a scene contraction into the radius-2 ball, by the [-2, 2]^3 cube.
``implementation`` picks the hash-grid code (:class:`recon.fields.hash_grid.HashGridEncoding`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.fields.appearance import AppearanceEmbedding
from recon.fields.encodings import FrequencyEncoding
from recon.fields.hash_grid import HashGridEncoding, Implementation
from recon.fields.mlp import MLP
from recon.fields.spherical_harmonics import SHEncoding
from recon.render.contraction import contract
from recon.render.mip import annealing_window


def trunc_exp(x: Tensor) -> Tensor:
    """exp with the input clamped at 15 (no overflow in float32); instant-ngp's density activation."""
    return torch.exp(x.clamp(max=15.0))


class Normalise(nn.Module):
    """World points -> [0, 1]^3 (by the box, or by [-2, 2]^3 after ``contraction``); shared by every
    network that encodes positions with a hash grid (fields, proposal densities, occupancy gates)."""

    def __init__(self, aabb: Tensor, contraction: Callable[[Tensor], Tensor] | None):
        super().__init__()
        self.contraction = contraction
        box = torch.tensor([[-2.0] * 3, [2.0] * 3]) if contraction is not None else aabb.float()
        self.register_buffer("box", box.clone(), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns normalised positions [..., 3] and an inside mask [...]."""
        if self.contraction is not None:
            x = self.contraction(x)
        u = (x - self.box[0]) / (self.box[1] - self.box[0])
        return u, ((u >= 0) & (u <= 1)).all(-1)


class HashDensityField(nn.Module):
    """Density only: hash grid + a small MLP. positions [..., 3] -> density [...]."""

    def __init__(
        self,
        aabb: Tensor,
        contraction: Callable[[Tensor], Tensor] | None = None,
        num_levels: int = 5,
        max_res: int = 128,
        log2_hashmap_size: int = 17,
        hidden_dim: int = 16,
        implementation: Implementation = "torch",
    ):
        super().__init__()
        self.normalise = Normalise(aabb, contraction)
        self.encoding = HashGridEncoding(
            num_levels=num_levels, features_per_level=2, log2_hashmap_size=log2_hashmap_size, min_res=16, max_res=max_res,
            implementation=implementation,
        )
        self.mlp = MLP(self.encoding.out_dim, hidden_dim, 2, 1)

    def forward(self, positions: Tensor) -> Tensor:
        u, inside = self.normalise(positions)
        density = trunc_exp(self.mlp(self.encoding(u))[..., 0] - 1.0)
        return density * inside


class HashNeRFField(nn.Module):
    """Density and view-dependent colour. See the module docstring.

    ``forward(positions [..., 3], directions [..., 3] unit, camera_indices [...] | None)``
    returns density [...] and rgb [..., 3].
    """

    def __init__(
        self,
        aabb: Tensor,
        contraction: Callable[[Tensor], Tensor] | None = None,
        num_levels: int = 16,
        max_res: int = 2048,
        log2_hashmap_size: int = 19,
        features_per_level: int = 2,
        hidden_dim: int = 64,
        geo_feature_dim: int = 15,
        color_hidden_dim: int = 64,
        color_layers: int = 3,
        num_cameras: int = 0,
        appearance_dim: int = 32,
        sh_degree: int = 4,
        implementation: Implementation = "torch",
    ):
        super().__init__()
        self.normalise = Normalise(aabb, contraction)
        self.encoding = HashGridEncoding(
            num_levels=num_levels, features_per_level=features_per_level, log2_hashmap_size=log2_hashmap_size, min_res=16, max_res=max_res,
            implementation=implementation,
        )
        self.geometry = MLP(self.encoding.out_dim, hidden_dim, 2, 1 + geo_feature_dim)
        self.direction_encoding = SHEncoding(sh_degree)
        self.appearance = AppearanceEmbedding(num_cameras, appearance_dim) if num_cameras > 0 and appearance_dim > 0 else None
        color_in = geo_feature_dim + self.direction_encoding.out_dim + (appearance_dim if self.appearance is not None else 0)
        self.color = MLP(color_in, color_hidden_dim, color_layers, 3, out_activation=nn.Sigmoid())

    def density(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions [..., 3] -> density [...] and geometry feature [..., F]."""
        u, inside = self.normalise(positions)
        h = self.geometry(self.encoding(u))
        density = trunc_exp(h[..., 0] - 1.0) * inside  # the -1 shift starts the field nearly empty
        return density, h[..., 1:]

    def forward(self, positions: Tensor, directions: Tensor, camera_indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
        density, feature = self.density(positions)
        parts = [feature, self.direction_encoding(directions.expand_as(positions))]
        if self.appearance is not None:
            if camera_indices is None:
                camera_indices = torch.zeros(positions.shape[:-1], dtype=torch.long, device=positions.device)
                parts.append(self.appearance(camera_indices, use_fallback=True))
            else:
                parts.append(self.appearance(camera_indices.expand(positions.shape[:-1])))
        return density, self.color(torch.cat(parts, -1))


@dataclass
class HashFieldOptions:
    """Config fields of a ray model whose radiance field is a :class:`HashNeRFField` (nerfacto's
    defaults), mixed into the model configs that share that field (nerf-hash, lec2o), with the two
    builders they use."""

    implementation: Literal["auto", "torch", "tcnn"] = "auto"
    """Hash-grid code: auto = tiny-cuda-nn on CUDA when ``tinycudann`` imports, else PyTorch; tcnn
    insists on tiny-cuda-nn (CUDA only); torch always runs the PyTorch grid."""
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

    def contraction_fn(self) -> Callable[[Tensor], Tensor] | None:
        """The configured scene contraction (:func:`recon.render.contraction.contract`), or None."""
        order = {"inf": math.inf, "l2": 2.0}.get(self.contraction)
        return None if order is None else (lambda x: contract(x, order))

    def hash_nerf_field(self, aabb: Tensor, num_cameras: int) -> HashNeRFField:
        """The radiance field these options describe, over the scene box aabb [2, 3]."""
        return HashNeRFField(
            aabb, self.contraction_fn(), num_levels=self.num_levels, max_res=self.max_res, log2_hashmap_size=self.log2_hashmap_size,
            hidden_dim=self.hidden_dim, geo_feature_dim=self.geo_feature_dim, color_hidden_dim=self.color_hidden_dim,
            num_cameras=num_cameras, appearance_dim=self.appearance_dim, implementation=self.implementation,
        )


class AnnealedHashField(nn.Module):
    """A hash-grid field with the mip-NeRF field's interface and coarse-to-fine **level masking**:
    ``forward(means [R, S, 3], covs [R, S, 3], directions [R, 3], density_noise)`` returns density
    [R, S] and rgb [R, S, 3], so :func:`recon.fields.mip_field.render_mip_levels` renders it
    unchanged. The grid is evaluated at the Gaussians' means (``covs`` is accepted and ignored:
    a point-sampled hash grid, not an integrated one).

    Level l's features are multiplied by :func:`recon.render.mip.annealing_window` at the buffer
    ``anneal_alpha`` (saved in checkpoints), the hash-grid counterpart of annealing positional
    encoding bands (Nerfies, Park et al. 2021; for hash grids, Neuralangelo, Li et al. 2023, enables
    levels progressively): a masked level contributes nothing and gets no gradient. ``num_bands``
    is the number of levels, so callers anneal either field alike.

    ``box`` [2, 3] maps positions into the grid's unit cube (points outside are clamped to its
    border). Activations are mip-NeRF's (density ``softplus(raw - 1)``, padded sigmoid colour), so
    the renderer's density noise and background handling mean the same for both fields.
    """

    def __init__(
        self,
        box: Tensor,
        num_levels: int = 16,
        max_res: int = 2048,
        log2_hashmap_size: int = 19,
        features_per_level: int = 2,
        hidden_dim: int = 64,
        color_hidden_dim: int = 64,
        direction_deg: int = 4,
        density_bias: float = -1.0,
        rgb_padding: float = 0.001,
        implementation: Implementation = "torch",
    ):
        super().__init__()
        self.register_buffer("box", box.float().clone(), persistent=False)
        self.density_bias, self.rgb_padding = density_bias, rgb_padding
        self.encoding = HashGridEncoding(
            num_levels=num_levels, features_per_level=features_per_level, log2_hashmap_size=log2_hashmap_size, min_res=16,
            max_res=max_res, implementation=implementation,
        )
        self.geometry = MLP(self.encoding.out_dim, hidden_dim, 2, hidden_dim)
        self.dir_enc = FrequencyEncoding(3, direction_deg)
        self.color = MLP(hidden_dim - 1 + self.dir_enc.out_dim, color_hidden_dim, 2, 3)
        self.register_buffer("anneal_alpha", torch.tensor(float(num_levels)))

    @property
    def num_bands(self) -> int:
        return self.encoding.num_levels

    def level_weights(self) -> Tensor:
        """[num_levels * features_per_level] the window's weight of every encoding channel."""
        return annealing_window(self.anneal_alpha, self.num_bands).repeat_interleave(self.encoding.features_per_level)

    def forward(self, means: Tensor, covs: Tensor, directions: Tensor, density_noise: float = 0.0) -> tuple[Tensor, Tensor]:
        u = ((means - self.box[0]) / (self.box[1] - self.box[0])).clamp(0.0, 1.0)
        features = self.encoding(u.reshape(-1, 3)).reshape(*means.shape[:-1], -1)
        h = self.geometry(features * self.level_weights().to(features))
        raw = h[..., 0]
        if density_noise > 0:
            raw = raw + torch.randn_like(raw) * density_noise
        density = F.softplus(raw + self.density_bias)
        d = self.dir_enc(directions)[:, None].expand(*means.shape[:-1], -1)
        rgb = torch.sigmoid(self.color(torch.cat([h[..., 1:], d], -1)))
        return density, rgb * (1 + 2 * self.rgb_padding) - self.rgb_padding
