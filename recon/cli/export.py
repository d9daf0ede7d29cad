"""``ns-export {pointcloud,tsdf,marching-cubes,gaussian-splat,convex-ply,convex-mesh,proxy-mesh} --load-config outputs/.../config.yml --output-dir exports/``.

Geometry is written in the input poses' coordinates (the dataset normalisation is undone), as
PLY, OBJ or GLB through trimesh; every file is written atomically. A model lists what it can
export in ``Model.exports`` (:class:`recon.model.Export`):

=================  ==========================================================================
pointcloud         points back-projected from the depth rendered at the training views
tsdf               mesh by TSDF fusion of that depth
marching-cubes     mesh of the model's own implicit surface (SDF / occupancy)
gaussian-splat     the standard 3DGS PLY (splatting models; 3D Convex Splatting: one
                   approximate Gaussian per convex)
convex-ply         3D Convex Splatting: every convex's parameters, losslessly, as a 3DCS PLY
                   (:mod:`recon.export.convex_ply`; ``ns-viewer --convex`` opens it)
convex-mesh        3D Convex Splatting: the 3D hulls of the opaque, sharp convexes as one mesh
                   (:mod:`recon.export.convex_mesh`)
proxy-mesh         mesh-bound Gaussians: the proxy mesh they are bound to (deform it, keeping its
                   vertices and faces, for ``--deform``)
=================  ==========================================================================

``--crop-from-viewer`` keeps what lies inside the viewer's crop box (primitives by their centre).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import torch
import tyro
from torch import Tensor

from recon.cli import parse_cli, run_main
from recon.cli.handoff import config_is_nerfstudios, dispatch
from recon.engine.logging import console
from recon.engine.run import LoadedRun, load_deformations, load_run
from recon.errors import ConfigError
from recon.export.mesh_io import write_mesh, write_pointcloud
from recon.model import Export


@dataclass
class ExportConfig:
    load_config: Path
    """The run's config.yml."""
    output_dir: Path = Path("exports")
    """Folder the exported file is written into."""
    step: int | None = None
    """Checkpoint step (default: the latest)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render."""
    crop_from_viewer: bool = False
    """Keep only what lies inside the crop box last set in the viewer's Crop panel (<run>/viewer_crop.json)."""

    def crop_box(self, run: LoadedRun):
        """(lo, hi) of the viewer's crop box in the normalised frame, or None without --crop-from-viewer."""
        if not self.crop_from_viewer:
            return None
        from recon.export.crop import read_viewer_crop

        return read_viewer_crop(run.run_dir)


def _require(run: LoadedRun, capability: Export, problem: str | None = None) -> None:
    """A one-line error when the run's model cannot export ``capability``."""
    if capability not in run.model.exports:
        supported = ", ".join(sorted(e.value for e in run.model.exports)) or "none"
        raise ConfigError(f"method {run.config.method_name!r} {problem or 'cannot export ' + capability.value} (it supports: {supported})")


@dataclass
class RenderedViewsExport(ExportConfig):
    """An export made from what the model renders at the training views (marching cubes and the
    splat PLY read the model directly, so they have no image scale)."""

    image_scale: float = 1.0
    """Scale of the rendered training views relative to the training resolution."""


def _open(cfg: RenderedViewsExport, capability: Export) -> tuple[LoadedRun, object]:
    if not cfg.image_scale > 0:
        raise ConfigError(f"--image-scale must be positive, got {cfg.image_scale}")
    run = load_run(cfg.load_config, cfg.device, cfg.step)
    _require(run, capability)
    train = run.outputs.split("train")
    scale = getattr(run.config.datamanager, "image_scale", 1.0) * cfg.image_scale
    cameras = train.cameras.scaled(scale) if scale != 1.0 else train.cameras
    return run, cameras


def _render_fn(run: LoadedRun):
    return lambda camera: run.model.render(camera.to(run.device))


def _crop(mesh, box):
    if box is None:
        return mesh
    from recon.export.crop import crop_mesh

    mesh = crop_mesh(mesh, *box)
    if len(mesh.faces) == 0:
        raise ConfigError("no face of the mesh lies inside the viewer's crop box; nothing written")
    return mesh


def _keep_inside_crop(cfg: ExportConfig, run: LoadedRun, centres: torch.Tensor) -> torch.Tensor | None:
    """[N] bool: the primitives whose centre (normalised frame) is inside the viewer's crop box;
    None without --crop-from-viewer."""
    box = cfg.crop_box(run)
    if box is None:
        return None
    from recon.export.crop import inside_box

    return torch.from_numpy(inside_box(centres.detach().cpu(), *box))


