"""Structure from motion with pycolmap on the CPU: features, matching, incremental mapping.

COLMAP (Schoenberger & Frahm 2016, "Structure-from-Motion Revisited", CVPR; Schoenberger et al.
2016, "Pixelwise View Selection for Unstructured Multi-View Stereo", ECCV, for its SIFT matching)
through its Python bindings. Each long call runs in a worker thread (pycolmap releases the GIL)
with a cancellation token, so Ctrl-C stops it promptly and the progress bars keep refreshing.
Features are extracted and pairs matched in batches so the bars show real progress.

pycolmap is imported inside the functions, so always after torch (imported here through
``recon.engine.logging``): imported first in a process, pycolmap 4.2.1 makes Pillow's PNG encoder
abort with "free(): invalid pointer" (measured; with numpy or torch imported before, it does not).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from recon.engine.logging import make_progress

CameraModel = Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE"]
MatchingMethod = Literal["auto", "exhaustive", "sequential"]

EXHAUSTIVE_MAX_IMAGES = 200
"""``auto`` matches every pair up to this many images and neighbours in name order above. Measured
on lego 400x400 (benchmarks/RESULTS.md): exhaustive matching of 200 photos took 3.7 minutes on two
busy cores (19,900 pairs) and registered all of them; the time grows with the square of the count,
and unordered photos need it (sequential matching relies on capture order)."""
SEQUENTIAL_OVERLAP = 10
"""Sequential matching pairs each image with the next 10 and with those 2^k ahead (COLMAP's
quadratic overlap), which also bridges short gaps such as a skipped blurry frame."""
FEATURE_BATCH = 16
PAIR_BATCH = 256
SEED = 0
"""Fixed seed of COLMAP's RANSAC and mapper: the same input gives the same poses."""

T = TypeVar("T")


@dataclass
class SfmResult:
    """The largest reconstruction COLMAP found and how it got there."""

    reconstruction: object | None
    """A ``pycolmap.Reconstruction`` (registered images have poses); None when COLMAP found no
    image pair to start from."""
    matching: str
    """The matching that ran: ``exhaustive`` or ``sequential``."""
    num_pairs: int
    """Image pairs matched."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: ``features``, ``matching``, ``mapping``."""


def choose_matching(num_images: int, method: MatchingMethod) -> str:
    """The matching ``auto`` stands for with ``num_images`` images, or ``method`` itself."""
    if method != "auto":
        return method
    return "exhaustive" if num_images <= EXHAUSTIVE_MAX_IMAGES else "sequential"


def _cancellable(call: Callable[..., T], **kwargs) -> T:
    """Run a pycolmap call that takes a ``cancellation_token`` in a worker thread; Ctrl-C cancels it
    and, once it has stopped, re-raises KeyboardInterrupt here."""
    import pycolmap

    token = pycolmap.CancellationToken()
    result: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            result["value"] = call(cancellation_token=token, **kwargs)
        except BaseException as exc:  # handed to the main thread below
            result["error"] = exc
        finally:
            done.set()

    # Waiting on an Event, not Thread.join: a join that Ctrl-C interrupted returns at once on the
    # next call (CPython 3.11), and a worker still inside COLMAP when Python exits aborts the process.
    threading.Thread(target=work, daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        token.cancel()
        while True:
            try:
                done.wait()
                break
            except KeyboardInterrupt:  # COLMAP stops at its next check; leaving earlier would crash
                continue
        raise
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")  # type: ignore[return-value]


def _task(bar, description: str, total: int | None):
    return bar.add_task(description, total=total, rate="", info="")


def run_sfm(
    image_dir: Path,
    names: Sequence[str],
    work_dir: Path,
    camera_model: CameraModel = "SIMPLE_RADIAL",
    single_camera: bool = True,
    matching: MatchingMethod = "auto",
    verbose: bool = False,
) -> SfmResult:
    """Reconstruct the images ``names`` (files in ``image_dir``, in capture order for sequential
    matching); ``work_dir`` receives COLMAP's database and models."""
    import pycolmap

    work_dir.mkdir(parents=True, exist_ok=True)
    db = work_dir / "database.db"
    method = choose_matching(len(names), matching)
    mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    pycolmap.set_random_seed(SEED)
    log_level = pycolmap.logging.minloglevel
    # COLMAP's log would bury the bars, and its errors are reported here as one line
    pycolmap.logging.minloglevel = 0 if verbose else 3
    timings: dict[str, float] = {}
    try:
        with make_progress(transient=True) as bar:
            t0 = time.perf_counter()
            pycolmap.Database.open(db).close()
            pycolmap.import_images(db, image_dir, camera_mode=mode, image_names=list(names), options=reader)
            task = _task(bar, "features", len(names))
            for i in range(0, len(names), FEATURE_BATCH):
                batch = list(names[i : i + FEATURE_BATCH])
                _cancellable(pycolmap.extract_features, database_path=db, image_path=image_dir, image_names=batch,
                             camera_mode=mode, reader_options=reader)
                bar.advance(task, len(batch))
            timings["features"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            pairs = _pairs(db, method)
            task = _task(bar, f"matching ({method})", len(pairs))
            pair_file = work_dir / "pairs.txt"
            pairing = pycolmap.ImportedPairingOptions()
            pairing.match_list_path = pair_file
            for i in range(0, len(pairs), PAIR_BATCH):
                chunk = pairs[i : i + PAIR_BATCH]
                pair_file.write_text("".join(f"{a} {b}\n" for a, b in chunk))
                _cancellable(pycolmap.match_image_pairs, database_path=db, pairing_options=pairing)
                bar.advance(task, len(chunk))
            timings["matching"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            options = pycolmap.IncrementalPipelineOptions()
            options.random_seed = SEED
            task = _task(bar, "mapping (images registered)", len(names))
            reconstructions = _cancellable(
                pycolmap.incremental_mapping, database_path=db, image_path=image_dir,
                output_path=work_dir / "models", options=options,
                next_image_callback=lambda: bar.advance(task, 1),
            )
            timings["mapping"] = time.perf_counter() - t0
    finally:
        pycolmap.logging.minloglevel = log_level
    best = max(reconstructions.values(), key=lambda r: r.num_reg_images(), default=None)
    return SfmResult(best, method, len(pairs), timings)


def _pairs(db: Path, method: str) -> list[tuple[str, str]]:
    """Image-name pairs to match, from COLMAP's own pair generators."""
    import pycolmap

    with pycolmap.Database.open(db) as database:
        if method == "exhaustive":
            generator = pycolmap.ExhaustivePairGenerator(pycolmap.ExhaustivePairingOptions(), database)
        else:
            options = pycolmap.SequentialPairingOptions()
            options.overlap = SEQUENTIAL_OVERLAP
            options.quadratic_overlap = True
            options.loop_detection = False  # needs a vocabulary tree, which is not shipped
            generator = pycolmap.SequentialPairGenerator(options, database)
        names = {image.image_id: image.name for image in database.read_all_images()}
        return [(names[a], names[b]) for a, b in generator.all_pairs()]
