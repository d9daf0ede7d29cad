"""Mesh-bound 3D Gaussians (Gao, Yang, Zhang, Sun, Yuan, Fu, Lai 2024, "Mesh-based Gaussian Splatting
for Real-time Large-scale Deformation", ACM TOG 43(6), sec. 4) on recon's primitive-model base.

Every Gaussian belongs to one triangle of a proxy mesh (``mesh_vertices`` [V, 3], ``mesh_faces``
[F, 3], normalised frame, fixed during training). It sits on a sub-face of that triangle (corners
in barycentric coordinates of the triangle), at barycentric weights softmax(b) of the sub-face's
corners, moved along the triangle's unit normal n by 4 r (sigmoid(t) - 1/2), so at most 2 r off
the plane (r: the bound of :attr:`FaceSplitStrategy.offset_radius`):

    mu = sum_k softmax(b)_k c_k + 4 r (sigmoid(t) - 1/2) n

Its rotation and scales are expressed in the triangle's orthonormal frame (first edge, in-plane
perpendicular, normal; :func:`recon.geometry.deformation.face_frames`), so they turn with the face.
Loss: (1 - lambda) L1 + lambda (1 - SSIM) + the mesh-restriction term
sum_g max(0, max(exp(s_g)) - lambda_m sqrt(2 area(sub-face_g))). Densification: :class:`FaceSplitStrategy`.

Deformation (render time, :meth:`MeshGSModel.set_deformed_vertices`): for deformed vertices V' with
the proxy's connectivity, each face's deformation gradient T (:func:`face_deformation_gradients`,
or only its rotation) moves a Gaussian to mu' = sum_k softmax(b)_k c'_k + T (offset n), and its
covariance to T Sigma T^T. Departures from the paper and the official code: README.md beside this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.mesh_gs.proxy import AutoProxyMeshConfig
from methods.mesh_gs.strategy import SCALE_DIVISOR, FaceSplitStrategy, face_children
from recon.errors import ConfigError, DataError
from recon.export.mesh_io import read_mesh
from recon.geometry.deformation import face_deformation_gradients, face_frames, polar_decomposition
from recon.geometry.mesh import cluster_decimate
from recon.model import SceneInfo
from recon.engine.callbacks import Callback, Where
from recon.primitives import PrimitiveModel, PrimitiveModelConfig, initial_points, knn_rms_distance, pop_strategy_entries, strategy_entries
from recon.render.gaussians.helpers import rgb_to_sh
from recon.render.gaussians.strategy import DefaultStrategy, remove
from recon.rotations import matrix_to_quaternion, quaternion_multiply, quaternion_to_matrix, apply_sh_rotation, sh_rotation_matrices

GEOMETRY = ("face_ids", "corners", "radius")
"""Frozen per-Gaussian entries of ``params`` (see :mod:`methods.mesh_gs.strategy`); not optimised."""
BACKGROUND_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
"""The background Gaussians' parameters (``bg_params``; optimizer groups ``bg_<name>``), 3DGS's layout."""
BG_STRATEGY_PREFIX = "bg_strategy_state."
MIN_FACES_IN_VIEW = 0.1
"""A proxy mesh of which fewer faces than this share lie inside some training camera's view is refused."""


def triangle_areas2(corners: Tensor) -> Tensor:
    """|(c2 - c1) x (c3 - c1)| = twice the area [N] of triangles [N, 3, 3] (the official "circumradius" helper's squared value)."""
    return torch.linalg.vector_norm(torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), dim=-1)


def bound_means(corners: Tensor, bary: Tensor, offset: Tensor, radius: Tensor, normals: Tensor) -> tuple[Tensor, Tensor]:
    """Means of mesh-bound Gaussians: (anchors [N, 3] = sum_k softmax(bary)_k corners_k, offsets
    [N, 3] = 4 radius (sigmoid(offset) - 1/2) normals); the mean is their sum.

    corners: [N, 3, 3] the sub-faces' corners; bary: [N, 3] barycentric logits; offset: [N] offset
    logits; radius: [N] offset bounds (|offset| < 2 radius); normals: [N, 3] unit normals."""
    anchors = (torch.softmax(bary, -1)[:, :, None] * corners).sum(1)
    return anchors, (4.0 * radius * (torch.sigmoid(offset) - 0.5))[:, None] * normals


