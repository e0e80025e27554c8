"""Real-time user events: what users just did, kept in a bounded store, and the pipeline stage that
starts their next recommendation from it.

``TrackEvents`` adds a user's events (raw item ids, ordered by time) to an :class:`EventStore`; the
:class:`RecentEvents` stage, the first of the recommendation pipeline, looks each query's user up and,
when the store holds items for them, answers from the history graph instead: the user's recent events
newest first, then what the version knows of them (a known user's items, newest first, or the
request's history), cut to the model's history length; the tracked items are excluded like seen ones.
A user unknown to the model gets personal results after their first events. No retraining. The time
of the user's latest event is their previous interaction for a ranker that reads the context.

:class:`MemoryEventStore` (the default) lives in the server process and is bounded: at most
``max_users`` users (the least recently used are evicted), ``max_events`` items per user, and a user's
items expire ``ttl_s`` after their last event. A store that fails (a remote one) never fails a
Recommend: the query is answered from the exported state and the failure is counted.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import numpy as np

from onnxrec.server.limits import RequestError, invalid
from onnxrec.server.metrics import ServerMetrics
from onnxrec.server.plan import RecommendQuery
from onnxrec.v1 import recommender_pb2 as pb

__all__ = ["EventStore", "MemoryEventStore", "Recent", "RecentEvents", "StoreStats", "make_store", "track"]

log = logging.getLogger("onnxrec.server")
LOG_EVERY_S = 10.0  # a failing store is logged at most once per this many seconds


@dataclass
class StoreStats:
    """What a store reports for the metrics."""

    users: int = 0
    evictions: int = 0


@dataclass(frozen=True)
class Recent:
    """A user's tracked events: item ids, newest first, and when the newest happened (unix milliseconds;
    -1: unknown), which a ranker that reads the interaction's context takes as the previous interaction."""

    items: list[str] = field(default_factory=list)
    last_ms: int = -1


class EventStore(Protocol):
    """Where each user's recent items live (raw ids), and when the latest happened."""

    async def add(self, user: str, items: Sequence[str], times_ms: Sequence[int] | None = None) -> None:
        """Append ``items`` (oldest first), which happened at ``times_ms`` (unix ms; None: unknown), to
        the user's recent items."""

    async def recent(self, user: str) -> Recent:
        """The user's recent items, newest first, and the latest one's time (none when none or expired)."""

    async def forget(self, user: str) -> None:
        """Drop everything held for the user."""

    def stats(self) -> StoreStats:
        """Users held and evictions so far."""


class _Entry:
    __slots__ = ("items", "last_ms", "touched")

    def __init__(self, max_events: int) -> None:
        self.items: collections.deque[str] = collections.deque(maxlen=max_events)
        self.touched = 0.0
        self.last_ms = -1


class MemoryEventStore:
    """The embedded store: an LRU map of users to their last ``max_events`` items, entries expiring
    ``ttl_s`` after their last event (``clock``: ``time.monotonic`` or a test's)."""

    def __init__(
        self, max_users: int, max_events: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_users < 1 or max_events < 1 or not ttl_s > 0:
            raise ValueError("max_users and max_events must be at least 1 and ttl_s above 0")
        self.max_users, self.max_events, self.ttl_s = max_users, max_events, ttl_s
        self._clock = clock
        self._users: collections.OrderedDict[str, _Entry] = collections.OrderedDict()  # least recent first
        self._evictions = 0

    async def add(self, user: str, items: Sequence[str], times_ms: Sequence[int] | None = None) -> None:
        now = self._clock()
        entry = self._users.get(user)
        if entry is None or now - entry.touched > self.ttl_s:
            entry = self._users[user] = _Entry(self.max_events)
        entry.items.extend(items)
        entry.touched = now
        if times_ms:
            entry.last_ms = max(entry.last_ms, *times_ms)
        self._users.move_to_end(user)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)
            self._evictions += 1
        self._expire(now)

    async def recent(self, user: str) -> Recent:
        entry = self._users.get(user)
        if entry is None:
            return Recent()
        if self._clock() - entry.touched > self.ttl_s:
            del self._users[user]
            return Recent()
        return Recent(list(reversed(entry.items)), entry.last_ms)

    async def forget(self, user: str) -> None:
        self._users.pop(user, None)

    def stats(self) -> StoreStats:
        return StoreStats(users=len(self._users), evictions=self._evictions)

    def _expire(self, now: float) -> None:
        """Drop expired users from the least recently used end (a few per add at most)."""
        for _ in range(4):
            oldest = next(iter(self._users.values()), None)
            if oldest is None or now - oldest.touched <= self.ttl_s:
                return
            self._users.popitem(last=False)


