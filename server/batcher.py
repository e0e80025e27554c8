"""Per-model dynamic batching for the asyncio gRPC server.

A :class:`DynamicBatcher` collects concurrent requests for one model into batches and runs each batch
through a blocking ``run_batch`` function in an executor thread, so the event loop keeps accepting
requests while the model computes. It behaves like Triton's dynamic batcher, with one difference in
the default: ``max_queue_delay_s=0`` is *greedy*, so an idle model runs a lone request at once and
batches only form from requests that arrived while the previous batch was running. Under load the
batches grow by themselves; at low load no request ever waits for company.

Scheduling (one background task per batcher, started lazily on the first :meth:`DynamicBatcher.submit`):

1. wait until the queue is non-empty;
2. if ``max_queue_delay_s > 0`` and the queued rows do not fill a batch, wait up to that delay, counted
   from the oldest queued request's arrival, for more requests;
3. take requests FIFO while their weights (rows) sum to at most ``max_batch_size`` (a single request
   heavier than that runs alone); requests whose deadline has passed fail with
   :class:`DeadlineExpiredError` and requests whose caller went away are dropped, neither reaching the model;
4. run the batch in the executor and hand each caller its own result; meanwhile new arrivals queue up
   and form the next batch.

Linger (``linger_s > 0``, off by default) is the adaptive middle ground between greedy and a fixed
delay: a request that finds the queue empty less than ``linger_s`` after the previous arrival (so the
stream is dense) holds its batch open while further requests keep arriving less than ``linger_s``
apart, up to ``linger_max_s`` from its arrival or a full batch. A request after a longer gap never
waits, and a linger that drew no company makes the next 1, 2, 4, ... (up to 1024) arrivals skip it,
so a sequential caller pays for at most a handful of lingers. Batching then forms on a model too cheap
for requests to queue behind its runs, which saves a model run (and the cache misses an onnxruntime
call causes the rest of the server) per request at high concurrency, at the price of the wait.

Small models cost less to run than the hop to an executor thread and back (a thread wake-up and a
callback into the loop, about 0.2 ms of CPU on a small machine). With ``inline_max_s > 0`` a batch
whose expected run time (the median of recent runs' seconds per row, times its rows) is at most that
runs on the event loop itself, and a greedy batcher that is idle (nothing queued or running) lets the
caller run its request directly, without the queue, a future or a task switch. Slower runs still go to
the executor, and while one runs the requests arriving meanwhile queue up and batch as above.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "BatcherClosedError",
    "BatcherConfig",
    "DeadlineExpiredError",
    "DynamicBatcher",
    "QueueFullError",
]

log = logging.getLogger(__name__)

_RECENT_RUNS = 15  # runs whose median seconds per row decides inlining

T = TypeVar("T")
R = TypeVar("R")


class QueueFullError(Exception):
    """The batcher's bounded queue is full (the server maps this to ``RESOURCE_EXHAUSTED``)."""


class DeadlineExpiredError(Exception):
    """The request's deadline passed before it reached the model (``DEADLINE_EXCEEDED``)."""


class BatcherClosedError(Exception):
    """The batcher is closed, or closed without draining while the request waited (``UNAVAILABLE``)."""


@dataclass(frozen=True)
class BatcherConfig:
    """How one model's requests are batched.

    Attributes:
        max_batch_size: rows per model run (>= 1); a request of weight ``w`` occupies ``w`` rows.
        max_queue_delay_s: extra wait, counted from the oldest queued request's arrival, for a fuller batch
            when the model is idle; 0 (the default) is greedy: run whatever is queued at once.
        max_queue_size: requests allowed to wait (not counting the batch being run); beyond it
            :meth:`DynamicBatcher.submit` raises :class:`QueueFullError` at once.
        inline_max_s: run a batch on the event loop itself, skipping the executor hop, when its expected
            run time (the median of recent runs' seconds per row, times its rows) is at most this. The hop
            (a thread wake-up and a callback back into the loop) costs more CPU than a small model run; a
            long run still goes to the executor so the loop keeps reading requests. 0 (the default) never
            inlines.
        linger_s: > 0: a request that finds the queue empty within this many seconds of the previous arrival
            holds its batch open while requests keep arriving at most this far apart (see the module
            docstring); 0 (the default) never lingers. Ignored when ``max_queue_delay_s > 0``.
        linger_max_s: the longest a lingering batch waits, from its first request's arrival (at least
            ``linger_s``).
    """

    max_batch_size: int = 64
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 1024
    inline_max_s: float = 0.0
    linger_s: float = 0.0
    linger_max_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not self.max_queue_delay_s >= 0.0:  # also rejects NaN
            raise ValueError(f"max_queue_delay_s must be >= 0, got {self.max_queue_delay_s}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if not self.inline_max_s >= 0.0:
            raise ValueError(f"inline_max_s must be >= 0, got {self.inline_max_s}")
        if not self.linger_s >= 0.0:
            raise ValueError(f"linger_s must be >= 0, got {self.linger_s}")
        if not self.linger_max_s >= 0.0:
            raise ValueError(f"linger_max_s must be >= 0, got {self.linger_max_s}")


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    """One submitted request: its item, its caller's future and its bookkeeping."""

    item: T
    weight: int
    deadline: float | None
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.monotonic)
    queued: bool = True  # still in the queue (not yet taken into a batch or discarded)
    linger: bool = False  # at the head of the queue, hold the batch open for company (BatcherConfig.linger_s)


