"""Serving a version with a nearest-neighbour index (issue #16): answers come through the user-vector
graph and the index, exclusions are honoured by over-fetching, a batch answers as its single calls do,
a tampered index is refused at load, and a server keeps answering through a reload onto an indexed
version. Real faiss indexes, real onnxruntime sessions, a real server on 127.0.0.1."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnxrec.exporter.export import ExportOptions, export
from onnxrec.server.loaded_model import LoadedModel, ModelLoadError
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.train import train
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import start_server, wait_until

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def run_dir(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MF run on the synthetic dataset (200 items)."""
    root = tmp_path_factory.mktemp("indexed")
    data = save_dataset(synthetic, root / "data")
    return train(TrainConfig(data=str(data), out=str(root / "run"), model="mf", epochs=2, progress=False, dim=16))


def _export(run: Path, repo: Path, index: str, version: int = 1) -> Path:
    export(run, repo, "demo", version=version, options=ExportOptions(k_max=50, max_batch=16, index=index))
    return repo / "demo" / str(version)


@pytest.fixture(scope="module")
def versions(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same run exported exact, with a flat (exhaustive) index and with an HNSW index."""
    root = tmp_path_factory.mktemp("versions")
    return {kind: _export(run_dir, root / kind, kind) for kind in ("exact", "flat", "hnsw")}


def _ids(tops: list) -> list[list[int]]:  # type: ignore[type-arg]
    return [top.items.tolist() for top in tops]


def test_a_flat_index_answers_as_the_exact_graph(versions: dict[str, Path]) -> None:
    """Known users and history requests: the flat index (exhaustive inner product) finds the exact
    graph's items with the exact graph's scores (float32 tolerance), and says which retrieval ran."""
    exact, flat = LoadedModel(versions["exact"]), LoadedModel(versions["flat"])
    assert (exact.retrieval, flat.retrieval) == ("exact", "flat")
    users = np.arange(0, exact.num_users, 5)
    seen = [exact.seen_row(int(u)) for u in users]
    a, b = exact.recommend(users, seen, 20), flat.recommend(users, seen, 20)
    assert _ids(a) == _ids(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.scores, y.scores, rtol=1e-4, atol=1e-5 * float(np.abs(x.scores).max()))
    history = [exact.seen(int(u))[-5:][::-1] for u in users]
    features: list[list[int]] = [[] for _ in users]
    rows = [np.append(h, -1) for h in history]
    assert _ids(exact.recommend_from_history(history, rows, features, 10)) == _ids(
        flat.recommend_from_history(history, rows, features, 10)
    )


def test_exclusions_are_honoured_by_over_fetching(versions: dict[str, Path]) -> None:
    """A user who has excluded nearly the whole catalog still gets k items while k unexcluded items
    exist (the search widens past its first over-fetch), and never an excluded one."""
    model = LoadedModel(versions["hnsw"])
    n = model.num_items
    rng = np.random.default_rng(0)
    for left in (10, 3, 0):
        keep = set(rng.choice(n, size=left, replace=False).tolist())
        excluded = np.array([i for i in range(n) if i not in keep] + [-1], dtype=np.int64)
        (top,) = model.recommend(np.array([0]), [excluded], 10)
        assert set(top.items.tolist()) == keep, (left, top.items)


def test_batch_answers_equal_single_answers(versions: dict[str, Path]) -> None:
    model = LoadedModel(versions["hnsw"])
    users = np.arange(0, model.num_users, 3)
    rows = [model.seen_row(int(u)) for u in users]
    batch = _ids(model.recommend(users, rows, 10))
    single = [_ids(model.recommend(np.array([u]), [r], 10))[0] for u, r in zip(users, rows, strict=True)]
    assert batch == single


def test_a_tampered_index_is_refused_at_load(versions: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "demo" / "1"
    shutil.copytree(versions["hnsw"], copy)
    data = bytearray((copy / "items.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "items.faiss").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"items\.faiss"):
        LoadedModel(copy)


def _load(address: str, users: list[str], stop: threading.Event, seen: list[tuple[str, int, str]]) -> None:
    """Recommend known ``users`` in a loop until ``stop``: every answer's status, version and retrieval."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        j = 0
        while not stop.is_set():
            request = pb.RecommendRequest(model=pb.ModelRef(name="demo"), user_id=users[j % len(users)], k=10)
            try:
                reply = stub.Recommend(request, timeout=30)
                seen.append(("OK", reply.model_version, reply.retrieval))
            except grpc.RpcError as exc:
                seen.append((exc.code().name, 0, ""))
            j += 1


@pytest.mark.slow
def test_reload_onto_an_indexed_version_under_load(run_dir: Path, tmp_path: Path) -> None:
    """Clients call all along while version 2 (with an HNSW index) appears beside version 1 (exact):
    no call fails, and the answers move from exact to the index."""
    repo = tmp_path / "repo"
    users = [str(u) for u in LoadedModel(_export(run_dir, repo, "exact")).user_ids[:50]]
    srv = start_server(repo, tmp_path / "server.log", "--reload-interval-s", "0.5")
    stop, seen = threading.Event(), []  # type: ignore[var-annotated]
    threads = [threading.Thread(target=_load, args=(srv.address, users, stop, seen)) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(seen) > 50, 60, "answers from version 1")
        _export(run_dir, repo, "hnsw", version=2)
        wait_until(lambda: seen and seen[-1][1] == 2, 120, "answers from version 2")
        n = len(seen)
        wait_until(lambda: len(seen) > n + 50, 60, "more answers from version 2")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        assert srv.stop() == 0
    assert {status for status, _, _ in seen} == {"OK"}
    assert ("OK", 1, "exact") in seen and seen[-1] == ("OK", 2, "hnsw")


def test_a_lifted_l2_graph_answers_inner_product_scores(versions: dict[str, Path], tmp_path: Path) -> None:
    """The export's fallback graph (HNSW by L2 over MIPS-lifted vectors, searched through a query padding
    transform) written and read back: the server's search turns its distances back into u.v scores and
    finds the same items as scoring every vector."""
    import faiss

    from onnxrec.exporter.index import IndexOptions, build_lifted_hnsw
    from onnxrec.server.index_search import IndexSearch

    flat = LoadedModel(versions["flat"])
    assert flat.index is not None
    vectors = flat.index.index.reconstruct_n(0, flat.num_items)
    built = build_lifted_hnsw(vectors, IndexOptions(ef_search=256))
    faiss.write_index(built.index, str(tmp_path / "items.faiss"))
    search = IndexSearch(tmp_path, {"type": "hnsw", "file": "items.faiss", "params": built.params}, flat.num_items)
    (users,) = flat.sessions["user_vector"].run(None, {"user_idx": np.arange(flat.num_users, dtype=np.int64)})
    exact = users @ vectors.T
    rows = [flat.seen_row(u) for u in range(flat.num_users)]
    found = search.search(users, rows, 10)
    agree = 0
    for u, (items, scores) in enumerate(found):
        assert len(items) == 10 and not set(items.tolist()) & set(rows[u].tolist())
        np.testing.assert_allclose(scores, exact[u, items], rtol=1e-4, atol=1e-5 * float(np.abs(exact[u]).max()))
        masked = exact[u].copy()
        masked[rows[u][rows[u] >= 0]] = -np.inf
        agree += set(items.tolist()) == set(np.argsort(-masked)[:10].tolist())
    assert agree >= 0.95 * flat.num_users, agree
