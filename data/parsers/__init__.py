"""Dataset parsers: one config dataclass per format, plus ``auto`` detection.

``PARSERS`` maps sub-command names to config classes; ``config.load(path)`` returns normalised
:class:`~data.base.DataparserOutputs`. See ``data/parsers/README.md`` for every format's
conventions, splits and normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Literal

from data.base import DataparserOutputs
from data.parsers.blender import BlenderParserConfig
from data.parsers.colmap import MODEL_CANDIDATES, ColmapParserConfig
from data.parsers.colmap_io import model_files
from data.parsers.csl import CSLParserConfig, is_csl
from data.parsers.common import ParserConfig, check_dataset_path
from data.parsers.idr import CAMERA_FILES, IDRParserConfig
from data.parsers.llff import LLFFParserConfig
from data.parsers.monosdf import MonoSDFParserConfig, rgb_files
from data.parsers.nerfstudio import NerfstudioParserConfig
from recon.errors import ConfigError, DataError

__all__ = [
    "PARSERS",
    "AutoParserConfig",
    "BlenderParserConfig",
    "CSLParserConfig",
    "ColmapParserConfig",
    "IDRParserConfig",
    "LLFFParserConfig",
    "MonoSDFParserConfig",
    "NerfstudioParserConfig",
    "ParserConfig",
    "detect_format",
    "load_dataset",
]

LOOKED_FOR = (
    "transforms.json (nerfstudio), transforms_train.json (blender), poses_bounds.npy (llff), "
    "meta_data.json or cameras.npz + *_rgb.png (monosdf), cameras.npz/cameras_sphere.npz + image/ (dtu), "
    "sparse/0, colmap/sparse/0 or cameras+images .bin/.txt (colmap), or a .csl file (cross-sections)"
)


def detect_format(data: Path | str) -> ParserConfig:
    """A default config of the format the folder holds (first rule that matches):

    transforms.json -> nerfstudio; transforms_train.json -> blender; poses_bounds.npy -> llff
    (before COLMAP: LLFF folders often carry a partial sparse/0); meta_data.json -> monosdf
    (sdfstudio); cameras.npz/cameras_sphere.npz with *_rgb.png -> monosdf, with image/ -> dtu;
    a complete COLMAP model in sparse/0, colmap/sparse/0, sparse/ or the folder -> colmap.
    A path to a transforms.json or meta_data.json file is accepted too.
    """
    data = check_dataset_path(data)
    if data.is_file():
        if data.name == "transforms.json":
            return NerfstudioParserConfig()
        if data.name == "meta_data.json":
            return MonoSDFParserConfig()
        if is_csl(data):
            return CSLParserConfig()
        raise DataError(f"cannot tell the dataset format of a single file; expected a folder with one of: {LOOKED_FOR}", data)
    if (data / "transforms.json").is_file():
        return NerfstudioParserConfig()
    if (data / "transforms_train.json").is_file():
        return BlenderParserConfig()
    if (data / "poses_bounds.npy").is_file():
        return LLFFParserConfig()
    if (data / "meta_data.json").is_file():
        return MonoSDFParserConfig()
    if any((data / name).is_file() for name in (*CAMERA_FILES, "cameras.npz")):
        if rgb_files(data):
            return MonoSDFParserConfig()
        if (data / "image").is_dir():
            return IDRParserConfig()
    for rel in MODEL_CANDIDATES:
        if (data / rel).is_dir() and model_files(data / rel) is not None:
            return ColmapParserConfig()
    raise DataError(f"unknown dataset format; looked for {LOOKED_FOR}", data)


@dataclass
class AutoParserConfig(ParserConfig):
    """Detect the format from the folder's files and parse it with that format's defaults."""

    name: ClassVar[str] = "auto"

    background: Literal["white", "black"] = "white"
    """Colour RGBA images are composited onto (formats with alpha)."""

    def load(self, data: Path | None) -> DataparserOutputs:
        if data is None:  # no --data: the built-in synthetic scene, generated on first use
            from data.synthetic import default_scene_path

            data = default_scene_path()
        config = detect_format(data)
        names = {f.name for f in fields(config)}
        for f in fields(self):
            if f.name in names:
                setattr(config, f.name, getattr(self, f.name))
        return config.load(data)

    def parse(self, data: Path) -> DataparserOutputs:
        return detect_format(data).parse(data)


PARSERS: dict[str, type[ParserConfig]] = {
    "auto": AutoParserConfig,
    "nerfstudio-data": NerfstudioParserConfig,
    "blender-data": BlenderParserConfig,
    "llff-data": LLFFParserConfig,
    "colmap": ColmapParserConfig,
    "dtu-data": IDRParserConfig,
    "monosdf-data": MonoSDFParserConfig,
    "csl": CSLParserConfig,
}
"""Sub-command name -> parser config class (``auto`` detects the format)."""


def load_dataset(data: Path | str, parser: str = "auto", **options) -> DataparserOutputs:
    """Convenience: ``PARSERS[parser](**options).load(data)``."""
    if parser not in PARSERS:
        raise ConfigError(f"unknown dataset format {parser!r}; available: {', '.join(PARSERS)}")
    return PARSERS[parser](**options).load(Path(data))