def background_rows(meta: dict[str, Any], start: int) -> dict[str, Any]:
    """The rasterizer's ``meta`` for the Gaussians from row ``start`` on (the background's, rendered
    after the object's): ``radii`` and ``means2d`` sliced along the Gaussian axis, ``means2d``'s
    gradient with them (a leaf copy carrying the slice of the gradient), the rest as it is."""
    out = dict(meta)
    out["radii"] = meta["radii"][..., start:, :] if meta["radii"].dim() == 3 else meta["radii"][..., start:]
    full = meta["means2d"]
    part = full.detach()[..., start:, :].clone()
    if full.grad is not None:
        part.grad = full.grad[..., start:, :]
    out["means2d"] = part
    return out


def faces_in_view(vertices: Tensor, faces: Tensor, cameras: Any) -> Tensor:
    """[F] bool: faces whose centroid lies in front of and inside the image of at least one camera."""
    centres = vertices[faces].mean(1).float()
    seen = torch.zeros(len(faces), dtype=torch.bool)
    for i in range(len(cameras)):
        uv, z = cameras.project(centres, i)
        w, h = float(cameras.width[i]), float(cameras.height[i])
        seen |= (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= w) & (uv[:, 1] >= 0) & (uv[:, 1] <= h)
    return seen


class MeshGSModel(PrimitiveModel):
    """See :class:`MeshGSModelConfig` and the module docstring.

    Parameters (one optimizer group each): bary [N, 3] (barycentric logits), offset [N] (normal-offset
    logit), scales [N, 3] (log, face frame), quats [N, 4] (face frame), opacities [N] (logits),
    sh0 [N, 1, 3], shN [N, K - 1, 3]; plus the frozen geometry entries :data:`GEOMETRY`.
    """

    config: "MeshGSModelConfig"

    def __init__(self, config: "MeshGSModelConfig", scene: SceneInfo):
        c = config
        for name in ("init_min_gaussians", "max_dataset_mesh_faces"):
            if getattr(c, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(c, name)}")
        if not 0 < c.init_opacity < 1:
            raise ConfigError(f"model.init_opacity must be in (0, 1), got {c.init_opacity}")
        super().__init__(config, scene)
        # The mesh and the Gaussians are made by initialize_from_data (training) or sized by the
        # checkpoint (load_checkpoint_state), so the model starts empty.
        self.register_buffer("mesh_vertices", torch.zeros(0, 3))
        self.register_buffer("mesh_faces", torch.zeros(0, 3, dtype=torch.long))
        self.deformed_vertices: Tensor | None = None
        """Render-time deformed copy [V, 3] of :attr:`mesh_vertices` (None: the rest pose)."""
        self._deformed_sh: Tensor | None = None
        self._sh_cache: tuple[Any, Tensor, Tensor] | None = None
        self.params = nn.ParameterDict(self._gaussians(torch.zeros(0, 3, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, 3), 0.0))
        if c.background_stage_start is not None and c.background_stage_start < 1:
            raise ConfigError(f"model.background_stage_start must be at least 1 (or None), got {c.background_stage_start}")
        self.bg_params = nn.ParameterDict(self._background_gaussians(torch.zeros(0, 3), torch.zeros(0, 3)))
        self.bg_strategy_state: dict[str, Any] = self._new_bg_strategy_state()
        self.register_buffer("background_active", torch.tensor(False))
        """Whether the background stage has begun: background Gaussians are rendered, the object frozen."""
        self._step = 0
        self._step_background: Tensor | None = None

    # ------------------------------------------------------------------ the proxy mesh
    def _gaussians(self, corners: Tensor, face_ids: Tensor, radius: Tensor, rgb: Tensor, log_scale: float | Tensor) -> dict[str, nn.Parameter]:
        n, c = len(face_ids), self.config
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        init = {
            "bary": torch.zeros(n, 3),
            "offset": torch.zeros(n),
            "scales": torch.zeros(n, 3) + torch.as_tensor(log_scale, dtype=torch.float32).reshape(-1, 1),
            "quats": quats,
            "opacities": torch.logit(torch.full((n,), c.init_opacity)),
            "sh0": rgb_to_sh(rgb)[:, None, :],
            "shN": torch.zeros(n, (c.sh_degree + 1) ** 2 - 1, 3),
        }
        params = {name: nn.Parameter(t.contiguous()) for name, t in init.items()}
        geometry = {"face_ids": face_ids, "corners": corners, "radius": radius}
        params.update({name: nn.Parameter(t.contiguous(), requires_grad=False) for name, t in geometry.items()})
        return params

    def _background_gaussians(self, points: Tensor, rgb: Tensor) -> dict[str, nn.Parameter]:
        """3DGS's initialisation of background Gaussians at ``points`` [P, 3] with colours [P, 3]:
        isotropic, scale the RMS distance to the 3 nearest points, opacity 0.1, SH degree of the model."""
        n, c = len(points), self.config
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        init = {
            "means": points,
            "scales": torch.log(knn_rms_distance(points).clamp_min(1e-7))[:, None].repeat(1, 3) if n else torch.zeros(0, 3),
            "quats": quats,
            "opacities": torch.logit(torch.full((n,), 0.1)),
            "sh0": rgb_to_sh(rgb)[:, None, :],
            "shN": torch.zeros(n, (c.sh_degree + 1) ** 2 - 1, 3),
        }
        return {name: nn.Parameter(t.float().contiguous()) for name, t in init.items()}

    def _new_bg_strategy_state(self) -> dict[str, Any]:
        return self.config.background_strategy.initialize_state(scene_scale=self.scene_scale)

    @property
    def has_background_stage(self) -> bool:
        return self.config.background_stage_start is not None

    @property
    def num_object_gaussians(self) -> int:
        return super().num_primitives

    @property
    def num_primitives(self) -> int:
        return self.num_object_gaussians + (len(self.bg_params["means"]) if bool(self.background_active) else 0)

    def proxy_mesh_source(self, datamanager: Any) -> tuple[Path, int | None]:
        """The proxy mesh file and the face budget it is decimated to (None: used as given): the
        user's, else the dataset's, else the automatic one (:mod:`methods.mesh_gs.proxy`)."""
        c = self.config
        if c.mesh_path is not None:
            return Path(c.mesh_path).expanduser(), None
        dataset_mesh = self.scene.metadata.get("ground_truth_mesh")
        if c.use_dataset_mesh and dataset_mesh:
            return Path(dataset_mesh), c.max_dataset_mesh_faces
        from data.synthetic import cache_root
        from methods.mesh_gs.proxy import auto_proxy_mesh

        scale = float(getattr(datamanager.config, "image_scale", 1.0))
        return auto_proxy_mesh(c.auto_mesh, datamanager.train_dataset.outputs, self.mesh_vertices.device, cache_root() / "proxy_meshes", scale), None

    @torch.no_grad()
    def initialize_from_data(self, datamanager: Any) -> None:
        """Read the proxy mesh (input poses' frame -> normalised), check it, put one Gaussian on each
        face and subdivide every face into four until there are at least ``init_min_gaussians``."""
        path, budget = self.proxy_mesh_source(datamanager)
        vertices, faces = read_mesh(path)
        if budget is not None:
            vertices, faces = cluster_decimate(vertices, faces, budget)
        verts = datamanager.train_dataset.outputs.transform_from_input(torch.from_numpy(vertices))
        faces_t = torch.from_numpy(np.asarray(faces, dtype=np.int64))
        if int(faces_t.max()) >= len(verts) or int(faces_t.min()) < 0:
            raise DataError("the mesh has face indices outside its vertex list", path)
        seen = faces_in_view(verts, faces_t, datamanager.train_dataset.cameras)
        if float(seen.float().mean()) < MIN_FACES_IN_VIEW:
            raise DataError(
                f"only {int(seen.sum())} of {len(faces_t)} faces lie inside any training camera's view; "
                "the proxy mesh must be in the input poses' frame", path,
            )
        try:
            self.set_proxy_mesh(verts.float(), faces_t)
        except ConfigError as err:
            raise DataError(str(err), path) from None
        if self.has_background_stage:
            points, rgb = initial_points(self.scene, self.config.background_init, self.config.background_num_random, self.config.init_seed)
            device = self.mesh_vertices.device
            params = self._background_gaussians(points, rgb)
            self.bg_params = nn.ParameterDict({k: nn.Parameter(v.to(device)) for k, v in params.items()})
            self.bg_strategy_state = self._new_bg_strategy_state()

    @torch.no_grad()
    def set_proxy_mesh(self, vertices: Tensor, faces: Tensor) -> None:
        """Make the Gaussians of a new proxy mesh (vertices [V, 3] normalised frame, faces [F, 3]):
        one per non-degenerate face, then ``init_min_gaussians`` reached by 1 -> 4 subdivisions."""
        c = self.config
        device = self.mesh_vertices.device
        self.mesh_vertices = vertices.to(device)
        self.mesh_faces = faces.to(device)
        tri = vertices[faces].double()
        area2 = triangle_areas2(tri)
        extent = float((vertices.max(0).values - vertices.min(0).values).max())
        face_ids = torch.nonzero(area2 > 1e-12 * extent**2, as_tuple=True)[0]
        if len(face_ids) == 0:
            raise ConfigError("the proxy mesh has no face of non-zero area")
        corners = torch.eye(3, dtype=torch.float64).expand(len(face_ids), 3, 3).clone()
        edges = (tri[face_ids] - tri[face_ids].roll(1, dims=1)).norm(dim=-1).mean(-1)
        geometry = {"corners": corners, "face_ids": face_ids, "radius": edges}
        levels = 0
        radius_mode = c.strategy.offset_radius
        while len(geometry["face_ids"]) < c.init_min_gaussians:
            geometry = {k: face_children(k, v, False, radius_mode) for k, v in geometry.items()}
            levels += 1
        spacing = torch.ones(len(faces), dtype=torch.float64)
        spacing[face_ids] = knn_rms_distance(tri[face_ids].mean(1)).clamp_min(1e-9)
        log_scale = torch.log(spacing[geometry["face_ids"]] / SCALE_DIVISOR**levels).float()
        generator = torch.Generator().manual_seed(c.init_seed)
        rgb = torch.rand(len(geometry["face_ids"]), 3, generator=generator)
        params = self._gaussians(geometry["corners"].float(), geometry["face_ids"], geometry["radius"].float(), rgb, log_scale)
        self.params = nn.ParameterDict({k: nn.Parameter(v.to(device), requires_grad=v.requires_grad) for k, v in params.items()})
        self.strategy_state = self._new_strategy_state()

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        bg_strategy = pop_strategy_entries(state, BG_STRATEGY_PREFIX)
        # Checkpoints written before the background stage existed hold no background entries.
        state.setdefault("background_active", torch.tensor(False))
        for name in BACKGROUND_KEYS:
            state.setdefault(f"bg_params.{name}", self.bg_params[name].detach().new_zeros((0, *self.bg_params[name].shape[1:])))
        for name in ("mesh_vertices", "mesh_faces"):
            if name in state and state[name].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state[name]))
        for name in BACKGROUND_KEYS:  # the background's count changes in its stage
            key = f"bg_params.{name}"
            if key in state and state[key].shape != self.bg_params[name].shape:
                self.bg_params[name] = nn.Parameter(torch.empty_like(state[key]))
        super().load_checkpoint_state(state)
        self.bg_strategy_state = self._new_bg_strategy_state()
        self.bg_strategy_state.update(bg_strategy)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        return {**super().state_dict(*args, **kwargs), **strategy_entries(self.bg_strategy_state, BG_STRATEGY_PREFIX)}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {k: v for k, v in super().param_groups().items() if k not in GEOMETRY}
        if self.has_background_stage:
            groups.update({f"bg_{k}": [p] for k, p in self.bg_params.items()})
        return groups

    def lr_multipliers(self) -> dict[str, float]:
        """3DGS's position schedule, times the camera extent, drives the barycentric and offset logits
        (official) and the background Gaussians' means."""
        return {"bary": self.scene_scale, "offset": self.scene_scale, "bg_means": self.scene_scale}

    # ------------------------------------------------------------------ the two stages
    def method_callbacks(self) -> list[Callback]:
        if not self.has_background_stage:
            return []
        start = self.config.background_stage_start

        def stage(step: int, **_: Any) -> None:
            self._step = step
            self.background_active.fill_(step >= start)

        return [Callback(stage, where=Where.BEFORE_STEP)]

    def densify(self, step: int, meta: dict[str, Any], optimizers: dict[str, Any]) -> None:
        """Object stage: the face split. Background stage: the object is frozen (no refinement); the
        background Gaussians get 3DGS's densification on their own rows of ``meta``, counted from the
        stage's first step, and lose those within ``background_prune_distance`` of an object Gaussian
        at the stage's start and at ``background_prune_steps`` (official ``train_bg_gaussian.py``)."""
        if not bool(self.background_active):
            super().densify(step, meta, optimizers)
            return
        c, n = self.config, self.num_object_gaussians
        local = step - c.background_stage_start
        bg_optimizers = {k: optimizers[f"bg_{k}"] for k in BACKGROUND_KEYS if f"bg_{k}" in optimizers}
        c.background_strategy.step_post_backward(self.bg_params, bg_optimizers, self.bg_strategy_state, local, background_rows(meta, n))
        if local == 0 or local in c.background_prune_steps:
            near = self.background_near_object()
            if bool(near.any()):
                remove(self.bg_params, bg_optimizers, self.bg_strategy_state, near)

    @torch.no_grad()
    def background_near_object(self) -> Tensor:
        """[B] bool: background Gaussians within ``background_prune_distance`` (x the scene scale) of an object Gaussian."""
        from scipy.spatial import cKDTree

        bg = self.bg_params["means"].detach()
        if len(bg) == 0 or self.num_object_gaussians == 0:
            return torch.zeros(len(bg), dtype=torch.bool, device=bg.device)
        objects = self.object_primitives()["means"].detach().cpu().double().numpy()
        dist, _ = cKDTree(objects).query(bg.cpu().double().numpy(), k=1)
        return torch.from_numpy(dist < self.config.background_prune_distance * self.scene_scale).to(bg.device)

    def object_target(self, batch: dict[str, Any], step: int) -> tuple[Tensor, Tensor] | None:
        """Object stage with object masks: (target image, background colour), the ground truth
        composited over a random colour outside the mask, gt m + bg (1 - m) (official ``--is_exist_bg``);
        the colour is a function of the step, so a resumed run draws the same ones. None otherwise."""
        if not self.has_background_stage or bool(self.background_active) or "mask" not in batch or not self.config.object_masks:
            return None
        colour = torch.rand(3, generator=torch.Generator().manual_seed(self.config.init_seed * 1_000_003 + step)).to(batch["image"])
        mask = batch["mask"].to(batch["image"].dtype)[..., None]
        return batch["image"] * mask + colour * (1.0 - mask), colour

    # ------------------------------------------------------------------ deformation
    @torch.no_grad()
    def set_deformed_vertices(self, vertices: Tensor | None) -> None:
        """Render with the proxy mesh's vertices at ``vertices`` [V, 3] (normalised frame, same
        connectivity), or in the rest pose (None). With ``deformation_rotates_sh`` the SH colours
        are turned with their faces' rotations here, once per deformation (set it again after
        changing the parameters)."""
        if vertices is not None and vertices.shape != self.mesh_vertices.shape:
            raise ValueError(f"deformed vertices must be {list(self.mesh_vertices.shape)}, got {list(vertices.shape)}")
        self.deformed_vertices = None if vertices is None else vertices.to(self.mesh_vertices)
        self._deformed_sh = None
        if vertices is not None and self.config.deformation_rotates_sh and self.config.sh_degree > 0:
            p = self.params
            # The viewer sets the same deformation for every frame: turn the SH once per deformation
            # and parameter state (an optimizer step bumps the parameters' versions).
            key = (id(p["sh0"]), p["sh0"]._version, id(p["shN"]), p["shN"]._version)
            cached = self._sh_cache
            if cached is not None and cached[0] == key and torch.equal(cached[1], self.deformed_vertices):
                self._deformed_sh = cached[2]
                return
            rotations = polar_decomposition(face_deformation_gradients(self.mesh_vertices, self.deformed_vertices, self.mesh_faces))[0]
            # seen along d after the deformation = seen along R^T d before it
            bands = sh_rotation_matrices(rotations.transpose(-1, -2), self.config.sh_degree + 1)  # once per face
            face_ids = p["face_ids"].cpu()
            self._deformed_sh = apply_sh_rotation(torch.cat([p["sh0"], p["shN"]], 1), [a[face_ids].to(p["sh0"].device) for a in bands])
            self._sh_cache = (key, self.deformed_vertices.clone(), self._deformed_sh)

    def sh_coefficients(self) -> Tensor:
        k = (int(self.active_sh_degree) + 1) ** 2
        if self.deformed_vertices is None or self._deformed_sh is None:
            obj = super().sh_coefficients()
        else:
            obj = self._deformed_sh[:, :k]
        if not bool(self.background_active):
            return obj
        bg = torch.cat([self.bg_params["sh0"], self.bg_params["shN"][:, : k - 1]], 1)
        return torch.cat([obj.detach(), bg])

    def rasterize_primitives(self, prims: dict[str, Tensor], colors: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int) -> Any:
        if self._step_background is None:
            return super().rasterize_primitives(prims, colors, viewmats, Ks, width, height)
        saved = self.background
        self.background = self._step_background
        try:
            return super().rasterize_primitives(prims, colors, viewmats, Ks, width, height)
        finally:
            self.background = saved

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        target = self.object_target(batch, self._step) if self.training else None
        self._step_background = None if target is None else target[1]
        try:
            out = super().forward(batch)
        finally:
            self._step_background = None
        if target is not None:
            out["object_target"] = target[0]
        return out

    def viewer_panels(self) -> list[Any]:
        from methods.mesh_gs.panels import MeshDeformPanel

        return [MeshDeformPanel(self)]

    def rest_mesh(self) -> tuple[Tensor, Tensor]:
        """The proxy mesh: vertices [V, 3] (normalised frame) and faces [F, 3] that a deformation moves."""
        return self.mesh_vertices, self.mesh_faces

    # ------------------------------------------------------------------ the primitives
    def primitives(self) -> dict[str, Tensor]:
        """The object's Gaussians (:meth:`object_primitives`), followed in the background stage by the
        background's (never deformed); the object's are constants then (frozen)."""
        if not bool(self.background_active):
            return self.object_primitives()
        with torch.no_grad():
            obj = self.object_primitives()
        bg = self.bg_params
        quats, scales = F.normalize(bg["quats"], dim=-1), torch.exp(bg["scales"])
        out = {"means": torch.cat([obj["means"], bg["means"]]), "opacities": torch.cat([obj["opacities"], torch.sigmoid(bg["opacities"])]), "area2": obj["area2"]}
        if "covars" in obj:
            M = quaternion_to_matrix(quats) * scales[:, None, :]
            return {**out, "covars": torch.cat([obj["covars"], M @ M.transpose(-1, -2)])}
        return {**out, "quats": torch.cat([obj["quats"], quats]), "scales": torch.cat([obj["scales"], scales])}

    def object_primitives(self) -> dict[str, Tensor]:
        """means [N, 3], quats [N, 4] (world), scales [N, 3], opacities [N], area2 [N] (twice the
        sub-face areas, for the restriction loss); when deformed, covars [N, 3, 3] instead of quats
        and scales."""
        p = self.params
        fid = p["face_ids"]
        faces = self.mesh_faces
        rest = self.mesh_vertices
        face_frame = face_frames(rest, faces)  # [F, 3, 3]
        frames = face_frame[fid]
        corners = p["corners"] @ rest[faces[fid]]  # [N, 3 corners, 3]
        anchors, offset = bound_means(corners, p["bary"], p["offset"], p["radius"], frames[..., 2])
        out = {"opacities": torch.sigmoid(p["opacities"]), "area2": triangle_areas2(corners)}
        quats = quaternion_multiply(matrix_to_quaternion(face_frame)[fid], p["quats"])
        scales = torch.exp(p["scales"])
        if self.deformed_vertices is None:
            return {**out, "means": anchors + offset, "quats": quats, "scales": scales}
        moved = torch.softmax(p["bary"], -1)[:, None, :] @ p["corners"] @ self.deformed_vertices[faces[fid]]
        grads = face_deformation_gradients(rest, self.deformed_vertices, faces)
        if self.config.deformation_shape == "rotation":
            grads = polar_decomposition(grads)[0]
        T = grads[fid]
        M = T @ quaternion_to_matrix(quats) * scales[:, None, :]
        means = moved[:, 0] + (T @ offset[:, :, None])[..., 0]
        return {**out, "means": means, "covars": M @ M.transpose(-1, -2)}

    def losses(self, batch: dict[str, Any], outputs: dict[str, Any], step: int) -> dict[str, Tensor]:
        if "object_target" in outputs:
            batch = {**batch, "image": outputs["object_target"]}
        out = super().losses(batch, outputs, step)
        c = self.config
        if c.restriction_weight > 0 and self.num_object_gaussians and not bool(self.background_active):
            out["mesh_restriction"] = c.restriction_weight * self.restriction_loss(outputs["primitives"])
        return out

    def restriction_loss(self, prims: dict[str, Tensor]) -> Tensor:
        """sum (or mean, ``restriction_reduction``) over Gaussians of max(0, largest scale -
        lambda_m sqrt(2 area of its sub-face)) (the official ``mesh_restrict_loss``)."""
        excess = F.relu(torch.exp(self.params["scales"]).amax(-1) - self.config.restriction_lambda * torch.sqrt(prims["area2"]))
        return excess.sum() if self.config.restriction_reduction == "sum" else excess.mean()

    @torch.no_grad()
    def splat_parameters(self) -> dict[str, Tensor]:
        """World-frame Gaussians in gsplat's raw layout (deformed when a deformation is set)."""
        prims = self.primitives()
        out = super().splat_parameters()
        if "covars" in prims:
            evals, evecs = torch.linalg.eigh(prims["covars"].double())
            evecs = torch.where(torch.det(evecs)[:, None, None] < 0, evecs * evecs.new_tensor([-1.0, 1.0, 1.0]), evecs)
            out["scales"] = 0.5 * torch.log(evals.clamp_min(1e-30)).float()
            out["quats"] = matrix_to_quaternion(evecs).float()
        else:
            out["quats"] = prims["quats"].detach().clone()
            out["scales"] = torch.log(prims["scales"].detach())
        if bool(self.background_active):  # the base took these from the object's params only
            for key in ("opacities", "sh0", "shN"):
                out[key] = torch.cat([self.params[key].detach(), self.bg_params[key].detach()])
        return out


