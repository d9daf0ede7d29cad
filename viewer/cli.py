"""``ns-viewer``: open a finished run, an exported mesh or a Gaussian-splat PLY in the viewer.

    ns-viewer --load-config outputs/.../config.yml      a trained run (no training)
    ns-viewer --mesh mesh.ply|obj|glb                   an exported mesh
    ns-viewer --splat splat.ply                         a standard 3DGS PLY

Files are shown in their own coordinates (exports are in the input poses' frame); a run is shown
in recon's normalised frame, like ``ns-train --viewer``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from recon.cli import parse_cli, run_main
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
    step: int | None = None
    """Checkpoint step of --load-config (default: the latest)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render --load-config."""
    viewer_host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 makes the viewer reachable from other machines."""
    viewer_port: int = 7007
    """Port (0 picks a free one)."""
    max_res: int = 512
    """Longest side, in pixels, of rendered frames when the camera rests."""

    def open(self):
        """Build and start the viewer (returned; ``viewer.stop()`` ends it)."""
        from viewer.server import Viewer, ViewerSettings

        given = [p for p in (self.load_config, self.mesh, self.splat) if p is not None]
        if not given:
            raise ConfigError("nothing to show: give --load-config, --mesh or --splat")
        for path in given:
            if not Path(path).is_file():
                raise ReconError("file not found", Path(path))
        settings = ViewerSettings(host=self.viewer_host, port=self.viewer_port, max_res=self.max_res)
        # Read every file before the server starts, so a bad one fails with nothing served.
        mesh = load_mesh(self.mesh) if self.mesh is not None else None
        splats = load_splats(self.splat) if self.splat is not None else None
        if self.load_config is not None:
            from recon.engine.run import load_run
            from viewer.builtin_panels import builtin_panels
            from viewer.server import training_views

            run = load_run(self.load_config, self.device, self.step)
            cameras, images = training_views(run.outputs, getattr(run.config.datamanager, "image_scale", 1.0))
            viewer = Viewer(settings, model=run.model, cameras=cameras, images=images, aabb=run.outputs.scene_box.aabb, run_dir=run.run_dir,
                            panels=builtin_panels(run.run_dir) + run.model.viewer_panels())
        else:
            viewer = Viewer(settings)
        viewer.start()
        if mesh is not None:
            viewer.server.scene.add_mesh_trimesh("/mesh", mesh)
        if splats is not None:
            viewer.server.scene.add_gaussian_splats("/splat", **splats)
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

    try:
        mesh = trimesh.load(str(path), force="mesh")
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise ReconError(f"cannot read mesh ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ReconError("no triangles in this file", path)
    return mesh


def load_splats(path: Path) -> dict[str, np.ndarray]:
    """A 3DGS PLY as the arrays of viser's Gaussian splats: centres, covariances R S S^T R^T, the
    degree-0 colour and opacities (higher SH degrees are not shown)."""
    import torch

    from recon.rotations import quaternion_to_matrix
    from recon.export.splat_ply import read_splat_ply
    from recon.fields.spherical_harmonics import C0

    params = read_splat_ply(path)
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


if __name__ == "__main__":
    entrypoint()
