"""``ns-viewer``: open a finished run, an exported mesh, a Gaussian-splat PLY or a 3DCS PLY in the viewer.

    ns-viewer --load-config outputs/.../config.yml      a trained run (no training)
    ns-viewer --mesh mesh.ply|obj|glb                   an exported mesh
    ns-viewer --splat splat.ply                         a standard 3DGS PLY
    ns-viewer --convex convexes.ply                     a 3DCS PLY (ns-export convex-ply), rendered here

Files are shown in their own coordinates (exports are in the input poses' frame); a run is shown
in recon's normalised frame, like ``ns-train --viewer``. Meshes and splats are drawn by the
browser; a run and a 3DCS PLY are rendered by this process (the ``3dcs`` method's model, built
from the file through the method registry), frame by frame, from the browser's camera.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from recon.cli import parse_cli, run_main
from recon.cli.handoff import config_is_nerfstudios, dispatch
from recon.errors import ConfigError, ReconError


@dataclass
class ViewerCommand:
    """Open a trained run, a mesh or a splat file in the web viewer."""

    load_config: Path | None = None
    """A run's config.yml: render its latest (or --step) checkpoint from the browser's camera."""
    mesh: Path | None = None
    """A mesh file (.ply, .obj, .glb) to show."""
    splat: Path | None = None
    """A Gaussian-splat PLY (standard 3DGS layout) to show."""
    convex: Path | None = None
    """A 3D Convex Splatting PLY (ns-export convex-ply) to render (not with --load-config)."""
    step: int | None = None
    """Checkpoint step of --load-config (default: the latest)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render --load-config or --convex."""
    viewer_host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 makes the viewer reachable from other machines."""
    viewer_port: int = 7007
    """Port (0 picks a free one)."""
    viewer_token: str = "auto"
    """Access token: auto (a random one, in the printed URL, unless the host is loopback), none (disable), or your own."""
    max_res: int = 512
    """Longest side, in pixels, of rendered frames when the camera rests."""

    def open(self):
        """Build and start the viewer (returned; ``viewer.stop()`` ends it)."""
        from viewer.server import Viewer, ViewerSettings, framing_view

        given = [p for p in (self.load_config, self.mesh, self.splat, self.convex) if p is not None]
        if not given:
            raise ConfigError("nothing to show: give --load-config, --mesh, --splat or --convex")
        if self.load_config is not None and self.convex is not None:
            raise ConfigError("--load-config and --convex both render a model; give one of them")
        for path in given:
            if not Path(path).is_file():
                raise ReconError("file not found", Path(path))
        settings = ViewerSettings(host=self.viewer_host, port=self.viewer_port, max_res=self.max_res, token=self.viewer_token)
        settings.check()  # a bad flag fails before any file is read
        # Read every file before the server starts, so a bad one fails with nothing served.
        mesh = load_mesh(self.mesh) if self.mesh is not None else None
        splats = load_splats(self.splat) if self.splat is not None else None
        convexes = load_convexes(self.convex, self.device) if self.convex is not None else None
        if self.load_config is not None:
            from recon.engine.run import load_run
            from viewer.builtin_panels import builtin_panels
            from viewer.server import training_views

            run = load_run(self.load_config, self.device, self.step)
            cameras, images = training_views(run.outputs, getattr(run.config.datamanager, "image_scale", 1.0))
            viewer = Viewer(settings, model=run.model, cameras=cameras, images=images, aabb=run.outputs.scene_box.aabb, run_dir=run.run_dir,
                            panels=builtin_panels(run.run_dir) + run.model.viewer_panels())
        elif convexes is not None:
            viewer = Viewer(settings, model=convexes, panels=convexes.viewer_panels())
        else:
            viewer = Viewer(settings)
        viewer.start()
        bounds = []
        if convexes is not None:  # the bulk of the convexes' centres, as for splats below
            bounds.append(np.quantile(convexes.params["points"].detach().mean(1).cpu().numpy(), [0.01, 0.99], axis=0))
        if mesh is not None:
            viewer.server.scene.add_mesh_trimesh("/mesh", mesh)
            bounds.append(mesh.bounds)
        if splats is not None:
            viewer.server.scene.add_gaussian_splats("/splat", **splats)
            # The bulk of the centres: a few far floaters (common in trained splats) would shrink the object to a dot.
            bounds.append(np.quantile(splats["centers"], [0.01, 0.99], axis=0))
        if self.load_config is None:  # a run opens at its first training camera (or framing its scene box)
            lo, hi = np.min([b[0] for b in bounds], axis=0), np.max([b[1] for b in bounds], axis=0)
            viewer.set_initial_view(framing_view(lo, hi))
        return viewer

    def run(self) -> None:
        from viewer.training import serve_forever

        viewer = self.open()
        try:
            serve_forever()
        finally:
            viewer.stop()


def load_mesh(path: Path):
    """A mesh file as a trimesh; a clear error for a file trimesh cannot read as a mesh."""
    import trimesh

    from recon.export.splat_ply import check_ply_counts

    if not Path(path).is_file():
        raise ReconError("mesh file not found", path)
    check_ply_counts(path)
    try:
        mesh = trimesh.load(str(path), force="mesh")
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise ReconError(f"cannot read mesh ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ReconError("no triangles in this file", path)
    return mesh


def load_convexes(path: Path, device: str = "auto"):
    """A 3DCS PLY as a model of the registered ``3dcs`` method (its default settings with the file's
    K, SH degree, scaling exponent and mask threshold), in the file's frame, on ``device``."""
    from recon.config import get_method
    from recon.engine.trainer import resolve_device

    model = get_method("3dcs").config.model.from_convex_ply(path, resolve_device(device))
    try:
        model.check_rasterizer()  # e.g. warp-lang missing: one line now, not a failed frame later
    except ConfigError as exc:
        raise ReconError(str(exc), path) from None
    if model.num_primitives == 0:
        raise ReconError("no convexes in this file", path)
    return model


def load_splats(path: Path) -> dict[str, np.ndarray]:
    """A 3DGS PLY as the arrays of viser's Gaussian splats: centres, covariances R S S^T R^T, the
    degree-0 colour and opacities (higher SH degrees are not shown)."""
    import torch

    from recon.rotations import quaternion_to_matrix
    from recon.export.splat_ply import read_splat_ply
    from recon.fields.spherical_harmonics import C0

    params = read_splat_ply(path)
    if len(params["means"]) == 0:
        raise ReconError("no Gaussians in this file", path)
    means = torch.as_tensor(params["means"]).double()
    R = quaternion_to_matrix(torch.as_tensor(params["quats"]).double())
    S = torch.exp(torch.as_tensor(params["scales"]).double())
    M = R * S[:, None, :]
    cov = M @ M.transpose(1, 2)
    rgb = (torch.as_tensor(params["sh0"]).double()[:, 0] * C0 + 0.5).clamp(0, 1)
    alpha = torch.sigmoid(torch.as_tensor(params["opacities"]).double()).reshape(-1, 1)
    return {"centers": means.float().numpy(), "covariances": cov.float().numpy(), "rgbs": rgb.float().numpy(), "opacities": alpha.float().numpy()}


def entrypoint() -> None:
    cfg = parse_cli(lambda: tyro.cli(ViewerCommand, args=sys.argv[1:]), "ns-viewer")
    run_main(cfg.run)



def ns_entrypoint() -> None:
    """``ns-viewer``: a nerfstudio run's config.yml goes to nerfstudio's ns-viewer when it is installed."""
    dispatch("ns-viewer", entrypoint, config_is_nerfstudios)


if __name__ == "__main__":
    entrypoint()