class DynamicBatcher(Generic[T, R]):
    """Batches concurrent :meth:`submit` calls for one model and runs them through ``run_batch``.

    Args:
        run_batch: blocking function (e.g. an onnxruntime call, which releases the GIL) run in ``executor``.
            It receives the batch's items and must return exactly one result per item, in order. A result
            that is an :class:`Exception` instance means "this item failed": its :meth:`submit` raises it and
            the other items are unaffected. If ``run_batch`` itself raises, every item of that batch gets
            that exception, and the batcher keeps serving later requests.
        config: batch size, queue delay and queue bound.
        executor: where ``run_batch`` runs; default a dedicated one-thread pool owned (and shut down on
            :meth:`close`) by the batcher. A batcher runs at most one batch at a time whatever the executor.
        name: for thread names and log messages (e.g. the model name).
        on_batch: ``on_batch(batch_rows, queue_seconds_of_oldest)`` called on the event loop as each batch is
            dispatched (for metrics): the batch's rows (sum of its items' weights) and how long its oldest
            item waited in the queue. Exceptions from it are logged and ignored.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R | Exception]],
        config: BatcherConfig,
        *,
        executor: concurrent.futures.Executor | None = None,
        name: str = "",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._config = config
        self._name = name
        self._on_batch = on_batch
        self._owns_executor = executor is None
        self._executor: concurrent.futures.Executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"batcher-{name}" if name else "batcher"
        )
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        self._queued_weight = 0
        self._inflight: list[_Pending[T, R]] = []
        self._closed = False
        self._drain = True
        # median seconds per row of the recent runs (for inlining): a median, because a run that was
        # preempted on a busy machine measures long without the model being slow
        self._recent_per_row: collections.deque[float] = collections.deque(maxlen=_RECENT_RUNS)
        self._seconds_per_row: float | None = None
        self._runs = 0
        # created with the scheduler task, in the loop that first submits
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # adaptive linger: when the previous request arrived, and how many arrivals run without lingering
        # after lingers that drew no company (doubling, so a low-rate stream rarely pays for one)
        self._last_arrival = float("-inf")
        self._skip_linger = 0
        self._linger_backoff = 0

    def __repr__(self) -> str:
        return (
            f"DynamicBatcher(name={self._name!r}, config={self._config!r}, queue_depth={self.queue_depth}, "
            f"closed={self._closed})"
        )

    @property
    def config(self) -> BatcherConfig:
        """The batching configuration."""
        return self._config

    @property
    def name(self) -> str:
        """The name given at construction (e.g. the model name)."""
        return self._name

    @property
    def queue_depth(self) -> int:
        """Requests waiting in the queue (not counting the batch being run)."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called (new submits are refused)."""
        return self._closed

    async def submit(self, item: T, *, deadline: float | None = None, weight: int = 1, direct: bool = True) -> R:
        """Queue ``item`` for the next batch and return its result.

        Args:
            item: what ``run_batch`` receives for this request.
            deadline: a :func:`time.monotonic` value; if it has passed when the item's batch is assembled
                (or already at submit), the item is not run and this raises :class:`DeadlineExpiredError`.
            weight: rows this item occupies in a batch (>= 1); a batch holds items whose weights sum to at
                most ``max_batch_size``, except that a single item heavier than that runs alone.
            direct: whether an idle batcher may let this caller run its item at once on the event loop
                (see ``inline_max_s``); pass False when more submits are coming in the same loop pass (one
                caller's many items), so they queue and run as one batch.

        Raises:
            BatcherClosedError: the batcher is closed (or was closed without draining while this waited).
            QueueFullError: ``max_queue_size`` requests are already waiting.
            DeadlineExpiredError: the deadline passed before the item reached the model.
            Exception: whatever ``run_batch`` raised for the batch, or returned for this item.

        If the caller is cancelled while the item is still queued, the item is dropped and never run.
        """
        if weight < 1:
            raise ValueError(f"weight must be >= 1, got {weight}")
        if self._closed:
            raise BatcherClosedError(f"batcher {self._name!r} is closed")
        if len(self._queue) >= self._config.max_queue_size:
            raise QueueFullError(f"batcher {self._name!r}: queue full ({self._config.max_queue_size} requests waiting)")
        now = time.monotonic()
        gap, self._last_arrival = now - self._last_arrival, now
        if deadline is not None and deadline <= now:
            raise DeadlineExpiredError(f"batcher {self._name!r}: deadline passed before the request was queued")
        linger = self._config.linger_s > 0 and not self._queue and self._should_linger(gap)
        if (
            direct
            and not self._queue
            and not self._inflight
            and self._config.max_queue_delay_s == 0
            and self._inline_ok(weight)
            and not linger
        ):
            return self._run_direct(item, weight)
        wakeup = self._ensure_started()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        pending: _Pending[T, R] = _Pending(item, weight, deadline, future, enqueued=now, linger=linger)
        self._queue.append(pending)
        self._queued_weight += weight
        wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:
            self._discard(pending)
            raise

    async def close(self, *, drain: bool = True) -> None:
        """Stop accepting requests and wait for the scheduler to stop.

        With ``drain=True`` the queued and running requests are finished first; with ``drain=False`` the
        queued ones fail with :class:`BatcherClosedError` and only the batch already running is finished.
        An owned executor is shut down afterwards. Calling it again is harmless.
        """
        self._closed = True
        if not drain:
            self._drain = False
            self._fail_queued(BatcherClosedError(f"batcher {self._name!r} closed before the request was run"))
        task = self._task
        if task is not None and not task.done():
            assert self._wakeup is not None
            self._wakeup.set()
            # wait without propagating a cancellation of close() into the scheduler
            await asyncio.wait({task})
        if self._queue:  # the scheduler never ran in this loop (or died): nothing will serve these
            self._fail_queued(BatcherClosedError(f"batcher {self._name!r} closed before the request was run"))
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    # -- internals -------------------------------------------------------------------------------------

    def _ensure_started(self) -> asyncio.Event:
        """Start the scheduler task in the running loop if it is not running; return its wake-up event."""
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done():
            if task.get_loop() is not loop:
                raise RuntimeError(f"batcher {self._name!r} is already running in another event loop")
            assert self._wakeup is not None
            return self._wakeup
        self._wakeup = asyncio.Event()
        self._task = loop.create_task(self._schedule(), name=f"batcher-{self._name}")
        return self._wakeup

    def _inline_ok(self, rows: int) -> bool:
        """Whether a batch of ``rows`` is expected to run within ``inline_max_s`` (after a first measured run)."""
        per_row = self._seconds_per_row
        return per_row is not None and per_row * rows <= self._config.inline_max_s

    def _record_run(self, rows: int, seconds: float) -> None:
        """Add a run's seconds per row; re-take the median while the window fills, then every 4th run
        (it moves slowly, and sorting on every run cost a lone request about 1 us)."""
        recent = self._recent_per_row
        recent.append(seconds / rows)
        self._runs += 1
        if self._runs <= _RECENT_RUNS or self._runs % 4 == 0:
            ordered = sorted(recent)
            self._seconds_per_row = ordered[len(ordered) // 2]

    def _notify_batch(self, rows: int, queued_s: float) -> None:
        """Tell ``on_batch`` (metrics) a batch is dispatched; its failures are logged, never raised."""
        if self._on_batch is not None:
            try:
                self._on_batch(rows, queued_s)
            except Exception:
                log.exception("batcher %r: on_batch callback failed", self._name)

    def _run_direct(self, item: T, weight: int) -> R:
        """The idle fast path: nothing queued or running and the run is cheap, so the caller runs its own
        batch of one on the event loop: no queue, no future, no task switch (no batching penalty at low load)."""
        self._notify_batch(weight, 0.0)
        t0 = time.perf_counter()
        results = self._run_batch([item])
        self._record_run(weight, time.perf_counter() - t0)
        if len(results) != 1:
            raise RuntimeError(f"batcher {self._name!r}: run_batch returned {len(results)} results for 1 item")
        result = results[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _discard(self, pending: _Pending[T, R]) -> None:
        """Remove a still-queued request whose caller went away."""
        if pending.queued:
            pending.queued = False
            self._queue.remove(pending)
            self._queued_weight -= pending.weight

    def _fail_queued(self, exc: Exception) -> None:
        """Fail every queued request with ``exc`` and empty the queue."""
        while self._queue:
            pending = self._queue.popleft()
            pending.queued = False
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._queued_weight = 0

    async def _schedule(self) -> None:
        """The scheduler loop: assemble batches from the queue and run them one at a time."""
        assert self._wakeup is not None
        wakeup = self._wakeup
        config = self._config
        try:
            while True:
                while not self._queue:
                    if self._closed:
                        return
                    wakeup.clear()
                    await wakeup.wait()
                if config.max_queue_delay_s > 0 and not (self._closed and self._drain):
                    await self._wait_for_fuller_batch(wakeup)
                    if not self._queue:
                        continue
                elif self._queue[0].linger and not self._closed:
                    await self._linger()
                    if not self._queue:
                        continue
                batch = self._take_batch()
                if batch:
                    await self._run(batch)
        finally:
            # only reached early if the task is cancelled (loop shutdown) or on a bug: nobody must hang
            err = BatcherClosedError(f"batcher {self._name!r} stopped")
            for pending in self._inflight:
                if not pending.future.done():
                    pending.future.set_exception(err)
            self._inflight = []
            self._fail_queued(err)

    async def _wait_for_fuller_batch(self, wakeup: asyncio.Event) -> None:
        """Wait, up to the queue delay from the oldest request's arrival, until a full batch is queued."""
        config = self._config
        while self._queue and self._queued_weight < config.max_batch_size and not self._closed:
            remaining = self._queue[0].enqueued + config.max_queue_delay_s - time.monotonic()
            if remaining <= 0:
                return
            wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await wakeup.wait()
            except TimeoutError:
                return

    def _should_linger(self, gap: float) -> bool:
        """Whether a request that finds the queue empty, ``gap`` seconds after the previous arrival, holds
        its batch open for company (consumes one skip of the backoff)."""
        if gap > self._config.linger_s:
            return False
        if self._skip_linger:
            self._skip_linger -= 1
            return False
        return True

    async def _linger(self) -> None:
        """Hold the queued batch open while requests keep arriving less than ``linger_s`` apart, up to
        ``linger_max_s`` from the oldest one's arrival or a full batch. A linger that drew no company
        makes the next 1, 2, 4, ... (up to 1024) arrivals run without one; one that did resets that."""
        cfg = self._config
        rows = self._queued_weight
        cap = self._queue[0].enqueued + max(cfg.linger_max_s, cfg.linger_s)
        while self._queue and self._queued_weight < cfg.max_batch_size and not self._closed:
            now = time.monotonic()
            until = min(self._last_arrival + cfg.linger_s, cap)
            if until <= now:
                break
            await asyncio.sleep(until - now)
        if self._queued_weight > rows:
            self._linger_backoff = 0
        else:
            self._linger_backoff = min(max(1, 2 * self._linger_backoff), 1024)
            self._skip_linger = self._linger_backoff

    def _take_batch(self) -> list[_Pending[T, R]]:
        """Pop the next batch FIFO, failing expired requests and skipping abandoned ones."""
        limit = self._config.max_batch_size
        now = time.monotonic()
        batch: list[_Pending[T, R]] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # caller cancelled (normally already discarded)
                self._pop()
                continue
            if head.deadline is not None and head.deadline <= now:
                self._pop()
                head.future.set_exception(
                    DeadlineExpiredError(f"batcher {self._name!r}: deadline passed while the request was queued")
                )
                continue
            if batch and rows + head.weight > limit:
                break
            self._pop()
            batch.append(head)
            rows += head.weight
            if rows >= limit:
                break
        return batch

    def _pop(self) -> None:
        pending = self._queue.popleft()
        pending.queued = False
        self._queued_weight -= pending.weight

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        """Run one batch in the executor (or inline) and resolve its callers' futures."""
        rows = sum(p.weight for p in batch)
        self._notify_batch(rows, time.monotonic() - batch[0].enqueued)
        items = [p.item for p in batch]
        self._inflight = batch
        loop = asyncio.get_running_loop()
        inline = self._inline_ok(rows)
        t0 = time.perf_counter()
        try:
            if inline:
                results = self._run_batch(items)
            else:
                results = await loop.run_in_executor(self._executor, self._run_batch, items)
        except Exception as exc:
            self._inflight = []
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        # (on cancellation _inflight stays set so that _schedule's cleanup fails these callers)
        self._inflight = []
        if self._config.inline_max_s > 0:
            self._record_run(rows, time.perf_counter() - t0)
        if len(results) != len(batch):
            err = RuntimeError(
                f"batcher {self._name!r}: run_batch returned {len(results)} results for {len(batch)} items"
            )
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(err)
            return
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():  # caller cancelled while its batch ran
                continue
            if isinstance(result, Exception):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        if inline:  # let the callers and the gRPC reads run before the next batch forms
            await asyncio.sleep(0)
