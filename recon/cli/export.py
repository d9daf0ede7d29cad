"""``ns-export {pointcloud,tsdf,marching-cubes,gaussian-splat} --load-config outputs/.../config.yml --output-dir exports/``.

Geometry is written in the input poses' coordinates (the dataset normalisation is undone), as
PLY, OBJ or GLB through trimesh; every file is written atomically.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import torch
import tyro

from recon.cli import parse_cli, run_main
from recon.engine.logging import console
from recon.engine.run import LoadedRun, load_run
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
    """Mesh of the model's own implicit surface (SDF or occupancy logit) by marching cubes."""

    resolution: int = 256
    """Grid samples along each axis of the box."""
    bounding_box_min: tuple[float, float, float] | None = None
    """Lower corner of the meshed box in normalised coordinates (default: the scene box)."""
    bounding_box_max: tuple[float, float, float] | None = None
    """Upper corner of the meshed box in normalised coordinates (default: the scene box)."""
    largest_component: bool = False
    """Keep only the largest connected component (drops floaters)."""
    simplify_target_faces: int | None = None
    """Decimate to about this many faces (needs the optional package fast-simplification)."""
    filename: str = "mesh.ply"
    """Output file name; the suffix picks the format (.ply, .obj, .glb)."""

    def run(self) -> Path:
        from recon.geometry.marching_cubes import extract_mesh, simplify

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
        with torch.no_grad():
            mesh = extract_mesh(run.model.sdf, aabb, self.resolution, device=run.device, largest_component=self.largest_component)
        if len(mesh.faces) == 0:
            raise ConfigError("the field has no zero crossing inside the box (is the model trained?); nothing written")
        if self.simplify_target_faces is not None:
            mesh = simplify(mesh, self.simplify_target_faces)
        mesh = _crop(mesh, box)
        mesh.vertices = run.outputs.transform_to_input(torch.as_tensor(mesh.vertices, dtype=torch.float32)).numpy()
        out = write_mesh(mesh, self.output_dir / self.filename)
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

    def run(self) -> Path:
        from recon.export.splat_ply import write_splat_ply
        from recon.render.gaussians.transform import inverse_similarity, transform_splats

        run = load_run(self.load_config, self.device, self.step)
        _require(run, Export.GAUSSIAN_SPLAT, "has no Gaussians to export")
        params = {k: v.detach().cpu() for k, v in run.model.splat_parameters().items()}
        box = self.crop_box(run)
        if box is not None:
            from recon.export.crop import inside_box

            keep = torch.from_numpy(inside_box(params["means"], *box))
            params = {k: v[keep] for k, v in params.items()}
        if self.frame == "input":
            T = run.outputs.dataparser_transform.double()
            params = transform_splats(params, *inverse_similarity(T[:, :3], T[:, 3], float(run.outputs.dataparser_scale)))
        out, kept = write_splat_ply(self.output_dir / self.filename, params)
        console.print(f"wrote {kept} of {len(params['means'])} Gaussians to {out}")
        return out


Commands = Union[
    Annotated[PointcloudExport, tyro.conf.subcommand("pointcloud")],
    Annotated[TSDFExport, tyro.conf.subcommand("tsdf")],
    Annotated[MarchingCubesExport, tyro.conf.subcommand("marching-cubes")],
    Annotated[GaussianSplatExport, tyro.conf.subcommand("gaussian-splat")],
]


def entrypoint() -> None:
    cfg = parse_cli(lambda: tyro.cli(Commands, args=sys.argv[1:], prog="ns-export", description="Export geometry from a trained run."), "ns-export")  # type: ignore[arg-type]
    run_main(cfg.run)


if __name__ == "__main__":
    entrypoint()
