"""Per-model dynamic batching for the asyncio gRPC server: a queue, a policy, and the runs.

A :class:`DynamicBatcher` collects concurrent requests for one model graph into batches and runs each
batch through a blocking ``run_batch`` function, on the event loop itself when the run is cheap
(:class:`~onnxrec.server.run_cost.RunCost`) and in an executor thread otherwise, so the loop keeps
accepting requests while a long run computes. When a batch runs is its policy's decision
(:mod:`onnxrec.server.batch_policy`): by default it batches when requests come densely.

Scheduling (one background task per batcher, started lazily on the first :meth:`DynamicBatcher.submit`):

1. a submit that finds nothing queued or running, whose policy lets it run alone and whose run is
   cheap, runs at once in the caller (no queue, no future, no task switch: an idle server adds nothing);
2. otherwise it is queued; the scheduler waits until the queue is non-empty, then lets the policy
   wait for company (:meth:`BatchPolicy.gather`);
3. it takes requests FIFO while their weights (rows) sum to at most ``max_batch_size`` (a single request
   heavier than that runs alone); requests whose deadline has passed fail with
   :class:`DeadlineExpiredError` and requests whose caller went away are dropped, neither reaching the model;
4. it runs the batch and hands each caller its own result; meanwhile new arrivals queue up.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from onnxrec.server.batch_policy import AdaptivePolicy, BatchPolicy
from onnxrec.server.run_cost import RunCost

__all__ = ["BatcherClosedError", "BatcherConfig", "DeadlineExpiredError", "DynamicBatcher", "QueueFullError"]

log = logging.getLogger(__name__)

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
        max_queue_size: requests allowed to wait (not counting the batch being run); beyond it
            :meth:`DynamicBatcher.submit` raises :class:`QueueFullError` at once.
        inline_max_s: run a batch on the event loop itself when its expected run time is at most this
            (:class:`~onnxrec.server.run_cost.RunCost`); 0 (the default) always uses the executor.
    """

    max_batch_size: int = 64
    max_queue_size: int = 1024
    inline_max_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if not self.inline_max_s >= 0.0:  # also rejects NaN
            raise ValueError(f"inline_max_s must be >= 0, got {self.inline_max_s}")


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    """One submitted request: its item, its caller's future and its bookkeeping."""

    item: T
    weight: int
    deadline: float | None
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.monotonic)
    queued: bool = True  # still in the queue (not yet taken into a batch or discarded)