def _input_frame(run: LoadedRun) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(R, t, s) of x_input = s (R x_normalised + t): the dataparser normalisation undone."""
    from recon.render.gaussians.transform import inverse_similarity

    T = run.outputs.dataparser_transform.double()
    return inverse_similarity(T[:, :3], T[:, 3], float(run.outputs.dataparser_scale))


@dataclass
class PointcloudExport(RenderedViewsExport):
    """Points back-projected from the depth the model renders at the training views."""

    num_points: int = 1_000_000
    """Number of points kept (random subset)."""
    remove_outliers: bool = True
    """Drop points far from their neighbours (statistical outlier removal)."""
    accumulation_threshold: float = 0.5
    """Skip pixels whose rendered opacity is below this."""
    filename: str = "pointcloud.ply"
    """Output file name (.ply)."""

    def run(self) -> Path:
        from recon.export.pointcloud import pointcloud_from_render

        run, cameras = _open(self, Export.POINTCLOUD)
        box = self.crop_box(run)
        points, colors, normals = pointcloud_from_render(
            _render_fn(run), cameras, num_points=self.num_points, accumulation_threshold=self.accumulation_threshold,
            aabb=run.outputs.scene_box.aabb, remove_outliers=self.remove_outliers,
        )
        if box is not None:
            from recon.export.crop import inside_box

            keep = inside_box(points, *box)
            points, colors, normals = (None if a is None else a[keep] for a in (points, colors, normals))
            if len(points) == 0:
                raise ConfigError("no point lies inside the viewer's crop box; nothing written")
        pts = run.outputs.transform_to_input(torch.as_tensor(points, dtype=torch.float32))
        if normals is not None:
            normals = torch.as_tensor(normals, dtype=torch.float32) @ run.outputs.dataparser_transform[:, :3]
        out = write_pointcloud(pts.numpy(), colors, None if normals is None else normals.numpy(), self.output_dir / self.filename)
        console.print(f"wrote {len(pts)} points to {out}")
        return out


@dataclass
class TSDFExport(RenderedViewsExport):
    """Mesh by TSDF fusion of the depth the model renders at the training views."""

    resolution: int = 256
    """Voxels along the longest side of the scene box."""
    truncation: float | None = None
    """TSDF truncation distance in normalised units (default: a few voxels)."""
    accumulation_threshold: float = 0.5
    """Skip pixels whose rendered opacity is below this."""
    filename: str = "mesh.ply"
    """Output file name; the suffix picks the format (.ply, .obj, .glb)."""

    def run(self) -> Path:
        from recon.geometry.tsdf import tsdf_from_render

        run, cameras = _open(self, Export.TSDF)
        box = self.crop_box(run)
        mesh = tsdf_from_render(
            _render_fn(run), cameras, run.outputs.scene_box.aabb, self.resolution, truncation=self.truncation,
            accumulation_threshold=self.accumulation_threshold,
        )
        if len(mesh.vertices) == 0:
            raise ConfigError("TSDF fusion found no surface (is the model trained?); nothing written")
        mesh = _crop(mesh, box)
        mesh.vertices = run.outputs.transform_to_input(torch.as_tensor(mesh.vertices, dtype=torch.float32)).numpy()
        out = write_mesh(mesh, self.output_dir / self.filename)
        console.print(f"wrote mesh with {len(mesh.vertices)} vertices and {len(mesh.faces)} faces to {out}")
        return out


@dataclass
class MarchingCubesExport(ExportConfig):
    """Mesh of the model's own implicit surface (SDF or occupancy logit) by marching cubes (or dual
    contouring: ``--extractor dual-contouring``)."""

    resolution: int = 256
    """Grid samples along each axis of the box."""
    bounding_box_min: tuple[float, float, float] | None = None
    """Lower corner of the meshed box in normalised coordinates (default: the scene box)."""
    bounding_box_max: tuple[float, float, float] | None = None
    """Upper corner of the meshed box in normalised coordinates (default: the scene box)."""
    largest_component: bool = False
    """Keep only the largest connected component (drops floaters)."""
    extractor: Literal["marching-cubes", "dual-contouring"] = "marching-cubes"
    """marching-cubes: vertices on grid edges (closed manifold meshes); dual-contouring: one vertex
    per cell at its tangent planes' intersection (Ju et al. 2002; keeps sharp edges and corners,
    may be non-manifold where a part is thinner than a cell)."""
    coarse_stride: int = 1
    """> 1: evaluate the field at every n-th sample first and at full resolution only near the
    surface (2 is about 3-4x faster on OReX's fields with an identical mesh; parts thinner than
    about n samples may be lost). 1: every sample (dense)."""
    simplify_target_faces: int | None = None
    """Decimate to about this many faces (needs the optional package fast-simplification)."""
    filename: str = "mesh.ply"
    """Output file name; the suffix picks the format (.ply, .obj, .glb)."""
    object: str = "scene"
    """Object-compositional models (objectsdf): ``scene`` (the whole surface), a label number (0 =
    the background shell, 1.. the objects), or ``all``: the scene and every object, each in its own
    file named ``<stem>_<object name><suffix>`` (e.g. ``mesh_object_3.ply``)."""

    def run(self) -> Path:
        run = load_run(self.load_config, self.device, self.step)
        _require(run, Export.MARCHING_CUBES, "has no implicit surface to mesh")
        box = self.crop_box(run)
        aabb = run.outputs.scene_box.aabb.clone()
        if self.bounding_box_min is not None:
            aabb[0] = torch.tensor(self.bounding_box_min)
        if self.bounding_box_max is not None:
            aabb[1] = torch.tensor(self.bounding_box_max)
        if (aabb[1] <= aabb[0]).any():
            raise ConfigError(f"empty bounding box {aabb.tolist()}")
        if self.object == "scene":
            return self._write(run, run.model.sdf, aabb, box, self.output_dir / self.filename)
        labels = getattr(run.model, "labels", None)
        if labels is None or not hasattr(run.model, "object_sdf"):
            raise ConfigError(f"--object {self.object}: method {run.config.method_name!r} has no objects (only --object scene)")
        stem, suffix = Path(self.filename).stem, Path(self.filename).suffix
        if self.object == "all":
            shell = bool(getattr(run.model.config, "background_shell", False))
            out = self._write(run, run.model.sdf, aabb, box, self.output_dir / self.filename)
            for label in range(0 if shell else 1, labels.num_labels):
                try:
                    self._write(run, run.model.object_sdf(label), aabb, box, self.output_dir / f"{stem}_{labels.name(label)}{suffix}")
                except ConfigError as err:  # an object that vanished: say so, go on with the others
                    console.print(f"[yellow]skipped {labels.name(label)}: {err}[/yellow]")
            return out
        try:
            label = int(self.object)
        except ValueError:
            raise ConfigError(f"--object must be scene, all or a label number, got {self.object!r}") from None
        sdf = run.model.object_sdf(label)
        return self._write(run, sdf, aabb, box, self.output_dir / f"{stem}_{labels.name(label)}{suffix}")

    def _write(self, run: LoadedRun, sdf: Any, aabb: Tensor, box: Any, path: Path) -> Path:
        from recon.geometry.dual_contouring import dual_contour
        from recon.geometry.marching_cubes import extract_mesh, largest_connected_component, simplify

        with torch.no_grad():
            if self.extractor == "dual-contouring":
                mesh = dual_contour(sdf, aabb, self.resolution, device=run.device, coarse_stride=self.coarse_stride)
                if self.largest_component and len(mesh.faces):
                    mesh = largest_connected_component(mesh)
            else:
                mesh = extract_mesh(
                    sdf, aabb, self.resolution, device=run.device, largest_component=self.largest_component, coarse_stride=self.coarse_stride
                )
        if len(mesh.faces) == 0:
            raise ConfigError("the field has no zero crossing inside the box (is the model trained?); nothing written")
        if self.simplify_target_faces is not None:
            mesh = simplify(mesh, self.simplify_target_faces)
        mesh = _crop(mesh, box)
        colour = getattr(run.model, "surface_colors", None)
        if colour is not None:
            with torch.no_grad():
                rgb = colour(torch.as_tensor(mesh.vertices, dtype=torch.float32, device=run.device))
            mesh.visual.vertex_colors = (rgb.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        mesh.vertices = run.outputs.transform_to_input(torch.as_tensor(mesh.vertices, dtype=torch.float32)).numpy()
        out = write_mesh(mesh, path)
        console.print(f"wrote mesh with {len(mesh.vertices)} vertices and {len(mesh.faces)} faces to {out}")
        return out


@dataclass
class GaussianSplatExport(ExportConfig):
    """The Gaussians of a splatting model as a standard 3DGS PLY (x y z, normals, f_dc, f_rest,
    opacity, scale, rot) that other splat viewers read; NaN/Inf and invisible Gaussians are dropped."""

    frame: Literal["input", "normalised"] = "input"
    """input: the input poses' coordinates (normalisation undone, colours rotated with the frame);
    normalised: recon's internal frame (what the viewer and ns-render use)."""
    filename: str = "splat.ply"
    """Output file name (.ply)."""
    deform: Path | None = None
    """Mesh-bound models (mesh-gs): write the Gaussians deformed by this copy of the proxy mesh (PLY,
    OBJ or GLB, input poses' frame, the proxy's connectivity)."""

    def run(self) -> Path:
        from recon.export.splat_ply import write_splat_ply
        from recon.render.gaussians.transform import transform_splats

        run = load_run(self.load_config, self.device, self.step)
        _require(run, Export.GAUSSIAN_SPLAT, "has no Gaussians to export")
        for vertices in load_deformations(run, [self.deform] if self.deform is not None else []):
            run.model.set_deformed_vertices(vertices)
        params = {k: v.detach().cpu() for k, v in run.model.splat_parameters().items()}
        keep = _keep_inside_crop(self, run, params["means"])
        if keep is not None:
            params = {k: v[keep] for k, v in params.items()}
        if self.frame == "input":
            params = transform_splats(params, *_input_frame(run))
        out, kept = write_splat_ply(self.output_dir / self.filename, params)
        console.print(f"wrote {kept} of {len(params['means'])} Gaussians to {out}")
        return out


