"""User-facing errors.

A :class:`ReconError` is a mistake in what the user gave us (a path, a file, a flag) or in the
environment a run depends on (a full disk, training gone non-finite). The console
scripts catch it and print its message as one line on stderr with a non-zero exit, never a
traceback. Anything else that escapes is a bug in recon and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class ReconError(Exception):
    """A problem with the user's input or environment, reported as one line naming the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class DataError(ReconError):
    """A dataset folder or file that cannot be read as the format it claims to be."""


class CheckpointError(ReconError):
    """A checkpoint that is missing, truncated, corrupt or belongs to another model."""


class ConfigError(ReconError):
    """An unknown method, a bad flag value or an inconsistent configuration."""


class WriteError(ReconError):
    """An output that cannot be written where it was asked for (a full disk, a read-only or
    forbidden folder). Raised by :func:`recon.atomic.atomic_write`, so the destination is unchanged."""


class TrainingError(ReconError):
    """Training cannot go on (a non-finite loss or gradient, a checkpoint that cannot be written);
    the message names the step and the last complete checkpoint to resume from."""


def check_declared_size(needed: int, available: int, what: str, path: str | Path, error: type[ReconError] = DataError) -> None:
    """Refuse what a file's header declares (a count, a shape) when its data, ``needed`` bytes at
    the least, cannot fit in the ``available`` bytes that follow: checked before allocating, so a
    header claiming 10^12 points is a one-line error rather than a huge allocation."""
    if needed > available:
        raise error(f"{what} declared, which needs at least {needed} bytes, but the file has {available} (truncated or corrupt)", path)
