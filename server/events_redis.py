"""The Redis event store (``--state redis://HOST:PORT/DB``): users' recent events shared by several
server processes or replicas.

Each user is one Redis list, ``onnxrec:events:<user id>``, of their events newest first, each a plain
string (no pickle): the event's time in unix milliseconds, the unit separator ``\\x1f`` and the raw item
id (an entry without a time is read as an item id whose time is unknown). An add is one MULTI/EXEC round
trip: LPUSH the entries, LTRIM the list to ``max_events``, PEXPIRE it ``ttl_s`` after this last event
(and DBSIZE for the metrics); a lookup is one LRANGE; a forget one DEL. There is no user limit here:
Redis bounds its memory itself (``maxmemory`` and its eviction policy) and the TTL drops users who went
quiet, so ``--state-max-users`` does not apply and the store reports no evictions. ``users`` in the
metrics is the database's key count (DBSIZE, O(1), read with each add): the number of users when the
database holds only onnxrec's events, so give the store a database of its own (the ``/DB`` of the URL).

A Redis that is down or slow fails fast: 0.2 s to connect and to read, no retries, and after a
connection failure every call fails at once for ``retry_after_s`` before the next try, which opens
new connections (the idle ones are dropped then: a host that went away closed none of them). Failures
raise :class:`StoreUnavailableError` (UNAVAILABLE, with what to do): a Recommend's lookup is caught by
the pipeline stage, which answers from the exported state and counts it; TrackEvents fails with it.
The connection is made in the running event loop on first use, and closed by :meth:`aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from onnxrec.server.events import Recent, StoreStats
from onnxrec.server.limits import RequestError

__all__ = ["KEY_PREFIX", "RedisAddress", "RedisEventStore", "StoreUnavailableError", "parse_redis_url"]

log = logging.getLogger("onnxrec.server")

KEY_PREFIX = "onnxrec:events:"
SEP = "\x1f"  # between an entry's time and its item id
URL_SHAPE = "redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0"


class StoreUnavailableError(RequestError):
    """The event store cannot be reached or refused a command: UNAVAILABLE (retry later)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)


@dataclass(frozen=True)
class RedisAddress:
    """Where the store is, from ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:  # never shows the password
        auth = "***@" if self.password else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """The address in ``url``; ValueError with a one-line message saying what is wrong."""

    def bad(problem: str) -> ValueError:
        return ValueError(f"state {_masked(url)}: {problem} (expected {URL_SHAPE})")

    if any(c.isspace() for c in url):
        raise bad("no spaces allowed")
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise bad("only redis:// is supported (no TLS)")
    if parts.query or parts.fragment:
        raise bad("no ?options or #fragment (the server sets its own timeouts)")
    if not parts.hostname:
        raise bad("no host")
    try:
        port = 6379 if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise bad("the port must be a number in 1..65535")
    db_text = parts.path.removeprefix("/")
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise bad(f"the database must be a number, not {db_text!r}")
    return RedisAddress(parts.hostname, port, int(db_text or 0), parts.username or None, parts.password or None)


def _masked(url: str) -> str:
    """``url`` with any password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not (sep and at):
        return url
    user, colon, _password = auth.partition(":")
    return f"{scheme}://{user}{colon}{'***' if colon else ''}@{host}"


class RedisEventStore:
    """The :class:`~onnxrec.server.events.EventStore` in Redis (module docstring)."""

    def __init__(
        self,
        url: str,
        max_events: int,
        ttl_s: float,
        timeout_s: float = 0.2,
        retry_after_s: float = 0.5,
        prefix: str = KEY_PREFIX,
    ) -> None:
        if max_events < 1 or not ttl_s > 0:
            raise ValueError("max_events must be at least 1 and ttl_s above 0")
        self.address = parse_redis_url(url)
        self.max_events, self.ttl_ms = max_events, max(1, round(ttl_s * 1000))
        self.timeout_s, self.retry_after_s, self.prefix = timeout_s, retry_after_s, prefix
        self._client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_until = 0.0  # after a connection failure: fail at once until then
        self._down_reason = ""
        self._keys = 0

    def key(self, user: str) -> str:
        return self.prefix + user

    async def add(self, user: str, items: Sequence[str], times_ms: Sequence[int] | None = None) -> None:
        if not items:
            return
        key = self.key(user)
        entries = [f"{t}{SEP}{item}" for item, t in zip(items, times_ms, strict=True)] if times_ms else list(items)

        async def transaction(client: Redis) -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.lpush(key, *entries)  # pushed one after the other: the last item ends up first
                pipe.ltrim(key, 0, self.max_events - 1)
                pipe.pexpire(key, self.ttl_ms)
                pipe.dbsize()
                return await pipe.execute()

        replies = await self._call("store the events", transaction)
        self._keys = int(replies[-1])

    async def recent(self, user: str) -> Recent:
        key = self.key(user)
        entries = await self._call("look the user up", lambda c: c.lrange(key, 0, self.max_events - 1))
        items, last_ms = [], -1
        for entry in entries:
            head, sep, item = entry.partition(SEP)
            if sep and head.isascii() and head.isdigit():
                items.append(item)
                last_ms = max(last_ms, int(head))
            else:
                items.append(entry)
        return Recent(items, last_ms)

    async def forget(self, user: str) -> None:
        key = self.key(user)
        await self._call("forget the user", lambda c: c.delete(key))

    def stats(self) -> StoreStats:
        return StoreStats(users=self._keys, evictions=0)

    async def aclose(self) -> None:
        """Close the connections (the server's stop); a later call opens new ones."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

    def _redis(self) -> Redis:
        """The client of the running loop (made on first use, again if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            a = self.address
            self._client = Redis(
                host=a.host,
                port=a.port,
                db=a.db,
                username=a.username,
                password=a.password,
                socket_connect_timeout=self.timeout_s,
                socket_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
                client_name="onnxrec",
            )
            self._loop = loop
        return self._client

    async def _call(self, what: str, command: Callable[[Redis], Any]) -> Any:
        """Await ``command(client)``; a failure becomes :class:`StoreUnavailableError`."""
        if time.monotonic() < self._down_until:
            raise StoreUnavailableError(self._unreachable(what))
        try:
            return await command(self._redis())
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._down_until = time.monotonic() + self.retry_after_s
            self._down_reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("event store %s unreachable (%s)", self.address, self._down_reason)
            # drop the idle connections too: a Redis host that went away closed none of them, and each
            # would cost a timeout; the next try opens new ones
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await self._client.connection_pool.disconnect(inuse_connections=False)
            raise StoreUnavailableError(self._unreachable(what)) from exc
        except RedisError as exc:
            raise StoreUnavailableError(
                f"event store {self.address} refused to {what} ({type(exc).__name__}: {exc}); check Redis"
            ) from exc

    def _unreachable(self, what: str) -> str:
        return (
            f"event store {self.address} unreachable ({self._down_reason}): could not {what}; retry later, "
            "and check that Redis runs there (onnxrec serve --state)"
        )
