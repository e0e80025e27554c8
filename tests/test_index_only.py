"""Index-only versions (issue #16, catalogs past the exact graphs' reach): ``onnxrec export --index ...
--index-only`` writes the user-vector graphs and the index alone, graphs that pass a size keep their
weights as ONNX external data (hash-checked like every file), and the server answers Recommend, history
requests and Score from them as an exact version does, refusing SimilarItems and Explain with
FAILED_PRECONDITION. Real exports, real onnxruntime sessions and faiss indexes, a real server on
127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner

from onnxrec.cli import main
from onnxrec.errors import ExportError
from onnxrec.exporter import catalog, onnx_io
from onnxrec.exporter.export import ExportOptions, export
from onnxrec.exporter.forget import forget
from onnxrec.server.loaded_model import LoadedModel, ModelLoadError
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.train import train
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import served

pytest.importorskip("faiss")

OPTS = ExportOptions(k_max=50, max_batch=16)


@pytest.fixture(scope="module")
def run_dir(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MF run on the synthetic dataset (its history graph folds in: catalog-sized centroids)."""
    root = tmp_path_factory.mktemp("index-only")
    data = save_dataset(synthetic, root / "data")
    return train(TrainConfig(data=str(data), out=str(root / "run"), model="mf", epochs=2, progress=False, dim=16))


