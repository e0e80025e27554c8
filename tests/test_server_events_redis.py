"""The Redis event store (issue #18, ``--state redis://HOST:PORT/DB``) against a real ``redis-server``
(Debian's package) on a free loopback port: the store itself, two ``onnxrec serve`` processes sharing
it, and a Redis that goes away under a running server (Recommend falls back, TrackEvents is
UNAVAILABLE, the failed lookups are counted) and comes back."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis

from onnxrec.errors import ConfigError
from onnxrec.server.config import load_server_config
from onnxrec.server.events import Recent, make_store
from onnxrec.server.events_redis import (
    KEY_PREFIX,
    RedisAddress,
    RedisEventStore,
    StoreUnavailableError,
    parse_redis_url,
)
from onnxrec.server.loaded_model import LoadedModel
from onnxrec.v1 import recommender_pb2 as pb
from tests import rpc
from tests.serverproc import ServerProcess, start_server, wait_until

pytestmark = pytest.mark.slow  # real redis-servers and onnxrec servers: the full lane (make test)


# -- a real redis-server ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, decode_responses=True, socket_timeout=5)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*args, "--daemonize", "no"], stdout=out, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                return bool(self.client().ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 30, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _redis_server(tmp: Path) -> RedisServer:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):  # CI installs it (make redis): never skip these there
            pytest.fail("redis-server not found: run `make redis` (Debian package redis-server)")
        pytest.skip("redis-server not found (Debian package redis-server; `make redis` installs it)")
    server = RedisServer(_free_port(), tmp / "redis.log")
    server.start()
    return server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module (each test uses its own database or keys)."""
    server = _redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


# -- the URL ----------------------------------------------------------------------------------------------------
def test_the_url_names_host_port_and_database() -> None:
    assert parse_redis_url("redis://127.0.0.1:6390/2") == RedisAddress("127.0.0.1", 6390, 2)
    assert parse_redis_url("redis://cache") == RedisAddress("cache", 6379, 0)
    assert parse_redis_url("redis://[::1]:7000/") == RedisAddress("::1", 7000, 0)
    secret = parse_redis_url("redis://app:s3cret@cache:6380/1")
    assert (secret.username, secret.password) == ("app", "s3cret") and "s3cret" not in str(secret)
    assert str(secret) == "redis://***@cache:6380/1"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://", "no host"),
        ("redis://cache:0/0", "the port must be a number in 1..65535"),
        ("redis://cache:99999/0", "the port must be a number in 1..65535"),
        ("redis://cache:port/0", "the port must be a number in 1..65535"),
        ("redis://cache:6379/one", "the database must be a number"),
        ("redis://cache:6379/0?socket_timeout=9", "no ?options"),
        ("redis://:pw@cache:6379/x", "redis://:***@cache:6379/x: the database"),
    ],
)
def test_a_bad_url_is_one_clear_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_server_config(None, {"repository": "repo", "state": url}, environ={})
    message = str(err.value)
    assert problem in message and "expected redis://HOST:PORT/DB" in message and "\n" not in message
    assert "pw@" not in message


def test_a_bad_url_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "onnxrec", "serve", "--repository", str(tmp_path), "--state", "redis://cache:x/0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: state redis://cache:x/0: the port must be a number in 1..65535 "
        "(expected redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0)"
    ]


def test_make_store_picks_redis_for_a_redis_url() -> None:
    store = make_store("redis://127.0.0.1:6379/3", max_users=10, max_events=7, ttl_s=5)
    assert isinstance(store, RedisEventStore) and store.max_events == 7 and store.ttl_ms == 5000


