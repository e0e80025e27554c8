"""Serving a pipeline version (issue #17): Recommend retrieves candidates with the retrieval run's graph,
the ranker re-ranks them, and the answer is the ranker's top-k; batch answers equal single ones; Score
answers with the ranker; a missing or tampered ranker graph is refused at load. Real onnxruntime
sessions and PyTorch models, a real server on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from onnxrec.server.loaded_model import LoadedModel, ModelLoadError
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.runs import open_run
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import start_server, wait_until
from tests.small_runs import export_pipelines, train_small_runs

CANDIDATES = 30

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_small_runs(synthetic, tmp_path_factory.mktemp("pipe-runs"), ("twotower", "mlp"))


@pytest.fixture(scope="module")
def repo(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pipe``: two-tower retrieval of 30 candidates ranked by the MLP; ``one``: the two-tower alone."""
    return export_pipelines(runs["twotower"], tmp_path_factory.mktemp("pipe-repo"), CANDIDATES, {"pipe": runs["mlp"]})


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    srv = start_server(repo, tmp_path_factory.mktemp("pipe-log") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


def _mlp(runs: dict[str, Path]) -> torch.nn.Module:
    ckpt, _ = open_run(runs["mlp"])
    return model_from_checkpoint(ckpt).eval()


def _ids(reply: pb.RecommendResponse) -> list[str]:
    return [i.item_id for i in reply.items]


def test_recommend_is_the_rankers_top_k_of_the_retrieved_candidates(stub, repo: Path, runs: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    """For known users: the one-stage version's top-30 (seen items left out), re-scored by the MLP in
    PyTorch, best 10 first: the pipeline's answer, items and scores."""
    one, mlp = LoadedModel(repo / "one" / "1"), _mlp(runs)
    for user in one.user_ids[:20]:
        uid = str(user)
        reply = stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name="pipe"), user_id=uid, k=10), timeout=30)
        assert list(reply.stages) == ["retrieve", "rank"] and reply.retrieval == "exact"
        base = stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name="one"), user_id=uid, k=CANDIDATES))
        assert list(base.stages) == ["retrieve"]
        cands = np.array([one.item_index[i] for i in _ids(base)], dtype=np.int64)
        with torch.no_grad():
            want = mlp.score_candidates(torch.tensor([one.user_index[uid]]), torch.from_numpy(cands)[None], {})[0]
        order = np.argsort(-want.numpy(), kind="stable")[:10]
        got = np.array([s.score for s in reply.items])
        assert set(_ids(reply)) == {one.item_id_text[i] for i in cands[order]}
        np.testing.assert_allclose(got, want.numpy()[order], rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(got).max())))
        assert list(got) == sorted(got, reverse=True)


def test_fewer_candidates_and_limits(stub, repo: Path) -> None:  # type: ignore[no-untyped-def]
    """``candidates`` = k re-orders retrieval's own top-k; outside k .. the version's candidates is
    INVALID_ARGUMENT naming the range; metadata reports the stages and candidates."""
    one = LoadedModel(repo / "one" / "1")
    uid = str(one.user_ids[3])
    ref = pb.ModelRef(name="pipe")
    reply = stub.Recommend(pb.RecommendRequest(model=ref, user_id=uid, k=5, candidates=5), timeout=30)
    base = stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name="one"), user_id=uid, k=5), timeout=30)
    assert set(_ids(reply)) == set(_ids(base))
    for bad in (4, CANDIDATES + 1):
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(pb.RecommendRequest(model=ref, user_id=uid, k=5, candidates=bad), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"between k (5) and {CANDIDATES}" in err.value.details()
    meta = stub.GetModelMetadata(pb.GetModelMetadataRequest(model=ref), timeout=30)
    assert list(meta.stages) == ["retrieve", "rank"] and meta.candidates == CANDIDATES and meta.k_max == 10
    assert {"rank", "rank_from_history"} <= set(meta.graphs)


def test_batch_answers_equal_single_answers(stub, repo: Path) -> None:  # type: ignore[no-untyped-def]
    """Known users, history users and a popularity fallback in one RecommendBatch answer as their
    single Recommend calls do."""
    one = LoadedModel(repo / "one" / "1")
    ref = pb.ModelRef(name="pipe")
    requests = [pb.RecommendRequest(model=ref, user_id=str(u), k=10) for u in one.user_ids[:12]]
    history = [one.item_id_text[i] for i in (4, 9, 17)]
    requests.append(pb.RecommendRequest(model=ref, user_id="new-user", k=10, history=history))
    requests.append(pb.RecommendRequest(model=ref, user_id="nobody", k=10))
    batch = stub.RecommendBatch(pb.RecommendBatchRequest(requests=requests), timeout=30)
    for request, got in zip(requests, batch.responses, strict=True):
        single = stub.Recommend(request, timeout=30)
        assert _ids(got) == _ids(single) and list(got.stages) == list(single.stages)
        np.testing.assert_allclose([i.score for i in got.items], [i.score for i in single.items], rtol=1e-5)
    assert list(batch.responses[-2].stages) == ["retrieve", "rank"]
    assert not set(_ids(batch.responses[-2])) & set(history)
    assert list(batch.responses[-1].stages) == ["popularity"]


def test_score_answers_with_the_ranker(stub, repo: Path, runs: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    one, mlp = LoadedModel(repo / "one" / "1"), _mlp(runs)
    uid, items = str(one.user_ids[7]), [one.item_id_text[i] for i in (0, 5, 11, 40)]
    reply = stub.Score(pb.ScoreRequest(model=pb.ModelRef(name="pipe"), user_id=uid, item_ids=items), timeout=30)
    with torch.no_grad():
        idx = torch.tensor([[one.item_index[i] for i in items]])
        want = mlp.score_candidates(torch.tensor([one.user_index[uid]]), idx, {})[0].numpy()
    got = np.array([s.score for s in reply.items])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("damage", ["missing", "tampered"])
def test_a_pipeline_whose_ranker_graph_is_missing_or_tampered_is_refused(
    repo: Path, tmp_path: Path, damage: str
) -> None:
    copy = tmp_path / "pipe" / "1"
    shutil.copytree(repo / "pipe" / "1", copy)
    graph = copy / "rank.onnx"
    if damage == "missing":
        graph.unlink()
    else:
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"rank\.onnx"):
        LoadedModel(copy)
    log = tmp_path / "server.log"
    srv = start_server(tmp_path, log, wait_serving=False)  # (health stays NOT_SERVING: no pipe loads)
    try:
        wait_until(lambda: "rejected pipe version 1" in log.read_text(), 60, "the damaged pipeline rejected")
        line = next(ln for ln in log.read_text().splitlines() if "rejected pipe version 1" in ln)
        assert "rank.onnx" in line
    finally:
        srv.stop()


def test_the_python_client_and_cli_show_the_stages(server, repo: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import sys

    from onnxrec.clients import RecommenderClient as Client

    uid = str(LoadedModel(repo / "one" / "1").user_ids[2])
    with Client(server.address) as client:
        r = client.recommend("pipe", uid, 5, candidates=12)
        assert r.stages == ("retrieve", "rank") and len(r.items) == 5
        meta = client.model_metadata("pipe")
        assert meta.stages == ("retrieve", "rank") and meta.candidates == CANDIDATES
    cmd = [sys.executable, "-m", "onnxrec", "recommend", "--server", server.address, "--model", "pipe"]
    out = subprocess.run(
        [*cmd, "--user", uid, "-k", "3", "--candidates", "12", "--json"], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stages"] == ["retrieve", "rank"]