@dataclass
class ConvexPlyExport(ExportConfig):
    """Every smooth convex of a 3D Convex Splatting run with all its parameters, losslessly (K
    points, log delta, log sigma, opacity and mask logits, SH), as a 3DCS PLY that ``ns-viewer
    --convex`` opens (layout: recon/export/convex_ply.py). Not readable by splat viewers: for
    those, ``gaussian-splat`` writes one (approximate) Gaussian per convex."""

    frame: Literal["input", "normalised"] = "input"
    """input: the input poses' coordinates (points moved, delta and sigma rescaled, colours
    rotated); normalised: recon's internal frame, bit for bit the run's parameters."""
    filename: str = "convexes.ply"
    """Output file name (.ply)."""

    def run(self) -> Path:
        from recon.export.convex_ply import transform_convexes, write_convex_ply

        run = load_run(self.load_config, self.device, self.step)
        _require(run, Export.CONVEX_PLY, "has no smooth convexes to export")
        params = {k: v.detach().cpu() for k, v in run.model.convex_parameters().items()}
        keep = _keep_inside_crop(self, run, params["points"].mean(1))
        if keep is not None:
            params = {k: v[keep] for k, v in params.items()}
        p, threshold = float(run.model.config.scaling_exponent), float(run.model.config.mask_threshold)
        if self.frame == "input":
            params = transform_convexes(params, *_input_frame(run), p)
        out = write_convex_ply(self.output_dir / self.filename, params, scaling_exponent=p, mask_threshold=threshold, frame=self.frame)
        console.print(f"wrote {len(params['points'])} convexes to {out}")
        return out


