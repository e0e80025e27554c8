"""How long a model run takes, learned from the runs themselves: decides which batches run on the
event loop itself (no thread hop) and which go to the batcher's executor thread.

Small models cost less to run than the hop to an executor thread and back (a thread wake-up and a
callback into the loop, about 0.2 ms of CPU on a small machine), so a batch expected to take at most
``inline_max_s`` runs inline. A long run still goes to the executor so the loop keeps reading requests.
"""

from __future__ import annotations

import collections

__all__ = ["RunCost"]

RECENT_RUNS = 15  # runs whose median seconds per row is the estimate


class RunCost:
    """The median seconds per row of the recent runs, and the inline decision it drives.

    A median, because a run that was preempted on a busy machine measures long without the model being
    slow. ``inline_max_s=0`` never inlines (and records nothing).
    """

    def __init__(self, inline_max_s: float) -> None:
        if not inline_max_s >= 0.0:  # also rejects NaN
            raise ValueError(f"inline_max_s must be >= 0, got {inline_max_s}")
        self.inline_max_s = inline_max_s
        self._recent: collections.deque[float] = collections.deque(maxlen=RECENT_RUNS)
        self._per_row: float | None = None
        self._runs = 0

    @property
    def seconds_per_row(self) -> float | None:
        """The current estimate (None before the first measured run)."""
        return self._per_row

    def inline(self, rows: int) -> bool:
        """Whether a batch of ``rows`` is expected to run within ``inline_max_s`` (never before a first
        measured run: the first run of a model may be slow)."""
        per_row = self._per_row
        return per_row is not None and per_row * rows <= self.inline_max_s

    def record(self, rows: int, seconds: float) -> None:
        """Add one run. The median is re-taken while the window fills, then every 4th run (it moves
        slowly, and sorting on every run cost a lone request about 1 us)."""
        if self.inline_max_s == 0:
            return
        self._recent.append(seconds / max(rows, 1))
        self._runs += 1
        if self._runs <= RECENT_RUNS or self._runs % 4 == 0:
            ordered = sorted(self._recent)
            self._per_row = ordered[len(ordered) // 2]
