"""When a batch runs: the policies a :class:`~onnxrec.server.batcher.DynamicBatcher` asks.

A policy sees every arrival (:meth:`BatchPolicy.admit`, which also says whether a request that finds
its batcher idle may run alone at once) and decides, before each batch is taken from the queue,
whether to wait for company (:meth:`BatchPolicy.gather`). Each batcher has its own policy object.

* :class:`AdaptivePolicy` (the default) batches when the event loop is saturated and requests come
  densely, and never waits otherwise. It reads how busy the loop's thread has been over the last
  :data:`BUSY_WINDOW_S` (its CPU time over wall time, ``time.thread_time``): below
  :data:`BUSY_FRACTION` the server has time to answer requests one by one, so a request runs at once
  (waiting would only add latency: a client-bound or lightly used server). Above it, a request that
  finds its batcher idle less than :data:`DENSE_GAP_S` after the previous arrival holds its batch open
  while further requests keep arriving less than that apart, up to :data:`MAX_WAIT_S` from its arrival
  or a full batch. A wait that drew no company makes the next 1, 2, 4, ... (up to 1,024) dense arrivals
  run at once. Under grpc.aio a model run is often shorter than a request's trip through gRPC, so
  requests never queue behind a run and the greedy rule ("batch what queued while the model ran")
  sees batches of one; when the loop is short of CPU, waiting for company saves a model run (and the
  cache misses an onnxruntime call causes the rest of the server) per request. The measured effect is
  in BENCHMARKS.md.
* :class:`FixedDelayPolicy` is Triton's ``max_queue_delay``: wait up to a fixed delay, from the oldest
  queued request's arrival, for a full batch; never run alone at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["AdaptivePolicy", "BatchPolicy", "FixedDelayPolicy", "QueueView"]

BUSY_WINDOW_S = 0.05  # how far back the loop's busy fraction is measured
BUSY_FRACTION = 0.95  # the loop's thread busier than this (CPU time / wall time): batching pays
DENSE_GAP_S = 0.001  # arrivals closer than this are a stream worth batching
MAX_WAIT_S = 0.004  # the longest a batch waits for company, from its first request's arrival
MAX_SKIPS = 1024  # after lonely waits, at most this many dense arrivals run at once before the next wait


class QueueView(Protocol):
    """What a policy may read of a batcher's queue."""

    @property
    def queued_rows(self) -> int:
        """Rows waiting (sum of the queued requests' weights)."""

    @property
    def oldest_arrival(self) -> float | None:
        """``time.monotonic()`` of the oldest queued request's arrival (None when the queue is empty)."""

    @property
    def max_rows(self) -> int:
        """Rows per model run."""

    @property
    def closed(self) -> bool:
        """The batcher is closing: do not wait."""


class BatchPolicy(Protocol):
    """Decides when a batch runs (see the module docstring)."""

    def admit(self, now: float, idle: bool) -> bool:
        """A request arrives at ``now`` (``time.monotonic()``); ``idle``: nothing is queued or running.
        Returns whether an idle batcher may run it alone at once (ignored when not idle)."""

    async def gather(self, queue: QueueView, wakeup: asyncio.Event) -> None:
        """Wait, or not, for more requests before the next batch is taken (``wakeup`` is set on each
        new arrival)."""


class AdaptivePolicy:
    """Wait for company while the loop is saturated and requests arrive densely, never otherwise (the
    module docstring). ``busy_fraction=0`` waits on dense arrivals whatever the load (tests)."""

    def __init__(
        self, dense_gap_s: float = DENSE_GAP_S, max_wait_s: float = MAX_WAIT_S, busy_fraction: float = BUSY_FRACTION
    ) -> None:
        self.dense_gap_s = dense_gap_s
        self.busy_fraction = busy_fraction
        self.max_wait_s = max(max_wait_s, dense_gap_s)
        self._last_arrival = float("-inf")
        self._hold = False  # the queued batch's first request arrived densely: wait for company
        self._skips = 0  # dense arrivals still to run at once after lonely waits
        self._backoff = 0
        self._window_wall = float("-inf")  # the busy-fraction window: its start (monotonic) and CPU time
        self._window_cpu = 0.0
        self._busy = 0.0  # the loop thread's CPU time / wall time over the last complete window

    def __repr__(self) -> str:
        return (
            f"AdaptivePolicy(dense_gap_s={self.dense_gap_s}, max_wait_s={self.max_wait_s}, "
            f"busy_fraction={self.busy_fraction})"
        )

    def admit(self, now: float, idle: bool) -> bool:
        gap, self._last_arrival = now - self._last_arrival, now
        if now - self._window_wall >= BUSY_WINDOW_S:
            cpu = time.thread_time()
            self._busy = (cpu - self._window_cpu) / (now - self._window_wall)
            self._window_wall, self._window_cpu = now, cpu
        if not idle or gap > self.dense_gap_s or self._busy < self.busy_fraction:
            return True
        if self._skips:
            self._skips -= 1
            return True
        self._hold = True
        return False

    async def gather(self, queue: QueueView, wakeup: asyncio.Event) -> None:
        if not self._hold:
            return
        self._hold = False
        rows = queue.queued_rows
        oldest = queue.oldest_arrival
        if oldest is None:
            return
        cap = oldest + self.max_wait_s
        while queue.queued_rows < queue.max_rows and not queue.closed:
            now = time.monotonic()
            until = min(self._last_arrival + self.dense_gap_s, cap)
            if until <= now:
                break
            await asyncio.sleep(until - now)
        if queue.queued_rows > rows:
            self._backoff = 0
        else:
            self._backoff = min(max(1, 2 * self._backoff), MAX_SKIPS)
            self._skips = self._backoff


class FixedDelayPolicy:
    """Wait up to ``delay_s`` from the oldest queued request's arrival for a full batch (Triton's
    ``max_queue_delay_microseconds``); a request never runs alone at once."""

    def __init__(self, delay_s: float) -> None:
        if not delay_s > 0.0:  # also rejects NaN
            raise ValueError(f"delay_s must be > 0, got {delay_s}")
        self.delay_s = delay_s

    def __repr__(self) -> str:
        return f"FixedDelayPolicy(delay_s={self.delay_s})"

    def admit(self, now: float, idle: bool) -> bool:
        return False

    async def gather(self, queue: QueueView, wakeup: asyncio.Event) -> None:
        while queue.queued_rows < queue.max_rows and not queue.closed:
            oldest = queue.oldest_arrival
            if oldest is None:
                return
            remaining = oldest + self.delay_s - time.monotonic()
            if remaining <= 0:
                return
            wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await wakeup.wait()
            except TimeoutError:
                return