@pytest.fixture(scope="module")
def versions(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The run exported exact, and index-only over a flat (exhaustive) index with every graph's weights
    forced into external data (the 10M-item case, at 200 items)."""
    root = tmp_path_factory.mktemp("repos")
    exact = export(run_dir, root / "exact", "demo", options=OPTS)
    limit = onnx_io.EXTERNAL_DATA_BYTES
    onnx_io.EXTERNAL_DATA_BYTES = 0  # every graph past the limit: external data, as at 10M items
    try:
        only = export(
            run_dir,
            root / "only",
            "demo",
            options=ExportOptions(**{**OPTS.__dict__, "index": "flat", "index_only": True}),
        )
    finally:
        onnx_io.EXTERNAL_DATA_BYTES = limit
    return {"exact": exact, "only": only}


def test_an_index_only_version_holds_the_vector_graphs_and_the_index(versions: dict[str, Path]) -> None:
    import json

    version = versions["only"]
    files = sorted(p.name for p in version.iterdir())
    assert not [f for f in files if f.startswith(("recommend", "score", "similar", "explain"))], files
    for graph in ("user_vector", "user_vector_from_history"):
        assert f"{graph}.onnx" in files and f"{graph}.onnx.data" in files
    manifest = json.loads((version / "manifest.json").read_text())
    assert sorted(manifest["graphs"]) == ["user_vector", "user_vector_from_history"]
    assert manifest["index"]["index_only"] is True and manifest["index"]["recall"]["at10"] == 1.0
    assert manifest["index"]["score_check"]["rows"] > 0  # the index's vectors checked against the model
    assert {"user_vector.onnx.data", "items.faiss"} <= set(manifest["files"])  # hashed like every file
    assert manifest["explain"]["methods"] is None and "--index-only" in manifest["explain"]["why"]
    out = CliRunner().invoke(main, ["inspect", str(version)])
    assert out.exit_code == 0 and "index only" in out.output, out.output


def test_it_answers_as_the_exact_version(versions: dict[str, Path]) -> None:
    """Known users, history requests and Score: the same items and scores as the exact graphs."""
    exact, only = LoadedModel(versions["exact"]), LoadedModel(versions["only"])
    assert (exact.retrieval, only.retrieval) == ("exact", "flat")
    users = np.arange(0, exact.num_users, 4)
    rows = [exact.seen_row(int(u)) for u in users]
    a, b = exact.recommend(users, rows, 20), only.recommend(users, rows, 20)
    assert [t.items.tolist() for t in a] == [t.items.tolist() for t in b]
    scale = max(float(np.abs(t.scores).max()) for t in a)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(y.scores, x.scores, rtol=1e-4, atol=1e-5 * scale)
    history = [exact.seen(int(u))[-5:][::-1] for u in users]
    hist_rows = [np.append(h, -1) for h in history]
    features: list[list[int]] = [[] for _ in users]
    h_a = exact.recommend_from_history(history, hist_rows, features, 10)
    h_b = only.recommend_from_history(history, hist_rows, features, 10)
    assert [t.items.tolist() for t in h_a] == [t.items.tolist() for t in h_b]
    rng = np.random.default_rng(0)
    candidates = [rng.integers(0, exact.num_items, size=n) for n in rng.integers(1, 30, size=len(users))]
    for x, y in zip(exact.score(users, candidates), only.score(users, candidates), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5 * scale)
    single = [only.score(np.array([u]), [c])[0] for u, c in zip(users, candidates, strict=True)]
    for x, y in zip(single, only.score(users, candidates), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_tampered_external_data_file_is_refused_at_load(versions: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "demo" / "1"
    shutil.copytree(versions["only"], copy)
    data = bytearray((copy / "user_vector_from_history.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "user_vector_from_history.onnx.data").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"user_vector_from_history\.onnx\.data"):
        LoadedModel(copy)


def test_served_similar_items_and_explain_are_refused_the_rest_answers(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    exact = LoadedModel(versions["exact"])
    user, item = str(exact.user_ids[3]), exact.item_id_text[5]
    repo = versions["only"].parents[1]
    with served(repo, tmp_path / "server.log") as srv, grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        ref = pb.ModelRef(name="demo")
        reply = stub.Recommend(pb.RecommendRequest(model=ref, user_id=user, k=10), timeout=30)
        assert reply.retrieval == "flat" and len(reply.items) == 10
        scored = stub.Score(pb.ScoreRequest(model=ref, user_id=user, item_ids=[item]), timeout=30)
        (want,) = exact.score(np.array([3]), [np.array([5])])
        np.testing.assert_allclose(scored.items[0].score, want[0], rtol=1e-4, atol=1e-5)
        meta = stub.GetModelMetadata(pb.GetModelMetadataRequest(model=ref), timeout=30)
        assert list(meta.graphs) == ["user_vector", "user_vector_from_history"]
        for call, request in (
            (stub.SimilarItems, pb.SimilarItemsRequest(model=ref, item_id=item, k=5)),
            (stub.Recommend, pb.RecommendRequest(model=ref, user_id=user, k=5, explain=True)),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--index-only" in (err.value.details() or "")


def test_forgetting_a_user_rewrites_external_data(versions: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(versions["only"].parents[1], repo)
    model = LoadedModel(repo / "demo" / "1")
    user = str(model.user_ids[7])
    before = model.sessions["user_vector"].run(None, {"user_idx": np.array([7, 8])})[0]
    out = forget(repo, "demo", user)
    assert out.version_dir is not None and out.rows_zeroed >= 1
    after_model = LoadedModel(out.version_dir)  # hashes of the rewritten .data file check out
    after = after_model.sessions["user_vector"].run(None, {"user_idx": np.array([7, 8])})[0]
    assert not after[0, :-1].any() and before[0, :-1].any()
    np.testing.assert_array_equal(after[1], before[1])


def test_index_only_refusals_and_the_exact_size_limit(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ExportError, match="--index-only needs an index"):
        export(run_dir, tmp_path / "a", "demo", options=ExportOptions(index="exact", index_only=True))
    with pytest.raises(ExportError, match="--index-only and --precision"):
        export(
            run_dir, tmp_path / "a", "demo", options=ExportOptions(index="flat", index_only=True, precisions=("fp16",))
        )
    monkeypatch.setattr(catalog, "EXACT_MAX_TABLE_BYTES", 1000)  # the 200-item table stands for a 10M one
    out = CliRunner().invoke(main, ["export", str(run_dir), "--repository", str(tmp_path / "b"), "--name", "demo"])
    assert out.exit_code == 2, out.output
    assert "--index-only" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "b" / "demo" / "1").exists()
