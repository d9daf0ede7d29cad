"""Progress bar and TensorBoard logging."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
T = TypeVar("T")


def make_progress(transient: bool = False) -> Progress:
    """A rich progress bar with count, iterations per second and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
    )


def track(iterable: Iterable[T], description: str, enabled: bool = True) -> Iterable[T]:
    """Iterate with a transient progress bar (none when ``enabled`` is False)."""
    if not enabled:
        yield from iterable
        return
    items = list(iterable) if not hasattr(iterable, "__len__") else iterable
    bar = make_progress(transient=True)
    with bar:
        task = bar.add_task(description, total=len(items), rate="", info="")  # type: ignore[arg-type]
        for item in items:
            yield item
            bar.advance(task)


class Writer:
    """TensorBoard scalars and images (a no-op when disabled)."""

    def __init__(self, log_dir: Path | None):
        self._tb = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        if self._tb is None:
            return
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self._tb.add_scalar(f"{prefix}{key}", float(value), step)

    def image(self, tag: str, image: torch.Tensor | np.ndarray, step: int) -> None:
        """image: [H, W, 3] float in [0, 1]."""
        if self._tb is None:
            return
        arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
        self._tb.add_image(tag, np.clip(arr, 0, 1), step, dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
