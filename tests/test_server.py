"""The gRPC server end to end: a real server process on 127.0.0.1 loading real exported models."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxrec.exporter.export import ExportOptions, export
from onnxrec.server.loaded_model import LoadedModel, ModelLoadError
from onnxrec.server.registry import RETIRE_AFTER_S
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.train import train
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess, start_server, wait_until

pytestmark = pytest.mark.slow  # end to end; left out of make test-quick


@pytest.fixture(scope="module")
def trained(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("srv-runs")
    data = save_dataset(synthetic, root / "data")
    return {
        m: train(
            TrainConfig(data=str(data), out=str(root / m), model=m, epochs=2, progress=False, dim=16, history_len=8)
        )
        for m in ("twotower", "mf")
    }


@pytest.fixture(scope="module")
def repository(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("srv-repo")
    for name, run in trained.items():
        export(run, repo, name, options=ExportOptions(k_max=50, max_batch=32))
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("srv-log") / "server.log"
    proc = start_server(repository, log, "--max-message-bytes", str(1024 * 1024))
    yield proc
    proc.stop()


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.RecommenderServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


def rec(name: str, user: str, k: int = 10, **kw: object) -> pb.RecommendRequest:
    return pb.RecommendRequest(model=pb.ModelRef(name=name), user_id=user, k=k, **kw)  # type: ignore[arg-type]


def test_answers_equal_in_process_onnxruntime(
    stub: pb_grpc.RecommenderServiceStub, repository: Path, synthetic: Dataset
) -> None:
    for name in ("twotower", "mf"):
        model = LoadedModel(repository / name / "1", device="cpu")
        users = np.arange(0, synthetic.num_users, 7)
        expected = model.recommend(users, [model.seen(int(u)) for u in users])
        for u, top in zip(users, expected, strict=True):
            reply = stub.Recommend(rec(name, str(model.user_ids[u])), timeout=10)
            assert reply.source == pb.SOURCE_MODEL and reply.model_version == 1
            got = [i.item_id for i in reply.items]
            want = [str(model.item_ids[i]) for i in top.items[:10]]
            assert got == want
            np.testing.assert_allclose([i.score for i in reply.items], top.scores[:10], rtol=1e-5, atol=1e-5)
            assert not set(got) & {str(model.item_ids[i]) for i in model.seen(int(u))}


def test_runtime_k_returns_the_first_k_of_the_k_max_answer(repository: Path, synthetic: Dataset) -> None:
    """Every top-k graph takes ``k`` at run time: a smaller k returns the first k of the k_max answer."""
    model = LoadedModel(repository / "twotower" / "1", device="cpu")
    users = np.arange(0, synthetic.num_users, 3)
    exclude = [model.seen(int(u)) for u in users]
    for full, small in zip(model.recommend(users, exclude), model.recommend(users, exclude, 5), strict=True):
        assert len(small.items) == min(5, len(full.items))
        np.testing.assert_array_equal(small.items, full.items[: len(small.items)])
        np.testing.assert_array_equal(small.scores, full.scores[: len(small.items)])
    history = [np.array([1, 2, 3])] * 4
    feats = [[0] * len(model.user_features)] * 4
    assert [len(t.items) for t in model.recommend_from_history(history, [np.array([], np.int64)] * 4, feats, 7)] == [
        7
    ] * 4
    assert [len(t.items) for t in model.similar(np.arange(5), 3)] == [3] * 5
    model.warm_up(16)


@pytest.mark.parametrize("fmt", ["onnxrec.model/1", "onnxrec.model/2", "onnxrec.model/9"])
def test_other_model_formats_are_refused_with_what_to_do(repository: Path, tmp_path: Path, fmt: str) -> None:
    """Formats 1 and 2 (top-k graphs without a runtime k, or clamping it) are no longer served: the load
    fails with a message that says to export the run again."""
    old = tmp_path / "old" / "mf" / "1"
    shutil.copytree(repository / "mf" / "1", old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format"] = fmt
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=f"unsupported format '{fmt}'.*export the run again"):
        LoadedModel(old, device="cpu")


def test_batch_equals_single_and_recommend_batch(stub: pb_grpc.RecommenderServiceStub, synthetic: Dataset) -> None:
    users = [str(u) for u in synthetic.user_ids[:64]]
    singles = [[i.item_id for i in stub.Recommend(rec("twotower", u), timeout=10).items] for u in users]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:  # concurrent calls get batched together
        concurrent_ = list(
            pool.map(lambda u: [i.item_id for i in stub.Recommend(rec("twotower", u), timeout=10).items], users)
        )
    batch = stub.RecommendBatch(pb.RecommendBatchRequest(requests=[rec("twotower", u) for u in users]), timeout=30)
    assert concurrent_ == singles
    assert [[i.item_id for i in r.items] for r in batch.responses] == singles


def test_unknown_users_history_and_popularity(stub: pb_grpc.RecommenderServiceStub, synthetic: Dataset) -> None:
    items = [str(i) for i in synthetic.item_ids[:5]]
    r = stub.Recommend(rec("twotower", "never-seen", history=items, include_metadata=True), timeout=10)
    assert r.source == pb.SOURCE_HISTORY and len(r.items) == 10
    assert not {i.item_id for i in r.items} & set(items)  # the history counts as seen
    assert r.items[0].metadata["title"]
    p = stub.Recommend(rec("mf", "never-seen", exclude_item_ids=items[:1]), timeout=10)
    assert p.source == pb.SOURCE_POPULARITY and len(p.items) == 10 and items[0] not in {i.item_id for i in p.items}
    h = stub.Recommend(rec("mf", "never-seen", history=items), timeout=10)
    assert h.source == pb.SOURCE_HISTORY


def test_recommend_batch_mixes_models_paths_and_k(stub: pb_grpc.RecommenderServiceStub, synthetic: Dataset) -> None:
    """One RecommendBatch holding known users of two models, history and popularity fallbacks and
    different k answers each entry exactly as its own Recommend does, in order."""
    items = [str(i) for i in synthetic.item_ids[:5]]
    users = [str(u) for u in synthetic.user_ids[:40]]
    entries = [rec("twotower" if j % 3 else "mf", u, k=3 + j % 8) for j, u in enumerate(users)]
    entries += [
        rec("twotower", "stranger-1", history=items, k=7),
        rec("mf", "stranger-2", history=items[:2]),
        rec("mf", "stranger-3", exclude_item_ids=items[:1], k=4),
        rec("twotower", users[0], exclude_item_ids=items, exclude_seen=False, k=12),
    ]
    batch = stub.RecommendBatch(pb.RecommendBatchRequest(requests=entries), timeout=30)
    singles = [stub.Recommend(e, timeout=10) for e in entries]
    assert len(batch.responses) == len(entries)
    for got, want, entry in zip(batch.responses, singles, entries, strict=True):
        assert got.source == want.source and got.model_name == entry.model.name
        assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
        assert len(got.items) == entry.k
    assert [r.source for r in batch.responses[-4:-1]] == [pb.SOURCE_HISTORY, pb.SOURCE_HISTORY, pb.SOURCE_POPULARITY]
    with pytest.raises(grpc.RpcError) as err:
        stub.RecommendBatch(pb.RecommendBatchRequest(requests=[entries[0], rec("nope", "u")]), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "requests[1]" in (err.value.details() or "")


def test_score_similar_and_metadata(stub: pb_grpc.RecommenderServiceStub, synthetic: Dataset) -> None:
    user = str(synthetic.user_ids[3])
    top = stub.Recommend(rec("mf", user, k=5), timeout=10)
    ids = [i.item_id for i in top.items]
    scored = stub.Score(pb.ScoreRequest(model=pb.ModelRef(name="mf"), user_id=user, item_ids=ids[::-1]), timeout=10)
    assert [i.item_id for i in scored.items] == ids[::-1]
    assert [round(i.score, 4) for i in scored.items][::-1] == sorted(
        [round(i.score, 4) for i in scored.items], reverse=True
    )
    sim = stub.SimilarItems(pb.SimilarItemsRequest(model=pb.ModelRef(name="mf"), item_id=ids[0], k=4), timeout=10)
    assert len(sim.items) == 4 and ids[0] not in {i.item_id for i in sim.items}
    models = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert [m.name for m in models.models] == ["mf", "twotower"]
    meta = stub.GetModelMetadata(pb.GetModelMetadataRequest(model=pb.ModelRef(name="twotower")), timeout=10)
    assert meta.k_max == 50 and meta.num_items == synthetic.num_items and meta.execution_provider
    assert "test/sampled/hr@10" in meta.metrics


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (rec("mf", "1", k=0), grpc.StatusCode.INVALID_ARGUMENT, "k must be between 1 and 50"),
        (rec("mf", "1", k=51), grpc.StatusCode.INVALID_ARGUMENT, "k must be between 1 and 50"),
        (rec("nope", "1"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        (
            pb.RecommendRequest(model=pb.ModelRef(name="mf", version=9), user_id="1", k=3),
            grpc.StatusCode.NOT_FOUND,
            "no loaded version 9",
        ),
        (rec("mf", "1", history=["no-such-item"]), grpc.StatusCode.INVALID_ARGUMENT, "unknown item id(s) in history"),
        (rec("mf", "1", exclude_item_ids=["x1", "x2"]), grpc.StatusCode.INVALID_ARGUMENT, "exclude_item_ids"),
        (rec("mf", ""), grpc.StatusCode.INVALID_ARGUMENT, "user_id is empty"),
        (rec("../../etc/passwd", "1"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (rec("", "1"), grpc.StatusCode.INVALID_ARGUMENT, "model.name is empty"),
    ],
)
def test_bad_requests_get_clear_status(
    stub: pb_grpc.RecommenderServiceStub, request_: pb.RecommendRequest, code: grpc.StatusCode, needle: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(request_, timeout=10)
    assert err.value.code() == code  # type: ignore[attr-defined]
    assert needle in err.value.details()  # type: ignore[attr-defined]


def test_oversized_and_malformed_requests(server: ServerProcess, stub: pb_grpc.RecommenderServiceStub) -> None:
    big = rec("mf", "1", history=["x" * 1000] * 10_000)  # about 10 MB
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(big, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary("/onnxrec.v1.RecommenderService/Recommend")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff not protobuf", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "not a valid Recommend request" in err.value.details()  # type: ignore[attr-defined]
    # the server is still fine, and answers as before
    assert stub.Recommend(rec("mf", "1"), timeout=10).items


def test_many_concurrent_clients_all_answered(server: ServerProcess, synthetic: Dataset) -> None:
    users = [str(u) for u in synthetic.user_ids[:50]]
    with grpc.insecure_channel(server.address) as channel:
        s = pb_grpc.RecommenderServiceStub(channel)
        expected = {u: [i.item_id for i in s.Recommend(rec("twotower", u), timeout=10).items] for u in users}

    assert _hammer(server.address, expected, clients=64, calls=200) == [200] * 64


def _hammer(address: str, expected: dict[str, list[str]], clients: int, calls: int) -> list[int]:
    """``clients`` threads, each on its own channel, ask for ``calls`` random users of ``expected``
    (the twotower model); per client, how many answers equalled the expected item ids."""
    users = sorted(expected)

    def client(seed: int) -> int:
        rng = np.random.default_rng(seed)
        ok = 0
        with grpc.insecure_channel(address) as ch:
            st = pb_grpc.RecommenderServiceStub(ch)
            for _ in range(calls):
                u = users[int(rng.integers(len(users)))]
                ok += [i.item_id for i in st.Recommend(rec("twotower", u), timeout=30).items] == expected[u]
        return ok

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(client, range(clients)))


def test_queue_delay_batches_concurrent_clients_without_changing_answers(
    repository: Path, synthetic: Dataset, tmp_path: Path
) -> None:
    """--max-queue-delay-us: concurrent clients' requests share model runs, and every answer stays the same
    (the adaptive default's batching is tested in test_batcher.py, where it does not hang on timing)."""
    users = [str(u) for u in synthetic.user_ids[:40]]
    model = LoadedModel(repository / "twotower" / "1", device="cpu")
    idx = [model.user_index[u] for u in users]
    expected = {
        u: [model.item_id_text[i] for i in top.items[:10]]
        for u, top in zip(users, model.recommend(np.array(idx), [model.seen(i) for i in idx]), strict=True)
    }
    srv = start_server(repository, tmp_path / "server.log", "--max-queue-delay-us", "30000", "--metrics-port", "0")
    try:
        assert _hammer(srv.address, expected, clients=16, calls=15) == [15] * 16
        url = re.findall(r"metrics on (http://\S+)", srv.log.read_text())[0]
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        runs = float(re.findall(r'onnxrec_batch_size_count\{graph="recommend",model="twotower"\} (\S+)', text)[0])
        rows = float(re.findall(r'onnxrec_batch_size_sum\{graph="recommend",model="twotower"\} (\S+)', text)[0])
        assert rows >= 240 and rows / runs > 1.5, (rows, runs)  # requests shared runs
    finally:
        assert srv.stop() == 0


def test_hot_reload_and_broken_version(repository: Path, trained: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository / "mf", repo / "mf")
    srv = start_server(repo, tmp_path / "server.log")
    try:
        with grpc.insecure_channel(srv.address) as channel:
            s = pb_grpc.RecommenderServiceStub(channel)
            assert s.Recommend(rec("mf", "1"), timeout=10).model_version == 1
            # a broken version 2: a graph file damaged after export -> hash mismatch -> rejected
            shutil.copytree(repository / "mf" / "1", tmp_path / "v2")
            (tmp_path / "v2" / "recommend.onnx").write_bytes(b"broken")
            manifest = (tmp_path / "v2" / "manifest.json").read_text().replace('"version": 1', '"version": 2')
            (tmp_path / "v2" / "manifest.json").write_text(manifest)
            (tmp_path / "v2").rename(repo / "mf" / "2")
            wait_until(lambda: "rejected mf version 2" in srv.log.read_text(), 60, "version 2 rejected")
            assert s.Recommend(rec("mf", "1"), timeout=10).model_version == 1
            # a good version 3 is picked up while the old keeps serving meanwhile
            export(trained["mf"], repo, "mf", version=3, options=ExportOptions(k_max=50, max_batch=16))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and s.Recommend(rec("mf", "1"), timeout=10).model_version != 3:
                time.sleep(0.2)
            assert s.Recommend(rec("mf", "1"), timeout=10).model_version == 3
    finally:
        assert srv.stop() == 0


_ID = st.text(alphabet="0123456789abcxyz-", min_size=0, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from(["mf", "twotower", "nope", ""]),
    user=_ID,
    k=st.integers(-3, 60),
    history=st.lists(_ID, max_size=6),
    exclude=st.lists(_ID, max_size=6),
    exclude_seen=st.sampled_from([None, True, False]),
)
def test_random_requests_never_break_the_server(
    server: ServerProcess,
    synthetic: Dataset,
    model: str,
    user: str,
    k: int,
    history: list[str],
    exclude: list[str],
    exclude_seen: bool | None,
) -> None:
    """Whatever a caller sends, the answer is either a valid ranking or a clear client error."""
    request = rec(model, user, k=k, history=history, exclude_item_ids=exclude)
    if exclude_seen is not None:
        request.exclude_seen = exclude_seen
    known_items = set(synthetic.item_ids.astype(str).tolist())
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        try:
            reply = stub.Recommend(request, timeout=10)
        except grpc.RpcError as err:
            assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)  # type: ignore[attr-defined]
            assert err.details()  # type: ignore[attr-defined]
            return
        ids = [i.item_id for i in reply.items]
        assert 1 <= k <= 50 and model in ("mf", "twotower") and user
        assert len(ids) <= k and len(set(ids)) == len(ids) and set(ids) <= known_items
        assert not set(ids) & set(exclude)
        scores = [i.score for i in reply.items]
        assert scores == sorted(scores, reverse=True)
        # one caller's odd request never changes another's answer
        assert [i.item_id for i in stub.Recommend(rec("mf", "1"), timeout=10).items] == REFERENCE.setdefault(
            "mf/1", [i.item_id for i in stub.Recommend(rec("mf", "1"), timeout=10).items]
        )