class RecentEvents:
    """The pipeline stage (module docstring): queries of users with tracked events go to the history
    graph, their events first."""

    def __init__(self, store: EventStore, metrics: ServerMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self._logged_at = float("-inf")  # the last failure logged (at most one line per LOG_EVERY_S)
        self._unlogged = 0

    def _failed(self, exc: Exception) -> None:
        """Count a failed lookup; log one line per :data:`LOG_EVERY_S` at most (a store that is down
        fails every Recommend, and a line each would flood the log)."""
        if self.metrics is not None:
            self.metrics.store_errors.inc()
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last line)" if self._unlogged else ""
        log.warning("event store lookup failed (%s); answering from the exported state%s", exc, more)
        self._logged_at, self._unlogged = now, 0

    async def __call__(self, queries: list[RecommendQuery], deadline: float | None) -> None:
        for q in queries:
            t0 = time.perf_counter()
            try:
                recent = await self.store.recent(q.user_id)
            except Exception as exc:  # a remote store that is down: answer from the exported state
                self._failed(exc)
                continue
            if self.metrics is not None:
                self.metrics.store_seconds.observe(time.perf_counter() - t0)
            if recent.last_ms >= 0:  # the user's previous interaction, for a ranker that reads the context
                q.last_time = recent.last_ms // 1000
            if recent.items:
                _start_from(q, recent.items)


def _start_from(q: RecommendQuery, recent: list[str]) -> None:
    """Point ``q`` at the history graph with the tracked items (raw ids, newest first) in front."""
    model = q.model
    index = model.item_index
    events = np.array([i for i in (index.get(r) for r in recent) if i is not None], dtype=np.int64)
    if not len(events):  # none of them in this version's catalog
        return
    if q.source == pb.SOURCE_MODEL:
        before = model.seen(q.user)[::-1]
        q.features = model.user_feature_codes(q.user)
        if model.pipeline:
            q.rank_features = model.user_feature_codes(q.user, model.rank_features)
    else:
        before = q.history
        if len(q.features) != len(model.user_features):  # a user who sent no features: all unknown
            q.features = model.encode_user_features({})
        if model.pipeline and len(q.rank_features) != len(model.rank_features):
            q.rank_features = model.encode_user_features({}, model.rank_features)
    q.history = np.concatenate([events, before])[: model.history_len]
    if q.exclude_seen:
        q.exclude = np.concatenate([events, q.exclude])
    q.source = pb.SOURCE_HISTORY
    q.events = len(events)


def make_store(state: str, max_users: int, max_events: int, ttl_s: float) -> EventStore | None:
    """The store ``--state`` names (None: ``off``; ``redis://HOST:PORT/DB``: shared by replicas, no user
    limit: :mod:`onnxrec.server.events_redis`)."""
    if state == "off":
        return None
    if state.startswith("redis://"):
        from onnxrec.server.events_redis import RedisEventStore  # imports redis only when it is used

        return RedisEventStore(state, max_events, ttl_s)
    return MemoryEventStore(max_users, max_events, ttl_s)


async def track(
    store: EventStore | None,
    request: pb.TrackEventsRequest,
    items_known: Callable[[Sequence[str]], None],
    limits: Callable[[Sequence[str], str], None],
    metrics: ServerMetrics | None = None,
    max_events: int = 1024,
) -> pb.TrackEventsResponse:
    """Store ``request``'s events: every id bounded (``limits``) and every item in the model's catalog
    (``items_known`` raises for unknown ones) before anything is stored, so a bad request stores
    nothing; each user's items in timestamp order (0 = now, ties in request order)."""
    if store is None:
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION, "this server keeps no events (started with --state off)"
        )
    n = len(request.events)
    if n == 0 or n > max_events:
        raise invalid(f"events must hold 1 to {max_events} events, got {n}")
    users = [e.user_id for e in request.events]
    items = [e.item_id for e in request.events]
    limits(users, "events.user_id")
    limits(items, "events.item_id")
    if any(not u for u in users):
        raise invalid("every event needs a user_id")
    items_known(items)
    now_ms = int(time.time() * 1000)
    by_user: dict[str, list[tuple[int, int, str]]] = {}
    for j, e in enumerate(request.events):
        by_user.setdefault(e.user_id, []).append((e.timestamp_ms or now_ms, j, e.item_id))
    for user, events in by_user.items():
        ordered = sorted(events)
        await store.add(user, [item for _, _, item in ordered], [t for t, _, _ in ordered])
    if metrics is not None:
        metrics.events.inc(n)
        stats = store.stats()
        metrics.store_changed(stats.users, stats.evictions)
    return pb.TrackEventsResponse(accepted=n, users=len(by_user))
