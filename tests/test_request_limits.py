"""What one request may ask of the server: bounded ids, lists and answers, short error messages, big
batches that do not hold up small calls, and quiet, counted deadline expiries. Real grpc.aio servers
on 127.0.0.1 (port 0) in this process, real onnxruntime sessions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxrec.server.app import OnnxrecServer, create_server
from onnxrec.server.config import ServerConfig
from onnxrec.server.registry import ModelRegistry
from onnxrec.server.servicer import RecommenderServicer
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc

MAX_DETAILS = 1024  # an error message never grows with what the caller sent
V = TypeVar("V")


class LocalServer:
    """``create_server(config)`` on an event loop of its own thread, so that plain (blocking) gRPC
    clients can call it from the test; ``close()`` stops it."""

    def __init__(self, config: ServerConfig, wait_ready: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: OnnxrecServer
        self.server, self.port = self.call(create_server(config))
        if wait_ready:
            self.call(asyncio.wait_for(self.server.ready.wait(), 120))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, V], timeout: float = 120) -> V:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sample(self, name: str, labels: dict[str, str]) -> float:
        """A metric's current value (0 when never set)."""
        return self.server.metrics.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        try:
            self.call(self.server.stop(0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


def eventually(check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    """Poll ``check`` until it holds, up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def serve(repo: Path, **kw: object) -> LocalServer:
    return LocalServer(ServerConfig(repository=str(repo), port=0, device="cpu", reload_interval_s=0, **kw))


@pytest.fixture(scope="module")
def default_server(served_repo: Path) -> Iterator[LocalServer]:
    srv = serve(served_repo)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def small_lists(served_repo: Path) -> Iterator[LocalServer]:
    """max_list_items 50 (so that hypothesis can go past it cheaply)."""
    srv = serve(served_repo, max_list_items=50)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def stub(small_lists: LocalServer) -> Iterator[pb_grpc.RecommenderServiceStub]:
    with grpc.insecure_channel(small_lists.address) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


def rec(user: str, k: int = 10, model: str = "demo", **kw: object) -> pb.RecommendRequest:
    return pb.RecommendRequest(model=pb.ModelRef(name=model), user_id=user, k=k, **kw)


def refused(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)  # type: ignore[operator]
    return err.value


def known_users(srv: LocalServer, n: int) -> list[str]:
    return [str(u) for u in srv.server.registry.get("demo").model.user_ids[:n]]


@pytest.mark.parametrize(
    ("method", "request_", "needle"),
    [
        ("Recommend", rec("u1", exclude_item_ids=["x" * 20_000]), "exclude_item_ids[0] is 20000 characters"),
        ("Recommend", rec("u1", history=["i1", "y" * 300]), "history[1] is 300 characters"),
        ("Recommend", rec("u1", model="m" * 16_000), "model.name is 16000 characters"),
        ("Recommend", rec("u" * 5_000), "user_id is 5000 characters"),
        ("Recommend", rec("u1", exclude_item_ids=["i1"] * 600_000), "holds 600000 entries; at most 10000"),
        ("Recommend", rec("new", history=["i1"] * 10_001), "history holds 10001 entries"),
        ("Recommend", rec("new", history=["i1"], user_features={"f" * 300: "v"}), "user_features["),
        ("Recommend", rec("u1", exclude_item_ids=["nope-" + "z" * 20_000]), "20005 characters"),
        (
            "Score",
            pb.ScoreRequest(model=pb.ModelRef(name="demo"), user_id="u1", item_ids=["q" * 20_000]),
            "item_ids[0]",
        ),
        ("SimilarItems", pb.SimilarItemsRequest(model=pb.ModelRef(name="demo"), item_id="s" * 20_000, k=3), "item_id"),
        ("RecommendBatch", pb.RecommendBatchRequest(requests=[rec("u1"), rec("u1", model="n" * 9_000)]), "requests[1]"),
    ],
)
def test_long_values_and_lists_are_invalid_with_a_short_message(
    default_server: LocalServer, method: str, request_: object, needle: str
) -> None:
    """The issue's cases against the default limits: a 20 KB item id or a 16 KB model name is
    INVALID_ARGUMENT with a short message (not RESOURCE_EXHAUSTED from an echo too big for the
    trailers), and a 600,000-entry list is refused."""
    with grpc.insecure_channel(default_server.address) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        err = refused(getattr(stub, method), request_)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        details = err.details()
        assert needle in details and len(details) <= MAX_DETAILS, details
        assert stub.Recommend(rec("u1"), timeout=10).items  # and the server answers on


_SHORT = st.text(max_size=12)
_LONG = st.text(min_size=257, max_size=2_000)  # over max_id_chars (256)


@st.composite
def bad_requests(draw: st.DrawFn) -> tuple[str, object]:
    """A request of a random method with random odd values, at least one of them over a limit."""
    over = draw(st.sampled_from(["name", "user", "list_len", "list_item", "feature", "item"]))
    name = "m" * draw(st.integers(129, 5_000)) if over == "name" else "demo"
    user = draw(_LONG) if over == "user" else draw(_SHORT)
    items = draw(st.lists(_SHORT, max_size=10))
    if over == "list_len":
        items = draw(st.lists(_SHORT, min_size=51, max_size=120))  # max_list_items is 50 here
    if over == "list_item":
        items.insert(draw(st.integers(0, len(items))), draw(_LONG))
    features = draw(st.dictionaries(_SHORT, _SHORT, max_size=3))
    if over == "feature":
        features[draw(_LONG)] = draw(_SHORT)
    k = draw(st.integers(-3, 60))
    method = draw(st.sampled_from(["Recommend", "RecommendBatch", "Score", "SimilarItems"]))
    ref = pb.ModelRef(name=name)
    if over == "item" or (method == "SimilarItems" and over in ("list_item", "feature")):
        method = "SimilarItems"
        return method, pb.SimilarItemsRequest(model=ref, item_id=draw(_LONG) if over != "name" else "1", k=k)
    if method == "Score" and over in ("list_item", "user", "name"):
        return method, pb.ScoreRequest(model=ref, user_id=user, item_ids=items or ["1"])
    where = draw(st.sampled_from(["history", "exclude_item_ids"]))
    one = pb.RecommendRequest(model=ref, user_id=user, k=k, user_features=features, **{where: items})
    if method == "RecommendBatch":
        return method, pb.RecommendBatchRequest(requests=[rec("u1"), one])
    return "Recommend", one


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=bad_requests())
def test_any_request_over_a_limit_is_invalid_argument_with_a_short_message(
    stub: pb_grpc.RecommenderServiceStub, case: tuple[str, object]
) -> None:
    method, request = case
    err = refused(getattr(stub, method), request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.code(), err.details())
    assert 0 < len(err.details()) <= MAX_DETAILS
    assert stub.Recommend(rec("u1"), timeout=10).items  # one bad request never breaks the server


def test_an_oversized_batch_answer_is_refused_before_the_model_runs(
    served_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer that cannot fit in max_message_bytes is refused up front (no model run), with
    RESOURCE_EXHAUSTED saying what to lower, counted as RESOURCE_EXHAUSTED (not OK), and nothing is
    logged; a batch that fits answers as the single calls do."""
    srv = serve(served_repo, max_message_bytes=128 * 1024)
    try:
        users = known_users(srv, 200)
        runs = {"model": "demo", "graph": "recommend"}
        before = srv.sample("onnxrec_batch_size_count", runs)
        big = pb.RecommendBatchRequest(requests=[rec(u, k=50, include_metadata=True) for u in users])
        with grpc.insecure_channel(srv.address) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            err = refused(stub.RecommendBatch, big)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = err.details()
            assert "max_message_bytes" in details and "fewer users" in details and "include_metadata=false" in details
            assert srv.sample("onnxrec_batch_size_count", runs) == before  # the model never ran
            counted = {"method": "RecommendBatch", "code": "RESOURCE_EXHAUSTED"}
            eventually(lambda: srv.sample("onnxrec_requests_total", counted) == 1, 10, "counted")  # after it answered
            assert srv.sample("onnxrec_requests_total", {"method": "RecommendBatch", "code": "OK"}) == 0
            small = pb.RecommendBatchRequest(requests=[rec(u, k=10) for u in users])
            answer = stub.RecommendBatch(small, timeout=30)
            singles = [stub.Recommend(rec(u, k=10), timeout=10) for u in users[:20]]
        assert [[i.item_id for i in r.items] for r in answer.responses[:20]] == [
            [i.item_id for i in r.items] for r in singles
        ]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        srv.close()


def test_a_big_batch_does_not_hold_up_a_small_request(served_repo: Path) -> None:
    """A lone Recommend queued behind a 200-user RecommendBatch on one model (max batch 16): the batch's
    rows run 16 at a time and the lone request runs between them, so it is answered while most of the
    batch has yet to run (not after all of it); and the batch's answers are still those of single calls."""

    async def main() -> tuple[list[str], list[list[str]], list[list[str]]]:
        events: list[str] = []  # model runs ("run N" rows) and answers, in the order they happen
        config = ServerConfig(repository=str(served_repo), device="cpu", max_batch_size=16, reload_interval_s=0)
        registry = ModelRegistry(config, on_batch=lambda model, graph, rows, queued: events.append(f"run {rows}"))
        await registry.refresh()
        servicer = RecommenderServicer(registry, config)
        users = [str(u) for u in registry.get("demo").model.user_ids[:200]]
        big = pb.RecommendBatchRequest(requests=[rec(u, k=10) for u in users])
        events.clear()  # (the warm-up runs no batcher; this is only in case)

        async def tagged(name: str, coro: Any) -> Any:
            result = await coro
            events.append(name)
            return result

        batch = asyncio.ensure_future(tagged("big answered", servicer.answer(big)))
        batcher = registry.get("demo").recommend
        while not batcher.queue_depth and not events:  # the batch's first rows are queued (or running)
            await asyncio.sleep(0)
        lone = asyncio.ensure_future(tagged("small answered", servicer.answer(rec(users[-1]))))
        answer, _ = await asyncio.gather(batch, lone)
        order = list(events)
        singles = [[i.item_id for i in (await servicer.answer(rec(u))).items] for u in users]
        await registry.close()
        return order, [[i.item_id for i in r.items] for r in answer.responses], singles

    events, got, singles = asyncio.run(main())
    runs = [int(e.split()[1]) for e in events if e.startswith("run")]
    assert max(runs) <= 16 and sum(runs) == 201, events  # the batch's 200 rows 16 at a time, and the lone one
    small = events.index("small answered")
    assert events[-1] == "big answered"
    assert sum(int(e.split()[1]) for e in events[small:] if e.startswith("run")) >= 150, events  # most still to run
    assert got == singles


def test_tiny_deadlines_are_counted_and_never_logged_as_tracebacks(
    default_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Calls whose deadline passes before, while or just after they run end as DEADLINE_EXCEEDED: the
    server counts them so (it never counts OK an answer it could not send) and logs no traceback."""
    srv = default_server
    users = known_users(srv, 300)
    ok_before = sum(
        srv.sample("onnxrec_requests_total", {"method": m, "code": "OK"}) for m in ("Recommend", "RecommendBatch")
    )
    big = pb.RecommendBatchRequest(requests=[rec(u, k=50, include_metadata=True) for u in users])

    def client(seed: int) -> dict[str, int]:
        rng = np.random.default_rng(seed)
        codes: dict[str, int] = {}
        with grpc.insecure_channel(srv.address) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            for j in range(60):
                try:
                    if j % 2:
                        stub.RecommendBatch(big, timeout=float(rng.uniform(0.0005, 0.03)))
                    else:
                        stub.Recommend(rec(users[j]), timeout=float(rng.uniform(0.0001, 0.002)))
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                codes[code] = codes.get(code, 0) + 1
        return codes

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(client, range(4)))
    client_ok = sum(r.get("OK", 0) for r in results)
    assert {c for r in results for c in r} <= {"OK", "DEADLINE_EXCEEDED"}, results
    expired = sum(
        srv.sample("onnxrec_requests_total", {"method": m, "code": "DEADLINE_EXCEEDED"})
        for m in ("Recommend", "RecommendBatch")
    )
    server_ok = (
        sum(srv.sample("onnxrec_requests_total", {"method": m, "code": "OK"}) for m in ("Recommend", "RecommendBatch"))
        - ok_before
    )
    assert expired > 0
    # an answer sent just before the server's deadline can still reach the client after its own
    assert server_ok <= client_ok + 12, (server_ok, client_ok)
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Traceback" not in caplog.text


def test_metadata_merged_from_wire_bytes_equals_the_items_metadata(served_repo: Path) -> None:
    """Answers carry each item's metadata exactly (merged from per-item wire bytes), in a Recommend and
    in every entry of a RecommendBatch."""

    async def main() -> None:
        config = ServerConfig(repository=str(served_repo), device="cpu", max_batch_size=8, reload_interval_s=0)
        registry = ModelRegistry(config)
        await registry.refresh()
        servicer = RecommenderServicer(registry, config)
        model = registry.get("demo").model
        users = [str(u) for u in model.user_ids[:20]]
        single = await servicer.answer(rec(users[0], k=50, include_metadata=True))
        batch = await servicer.answer(
            pb.RecommendBatchRequest(requests=[rec(u, k=7, include_metadata=True) for u in users]), None
        )
        await registry.close()
        answered = [*single.items, *(i for r in batch.responses for i in r.items)]
        assert len(answered) == 50 + 20 * 7
        assert any(item.metadata for item in answered)
        for item in answered:
            assert dict(item.metadata) == model.metadata(model.item_index[item.item_id])

    asyncio.run(main())
