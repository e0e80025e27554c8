"""Bounds on what the server holds for answers its clients have not read (issue #14.1).

A gRPC answer that is computed but not yet read by its client stays in the server's memory: a client
that sends calls and keeps its HTTP/2 receive window at 0 can make the server compute and hold
answers without end, and take the cores from everyone else. :class:`AnswerBudget` bounds that, per
connection (``context.peer()``, one TCP connection) and overall:

* every call reserves an estimate of its answer's size before it runs (the items it asks for, times
  the mean encoded size of an item in the answers of that method so far), and holds its answer's
  real size from serialisation until gRPC reports the call done (delivered, failed or cancelled);
* a call whose connection already holds ``per_connection`` bytes waits until its earlier answers are
  read (back-pressure, as HTTP/2 flow control would give); if an answer of that connection has gone
  unread for :data:`STALE_S` seconds, the call is refused with RESOURCE_EXHAUSTED instead (the
  connection is a slow reader, and nothing more is computed for it);
* a call that would take the server past ``overall`` bytes is refused with RESOURCE_EXHAUSTED, except
  a small one (at most :data:`SMALL_BYTES`) from a connection with no stale answer: clients that read
  their answers keep being served while slow readers hold the budget.

What slow readers already hold is released when their connections close: the server's keepalive pings
close connections that stop answering, and ``max_connection_age_s`` (plus ``grace_s``) closes the
ones that answer pings but never read (see :func:`onnxrec.server.app.transport_options`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("onnxrec.server")

STALE_S = 5.0  # an answer unread this long marks its connection as a slow reader
SMALL_BYTES = 64 * 1024  # calls expected to answer at most this are admitted past the overall bound
_FIRST_BYTES_PER_ITEM = 100.0  # estimate before any answer was measured (a ScoredItem with metadata)
_TRIM_AFTER_BYTES = 16 * 1024 * 1024  # give freed memory back to the OS once this much was held and let go


class Refused(Exception):
    """A call the budget will not run: the message says why (sent as RESOURCE_EXHAUSTED)."""


def answer_items(request: Any) -> int:
    """How many items a request's answer may hold: the sum of ``k`` over a RecommendBatch's requests,
    ``k`` of a Recommend or SimilarItems, the candidates of a Score; 1 for anything else."""
    return item_counter(type(request))(request)


def item_counter(kind: type) -> Callable[[Any], int]:
    """:func:`answer_items` for messages of type ``kind``, chosen by its fields (the budget keeps one per
    type: a ``hasattr`` on a protobuf message per call cost more than the rest of its bookkeeping)."""
    descriptor = getattr(kind, "DESCRIPTOR", None)
    fields = {f.name for f in descriptor.fields} if descriptor is not None else set()
    if "requests" in fields:
        return lambda r: max(1, sum(max(0, q.k) for q in r.requests))
    if "item_ids" in fields:
        return lambda r: max(1, len(r.item_ids))
    if "k" in fields:
        return lambda r: max(1, r.k)
    return lambda r: 1


class _Connection:
    """What one connection holds: reserved estimates of running calls, the sizes of unread answers."""

    __slots__ = ("changed", "held", "reserved", "unread_since", "warned")

    def __init__(self) -> None:
        self.warned = False
        self.reserved = 0
        self.held = 0
        self.unread_since: dict[int, float] = {}  # ticket id -> when its answer was serialised
        self.changed: asyncio.Event | None = None  # made when a call first waits for room (most never do)

    @property
    def total(self) -> int:
        return self.reserved + self.held

    def stale(self, now: float) -> bool:
        return any(now - t > STALE_S for t in self.unread_since.values())


class Ticket:
    """One admitted call: ``sent(n)`` when its answer is serialised, ``done()`` when the call ends."""

    __slots__ = ("_budget", "_conn", "_ended", "_held", "_key", "_method", "_reserved", "_units")

    def __init__(self, budget: AnswerBudget, key: str, conn: _Connection, method: str, units: int, est: int) -> None:
        self._budget, self._key, self._conn, self._method = budget, key, conn, method
        self._units, self._reserved, self._held = units, est, 0
        self._ended = False

    def sent(self, nbytes: int) -> None:
        """The answer is serialised (``nbytes``): hold its real size instead of the estimate."""
        if self._ended:  # the call ended first: nothing will release what would be held now
            return
        self._budget._learn(self._method, nbytes / self._units)
        self._budget._account(self._conn, -self._reserved, nbytes)
        self._conn.unread_since[id(self)] = time.monotonic()
        self._reserved, self._held = 0, nbytes

    def done(self, _context: object = None) -> None:
        """The call ended (answer delivered, error, cancellation or a closed connection)."""
        if self._ended:
            return
        self._ended = True
        self._conn.unread_since.pop(id(self), None)
        self._budget._account(self._conn, -self._reserved, -self._held)
        self._reserved = self._held = 0
        self._budget._forget(self._key, self._conn)


class AnswerBudget:
    """Admission of calls against ``per_connection`` and ``overall`` bytes of unread answers (0: no bound)."""

    def __init__(self, per_connection: int, overall: int) -> None:
        self.per_connection = per_connection
        self.overall = overall
        self.total = 0
        self._peak_since_trim = 0
        self._conns: dict[str, _Connection] = {}
        self._bytes_per_item: dict[str, float] = {}
        self._counters: dict[type, Callable[[Any], int]] = {}  # item_counter per request type

    def held_by(self, peer: str) -> int:
        """Bytes reserved or held for the connection ``peer`` (0 if none)."""
        conn = self._conns.get(peer)
        return conn.total if conn else 0

    def estimate(self, method: str, request: Any) -> tuple[int, int]:
        """(items, estimated answer bytes) of a call."""
        kind = type(request)
        count = self._counters.get(kind)
        if count is None:
            count = self._counters[kind] = item_counter(kind)
        units = count(request)
        return units, int(units * self._bytes_per_item.get(method, _FIRST_BYTES_PER_ITEM))

    async def admit(self, peer: str, method: str, request: Any) -> Ticket:
        """Wait for room on the call's connection and reserve its estimate; raise :class:`Refused` if the
        connection is a slow reader or the server holds too much already."""
        units, est = self.estimate(method, request)
        conn = self._conns.get(peer)
        if conn is None:
            conn = self._conns[peer] = _Connection()
        while self.per_connection and conn.total and conn.total + est > self.per_connection:
            if conn.stale(time.monotonic()):
                self._refused(peer, conn)
                raise Refused(
                    f"this connection has {conn.held / 2**20:.1f} MiB of answers it has not read for over "
                    f"{STALE_S:.0f} s; read them (or open the HTTP/2 flow-control window) before sending more calls"
                )
            if conn.changed is None:
                conn.changed = asyncio.Event()
            conn.changed.clear()
            with contextlib.suppress(TimeoutError):  # look at staleness again every STALE_S / 4
                await asyncio.wait_for(conn.changed.wait(), timeout=STALE_S / 4)
        conn = self._conns.setdefault(peer, conn)  # it may have been forgotten while this call waited
        over = self.overall and self.total and self.total + est > self.overall
        if over and (est > SMALL_BYTES or conn.stale(time.monotonic())):
            self._refused(peer, conn)
            raise Refused(
                f"the server holds {self.total / 2**20:.1f} MiB of answers not yet read by their clients "
                f"(bound {self.overall / 2**20:.0f} MiB); retry later or ask for fewer items"
            )
        self._account(conn, est, 0)
        return Ticket(self, peer, conn, method, units, est)

    def _refused(self, peer: str, conn: _Connection) -> None:
        if not conn.warned:  # once per connection: a slow reader sends many calls
            conn.warned = True
            log.warning(
                "refusing calls from %s: it holds %.1f MiB of unread answers (the server %.1f MiB)",
                peer,
                conn.held / 2**20,
                self.total / 2**20,
            )

    def _learn(self, method: str, per_item: float) -> None:
        old = self._bytes_per_item.get(method)
        self._bytes_per_item[method] = per_item if old is None else 0.8 * old + 0.2 * per_item

    def _account(self, conn: _Connection, reserved: int, held: int) -> None:
        """Add ``reserved`` and ``held`` bytes (negative: release) to ``conn`` and the total."""
        conn.reserved += reserved
        conn.held += held
        self.total += reserved + held
        if reserved + held < 0:
            if conn.changed is not None:
                conn.changed.set()
        elif self.total > self._peak_since_trim:
            self._peak_since_trim = self.total

    def _forget(self, key: str, conn: _Connection) -> None:
        if conn.total == 0 and not conn.unread_since and self._conns.get(key) is conn:
            del self._conns[key]
        if self.total == 0 and self._peak_since_trim >= _TRIM_AFTER_BYTES:
            self._peak_since_trim = 0
            trim_heap()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; nothing elsewhere): the
    answers of slow readers are freed in many pieces that malloc would otherwise keep."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
        log.debug("returned freed answer memory to the OS (malloc_trim)")
