"""Training-time hook objects.

Every schedule-driven heuristic (densification, pruning, occupancy refresh, annealing, and the
trainer's own checkpointing and evaluation) is a :class:`Callback` with explicit ``every`` /
``start`` / ``stop`` steps, so neither the trainer loop nor a model body tests ``step % N``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable


class Where(str, Enum):
    """When in a training iteration a callback runs."""

    BEFORE_STEP = "before_step"
    """Before the batch is drawn (e.g. set annealing parameters for this step)."""
    AFTER_BACKWARD = "after_backward"
    """After gradients exist, before the optimizer steps (e.g. accumulate densification stats)."""
    AFTER_STEP = "after_step"
    """After the optimizer step (e.g. densify, refresh an occupancy grid, save, evaluate)."""


@dataclass
class Callback:
    """Call ``fn(step, **context)`` at ``where`` for steps ``start <= step < stop`` with ``(step - start) % every == 0``.

    ``context`` holds what the trainer has at that point (``outputs``, ``batch``, ``optimizers``).
    """

    fn: Callable[..., Any]
    where: Where = Where.AFTER_STEP
    every: int = 1
    start: int = 0
    stop: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def due(self, step: int) -> bool:
        if self.every <= 0 or step < self.start or (self.stop is not None and step >= self.stop):
            return False
        return (step - self.start) % self.every == 0

    def __call__(self, step: int, **context: Any) -> None:
        if self.due(step):
            self.fn(step, **self.kwargs, **context)


def run_callbacks(callbacks: list[Callback], where: Where, step: int, **context: Any) -> None:
    for cb in callbacks:
        if cb.where == where:
            cb(step, **context)
