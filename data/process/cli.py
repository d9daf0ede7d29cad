"""``ns-process-data images|video --data IN --output-dir OUT``: photos or a video to a dataset that
``ns-train`` reads directly (nerfstudio layout; the stages are in :mod:`data.process`)."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union, get_args

import tyro

from data.process.inputs import copy_images, extract_frames, list_input_images
from data.process.output import check_output_dir, staged_output, write_downscales, write_nerfstudio
from data.process.sfm import CameraModel, MatchingMethod, run_sfm
from recon.cli import parse_cli, run_main
from recon.cli.handoff import dispatch
from recon.engine.logging import console
from recon.errors import DataError

MIN_REGISTERED_FRACTION = 0.5
"""A reconstruction that places fewer of the images than this is refused rather than trained on."""


@dataclass
class ProcessResult:
    """What one run of ``ns-process-data`` produced."""

    output_dir: Path
    """The finished dataset folder."""
    num_images: int
    """Images given to structure from motion."""
    registered: list[str]
    """Frame names (``frame_00001.png``) that got a pose."""
    unregistered: list[str]
    """The inputs (photo file names, or frame names of a video) that did not."""
    matching: str
    """Matching that ran: ``exhaustive`` or ``sequential``."""
    num_points: int
    """Sparse 3D points."""
    reprojection_error: float
    """Mean reprojection error of the sparse points, pixels."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: ``inputs``, ``features``, ``matching``, ``mapping``, ``output``."""
    note: str = ""
    """What the input stage has to say (frames taken from a video)."""


@dataclass
class ProcessConfig:
    """Options shared by both inputs."""

    data: Path
    """The photos (a folder) or the video (a file)."""
    output_dir: Path
    """Dataset folder to create (nerfstudio layout: transforms.json, images/, images_2/, ...)."""
    camera_model: CameraModel = "SIMPLE_RADIAL"
    """COLMAP camera model to estimate: SIMPLE_RADIAL (one focal length, one radial term) suits
    most phone and camera photos; OPENCV adds a second radial and two tangential terms;
    OPENCV_FISHEYE for fisheye and action-camera lenses; PINHOLE and SIMPLE_PINHOLE for images
    that are already undistorted."""
    single_camera: bool = True
    """All images come from one camera with one zoom setting (shared intrinsics); turn off for mixed
    cameras or image sizes."""
    matching_method: MatchingMethod = "auto"
    """Which image pairs to match: every pair (exhaustive), or each image with its neighbours in name
    order (sequential: frames of a video, photos taken walking around). auto: exhaustive up to 200
    images, sequential above."""
    num_downscales: int = 3
    """Also write images_2, images_4, ... up to images_(2^N)."""
    overwrite: bool = False
    """Replace an existing, non-empty --output-dir."""
    verbose: bool = False
    """Show COLMAP's own log."""

    def _frames(self, image_dir: Path) -> tuple[list[str], dict[str, str], str]:
        """Write the input images into ``image_dir``; (frame names, frame name -> input name, a note
        for the summary)."""
        raise NotImplementedError

    def _check_inputs(self) -> None:
        """Fail on bad inputs before anything is written."""

    def run(self) -> ProcessResult:
        if self.num_downscales < 0:
            raise DataError(f"--num-downscales must be 0 or more, got {self.num_downscales}")
        self._check_inputs()
        output_dir = check_output_dir(self.output_dir, self.data, self.overwrite)
        t_start = time.perf_counter()
        with staged_output(output_dir) as out:
            t0 = time.perf_counter()
            names, sources, note = self._frames(out / "images")
            timings = {"inputs": time.perf_counter() - t0}
            sfm = run_sfm(out / "images", names, out / "colmap" / "work", self.camera_model, self.single_camera,
                          self.matching_method, self.verbose)
            timings.update(sfm.timings)
            rec = sfm.reconstruction
            if rec is None:
                raise DataError(
                    f"COLMAP could not reconstruct any of the {len(names)} images: no image pair with enough matches to"
                    " start (too little overlap or texture between the images)",
                    self.data,
                )
            registered = sorted(im.name for im in rec.images.values() if im.has_pose)
            unregistered = sorted(set(names) - set(registered))
            unregistered = [sources[n] for n in unregistered]
            if len(registered) < MIN_REGISTERED_FRACTION * len(names):
                shown = ", ".join(unregistered[:5]) + (", ..." if len(unregistered) > 5 else "")
                hint = (
                    ", or the images are not in capture order for sequential matching (try --matching-method exhaustive)"
                    if sfm.matching == "sequential" else ""
                )
                raise DataError(
                    f"only {len(registered)} of {len(names)} images registered (not: {shown}); the likely cause is too"
                    f" little overlap or texture between the images{hint}",
                    self.data,
                )
            t0 = time.perf_counter()
            write_nerfstudio(rec, out)
            write_downscales(out / "images", names, self.num_downscales)
            # COLMAP's database (mostly descriptors) is large and only useful to rerun COLMAP
            shutil.rmtree(out / "colmap" / "work")
            timings["output"] = time.perf_counter() - t0
        result = ProcessResult(output_dir, len(names), registered, unregistered, sfm.matching, rec.num_points3D(),
                               rec.compute_mean_reprojection_error(), timings, note)
        _summary(result, time.perf_counter() - t_start)
        return result