@dataclass
class ConvexMeshExport(ExportConfig):
    """The convexes of a 3D Convex Splatting run as one triangle mesh: each opaque, sharp convex
    becomes the 3D convex hull of its K points (its shape in the limit of sharp edges; flat
    convexes, always for K = 3, one-sided polygons), coloured by its SH degree-0 colour (vertex
    colours), in the input poses' coordinates."""

    min_opacity: float = 0.5
    """Keep convexes whose effective opacity, sigmoid(opacity) x [sigmoid(mask) > mask threshold], is at least this."""
    min_sharpness: float = 2.0
    """Keep convexes with kappa = sigma delta (f R)^2 at least this (f: the training cameras' focal
    length in pixels, R: the RMS distance of the points from their centre; x d^(2p-2), d the mean
    distance from the training cameras, when the scaling exponent p is not 1). The indicator
    falls from 73% to 27% over about 2/kappa of a convex's inradius and is about sigmoid(0.87 kappa)
    at its centre: 2 keeps convexes drawn with edges, 0 keeps soft blobs too."""
    filename: str = "convex_mesh.ply"
    """Output file name; the suffix picks the format (.ply, .obj, .glb)."""

    def run(self) -> Path:
        from recon.export.convex_mesh import convex_mesh
        from recon.fields.spherical_harmonics import C0

        if not 0.0 <= self.min_opacity <= 1.0:
            raise ConfigError(f"--min-opacity must be in [0, 1], got {self.min_opacity}")
        if not self.min_sharpness >= 0.0:
            raise ConfigError(f"--min-sharpness must be 0 or more, got {self.min_sharpness}")
        run = load_run(self.load_config, self.device, self.step)
        _require(run, Export.CONVEX_MESH, "has no smooth convexes to mesh")
        model = run.model
        with torch.no_grad():
            prims = model.primitives()
            cameras = run.outputs.split("train").cameras
            scale = getattr(run.config.datamanager, "image_scale", 1.0)
            focal = float(torch.sqrt(cameras.fx * cameras.fy).mean()) * scale
            distance: torch.Tensor | float = 1.0
            if float(model.config.scaling_exponent) != 1.0:
                origins = cameras.camera_to_worlds[:, :, 3].to(prims["means"])
                distance = torch.cat([torch.cdist(m, origins).mean(1) for m in prims["means"].split(65536)])
            keep = (prims["opacities"] >= self.min_opacity) & (model.sharpness(focal, distance) >= self.min_sharpness)
            inside = _keep_inside_crop(self, run, prims["means"])
            if inside is not None:
                keep &= inside.to(keep.device)
            points = run.outputs.transform_to_input(prims["points"][keep].reshape(-1, 3).float().cpu()).reshape(-1, model.num_points, 3)
            colors = (model.params["sh0"][keep, 0].cpu() * C0 + 0.5).clamp(0, 1)
        total = len(keep)
        if len(points) == 0:
            raise ConfigError(f"no convex passes --min-opacity {self.min_opacity} and --min-sharpness {self.min_sharpness} "
                              f"(of {total}){' inside the crop box' if inside is not None else ''}; nothing written")
        mesh = convex_mesh(points, colors)
        out = write_mesh(mesh, self.output_dir / self.filename)
        console.print(f"wrote the hulls of {len(points)} of {total} convexes ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces) to {out}")
        return out


