"""``ns-render {dataset,spiral,interpolate,camera-path} --load-config ... --output-path out.mp4``.

Renders a trained model along a camera path, headless, to an mp4 (``.mp4`` output path) or a
folder of PNG frames (any other path). Several outputs (``--rendered-output-names rgb depth``)
are placed side by side; scalar outputs are colour-mapped. Mesh-bound models render deformed by
one mesh or a sequence of meshes with ``--deform``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import torch
import tyro

from recon.cameras import Cameras
from recon.cli import parse_cli, run_main
from recon.cli.handoff import config_is_nerfstudios, dispatch
from recon.engine.evaluate import to_uint8
from recon.engine.logging import console, make_progress
from recon.engine.run import LoadedRun, load_deformations, load_run
from recon.errors import ConfigError


@dataclass
class RenderConfig:
    load_config: Path
    """The run's config.yml."""
    output_path: Path = Path("renders/output.mp4")
    """An .mp4 file, or a folder for PNG frames."""
    rendered_output_names: tuple[str, ...] = ("rgb",)
    """Model outputs to render side by side (rgb, depth, accumulation, ...)."""
    image_scale: float = 1.0
    """Scale of the rendered frames relative to the training resolution."""
    fps: float = 24.0
    """Frames per second of the video."""
    colormap: Literal["turbo", "gray"] = "turbo"
    """Colormap for scalar outputs."""
    step: int | None = None
    """Checkpoint step (default: the latest)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render."""
    deform: tuple[Path, ...] = ()
    """Mesh-bound models (mesh-gs): deformed copies of the proxy mesh (PLY, OBJ or GLB, input poses'
    frame, the proxy's connectivity). One mesh deforms every frame; several are a sequence spread
    evenly over the frames, in order."""

    def cameras(self, run: LoadedRun, train: Cameras) -> Cameras:
        raise NotImplementedError

    def run(self) -> Path:
        from recon.export.video import colormap, write_frames, write_video

        run = load_run(self.load_config, self.device, self.step)
        deformations = load_deformations(run, self.deform)
        scale = getattr(run.config.datamanager, "image_scale", 1.0) * self.image_scale
        train = run.outputs.split("train").cameras
        train = train.scaled(scale) if scale != 1.0 else train
        cameras = self.cameras(run, train)

        def frames():
            bar = make_progress()
            with bar:
                task = bar.add_task("render", total=len(cameras), rate="", info="")
                current = None
                for i in range(len(cameras)):
                    which = round(i * (len(deformations) - 1) / max(len(cameras) - 1, 1)) if deformations else None
                    if which != current:  # a deformation is set once, not per frame (mesh-gs turns the SH then)
                        run.model.set_deformed_vertices(deformations[which])
                        current = which
                    out = run.model.render(cameras[i].to(run.device))
                    parts = []
                    for name in self.rendered_output_names:
                        if name not in out:
                            raise ConfigError(f"the model renders no {name!r}; it renders: {', '.join(out)}")
                        value = out[name].float()
                        if value.shape[-1] == 1:
                            mask = out.get("accumulation")
                            value = torch.as_tensor(colormap(value.cpu(), self.colormap, mask=None if mask is None or name == "accumulation" else mask.cpu() > 0.5))
                        parts.append(to_uint8(value))
                    bar.update(task, advance=1)
                    yield np.concatenate(parts, 1)

        if self.output_path.suffix.lower() == ".mp4":
            write_video(frames(), self.output_path, self.fps)
        else:
            write_frames(frames(), self.output_path)
        console.print(f"wrote {len(cameras)} frames to {self.output_path}")
        return self.output_path


@dataclass
class DatasetRender(RenderConfig):
    """The cameras of a dataset split."""

    split: Literal["test", "val", "train"] = "test"
    """Which split's cameras to render."""

    def cameras(self, run: LoadedRun, train: Cameras) -> Cameras:
        cams = run.outputs.split(self.split).cameras
        scale = getattr(run.config.datamanager, "image_scale", 1.0) * self.image_scale
        return cams.scaled(scale) if scale != 1.0 else cams


@dataclass
class SpiralRender(RenderConfig):
    """An LLFF-style spiral around the average training camera."""

    num_frames: int = 120
    """Number of frames."""
    radius_scale: float = 1.0
    """Scales the spiral's radius (derived from the spread of the training cameras)."""
    rots: float = 2.0
    """Turns of the spiral."""

    def cameras(self, run: LoadedRun, train: Cameras) -> Cameras:
        from recon.camera_paths import spiral_path

        return spiral_path(train, self.num_frames, radius_scale=self.radius_scale, rots=self.rots)


@dataclass
class InterpolateRender(RenderConfig):
    """A smooth path through the training cameras (nearest-neighbour tour)."""

    num_frames: int = 120
    """Number of frames."""
    max_keyframes: int = 12
    """Use at most this many evenly chosen training cameras as keyframes."""

    def cameras(self, run: LoadedRun, train: Cameras) -> Cameras:
        from recon.camera_paths import interpolate_path

        keys = np.unique(np.linspace(0, len(train) - 1, min(self.max_keyframes, len(train))).round().astype(int)).tolist()
        return interpolate_path(train[keys], self.num_frames, order="nearest")


@dataclass
class CameraPathRender(RenderConfig):
    """A camera-path JSON file (written by the viewer or by hand; see recon.camera_paths)."""

    camera_path_filename: Path = Path("camera_path.json")
    """The camera-path JSON file."""

    def cameras(self, run: LoadedRun, train: Cameras) -> Cameras:
        from recon.camera_paths import load_camera_path_json

        path = load_camera_path_json(self.camera_path_filename)
        self.fps = path.fps
        return path.cameras.scaled(self.image_scale) if self.image_scale != 1.0 else path.cameras


Commands = Union[
    Annotated[DatasetRender, tyro.conf.subcommand("dataset")],
    Annotated[SpiralRender, tyro.conf.subcommand("spiral")],
    Annotated[InterpolateRender, tyro.conf.subcommand("interpolate")],
    Annotated[CameraPathRender, tyro.conf.subcommand("camera-path")],
]


def entrypoint() -> None:
    cfg = parse_cli(lambda: tyro.cli(Commands, args=sys.argv[1:], description="Render a trained run along a camera path."), "ns-render")  # type: ignore[arg-type]
    run_main(cfg.run)



def ns_entrypoint() -> None:
    """``ns-render``: a nerfstudio run's config.yml goes to nerfstudio's ns-render when it is installed."""
    dispatch("ns-render", entrypoint, config_is_nerfstudios)


if __name__ == "__main__":
    entrypoint()