def test_a_redis_that_is_not_there_fails_fast() -> None:
    """Nothing listens: the first call fails (connect timeout 0.2 s, no retries) as UNAVAILABLE with
    what to do; until retry_after_s has passed the next calls fail without trying to connect: a socket
    now listening on that port sees no connection."""

    async def scenario() -> None:
        port = _free_port()
        store = RedisEventStore(f"redis://127.0.0.1:{port}/0", 5, 60, retry_after_s=30)
        assert store.timeout_s == 0.2
        with pytest.raises(StoreUnavailableError) as err:
            await store.recent("u")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "unreachable" in str(err.value)
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen()
            listener.setblocking(False)
            with pytest.raises(StoreUnavailableError):
                await store.add("u", ["1"])
            with pytest.raises(BlockingIOError):  # the cool-down: no connection attempt
                listener.accept()
        await store.aclose()

    asyncio.run(scenario())


# -- the store against a real Redis --------------------------------------------------------------------------
def test_store_round_trip(redis_server: RedisServer) -> None:
    """Newest first, trimmed to max_events, a TTL on every user's list, forget; a second store (another
    replica) on the same database sees the same."""
    admin = redis_server.client(db=1)

    async def scenario() -> None:
        store = RedisEventStore(redis_server.url(db=1), max_events=3, ttl_s=60)
        other = RedisEventStore(redis_server.url(db=1), max_events=3, ttl_s=60)
        assert (await store.recent("a")).items == []
        await store.add("a", ["1", "2"])
        await store.add("b", ["3"])
        await other.add("a", ["4", "5"])  # a's items: 5, 4, 2 (3 at most)
        assert (await store.recent("a")).items == ["5", "4", "2"] == (await other.recent("a")).items
        assert (await store.recent("b")).items == ["3"]
        assert admin.lrange(KEY_PREFIX + "a", 0, -1) == ["5", "4", "2"]  # plain strings, no pickle
        assert 0 < admin.ttl(KEY_PREFIX + "a") <= 60 and 0 < admin.ttl(KEY_PREFIX + "b") <= 60
        assert store.stats().users == 2 == other.stats().users  # DBSIZE as of each one's last add
        assert store.stats().evictions == 0
        await store.add("t", ["7", "8"], [1_700_000_000_000, 1_700_000_004_000])  # with their times
        await other.add("t", ["9"], [1_700_000_002_000])  # an older event tracked later
        assert await store.recent("t") == Recent(["9", "8", "7"], 1_700_000_004_000)
        assert admin.lrange(KEY_PREFIX + "t", 0, 0) == ["1700000002000\x1f9"]
        assert (await store.recent("a")).last_ms == -1  # entries without a time
        await other.forget("a")
        assert (await store.recent("a")).items == [] and admin.exists(KEY_PREFIX + "a") == 0
        await store.aclose()
        await other.aclose()

    try:
        asyncio.run(scenario())
    finally:
        admin.flushdb()
        admin.close()