REFERENCE: dict[str, list[str]] = {}


KNOWN_USER = "u1"  # a user of the synthetic training data, so requests run the model


def _load(address: str, stop: threading.Event, codes: list[str], versions: list[int]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        while not stop.is_set():
            try:
                reply = stub.Recommend(rec("mf", KNOWN_USER), timeout=10)
                codes.append("OK")
                versions.append(reply.model_version)
            except grpc.RpcError as err:
                codes.append(err.code().name)  # type: ignore[attr-defined]


def test_hot_reload_under_load_loses_nothing(
    repository: Path, trained: dict[str, Path], tmp_path: Path, synthetic: Dataset
) -> None:
    assert KNOWN_USER in set(synthetic.user_ids.tolist())
    repo = tmp_path / "repo"
    shutil.copytree(repository / "mf", repo / "mf")
    srv = start_server(repo, tmp_path / "server.log")
    stop = threading.Event()
    codes: list[str] = []
    versions: list[int] = []
    threads = [threading.Thread(target=_load, args=(srv.address, stop, codes, versions)) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        export(trained["mf"], repo, "mf", version=2, options=ExportOptions(k_max=50, max_batch=16))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not versions or versions[-1] != 2):
            time.sleep(0.2)
        time.sleep(RETIRE_AFTER_S + 1.0)  # past the old version's retirement
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        srv.stop()
    assert versions[-1] == 2 and 1 in versions
    assert set(codes) == {"OK"}, {c: codes.count(c) for c in set(codes)}


def _timed_load(address: str, stop: threading.Event, calls: list[tuple[float, str]]) -> None:
    """Like :func:`_load`, recording when each call was sent (monotonic) and its status."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                stub.Recommend(rec("mf", KNOWN_USER), timeout=20)
                calls.append((sent, "OK"))
            except grpc.RpcError as err:
                calls.append((sent, err.code().name))  # type: ignore[attr-defined]


def test_sigterm_answers_the_calls_already_sent_and_exits_cleanly(repository: Path, tmp_path: Path) -> None:
    """Every call sent before SIGTERM is answered OK (grpc.aio's own stop cancelled most of them: 61 of 64
    in flight under load came back CANCELLED); later calls are served during --drain-s, then refused with
    UNAVAILABLE (or, racing the final stop, CANCELLED); the process exits 0."""
    srv = start_server(repository, tmp_path / "server.log", "--grace-s", "15", "--drain-s", "3")
    stop = threading.Event()
    calls: list[tuple[float, str]] = []
    threads = [threading.Thread(target=_timed_load, args=(srv.address, stop, calls)) for _ in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(calls) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    signalled = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    rc = srv.proc.wait(60)
    stop.set()
    for t in threads:
        t.join(30)
    assert rc == 0
    before = [code for sent, code in calls if sent < signalled]
    after = [code for sent, code in calls if sent >= signalled]
    assert len(before) >= 200 and set(before) == {"OK"}, {c: before.count(c) for c in set(before)}
    assert set(after) <= {"OK", "UNAVAILABLE", "CANCELLED"}, {c: after.count(c) for c in set(after)}
    log = srv.log.read_text()
    assert "shutting down" in log and "Traceback" not in log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_workers_share_one_port_and_metrics(repository: Path, tmp_path: Path) -> None:
    port = _free_port()
    srv = start_server(
        repository, tmp_path / "server.log", "--port", str(port), "--workers", "2", "--metrics-port", "0"
    )
    try:
        with grpc.insecure_channel(srv.address) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            for _ in range(20):
                assert stub.Recommend(rec("mf", KNOWN_USER), timeout=10).source == pb.SOURCE_MODEL
        deadline = time.monotonic() + 30
        log = srv.log.read_text()
        while time.monotonic() < deadline and log.count("onnxrec serving on") < 2:
            time.sleep(0.2)
            log = srv.log.read_text()
        pids = set(re.findall(r"serving on 127\.0\.0\.1:\d+ \(pid (\d+)\)", log))
        assert len(pids) == 2, log
        metrics_urls = re.findall(r"metrics on (http://\S+)", log)
        text = "".join(urllib.request.urlopen(u, timeout=10).read().decode() for u in metrics_urls)
        assert 'onnxrec_requests_total{code="OK",method="Recommend"}' in text
        assert "onnxrec_batch_size_bucket" in text and "onnxrec_queue_seconds_bucket" in text
        assert 'onnxrec_model_loaded{model="mf",version="1"} 1.0' in text
    finally:
        assert srv.stop() == 0