@dataclass
class ImagesConfig(ProcessConfig):
    """A folder of photos (taken in order when matching is sequential)."""

    def _check_inputs(self) -> None:
        list_input_images(self.data)

    def _frames(self, image_dir: Path) -> tuple[list[str], dict[str, str], str]:
        paths = list_input_images(self.data)
        names = copy_images(paths, image_dir, same_size=self.single_camera)
        return names, {n: p.name for n, p in zip(names, paths)}, ""


@dataclass
class VideoConfig(ProcessConfig):
    """A video: frames spread evenly over the clip, blurry ones skipped."""

    num_frames_target: int = 300
    """At most this many frames: the clip is cut into this many equal parts and the sharpest frame of
    each is kept."""
    blur_fraction: float = 0.5
    """A kept frame whose sharpness (variance of the Laplacian) is below this fraction of the clip's
    median is skipped as blurry; 0 keeps every frame."""

    def _check_inputs(self) -> None:
        if self.num_frames_target < 2:
            raise DataError(f"--num-frames-target must be at least 2, got {self.num_frames_target}")
        if not 0 <= self.blur_fraction < 1:
            raise DataError(f"--blur-fraction must be in [0, 1), got {self.blur_fraction}")
        if not self.data.is_file():
            raise DataError("video file does not exist" if not self.data.exists() else "expected a video file, got a folder", self.data)

    def _frames(self, image_dir: Path) -> tuple[list[str], dict[str, str], str]:
        frames = extract_frames(self.data, image_dir, self.num_frames_target, self.blur_fraction)
        note = (
            f"video: {frames.num_decoded} frames; took the sharpest of each of {len(frames.names) + frames.num_blurry}"
            f" equal parts, skipped {frames.num_blurry} of them as blurry (sharpness below {frames.threshold:.1f})"
        )
        return frames.names, {n: n for n in frames.names}, note


def _summary(result: ProcessResult, total: float) -> None:
    def say(text: str, style: str | None = None) -> None:
        # file names are printed verbatim: "[" in a name is not rich markup
        console.print(text, style=style, soft_wrap=True, markup=False, highlight=False)

    stages = ", ".join(f"{name} {sec:.1f} s" for name, sec in result.timings.items())
    if result.note:
        say(result.note)
    say(f"processed in {total:.1f} s ({stages}; {result.matching} matching)")
    say(f"{len(result.registered)} of {result.num_images} images registered; {result.num_points} sparse points,"
        f" mean reprojection error {result.reprojection_error:.2f} px")
    if result.unregistered:
        say(f"not registered (left out of transforms.json): {', '.join(result.unregistered)}", "yellow")
    say(f"wrote {result.output_dir}; train with: ns-train nerf-hash --data {result.output_dir}")


Commands = Union[
    Annotated[ImagesConfig, tyro.conf.subcommand("images")],
    Annotated[VideoConfig, tyro.conf.subcommand("video")],
]


def entrypoint() -> None:
    cfg = parse_cli(
        lambda: tyro.cli(Commands, args=sys.argv[1:], prog="ns-process-data",  # type: ignore[arg-type]
                         description="Estimate camera poses for photos or a video (COLMAP) and write a dataset for ns-train."),
        "ns-process-data",
    )
    run_main(cfg.run)



RECON_KINDS = tuple(kind.__metadata__[0].name for kind in get_args(Commands))
"""The input kinds recon's ns-process-data handles (its sub-commands)."""


def is_nerfstudio_kind(args: list[str]) -> bool:
    """Rule of ``ns-process-data``: the first argument is a kind recon does not offer (polycam, record3d, ...)."""
    return bool(args) and not args[0].startswith("-") and args[0] not in RECON_KINDS


def ns_entrypoint() -> None:
    """``ns-process-data``: input kinds recon lacks go to nerfstudio's ns-process-data when it is installed."""
    dispatch("ns-process-data", entrypoint, is_nerfstudio_kind)


if __name__ == "__main__":
    entrypoint()
