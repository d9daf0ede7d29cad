"""Planar cross-sections (OReX ``.csl`` files) as a training input: no images, no cameras."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from data.base import NormalisedFrame, SceneBox
from data.cross_sections import CrossSections, read_csl
from data.parsers.common import ParserConfig, check_dataset_path
from recon.errors import DataError


@dataclass
class CrossSectionOutputs(NormalisedFrame):
    """Cross-sections normalised into [-1, 1]^3 (OReX's rule, see :meth:`CrossSections.normalized`).

    ``x_normalised = dataparser_scale * (x_input + dataparser_transform[:, 3])`` (no rotation).
    ``splits["train"]`` lists the planes.
    """

    sections: CrossSections
    scene_box: SceneBox
    splits: dict[str, list[int]]
    dataparser_transform: Tensor
    dataparser_scale: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class CSLParserConfig(ParserConfig):
    """OReX ``.csl`` cross-sections: planes with closed inside/outside contours (``--data shape.csl``)."""

    name: ClassVar[str] = "csl"

    center: bool = True
    """Subtract the vertex mean before scaling (OReX's rule); off keeps inputs already in [-1, 1] aligned."""

    def load(self, data: Path | None) -> CrossSectionOutputs:
        path = check_dataset_path(data)
        if path.is_dir():
            files = sorted(path.glob("*.csl"))
            if len(files) != 1:
                raise DataError(f"expected one .csl file in the folder, found {len(files)}", path)
            path = files[0]
        if self.num_train_views is not None:
            raise DataError("--num-train-views does not apply to cross-sections", path)
        sections = read_csl(path).normalized(center=self.center)
        norm = sections.normalization
        transform = torch.cat([torch.eye(3), torch.as_tensor(-norm.center, dtype=torch.float32)[:, None]], 1)
        return CrossSectionOutputs(
            sections=sections,
            scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])),
            splits={"train": list(range(len(sections)))},
            dataparser_transform=transform,
            dataparser_scale=1.0 / float(norm.scale),
            # The normalised sections themselves: a model sees the metadata (SceneInfo), e.g. OReX's viewer panel draws them.
            metadata={"format": self.name, "source": str(path), "num_vertices": int(len(sections.all_vertices())), "cross_sections": sections},
        )

    def parse(self, data: Path) -> Any:  # load() is overridden: cross-sections are not DataparserOutputs
        raise NotImplementedError


def is_csl(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".csl"


