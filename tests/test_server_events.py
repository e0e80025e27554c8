"""Real-time user events (issue #18): TrackEvents stores what users just did, and their next Recommend
starts from it (the history graph, tracked items first and excluded); the embedded store is bounded
(users, items per user, expiry). A real server on 127.0.0.1 with real onnxruntime sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxrec.server.events import MemoryEventStore, Recent
from onnxrec.server.loaded_model import LoadedModel
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests import rpc
from tests.serverproc import ServerProcess, start_server

MODEL = pb.ModelRef(name="demo")


# -- the embedded store -----------------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_store_evicts_the_least_recently_used_user_and_keeps_the_last_items() -> None:
    async def scenario() -> None:
        clock = _Clock()
        store = MemoryEventStore(max_users=2, max_events=3, ttl_s=60, clock=clock)
        await store.add("a", ["1", "2"])
        await store.add("b", ["3"])
        await store.add("a", ["4", "5"])  # a is now the most recent; its items: 2, 4, 5 (3 at most)
        await store.add("c", ["6"])  # at the limit: b, the least recently used, goes
        assert (await store.recent("a")).items == ["5", "4", "2"]
        assert (await store.recent("b")).items == []
        assert (await store.recent("c")).items == ["6"]
        assert store.stats().users == 2 and store.stats().evictions == 1
        clock.now = 61.0  # a's and c's items expire 60 s after their last event
        assert (await store.recent("a")).items == []
        await store.add("d", ["7"])
        assert store.stats().users == 1  # c expired too (dropped from the old end on the next add)
        await store.forget("d")
        assert (await store.recent("d")).items == [] and store.stats().users == 0

    asyncio.run(scenario())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.lists(st.integers(0, 50), min_size=1, max_size=6)), max_size=60))
def test_store_stays_within_its_bounds(adds: list[tuple[int, list[int]]]) -> None:
    """Whatever is added: at most max_users users and max_events items each, a user's recent items are
    their last ones, newest first, and the user added last holds at least what it just added."""

    async def scenario() -> None:
        store = MemoryEventStore(max_users=4, max_events=5, ttl_s=3600)
        history: dict[str, list[str]] = {}
        for user, items in adds:
            await store.add(str(user), [str(i) for i in items])
            history.setdefault(str(user), []).extend(str(i) for i in items)
            assert store.stats().users <= 4
        for user, items in history.items():
            got = (await store.recent(user)).items  # (an evicted user that came back holds only what came after)
            assert len(got) <= 5 and got == list(reversed(items))[: len(got)]
        if adds:
            last_user, last_items = adds[-1]
            assert len((await store.recent(str(last_user))).items) >= min(5, len(last_items))

    asyncio.run(scenario())


def test_the_store_keeps_the_latest_events_time() -> None:
    async def scenario() -> None:
        store = MemoryEventStore(max_users=4, max_events=5, ttl_s=3600)
        await store.add("a", ["1"])
        assert await store.recent("a") == Recent(["1"], -1)  # no time given: unknown
        await store.add("a", ["2", "3"], [5_000, 9_000])
        await store.add("a", ["4"], [7_000])  # an older event tracked later: the latest stays
        assert await store.recent("a") == Recent(["4", "3", "2", "1"], 9_000)

    asyncio.run(scenario())


# -- through a real server ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(served_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(served_repo, tmp_path_factory.mktemp("events") / "server.log", "--state-max-users", "3")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.RecommenderServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


@pytest.fixture(scope="module")
def model(served_repo: Path) -> LoadedModel:
    return LoadedModel(served_repo / "demo" / "1")


def test_a_new_user_gets_personal_results_after_their_first_events(stub, model: LoadedModel) -> None:  # type: ignore[no-untyped-def]
    before = rpc.recommend(stub, "newcomer-1")
    assert before.source == pb.SOURCE_POPULARITY and list(before.stages) == ["popularity"]
    tracked = [model.item_id_text[i] for i in (3, 17, 42)]
    assert rpc.track(stub, "newcomer-1", tracked).accepted == 3
    after = rpc.recommend(stub, "newcomer-1")
    assert after.source == pb.SOURCE_HISTORY and list(after.stages) == ["events", "retrieve"]
    assert rpc.ids(after) != rpc.ids(before) and not set(rpc.ids(after)) & set(tracked)
    # the same as a history request carrying those items (newest last): the events are that history
    asked = stub.Recommend(pb.RecommendRequest(model=MODEL, user_id="someone-else", k=10, history=tracked), timeout=30)
    assert rpc.ids(after) == rpc.ids(asked)


def test_a_known_users_answer_starts_from_their_events(stub, model: LoadedModel) -> None:  # type: ignore[no-untyped-def]
    user = str(model.user_ids[5])
    before = rpc.recommend(stub, user)
    assert before.source == pb.SOURCE_MODEL
    seen = set(model.seen(5).tolist())
    fresh = [model.item_id_text[i] for i in range(model.num_items) if i not in seen][:3]
    rpc.track(stub, user, fresh)
    after = rpc.recommend(stub, user)
    assert after.source == pb.SOURCE_HISTORY and list(after.stages) == ["events", "retrieve"]
    assert rpc.ids(after) != rpc.ids(before)
    assert not set(rpc.ids(after)) & (set(fresh) | {model.item_id_text[i] for i in seen})
    batch = stub.RecommendBatch(
        pb.RecommendBatchRequest(requests=[pb.RecommendRequest(model=MODEL, user_id=user, k=10)] * 3), timeout=30
    )
    assert all(rpc.ids(r) == rpc.ids(after) for r in batch.responses)


def test_unknown_items_are_refused_and_nothing_is_stored(stub, model: LoadedModel) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        rpc.track(stub, "newcomer-2", [model.item_id_text[1], "no-such-item"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no-such-item" in err.value.details()
    assert rpc.recommend(stub, "newcomer-2").source == pb.SOURCE_POPULARITY
    with pytest.raises(grpc.RpcError) as err:
        stub.TrackEvents(pb.TrackEventsRequest(model=MODEL), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_store_limit_evicts_the_least_recently_used_user(stub, model: LoadedModel) -> None:  # type: ignore[no-untyped-def]
    """The server was started with --state-max-users 3: a fourth user's events evict the first's."""
    item = model.item_id_text[7]
    for j in range(4):
        rpc.track(stub, f"lru-{j}", [item])
    assert rpc.recommend(stub, "lru-0").source == pb.SOURCE_POPULARITY  # evicted
    assert rpc.recommend(stub, "lru-3").source == pb.SOURCE_HISTORY


def test_a_server_without_a_store_says_so(served_repo: Path, tmp_path: Path, model: LoadedModel) -> None:
    srv = start_server(served_repo, tmp_path / "server.log", "--state", "off")
    try:
        with grpc.insecure_channel(srv.address) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                rpc.track(stub, "u", [model.item_id_text[0]])
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--state off" in err.value.details()
            assert rpc.recommend(stub, str(model.user_ids[0])).source == pb.SOURCE_MODEL
    finally:
        srv.stop()


def test_the_python_client_and_cli_track(server: ServerProcess, model: LoadedModel) -> None:
    import subprocess
    import sys

    from onnxrec.clients import Event, RecommenderClient

    items = [model.item_id_text[i] for i in (11, 12)]
    with RecommenderClient(server.address) as client:
        assert client.track("demo", [Event("cli-user", items[0]), ("cli-user", items[1])]) == 2
        assert client.recommend("demo", "cli-user", 5).stages == ("events", "retrieve")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxrec",
            "track",
            "--server",
            server.address,
            "--user",
            "cli-2",
            "--items",
            ",".join(items),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "tracked 2 event(s) of user cli-2" in out.stdout, out.stderr


@pytest.mark.slow
def test_events_of_a_new_user_on_a_model_with_user_features(synthetic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A two-tower model reads user side features: a new user who sent none still gets an answer from
    their events (the features count as unknown), not an error."""
    from onnxrec.exporter.export import ExportOptions, export
    from tests.small_runs import train_small_runs

    run = train_small_runs(synthetic, tmp_path / "runs", ("twotower",))["twotower"]
    export(run, tmp_path / "repo", "demo", options=ExportOptions(k_max=20, max_batch=8, parity_users=32))
    model = LoadedModel(tmp_path / "repo" / "demo" / "1")
    assert model.user_features  # the case under test
    srv = start_server(tmp_path / "repo", tmp_path / "server.log")
    try:
        with grpc.insecure_channel(srv.address) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            rpc.track(stub, "fresh", [model.item_id_text[i] for i in (1, 2)])
            reply = rpc.recommend(stub, "fresh")
            assert list(reply.stages) == ["events", "retrieve"] and len(reply.items) == 10
    finally:
        srv.stop()