def test_the_ttl_drops_a_quiet_user(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = RedisEventStore(redis_server.url(db=2), max_events=3, ttl_s=0.3)
        await store.add("q", ["1"])
        assert (await store.recent("q")).items == ["1"]
        await asyncio.sleep(0.5)
        assert (await store.recent("q")).items == []
        await store.aclose()

    asyncio.run(scenario())


def test_after_a_redis_restart_one_call_fails_not_one_per_pooled_connection(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """8 lookups at once fill the pool with 8 connections; Redis restarts (they are all stale): the
    first call fails and the next try after the cool-down works."""
    own = _redis_server(tmp_path_factory.mktemp("redis-restart"))

    async def scenario() -> None:
        store = RedisEventStore(own.url(), max_events=3, ttl_s=60, retry_after_s=0.05)
        await store.add("r", ["1"])
        assert [r.items for r in await asyncio.gather(*(store.recent("r") for _ in range(8)))] == [["1"]] * 8
        own.stop()
        own.start()
        failures = 0
        for _ in range(20):
            try:
                assert (await store.recent("r")).items == []  # a new Redis: nothing kept
                break
            except StoreUnavailableError:
                failures += 1
                await asyncio.sleep(0.06)
        assert failures == 1
        await store.aclose()

    try:
        asyncio.run(scenario())
    finally:
        own.stop()


# -- real servers sharing one Redis ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(served_repo: Path) -> LoadedModel:
    return LoadedModel(served_repo / "demo" / "1")


def _metric(server: ServerProcess, name: str) -> float:
    url = re.findall(r"metrics on (http://\S+)", server.log.read_text())[0]
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return float(re.findall(rf"^{name} (\S+)$", text, re.MULTILINE)[0])


def test_two_servers_share_one_redis(
    redis_server: RedisServer, served_repo: Path, model: LoadedModel, tmp_path: Path
) -> None:
    """TrackEvents on server A; the next Recommend on server B starts from those events."""
    url = redis_server.url(db=3)
    a = start_server(served_repo, tmp_path / "a.log", "--state", url)
    try:
        b = start_server(served_repo, tmp_path / "b.log", "--state", url)
        try:
            tracked = [model.item_id_text[i] for i in (3, 17, 42)]
            before = rpc.recommend(b.address, "shared-newcomer")
            assert before.source == pb.SOURCE_POPULARITY
            assert rpc.track(a.address, "shared-newcomer", tracked).accepted == 3
            after = rpc.recommend(b.address, "shared-newcomer")
            assert after.source == pb.SOURCE_HISTORY and list(after.stages) == ["events", "retrieve"]
            assert rpc.ids(after) != rpc.ids(before) and not set(rpc.ids(after)) & set(tracked)
            assert rpc.ids(after) == rpc.ids(rpc.recommend(a.address, "shared-newcomer"))
            # a known user's events tracked on B reach A
            user = str(model.user_ids[5])
            seen = set(model.seen(5).tolist())
            fresh = [model.item_id_text[i] for i in range(model.num_items) if i not in seen][:3]
            rpc.track(b.address, user, fresh)
            assert list(rpc.recommend(a.address, user).stages) == ["events", "retrieve"]
        finally:
            assert b.stop() == 0
    finally:
        assert a.stop() == 0
    with redis_server.client(db=3) as admin:
        # each entry: the event's time (rpc.track: 1000 + j ms), the unit separator, the item id
        want = [f"{1000 + j}\x1f{item}" for j, item in enumerate(tracked)][::-1]
        assert admin.lrange(KEY_PREFIX + "shared-newcomer", 0, -1) == want
        admin.flushdb()


def test_a_redis_going_away_never_fails_a_recommend(
    served_repo: Path, model: LoadedModel, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Redis stops under a running server: Recommend answers from the exported state (a known user
    from the model) and each failed lookup is counted; TrackEvents is UNAVAILABLE and says what to
    do. Redis comes back (empty): events are stored and used again."""
    own = _redis_server(tmp_path_factory.mktemp("redis-down"))
    srv = start_server(served_repo, tmp_path / "server.log", "--state", own.url(), "--metrics-port", "0")
    try:
        user = str(model.user_ids[9])
        item = model.item_id_text[int(next(i for i in range(model.num_items) if i not in set(model.seen(9))))]
        rpc.track(srv.address, user, [item])
        assert list(rpc.recommend(srv.address, user).stages) == ["events", "retrieve"]
        assert _metric(srv, "onnxrec_event_store_errors_total") == 0
        own.stop()
        for _ in range(3):
            reply = rpc.recommend(srv.address, user)
            assert reply.source == pb.SOURCE_MODEL and list(reply.stages) == ["retrieve"]
        assert _metric(srv, "onnxrec_event_store_errors_total") == 3
        with pytest.raises(grpc.RpcError) as err:
            rpc.track(srv.address, user, [item])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"event store {own.url()} unreachable" in err.value.details()
        assert "retry later" in err.value.details()
        own.start()  # same port, no data kept
        wait_until(lambda: _try_track(srv.address, user, [item]), 30, "TrackEvents after Redis came back")
        assert list(rpc.recommend(srv.address, user).stages) == ["events", "retrieve"]
    finally:
        assert srv.stop() == 0
        own.stop()
    assert "event store redis://127.0.0.1" in srv.log.read_text()  # the outage was logged


def _try_track(address: str, user: str, items: list[str]) -> bool:
    try:
        rpc.track(address, user, items)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        return False
    return True