@dataclass
class ProxyMeshExport(ExportConfig):
    """The proxy mesh a mesh-bound model (mesh-gs) is bound to, in the input poses' coordinates: the
    mesh whose deformed copies (same vertices and faces, moved) ``ns-render --deform`` and
    ``gaussian-splat --deform`` take. Deformed by ``--deform`` when given."""

    filename: str = "proxy_mesh.ply"
    """Output file name; the suffix picks the format (.ply, .obj, .glb)."""
    deform: Path | None = None
    """Write this deformed copy instead (checked against the proxy's connectivity)."""

    def run(self) -> Path:
        import trimesh

        run = load_run(self.load_config, self.device, self.step)
        rest = run.model.rest_mesh()
        if rest is None:
            raise ConfigError(f"method {run.config.method_name!r} has no proxy mesh to export")
        vertices, faces = rest
        for moved in load_deformations(run, [self.deform] if self.deform is not None else []):
            vertices = moved
        points = run.outputs.transform_to_input(vertices.detach().double().cpu()).numpy()
        out = write_mesh(trimesh.Trimesh(points, faces.cpu().numpy(), process=False), self.output_dir / self.filename)
        console.print(f"wrote the proxy mesh ({len(points)} vertices, {len(faces)} faces) to {out}")
        return out


Commands = Union[
    Annotated[PointcloudExport, tyro.conf.subcommand("pointcloud")],
    Annotated[TSDFExport, tyro.conf.subcommand("tsdf")],
    Annotated[MarchingCubesExport, tyro.conf.subcommand("marching-cubes")],
    Annotated[GaussianSplatExport, tyro.conf.subcommand("gaussian-splat")],
    Annotated[ConvexPlyExport, tyro.conf.subcommand("convex-ply")],
    Annotated[ConvexMeshExport, tyro.conf.subcommand("convex-mesh")],
    Annotated[ProxyMeshExport, tyro.conf.subcommand("proxy-mesh")],
]


def entrypoint() -> None:
    cfg = parse_cli(lambda: tyro.cli(Commands, args=sys.argv[1:], prog="ns-export", description="Export geometry from a trained run."), "ns-export")  # type: ignore[arg-type]
    run_main(cfg.run)



def ns_entrypoint() -> None:
    """``ns-export``: a nerfstudio run's config.yml goes to nerfstudio's ns-export when it is installed."""
    dispatch("ns-export", entrypoint, config_is_nerfstudios)


if __name__ == "__main__":
    entrypoint()