@dataclass
class MeshGSModelConfig(PrimitiveModelConfig):
    """The official code's defaults (IGLICT/GaussianMesh) unless noted."""

    mesh_path: Path | None = None
    """Proxy mesh (PLY, OBJ or GLB) in the input poses' frame, used as given (the authors recommend
    10-20k faces)."""
    use_dataset_mesh: bool = True
    """Without mesh_path: use the mesh the dataset lists (transforms.json ``mesh_file_path``; recon's
    synthetic scenes list their ground-truth mesh), decimated to max_dataset_mesh_faces; else (or
    when false) make one automatically (auto_mesh)."""
    max_dataset_mesh_faces: int = 15_000
    """Face budget of a dataset's mesh (vertex clustering)."""
    auto_mesh: AutoProxyMeshConfig = field(default_factory=AutoProxyMeshConfig)
    """The automatic proxy mesh, made when there is neither a mesh_path nor a dataset mesh."""
    init_min_gaussians: int = 100_000
    """Subdivide every face 1 -> 4 until there are at least this many Gaussians (official: more than 100k)."""
    init_opacity: float = 0.1
    """Initial opacity."""
    init_seed: int = 0
    """Seed of the random initial colours (official: random RGB)."""
    restriction_weight: float = 1.0
    """Weight of the mesh-restriction loss."""
    restriction_lambda: float = 6.0
    """lambda_m: a Gaussian's largest scale is pushed below this x sqrt(2 area of its sub-face) (official alpha_mrloss)."""
    restriction_reduction: Literal["sum", "mean"] = "sum"
    """Sum over Gaussians (official) or mean."""
    deformation_shape: Literal["gradient", "rotation"] = "gradient"
    """Deformed rendering: covariances and normal offsets transformed by each face's deformation
    gradient (stretch included), or by its rotation only (polar decomposition)."""
    deformation_rotates_sh: bool = True
    """Deformed rendering: turn each Gaussian's SH colour with its face's rotation, so view-dependent
    colour follows the object (the official code leaves it unrotated)."""
    strategy: FaceSplitStrategy = field(default_factory=FaceSplitStrategy)
    """Densification: face split on the 3DGS statistic (500-15000, every 200 steps), opacity resets."""
    background_stage_start: int | None = None
    """For scenes with a background (official ``--is_exist_bg``): the step at which the background
    stage begins; None: no background stage. Before it, the object's Gaussians train alone, on
    images composited over a random colour outside the dataset's masks when it has masks
    (object_masks); from it on, the object is frozen and ordinary 3D Gaussians (background_init)
    train with it on the whole image (official ``train_bg_gaussian.py``)."""
    object_masks: bool = True
    """Object stage: use the dataset's masks (255 = object) to train the object alone."""
    background_init: Literal["sfm", "random"] = "sfm"
    """Where the background Gaussians start: the dataset's sparse points (random when it has none)
    or background_num_random uniform points in the scene box."""
    background_num_random: int = 50_000
    """Random initial background Gaussians when there are no sparse points."""
    background_prune_distance: float = 0.01
    """Background Gaussians closer than this (x the scene scale) to an object Gaussian are removed at the
    stage's start and at background_prune_steps (official: 0.01, at 1000 and 10000)."""
    background_prune_steps: tuple[int, ...] = (1000, 10_000)
    """Steps, counted from the background stage's start, of the pruning near the object."""
    background_strategy: DefaultStrategy = field(default_factory=lambda: DefaultStrategy(refine_every=500, prune_scale3d=1e9))
    """The background's densification, steps counted from the stage's start: 3DGS's with the official
    background trainer's refinement every 500 steps and no size-based pruning."""


MeshGSModelConfig._target = MeshGSModel
