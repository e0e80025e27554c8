"""DynamicBatcher: real asyncio loops and real executor threads, nothing of the batcher mocked."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxrec.server.batch_policy import AdaptivePolicy, FixedDelayPolicy
from onnxrec.server.batcher import (
    BatcherClosedError,
    BatcherConfig,
    DeadlineExpiredError,
    DynamicBatcher,
    QueueFullError,
)

V = TypeVar("V")


def run(coro: Coroutine[Any, Any, V]) -> V:
    """Run a coroutine in a fresh event loop (pytest-asyncio is not a dependency)."""
    return asyncio.run(coro)


class Recorder:
    """A run_batch that doubles its items, records every batch, and can be held inside a batch."""

    def __init__(self, sleep_s: float = 0.0, hold_first: bool = False) -> None:
        self.sleep_s = sleep_s
        self.batches: list[list[Any]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self._lock = threading.Lock()

    def __call__(self, items: list[Any]) -> Sequence[Any]:
        with self._lock:
            self.batches.append(list(items))
        self.started.set()
        assert self.release.wait(timeout=10), "test never released the held batch"
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return [x * 2 for x in items]

    @property
    def seen(self) -> list[Any]:
        return [x for batch in self.batches for x in batch]

    async def wait_started(self) -> None:
        """Wait (without blocking the loop) until a batch is inside run_batch."""
        for _ in range(5000):
            if self.started.is_set():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("run_batch never started")


async def settle(n: int = 5) -> None:
    """Let just-created tasks run up to their first await."""
    for _ in range(n):
        await asyncio.sleep(0)


async def held_first(batcher: DynamicBatcher[Any, Any], rec: Recorder) -> asyncio.Task[Any]:
    """Submit 0 and wait until the model is busy with it (so later submits queue up)."""
    task = asyncio.ensure_future(batcher.submit(0))
    await rec.wait_started()
    return task


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="inline_max_s"):
        BatcherConfig(inline_max_s=-1.0)
    with pytest.raises(ValueError):
        BatcherConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="delay_s"):
        FixedDelayPolicy(0.0)
    with pytest.raises(ValueError):
        BatcherConfig(max_queue_size=0)
    assert BatcherConfig() == BatcherConfig(64, 1024, 0.0)


def test_results_match_run_batch() -> None:
    async def main() -> None:
        rec = Recorder(sleep_s=0.005)
        batcher: DynamicBatcher[int, int] = DynamicBatcher(rec, BatcherConfig(max_batch_size=4), name="m")
        results = await asyncio.gather(*(batcher.submit(i) for i in range(30)))
        assert results == [2 * i for i in range(30)]
        assert sorted(rec.seen) == list(range(30))
        assert all(1 <= len(b) <= 4 for b in rec.batches)
        assert batcher.queue_depth == 0
        with pytest.raises(ValueError):
            await batcher.submit(1, weight=0)
        await batcher.close()

    run(main())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.tuples(st.integers(-1000, 1000), st.integers(1, 6)), min_size=1, max_size=25),
    max_batch_size=st.integers(1, 8),
    delay=st.sampled_from([0.0, 0.0005, 0.002]),
    run_sleep=st.sampled_from([0.0, 0.001]),
    gaps=st.lists(st.booleans(), min_size=25, max_size=25),
    inline=st.sampled_from([0.0, 0.0005, 1.0]),
    dense=st.sampled_from([0.0, 0.0005, 0.002]),
)
def test_batched_result_equals_single_result(
    items: list[tuple[int, int]],
    max_batch_size: int,
    delay: float,
    run_sleep: float,
    gaps: list[bool],
    inline: float,
    dense: float,
) -> None:
    """Whatever the batching (a fixed delay, or the adaptive policy with a ``dense`` gap), every caller
    gets f(its item) and every batch respects the row limit."""

    def f(x: int) -> int:
        return 3 * x + 1

    batches: list[list[tuple[int, int]]] = []

    def run_batch(batch: list[tuple[int, int]]) -> list[int]:
        batches.append(list(batch))
        if run_sleep:
            time.sleep(run_sleep)
        return [f(x) for x, _ in batch]

    async def main() -> None:
        config = BatcherConfig(max_batch_size=max_batch_size, inline_max_s=inline)
        policy = FixedDelayPolicy(delay) if delay else AdaptivePolicy(dense, max_wait_s=2 * dense, busy_fraction=0.0)
        batcher: DynamicBatcher[tuple[int, int], int] = DynamicBatcher(run_batch, config, policy=policy)
        tasks = []
        for (x, w), gap in zip(items, gaps, strict=False):
            tasks.append(asyncio.ensure_future(batcher.submit((x, w), weight=w)))
            if gap:
                await asyncio.sleep(0)
        results = await asyncio.gather(*tasks)
        await batcher.close()
        assert results == [f(x) for x, _ in items]

    run(main())
    # each item ran exactly once
    assert sorted(it for b in batches for it in b) == sorted(items)
    for batch in batches:
        rows = sum(w for _, w in batch)
        assert rows <= max_batch_size or len(batch) == 1, (batch, max_batch_size)


def test_sequential_calls_run_alone_without_added_delay() -> None:
    """The adaptive default with sparse arrivals (each 20 ms or more after the previous, against a 1 ms
    dense gap): a lone request is dispatched at once, within a few passes of the event loop (no timer),
    and runs alone."""

    async def main() -> None:
        rec = Recorder(hold_first=True)
        dispatched: list[int] = []
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            rec, BatcherConfig(max_batch_size=64), on_batch=lambda n, q: dispatched.append(n)
        )
        for i in range(5):
            task = asyncio.ensure_future(batcher.submit(i))
            await settle()
            assert dispatched == [1] * (i + 1)  # already handed to the model: nothing waited for company
            rec.release.set()
            assert await task == 2 * i
            await asyncio.sleep(0.02)
        await batcher.close()
        assert [len(b) for b in rec.batches] == [1] * 5

    run(main())


def test_concurrent_load_forms_batches() -> None:
    async def main() -> None:
        rec = Recorder(sleep_s=0.02)
        sizes: list[tuple[int, float]] = []
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            rec, BatcherConfig(max_batch_size=8), on_batch=lambda n, q: sizes.append((n, q))
        )
        results = await asyncio.gather(*(batcher.submit(i) for i in range(40)))
        await batcher.close()
        assert results == [2 * i for i in range(40)]
        assert max(len(b) for b in rec.batches) > 1
        assert all(len(b) <= 8 for b in rec.batches)
        assert len(rec.batches) < 40
        assert [n for n, _ in sizes] == [len(b) for b in rec.batches]
        assert all(q >= 0 for _, q in sizes)

    run(main())


def test_cheap_runs_go_inline_and_slow_runs_to_the_executor() -> None:
    """With inline_max_s, after a first measured run a cheap batch runs on the loop's own thread (an idle
    batcher lets the caller run it directly); once runs are measured so slow that a batch's expected time
    (seconds per row x rows) is over the bound, it goes to the executor, and requests arriving while it
    runs are batched. Only lower bounds on time are used: a run sleeps at least what it is told to, and
    the bound (30 s) is far above any trivial run."""

    async def main() -> None:
        loop_thread = threading.get_ident()
        threads: list[int] = []
        sleep = {"s": 0.0}

        def run_batch(items: list[int]) -> list[int]:
            threads.append(threading.get_ident())
            time.sleep(sleep["s"])
            return [x + 1 for x in items]

        sizes: list[int] = []
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            run_batch, BatcherConfig(max_batch_size=16, inline_max_s=30.0), on_batch=lambda n, q: sizes.append(n)
        )
        assert await batcher.submit(0) == 1  # first run: no estimate yet, so the executor
        assert threads[-1] != loop_thread
        for i in range(5):
            assert await batcher.submit(i) == i + 1
        assert threads[1:] == [loop_thread] * 5  # cheap: on the loop, each caller running its own
        sleep["s"] = 0.04  # at least 40 ms a row: most of the recent runs, so the median moves up
        for i in range(10):
            assert await batcher.submit(i) == i + 1
        assert threads[-1] == loop_thread  # 1 row x >= 40 ms is still under 30 s
        before, ran = len(sizes), len(threads)
        # 1000 rows x >= 40 ms is over 30 s: the executor; the 20 queued meanwhile are batched (16 + 4)
        results = await asyncio.gather(batcher.submit(0, weight=1000), *(batcher.submit(i) for i in range(20)))
        assert results == [1] + [i + 1 for i in range(20)]
        assert threads[ran] != loop_thread
        assert sizes[before:] == [1000, 16, 4]
        await batcher.close()

    run(main())


def test_queue_delay_collects_a_fuller_batch() -> None:
    """With a queue delay (an hour here) requests wait for company; a full batch does not wait: it is
    dispatched within a few passes of the event loop."""

    async def main() -> None:
        rec = Recorder()
        dispatched: list[int] = []
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            rec,
            BatcherConfig(max_batch_size=8),
            policy=FixedDelayPolicy(3600.0),
            on_batch=lambda n, q: dispatched.append(n),
        )
        tasks = []
        for i in range(3):
            tasks.append(asyncio.ensure_future(batcher.submit(i)))
            await settle()
        assert dispatched == []  # waiting for a fuller batch
        tasks += [asyncio.ensure_future(batcher.submit(i)) for i in range(3, 8)]
        await settle()
        assert dispatched == [8]  # full: at once
        assert await asyncio.gather(*tasks) == [2 * i for i in range(8)]
        assert [len(b) for b in rec.batches] == [8]
        await batcher.close()

    run(main())


def test_weights_bound_rows_and_heavy_item_runs_alone() -> None:
    async def main() -> None:
        rec = Recorder(hold_first=True)
        batcher: DynamicBatcher[int, int] = DynamicBatcher(rec, BatcherConfig(max_batch_size=4))
        first = await held_first(batcher, rec)
        tasks = [
            asyncio.ensure_future(batcher.submit(x, weight=w)) for x, w in [(1, 2), (2, 2), (3, 10), (4, 1), (5, 3)]
        ]
        await settle()
        rec.release.set()
        assert await first == 0
        assert await asyncio.gather(*tasks) == [2, 4, 6, 8, 10]
        await batcher.close()
        assert rec.batches == [[0], [1, 2], [3], [4, 5]]

    run(main())


def test_queue_full_raises_at_once() -> None:
    async def main() -> None:
        rec = Recorder(hold_first=True)
        batcher: DynamicBatcher[int, int] = DynamicBatcher(rec, BatcherConfig(max_queue_size=2))
        try:
            first = await held_first(batcher, rec)  # running: not counted as waiting
            queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
            await settle()
            assert batcher.queue_depth == 2
            refused = batcher.submit(3)
            with pytest.raises(QueueFullError):  # at once: on the coroutine's first step, before any wait
                refused.send(None)
        finally:
            rec.release.set()
        assert await first == 0
        assert await asyncio.gather(*queued) == [2, 4]
        assert await batcher.submit(5) == 10  # room again
        await batcher.close()

    run(main())


def test_expired_deadline_never_reaches_the_model() -> None:
    async def main() -> None:
        rec = Recorder(hold_first=True)
        batcher: DynamicBatcher[int, int] = DynamicBatcher(rec, BatcherConfig())
        with pytest.raises(DeadlineExpiredError):
            await batcher.submit(7, deadline=time.monotonic() - 1.0)
        # a deadline that passes while the request waits behind a running batch
        first = await held_first(batcher, rec)
        late = asyncio.ensure_future(batcher.submit(8, deadline=time.monotonic() + 0.03))
        ok = asyncio.ensure_future(batcher.submit(9, deadline=time.monotonic() + 30.0))
        await asyncio.sleep(0.08)
        rec.release.set()
        assert await first == 0
        with pytest.raises(DeadlineExpiredError):
            await late
        assert await ok == 18
        await batcher.close()
        assert rec.seen == [0, 9]

    run(main())


def test_per_item_exception_fails_only_that_item() -> None:
    def run_batch(items: list[int]) -> list[int | Exception]:
        return [ValueError(f"bad {x}") if x % 3 == 0 else x * 2 for x in items]

    async def main() -> None:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(run_batch, BatcherConfig(max_batch_size=16))

        async def outcome(i: int) -> tuple[str, object]:
            try:
                return "ok", await batcher.submit(i)
            except ValueError as exc:  # raised by submit, not returned
                return "raised", str(exc)

        results = await asyncio.gather(*(outcome(i) for i in range(12)))
        await batcher.close()
        assert results == [("raised", f"bad {i}") if i % 3 == 0 else ("ok", 2 * i) for i in range(12)]

    run(main())


def test_run_batch_raising_fails_that_batch_only() -> None:
    rec = Recorder(hold_first=True)

    def run_batch(items: list[int]) -> Sequence[int]:
        if any(x < 0 for x in items):
            raise RuntimeError("model exploded")
        return rec(items)

    async def main() -> None:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(run_batch, BatcherConfig(max_batch_size=2))
        first = await held_first(batcher, rec)
        tasks = [asyncio.ensure_future(batcher.submit(x)) for x in (1, -1, 3, 4)]
        await settle()
        rec.release.set()
        assert await first == 0
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results[:2])
        assert results[2:] == [6, 8]
        assert await batcher.submit(5) == 10  # still serving
        await batcher.close()

    run(main())


def test_cancelled_waiting_caller_is_dropped() -> None:
    async def main() -> None:
        rec = Recorder(hold_first=True)
        batcher: DynamicBatcher[int, int] = DynamicBatcher(rec, BatcherConfig())
        first = await held_first(batcher, rec)
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await settle()
        assert batcher.queue_depth == 2
        gone.cancel()
        await settle()
        assert gone.cancelled()
        assert batcher.queue_depth == 1
        rec.release.set()
        assert await first == 0
        assert await kept == 4
        await batcher.close()
        assert rec.seen == [0, 2]

    run(main())


def test_cancelled_running_caller_does_not_affect_others() -> None:
    async def main() -> None:
        rec = Recorder(hold_first=True)
        batcher: DynamicBatcher[int, int] = DynamicBatcher(rec, BatcherConfig())
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await rec.wait_started()
        tasks[1].cancel()
        await settle()
        rec.release.set()
        assert await tasks[0] == 0
        assert await tasks[2] == 4
        assert tasks[1].cancelled()
        assert await batcher.submit(5) == 10
        await batcher.close()

    run(main())


def test_close_drains_queued_work_then_refuses() -> None:
    async def main() -> None:
        rec = Recorder(hold_first=True)
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            rec, BatcherConfig(max_batch_size=2), policy=FixedDelayPolicy(3600.0)
        )
        first = asyncio.ensure_future(batcher.submit(0, weight=2))  # a full batch: runs (and is held) at once
        await rec.wait_started()
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await settle()
        closing = asyncio.ensure_future(batcher.close(drain=True))
        await settle()
        assert batcher.closed
        assert not closing.done()
        with pytest.raises(BatcherClosedError):
            await batcher.submit(99)
        rec.release.set()
        await asyncio.wait_for(closing, 60)  # draining does not wait out the hour-long queue delay
        assert await first == 0
        assert await asyncio.gather(*tasks) == [2, 4, 6, 8, 10]
        assert batcher.queue_depth == 0
        with pytest.raises(BatcherClosedError):
            await batcher.submit(1)
        await batcher.close()  # idempotent

    run(main())


def test_close_without_drain_fails_queued_and_finishes_running() -> None:
    async def main() -> None:
        rec = Recorder(hold_first=True)
        batcher: DynamicBatcher[int, int] = DynamicBatcher(rec, BatcherConfig())
        first = await held_first(batcher, rec)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await settle()
        closing = asyncio.ensure_future(batcher.close(drain=False))
        await settle()
        for task in queued:
            assert task.done()
            with pytest.raises(BatcherClosedError):
                task.result()
        rec.release.set()
        await closing
        assert await first == 0
        assert rec.seen == [0]

    run(main())


def test_close_before_any_submit_and_shared_executor() -> None:
    import concurrent.futures

    async def main(pool: concurrent.futures.Executor) -> None:
        idle: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), BatcherConfig())
        await idle.close()
        with pytest.raises(BatcherClosedError):
            await idle.submit(1)
        a: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), BatcherConfig(), executor=pool, name="a")
        b: DynamicBatcher[int, int] = DynamicBatcher(Recorder(), BatcherConfig(), executor=pool, name="b")
        assert await asyncio.gather(a.submit(1), b.submit(2)) == [2, 4]
        await a.close()
        assert await b.submit(3) == 6  # a's close left the shared executor alone
        await b.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        run(main(pool))


async def _primed(rec: Recorder, policy: AdaptivePolicy, **config: Any) -> DynamicBatcher[int, int]:
    """A batcher that has served one request (so the next arrival has a previous one to be near)."""
    batcher: DynamicBatcher[int, int] = DynamicBatcher(rec, BatcherConfig(**config), policy=policy)
    assert await batcher.submit(0) == 0
    return batcher


def test_adaptive_collects_requests_arriving_close_together() -> None:
    """Four arrivals a few event-loop passes apart (no sleeps: far inside the 2 s gap however slow the
    machine) wait for each other and run as one batch, although each run is cheap enough to run inline
    (the greedy rule would have run each alone)."""

    async def main() -> None:
        rec = Recorder()
        policy = AdaptivePolicy(2.0, max_wait_s=10.0, busy_fraction=0.0)
        batcher = await _primed(rec, policy, max_batch_size=16, inline_max_s=30.0)
        tasks = []
        for i in range(1, 5):
            tasks.append(asyncio.ensure_future(batcher.submit(i)))
            await settle()
        assert await asyncio.gather(*tasks) == [2, 4, 6, 8]
        await batcher.close()
        assert rec.batches == [[0], [1, 2, 3, 4]]

    run(main())


def test_adaptive_wait_ends_when_the_batch_is_full() -> None:
    """A full batch is dispatched at once (within a few loop passes), not after the hour-long wait."""

    async def main() -> None:
        rec = Recorder()
        dispatched: list[int] = []
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            rec,
            BatcherConfig(max_batch_size=3),
            policy=AdaptivePolicy(3600.0, max_wait_s=3600.0, busy_fraction=0.0),
            on_batch=lambda n, q: dispatched.append(n),
        )
        assert await batcher.submit(0) == 0  # a previous arrival, so the next ones are dense
        tasks = asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)))
        await settle()
        assert dispatched == [1, 3]
        assert await tasks == [2, 4, 6]
        await batcher.close()
        assert rec.batches == [[0], [1, 2, 3]]

    run(main())


def test_adaptive_never_waits_after_a_long_gap_and_backs_off_after_a_lonely_wait() -> None:
    """Whether a request waited is read from when it is dispatched: at once (within a few loop passes)
    or only after the wait. Only lower bounds on time decide: a sleep longer than the dense gap is a
    sparse arrival, and a request right after another (well within a 3 s gap) is a dense one."""

    async def main() -> None:
        rec = Recorder()
        dispatched: list[int] = []

        def batcher(gap: float) -> DynamicBatcher[int, int]:
            return DynamicBatcher(
                rec,
                BatcherConfig(max_batch_size=16, inline_max_s=30.0),
                policy=AdaptivePolicy(gap, max_wait_s=gap, busy_fraction=0.0),
                on_batch=lambda n, q: dispatched.append(n),
            )

        slow, short = batcher(3.0), batcher(0.01)
        assert await slow.submit(0) == 0
        assert await short.submit(0) == 0
        await asyncio.sleep(0.05)  # a gap longer than its dense gap: the next request does not wait
        sparse = asyncio.ensure_future(short.submit(1))
        await settle()
        assert len(dispatched) == 3
        assert await sparse == 2
        dense = asyncio.ensure_future(slow.submit(2))  # right after the previous one: it waits
        await settle()
        assert len(dispatched) == 3  # held open for company, and nobody comes
        assert await dense == 4
        assert len(dispatched) == 4
        after = asyncio.ensure_future(slow.submit(3))  # after that lonely wait: no wait this time
        await settle()
        assert len(dispatched) == 5
        assert await after == 6
        await slow.close()
        await short.close()
        assert rec.batches == [[0], [0], [1], [2], [3]]

    run(main())


def test_adaptive_never_waits_while_the_loop_has_time() -> None:
    """Dense arrivals on a loop that is not saturated (a busy fraction of 2 cannot be reached: a thread's
    CPU time never exceeds the wall time) run at once, each alone: waiting would only add latency."""

    async def main() -> None:
        rec = Recorder()
        dispatched: list[int] = []
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            rec,
            BatcherConfig(max_batch_size=16, inline_max_s=30.0),
            policy=AdaptivePolicy(3600.0, max_wait_s=3600.0, busy_fraction=2.0),
            on_batch=lambda n, q: dispatched.append(n),
        )
        assert await batcher.submit(0) == 0
        for i in range(1, 6):  # one right after the other: dense, far inside the hour-long gap
            assert await batcher.submit(i) == 2 * i
        await batcher.close()
        assert rec.batches == [[i] for i in range(6)]

    run(main())
