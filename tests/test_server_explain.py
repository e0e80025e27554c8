"""Explanations (issue #18): ``explain`` on Recommend names, for each answered item, up to 3 items of the
user's history that most support it, strongest first. The contributions are checked against PyTorch
computed another way (autograd through the two-tower's user tower; MF's fold-in score with the item
removed; cosine similarity for MF's known users), the explain graphs' parity is recorded, batch answers
equal single ones, and versions that cannot explain say so. Small runs on synthetic data, a real server
on 127.0.0.1."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from onnxrec.exporter.explain import explain_methods, repeats_merged
from onnxrec.exporter.export import ExportOptions, export
from onnxrec.exporter.repository import file_hashes
from onnxrec.server.explain import top_reasons
from onnxrec.server.loaded_model import LoadedModel
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.registry import build_model
from onnxrec.trainer.runs import open_run
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests import rpc
from tests.serverproc import ServerProcess, start_server
from tests.small_runs import train_small_runs

TT, MF = pb.ModelRef(name="tt"), pb.ModelRef(name="mf")
slow = pytest.mark.slow  # trains, exports and serves small runs


@pytest.fixture(scope="module")
def runs(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_small_runs(synthetic, tmp_path_factory.mktemp("explain-runs"), ("twotower", "mf"))


def _strip_explain(src: Path, dst: Path, name: str, entry: dict | None) -> None:  # type: ignore[type-arg]
    """A copy of version ``src`` as model ``name``: as exported before explanations (``entry`` None), or
    with the manifest's ``explain`` replaced by ``entry``; without the explain graphs either way."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for graph in ("explain", "explain_from_history"):
        (dst / f"{graph}.onnx").unlink()
        del manifest["graphs"][graph], manifest["parity"]["graphs"][graph]
    manifest.pop("explain")
    if entry is not None:
        manifest["explain"] = entry
    manifest["name"] = name
    manifest["files"] = file_hashes(dst)
    (dst / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def repo(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("explain-repo")
    opts = ExportOptions(k_max=10, max_batch=16, parity_users=64)
    export(runs["twotower"], root, "tt", options=opts)
    export(runs["mf"], root, "mf", options=opts)
    piped = ExportOptions(k_max=10, max_batch=16, parity_users=64, ranker=runs["mf"], candidates=30)
    export(runs["twotower"], root, "pipe", options=piped)  # two-tower retrieval, MF ranking
    _strip_explain(root / "tt" / "1", root / "old" / "1", "old", None)
    why = {"methods": None, "why": "model type mlp does not factor into user and item vectors"}
    _strip_explain(root / "tt" / "1", root / "deep" / "1", "deep", why)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(repo, tmp_path_factory.mktemp("explain-log") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.RecommenderServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


@pytest.fixture(scope="module")
def loaded(repo: Path) -> dict[str, LoadedModel]:
    return {name: LoadedModel(repo / name / "1") for name in ("tt", "mf")}


def _torch(runs: dict[str, Path], model: str) -> Recommender:
    ckpt, _ = open_run(runs[model])
    return model_from_checkpoint(ckpt).eval()


def _reasons(item: pb.ScoredItem) -> list[tuple[str, float]]:
    return [(r.item_id, r.contribution) for r in item.reasons]


def _check_shape(reply: pb.RecommendResponse, allowed: set[str]) -> None:
    """At most 3 reasons per item, all from ``allowed`` (the history), distinct, positive, strongest first."""
    assert reply.stages[-1] == "explain"
    for item in reply.items:
        ids, values = [r[0] for r in _reasons(item)], [r[1] for r in _reasons(item)]
        assert len(ids) <= 3 and len(set(ids)) == len(ids) and set(ids) <= allowed
        assert all(v > 0 for v in values) and values == sorted(values, reverse=True)
    assert any(item.reasons for item in reply.items)


# -- which items are named ----------------------------------------------------------------------------------
@slow
@pytest.mark.parametrize("name", ["tt", "mf"])
def test_reasons_name_only_the_users_history(stub, loaded: dict[str, LoadedModel], name: str) -> None:  # type: ignore[no-untyped-def]
    model, ref = loaded[name], pb.ModelRef(name=name)
    for u in range(0, 60, 6):
        reply = stub.Recommend(pb.RecommendRequest(model=ref, user_id=str(model.user_ids[u]), k=10, explain=True))
        assert reply.source == pb.SOURCE_MODEL
        _check_shape(reply, {model.item_id_text[i] for i in model.explain_history(u)})
        history = [model.item_id_text[i] for i in (u, u + 3, u + 7, u + 3)]  # a repeat
        reply = stub.Recommend(pb.RecommendRequest(model=ref, user_id="anon", k=10, history=history, explain=True))
        assert reply.source == pb.SOURCE_HISTORY
        _check_shape(reply, set(history))
    plain = stub.Recommend(pb.RecommendRequest(model=ref, user_id=str(model.user_ids[1]), k=10))
    assert not any(i.reasons for i in plain.items) and "explain" not in plain.stages
    nobody = stub.Recommend(pb.RecommendRequest(model=ref, user_id="nobody", k=10, explain=True))
    assert nobody.source == pb.SOURCE_POPULARITY and not any(i.reasons for i in nobody.items)


@slow
def test_a_pipeline_version_explains_the_ranked_items_by_its_retrieval_model(stub, loaded) -> None:  # type: ignore[no-untyped-def]
    model, ref = loaded["tt"], pb.ModelRef(name="pipe")
    user = str(model.user_ids[12])
    reply = stub.Recommend(pb.RecommendRequest(model=ref, user_id=user, k=10, explain=True), timeout=30)
    assert list(reply.stages) == ["retrieve", "rank", "explain"]
    _check_shape(reply, {model.item_id_text[i] for i in model.explain_history(12)})
    plain = stub.Recommend(pb.RecommendRequest(model=ref, user_id=user, k=10), timeout=30)
    assert [i.item_id for i in reply.items] == [i.item_id for i in plain.items]  # explaining changes no answer


@slow
def test_tracked_events_are_explained_from(stub, loaded: dict[str, LoadedModel]) -> None:  # type: ignore[no-untyped-def]
    model, user = loaded["tt"], 9
    tracked = [model.item_id_text[i] for i in range(model.num_items) if i not in set(model.seen(user).tolist())][:3]
    rpc.track(stub, str(model.user_ids[user]), tracked, model="tt")
    reply = rpc.recommend(stub, str(model.user_ids[user]), model="tt", explain=True)
    assert list(reply.stages) == ["events", "retrieve", "explain"]
    history = tracked[::-1] + [model.item_id_text[i] for i in model.seen(user)[::-1]]
    _check_shape(reply, set(history[: model.history_len]))


# -- what the contributions are -------------------------------------------------------------------------------
def _tower_reference(model: Recommender, user: int, features: dict, history: np.ndarray, item: int) -> dict:  # type: ignore[type-arg]
    """Per history item: d score / d its vector . (its vector - the history's weighted mean), by autograd
    through the model's own user tower (the gradient sums over an item's positions)."""
    m: torch.nn.Module = model
    with torch.no_grad():
        vectors = model.item_vectors()
    table = vectors.clone().requires_grad_(True)
    hist = torch.from_numpy(np.array(history[: model.history_len], dtype=np.int64))[None]
    u = model.user_vectors(torch.tensor([user]), {"history": hist, "item_table": table, **features})
    (grad,) = torch.autograd.grad((u[0] * vectors[item]).sum(), table)
    w = torch.softmax(m.recency[: hist.shape[1]].detach(), 0)
    mean = (w[:, None] * vectors[hist[0]]).sum(0)
    return {int(h): float(grad[h] @ (vectors[h] - mean)) for h in hist[0].tolist()}


def _check_against(reply: pb.RecommendResponse, model: LoadedModel, reference: object) -> None:
    for item in reply.items:
        want = reference(model.item_index[item.item_id])  # type: ignore[operator]
        best = sorted(want.values(), reverse=True)
        scale = max(abs(v) for v in want.values())
        for rank, (rid, value) in enumerate(_reasons(item)):
            assert value == pytest.approx(want[model.item_index[rid]], abs=2e-3 * scale)
            assert value == pytest.approx(best[rank], abs=2e-3 * scale)  # the strongest, in order


@slow
def test_two_tower_contributions_are_the_linearized_tower(stub, loaded, runs) -> None:  # type: ignore[no-untyped-def]
    model, torch_model = loaded["tt"], _torch(runs, "twotower")
    for u in (2, 11, 30):
        names = model.user_features
        feats = {f"user_{n}": torch.tensor([c]) for n, c in zip(names, model.user_feature_codes(u), strict=True)}
        reply = stub.Recommend(pb.RecommendRequest(model=TT, user_id=str(model.user_ids[u]), k=5, explain=True))
        history = model.explain_history(u)
        _check_against(reply, model, functools.partial(_tower_reference, torch_model, u, feats, history))
        ids = [model.item_id_text[i] for i in (u, u + 1, u + 5, u + 1)]
        reply = stub.Recommend(pb.RecommendRequest(model=TT, user_id="anon", k=5, history=ids, explain=True))
        unknown = {f"user_{n}": torch.tensor([0]) for n in names}
        newest = np.array([model.item_index[i] for i in ids[::-1]])
        _check_against(reply, model, functools.partial(_tower_reference, torch_model, -1, unknown, newest))


@slow
def test_mf_contributions(stub, loaded, runs) -> None:  # type: ignore[no-untyped-def]
    """History requests (fold-in): a history item's contribution is (n - 1) / n of what removing it costs
    the item's score (the folded-in user is the mean of the history's rows); known users: cosine
    similarity of the item vectors."""
    model = loaded["mf"]
    ids = [model.item_id_text[i] for i in (4, 8, 15, 16, 23)]
    newest = np.array([model.item_index[i] for i in ids[::-1]])
    reply = stub.Recommend(pb.RecommendRequest(model=MF, user_id="anon", k=5, history=ids, explain=True))

    def score(history: np.ndarray, item: int) -> float:
        exclude = np.concatenate([np.delete(np.arange(model.num_items), item), [-1]])
        (top,) = model.recommend_from_history([history], [exclude], [[]], 1)
        return float(top.scores[0])

    def removal(item: int) -> dict[int, float]:
        full = score(newest, item)
        return {h: (len(newest) - 1) / len(newest) * (full - score(newest[newest != h], item)) for h in newest}

    _check_against(reply, model, removal)
    with torch.no_grad():
        normed = torch.nn.functional.normalize(_torch(runs, "mf").item_vectors(), dim=-1).numpy()
    reply = stub.Recommend(pb.RecommendRequest(model=MF, user_id=str(model.user_ids[3]), k=5, explain=True))
    _check_against(reply, model, lambda i: {h: float(normed[h] @ normed[i]) for h in model.explain_history(3)})


# -- batches, parity, refusals -------------------------------------------------------------------------------
@slow
def test_batch_answers_equal_single_answers(stub, loaded: dict[str, LoadedModel]) -> None:  # type: ignore[no-untyped-def]
    requests = []
    for name in ("tt", "mf"):
        model, ref = loaded[name], pb.ModelRef(name=name)
        requests += [pb.RecommendRequest(model=ref, user_id=str(u), k=10, explain=True) for u in model.user_ids[:10]]
        history = [model.item_id_text[i] for i in (2, 7, 31)]
        requests.append(pb.RecommendRequest(model=ref, user_id="new", k=10, history=history, explain=True))
        requests.append(pb.RecommendRequest(model=ref, user_id=str(model.user_ids[0]), k=10))  # not explained
        requests.append(pb.RecommendRequest(model=ref, user_id="nobody", k=10, explain=True))
    batch = stub.RecommendBatch(pb.RecommendBatchRequest(requests=requests), timeout=30)
    for request, got in zip(requests, batch.responses, strict=True):
        single = stub.Recommend(request, timeout=30)
        assert [i.item_id for i in got.items] == [i.item_id for i in single.items]
        assert list(got.stages) == list(single.stages)
        for a, b in zip(got.items, single.items, strict=True):
            assert [r.item_id for r in a.reasons] == [r.item_id for r in b.reasons]
            np.testing.assert_allclose(
                [r.contribution for r in a.reasons], [r.contribution for r in b.reasons], rtol=1e-4
            )


@slow
def test_the_explain_graphs_parity_is_proven_and_recorded(repo: Path) -> None:
    for name, methods in (("tt", ("tower", "tower")), ("mf", ("similarity", "fold_in"))):
        manifest = json.loads((repo / name / "1" / "manifest.json").read_text())
        assert manifest["explain"]["methods"] == dict(zip(("explain", "explain_from_history"), methods, strict=True))
        for graph in ("explain", "explain_from_history"):
            p = manifest["parity"]["graphs"][graph]
            assert p["rows"] > 0 and p["tolerance_used"] <= 1.0 and {1, 7, 16} <= set(p["batch_sizes"])
            assert manifest["graphs"][graph]["outputs"][0]["name"] == "contributions"


@slow
def test_versions_that_cannot_explain_say_so(stub, loaded: dict[str, LoadedModel]) -> None:  # type: ignore[no-untyped-def]
    history = [loaded["tt"].item_id_text[0]]
    for name, words in (("old", "export its run again"), ("deep", "model type mlp")):
        ref = pb.ModelRef(name=name)
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(pb.RecommendRequest(model=ref, user_id="x", k=5, history=history, explain=True), timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and words in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            entries = [pb.RecommendRequest(model=ref, user_id="x", k=5, explain=explain) for explain in (False, True)]
            stub.RecommendBatch(pb.RecommendBatchRequest(requests=entries), timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "requests[1]" in err.value.details()
        assert stub.Recommend(pb.RecommendRequest(model=ref, user_id="x", k=5), timeout=30).items  # still serves


@slow
def test_forget_erases_the_users_rows_of_the_explain_graph(repo: Path, loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The tower method's explain graph holds per-user rows (id embeddings, side features) only as tables
    gathered by ``user_idx`` itself, so ``onnxrec forget`` zeroes the forgotten user's row in it too."""
    import onnx
    from onnx import numpy_helper

    from onnxrec.exporter.forget import forget

    shutil.copytree(repo / "tt", tmp_path / "tt")
    model, row = loaded["tt"], 6
    done = forget(tmp_path, "tt", str(model.user_ids[row]))
    assert done.version_dir is not None
    graph = onnx.load(str(done.version_dir / "explain.onnx")).graph
    tables = [numpy_helper.to_array(t) for t in graph.initializer if t.dims and t.dims[0] == model.num_users]
    assert len(tables) == 1 + len(model.user_features)  # the id embeddings and each side feature
    assert all(not np.any(t[row]) for t in tables) and any(np.any(t[row + 1]) for t in tables)


@pytest.mark.parametrize("model_type", ["mlp", "neumf", "deepfm", "linear"])
def test_models_without_item_vectors_get_no_explain_graphs(model_type: str) -> None:
    cfg = {"num_users": 5, "num_items": 7}
    methods = explain_methods(build_model(model_type, cfg), model_type)
    assert methods.known is None and model_type in methods.why and methods.entry()["methods"] is None


def test_top_reasons_and_repeats() -> None:
    history = np.array([5, 6, 5, 7, -1])
    c = torch.tensor([[[0.5, 0.2, 0.25, -0.1, 0.0], [-0.3, -0.2, 0.1, -0.1, 0.0]]])
    merged = repeats_merged(c, torch.from_numpy(history)[None], add=True)[0].numpy()
    np.testing.assert_allclose(merged[:, :2], [[0.75, 0.2], [-0.2, -0.2]])
    assert np.isneginf(merged[:, 2]).all() and np.isneginf(merged[:, 4]).all()  # the repeat and the padding
    reasons = top_reasons(merged, history[:5])
    assert reasons.items.tolist() == [[5, 6, -1], [-1, -1, -1]]  # only positive support is a reason
    assert reasons.contributions[0, :2] == pytest.approx([0.75, 0.2])


# -- clients ------------------------------------------------------------------------------------------------------
@slow
def test_the_python_client_and_cli_explain(server: ServerProcess, loaded: dict[str, LoadedModel]) -> None:
    from onnxrec.clients import RecommenderClient
    from onnxrec.clients.results import Reason

    model = loaded["tt"]
    user = str(model.user_ids[4])
    index = {text: i for i, text in enumerate(model.item_id_text)}
    with RecommenderClient(server.address) as client:
        r = client.recommend("tt", user, 5, explain=True, include_metadata=True)
        assert r.stages[-1] == "explain" and all(isinstance(x, Reason) for i in r.items for x in i.reasons)
        assert any(i.reasons for i in r.items) and not any(i.reasons for i in client.recommend("tt", user, 5).items)
        # each reason carries its history item's metadata from the version (items.parquet) when asked, else none
        assert all(x.metadata == model.metadata(index[x.item_id]) for i in r.items for x in i.reasons)
        bare = client.recommend("tt", user, 5, explain=True)
        assert [[(x.item_id, x.metadata) for x in i.reasons] for i in bare.items] == [
            [(x.item_id, {}) for x in i.reasons] for i in r.items
        ]
        (b,) = client.recommend_batch("tt", [user], 5, explain=True, include_metadata=True)
        assert [i.reasons for i in b.items] == [i.reasons for i in r.items]
    command = [sys.executable, "-m", "onnxrec", "recommend", "--server", server.address, "--model", "tt"]

    def shown(*options: str) -> list[str]:
        out = subprocess.run(
            [*command, "--user", user, "-k", "5", "--explain", *options], check=False, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return [line.split("because you watched ", 1)[1] for line in out.stdout.splitlines() if "because" in line]

    # the history items' titles from the version's item metadata (the synthetic catalog's "Item N"), not ids
    titled = [", ".join(model.metadata(index[x.item_id])["title"] for x in i.reasons) for i in r.items if i.reasons]
    assert shown() == titled and all(t.startswith("Item ") for t in titled)
    assert shown("--no-metadata") == [", ".join(x.item_id for x in i.reasons) for i in r.items if i.reasons]


@slow
def test_bench_explain_asks_every_call_to_explain(server: ServerProcess, repo: Path) -> None:
    """``onnxrec bench --explain`` sets explain on every Recommend (and RecommendBatch entry): a version
    that explains answers them all; one exported before explanations refuses each (FAILED_PRECONDITION),
    and none without --explain."""

    def bench(model: str, *options: str) -> dict:  # type: ignore[type-arg]
        command = [sys.executable, "-m", "onnxrec", "bench", "--server", server.address, "--model", model]
        command += ["--users-from", str(repo / model / "1"), "--concurrency", "2", "--duration", "2", "--warmup", "0"]
        out = subprocess.run([*command, "--json", *options], check=False, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        (result,) = json.loads(out.stdout)
        assert result["requests"] > 0
        return dict(result)

    assert bench("tt", "--explain")["errors"] == {}
    refused = bench("old", "--explain")
    assert set(refused["errors"]) == {"FAILED_PRECONDITION"} and refused["qps"] == 0
    assert set(bench("old", "--explain", "--batch-users", "4")["errors"]) == {"FAILED_PRECONDITION"}
    assert bench("old")["errors"] == {}