class DynamicBatcher(Generic[T, R]):
    """Batches concurrent :meth:`submit` calls for one model graph and runs them through ``run_batch``.

    Args:
        run_batch: blocking function (e.g. an onnxruntime call, which releases the GIL). It receives the
            batch's items and must return exactly one result per item, in order. A result that is an
            :class:`Exception` instance means "this item failed": its :meth:`submit` raises it and the
            other items are unaffected. If ``run_batch`` itself raises, every item of that batch gets that
            exception, and the batcher keeps serving later requests.
        config: batch size, queue bound, inline bound.
        policy: when a batch runs (:mod:`onnxrec.server.batch_policy`; one object per batcher); default
            an :class:`~onnxrec.server.batch_policy.AdaptivePolicy`.
        executor: where a run that is not inlined goes; default a dedicated one-thread pool owned (and
            shut down on :meth:`close`) by the batcher. A batcher runs at most one batch at a time.
        name: for thread names and log messages (e.g. the model name).
        on_batch: ``on_batch(batch_rows, queue_seconds_of_oldest)`` called on the event loop as each batch is
            dispatched (for metrics). Exceptions from it are logged and ignored.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R | Exception]],
        config: BatcherConfig,
        *,
        policy: BatchPolicy | None = None,
        executor: concurrent.futures.Executor | None = None,
        name: str = "",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._config = config
        self._policy: BatchPolicy = policy or AdaptivePolicy()
        self._cost = RunCost(config.inline_max_s)
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
        # created with the scheduler task, in the loop that first submits
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"DynamicBatcher(name={self._name!r}, config={self._config!r}, policy={self._policy!r}, "
            f"queue_depth={self.queue_depth}, closed={self._closed})"
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

    # -- what a policy reads (QueueView) --------------------------------------------------------------
    @property
    def queued_rows(self) -> int:
        """Rows waiting: the sum of the queued requests' weights."""
        return self._queued_weight

    @property
    def oldest_arrival(self) -> float | None:
        """When the oldest queued request arrived (``time.monotonic()``), None when none is queued."""
        return self._queue[0].enqueued if self._queue else None

    @property
    def max_rows(self) -> int:
        """Rows per model run."""
        return self._config.max_batch_size

    async def submit(self, item: T, *, deadline: float | None = None, weight: int = 1) -> R:
        """Queue ``item`` for the next batch and return its result.

        Args:
            item: what ``run_batch`` receives for this request.
            deadline: a :func:`time.monotonic` value; if it has passed when the item's batch is assembled
                (or already at submit), the item is not run and this raises :class:`DeadlineExpiredError`.
            weight: rows this item occupies in a batch (>= 1); a batch holds items whose weights sum to at
                most ``max_batch_size``, except that a single item heavier than that runs alone.

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
        if deadline is not None and deadline <= now:
            raise DeadlineExpiredError(f"batcher {self._name!r}: deadline passed before the request was queued")
        idle = not self._queue and not self._inflight
        if self._policy.admit(now, idle) and idle and self._cost.inline(weight):
            return self._run_alone(item, weight)
        wakeup = self._ensure_started()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        pending: _Pending[T, R] = _Pending(item, weight, deadline, future, enqueued=now)
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

    def _notify_batch(self, rows: int, queued_s: float) -> None:
        """Tell ``on_batch`` (metrics) a batch is dispatched; its failures are logged, never raised."""
        if self._on_batch is not None:
            try:
                self._on_batch(rows, queued_s)
            except Exception:
                log.exception("batcher %r: on_batch callback failed", self._name)

    def _run_alone(self, item: T, weight: int) -> R:
        """An idle batcher and a cheap run: the caller runs its own batch of one on the event loop: no
        queue, no future, no task switch (no batching cost while the server is idle)."""
        self._notify_batch(weight, 0.0)
        t0 = time.perf_counter()
        results = self._run_batch([item])
        self._cost.record(weight, time.perf_counter() - t0)
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
        """The scheduler loop: let the policy gather a batch, take it from the queue, run it; repeat."""
        assert self._wakeup is not None
        wakeup = self._wakeup
        try:
            while True:
                while not self._queue:
                    if self._closed:
                        return
                    wakeup.clear()
                    await wakeup.wait()
                if not self._closed:
                    await self._policy.gather(self, wakeup)
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
        """Run one batch (inline or in the executor) and resolve its callers' futures."""
        rows = sum(p.weight for p in batch)
        self._notify_batch(rows, time.monotonic() - batch[0].enqueued)
        items = [p.item for p in batch]
        self._inflight = batch
        inline = self._cost.inline(rows)
        t0 = time.perf_counter()
        try:
            if inline:
                results = self._run_batch(items)
            else:
                results = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, items)
        except Exception as exc:
            self._inflight = []
            _fail(batch, exc)
            return
        # (on cancellation _inflight stays set so that _schedule's cleanup fails these callers)
        self._inflight = []
        self._cost.record(rows, time.perf_counter() - t0)
        if len(results) != len(batch):
            n = len(results)
            _fail(batch, RuntimeError(f"batcher {self._name!r}: run_batch returned {n} results for {len(batch)} items"))
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


def _fail(batch: list[_Pending[Any, Any]], exc: Exception) -> None:
    """Fail every caller of ``batch`` still waiting."""
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)
