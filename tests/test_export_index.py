"""The nearest-neighbour index in a model version (issue #16, exporter side): built over the item vectors
of factorized models, its recall proven at export, written with faiss and hash-listed, and the
user-vector graphs whose dot product with the index's vectors is the score graph's score."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from onnxrec.cli import main
from onnxrec.errors import ExportError, RecallError
from onnxrec.exporter.export import ExportOptions, export
from onnxrec.exporter.index import (
    AUTO_MAX_EF_SEARCH,
    AUTO_MIN_ITEMS,
    IndexOptions,
    build_index,
    choose_kind,
    default_nlist,
)
from onnxrec.exporter.index_proof import prove_index
from onnxrec.exporter.inspect import format_manifest, inspect_version
from onnxrec.exporter.parity import Tolerance, max_abs_score
from onnxrec.exporter.recall import SeenItems, measure_recall
from onnxrec.exporter.repository import sha256_file
from onnxrec.server.loaded_model import LoadedModel
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.runs import open_run
from tests.small_runs import train_small_runs

faiss = pytest.importorskip("faiss")

EXACT_GRAPHS = {"recommend", "recommend_from_history", "score", "similar_items"}
VECTOR_GRAPHS = {"user_vector", "user_vector_from_history"}
EXPLAIN_GRAPHS = {"explain", "explain_from_history"}  # MF and two-tower versions explain (exporter/explain.py)
TOL = Tolerance()


# --------------------------------------------------------------------------- without training


def test_auto_is_exact_below_the_threshold_and_for_models_without_vectors() -> None:
    assert choose_kind("auto", True, "mf", AUTO_MIN_ITEMS - 1) == "exact"
    assert choose_kind("auto", True, "mf", AUTO_MIN_ITEMS) == "hnsw"
    assert choose_kind("auto", False, "mlp", 10 * AUTO_MIN_ITEMS) == "exact"
    assert choose_kind("ivf", True, "twotower", 10) == "ivf"
    assert choose_kind("exact", False, "neumf", 10) == "exact"
    with pytest.raises(ExportError, match="neumf model's score is not a dot product"):
        choose_kind("flat", False, "neumf", 10)
    with pytest.raises(ExportError, match="unknown index 'annoy'"):
        IndexOptions(kind="annoy").check()
    with pytest.raises(ExportError, match="index-ef-search must be at least 1"):
        IndexOptions(ef_search=0).check()
    assert default_nlist(1_000_000) == 4000 and default_nlist(100) == 2 and default_nlist(10) == 1
    with pytest.raises(ExportError, match="unknown HNSW graph 'l1'"):
        IndexOptions(graph="l1").check()


def _random_catalog(n_items: int, n_users: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.normal(0, 0.05, (n_items, dim + 1)).astype(np.float32)
    users = np.concatenate([rng.normal(0, 0.05, (n_users, dim)), np.ones((n_users, 1))], axis=1)
    return items, users.astype(np.float32)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "flat"])
def test_each_index_kind_finds_the_exact_top_k_of_a_small_catalog(kind: str) -> None:
    items, users = _random_catalog(2000, 50, 16, seed=1)
    built = build_index(kind, items, IndexOptions(kind=kind, nlist=16, nprobe=16))
    assert built.index.ntotal == 2000 and built.index.d == 17
    seen = SeenItems(np.arange(51) * 3, np.arange(150) % 2000)
    recall = measure_recall(built.index, items, users, seen, np.arange(50))
    assert recall["at10"] >= 0.99 and recall["at100"] >= 0.97, recall  # hnsw on 2,000 items; ivf probes every list


def test_the_lifted_hnsw_graph_is_built_when_named() -> None:
    items, users = _random_catalog(2000, 50, 16, seed=2)
    built = build_index("hnsw", items, IndexOptions(kind="hnsw", graph="lifted-l2"))
    assert built.params["graph"] == "lifted_l2" and built.params["max_norm"] > 0
    recall = measure_recall(
        built.index, items, users, SeenItems(np.zeros(51, dtype=np.int64), np.zeros(0, dtype=np.int64)), np.arange(50)
    )
    assert recall["at10"] >= 0.99, recall
    assert build_index("hnsw", items, IndexOptions(kind="hnsw")).params["graph"] == "inner_product"  # auto's first


@pytest.mark.parametrize(("graph", "space"), [("auto", "lifted_l2"), ("inner-product", "inner_product")])
def test_ivf_lists_are_built_over_lifted_vectors_unless_inner_product_is_named(graph: str, space: str) -> None:
    """IVF's lists: by L2 over the MIPS-lifted vectors by default (searched through the query padding,
    reconstructing the item vectors), by inner product when named; both find the exact top-k when every
    list is probed."""
    items, users = _random_catalog(2000, 50, 16, seed=3)
    built = build_index("ivf", items, IndexOptions(kind="ivf", nlist=16, nprobe=16, graph=graph))
    assert built.params["graph"] == space
    np.testing.assert_allclose(built.index.reconstruct_n(0, 5), items[:5], rtol=1e-6, atol=1e-7)
    no_seen = SeenItems(np.zeros(51, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert measure_recall(built.index, items, users, no_seen, np.arange(50))["at10"] == 1.0


def test_recall_excludes_seen_items_by_over_fetching() -> None:
    """A user who has seen all but 3 items of a small catalog (the best ones among them): the index's
    answer, seen items dropped, is exactly the 3 left, so recall is 1, not 3/10."""
    items, users = _random_catalog(40, 2, 4, seed=2)
    built = build_index("flat", items, IndexOptions(kind="flat"))
    best = np.argsort(-(users[0] @ items.T))
    seen_by_0 = np.sort(best[:37])
    seen = SeenItems(np.array([0, 37, 37]), seen_by_0)
    recall = measure_recall(built.index, items, users, seen, np.array([0, 1]))
    assert recall == {"at10": 1.0, "at100": 1.0}


# --------------------------------------------------------------------------- end to end (trained models)


@pytest.fixture(scope="module")
def runs(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_small_runs(synthetic, tmp_path_factory.mktemp("index-runs"), ("mf", "twotower", "mlp"))


@pytest.fixture(scope="module")
def indexed(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MF and two-tower exported with an HNSW index forced on the 200-item synthetic catalog."""
    repo = tmp_path_factory.mktemp("index-repo")
    opts = ExportOptions(k_max=20, max_batch=32, index="hnsw", index_m=8, index_ef_construction=40)
    return {m: export(runs[m], repo, m, options=opts) for m in ("mf", "twotower")}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mf", "twotower"])
def test_index_round_trip(model: str, indexed: dict[str, Path]) -> None:
    version = indexed[model]
    manifest = inspect_version(version)  # every listed file's hash checked
    entry = manifest["index"]
    assert set(entry) >= {"type", "file", "metric", "dim", "num_items", "params", "build_seconds", "memory_bytes"}
    assert (entry["type"], entry["file"], entry["metric"]) == ("hnsw", "items.faiss", "inner_product")
    graph = entry["params"].pop("graph")  # the inner-product graph, or the lifted one when it falls short
    assert entry["params"].pop("max_norm", None) is None or graph == "lifted_l2"
    assert graph in ("inner_product", "lifted_l2") and entry["params"] == {
        "M": 8,
        "ef_construction": 40,
        "ef_search": 256,
    }
    assert entry["num_items"] == manifest["num_items"] and entry["dim"] == 17  # dim 16 + the bias column
    assert entry["memory_bytes"] == (version / "items.faiss").stat().st_size and entry["build_seconds"] >= 0
    assert entry["recall"]["users"] == min(1000, manifest["num_users"]) and entry["recall"]["min_recall_at10"] == 0.95
    assert entry["recall"]["at10"] >= 0.95 and 0 < entry["recall"]["at100"] <= 1
    assert manifest["files"]["items.faiss"] == sha256_file(version / "items.faiss")
    assert set(manifest["graphs"]) == EXACT_GRAPHS | VECTOR_GRAPHS | EXPLAIN_GRAPHS
    assert set(manifest["parity"]["graphs"]) == EXACT_GRAPHS | VECTOR_GRAPHS | EXPLAIN_GRAPHS
    for name in VECTOR_GRAPHS:
        assert manifest["graphs"][name]["file"] == f"{name}.onnx" and f"{name}.onnx" in manifest["files"]
    history_inputs = [t["name"] for t in manifest["graphs"]["recommend_from_history"]["inputs"]]
    assert [t["name"] for t in manifest["graphs"]["user_vector_from_history"]["inputs"]] == [
        n for n in history_inputs if n not in ("exclude", "k")
    ]
    assert manifest["graphs"]["user_vector"]["outputs"][0]["shape"] == ["batch", 17]

    index = faiss.read_index(str(version / "items.faiss"))  # the HNSW index itself (faiss downcasts it)
    assert index.ntotal == manifest["num_items"] and index.d == 17
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT and index.hnsw.efSearch == 256
    users = np.arange(manifest["num_users"], dtype=np.int64)
    (vectors,) = _session(version / "user_vector.onnx").run(None, {"user_idx": users})
    exact = np.argsort(-(vectors @ index.reconstruct_n(0, index.ntotal).T), axis=1)[:, :10]
    _, found = index.search(vectors, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found, strict=True)])
    assert overlap >= 0.95

    text = format_manifest(manifest)
    assert "retrieval: hnsw index items.faiss over 200 items x 17 dims" in text
    assert "M 8, ef_construction 40, ef_search 256" in text and "recall       @10" in text


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mf", "twotower"])
def test_user_vector_graphs_are_the_model_and_the_index_scores_are_the_score_graph(
    model: str, indexed: dict[str, Path], runs: dict[str, Path]
) -> None:
    version = indexed[model]
    ckpt, ds = open_run(runs[model])
    torch_model = model_from_checkpoint(ckpt).eval()
    items = faiss.read_index(str(version / "items.faiss")).reconstruct_n(0, ds.num_items)
    rng = np.random.default_rng(5)
    users = rng.integers(0, ds.num_users, 64)
    (vectors,) = _session(version / "user_vector.onnx").run(None, {"user_idx": users})
    candidates = rng.integers(0, ds.num_items, (64, 30))
    (scores,) = _session(version / "score.onnx").run(None, {"user_idx": users, "items": candidates})
    dots = np.einsum("bd,bnd->bn", vectors.astype(np.float64), items[candidates].astype(np.float64))
    np.testing.assert_allclose(dots, scores, rtol=0, atol=TOL.allowed(max_abs_score(scores)))
    with torch.no_grad():  # the item side is the model's: vectors and the bias as the last column
        np.testing.assert_allclose(items[:, :-1], torch_model.item_vectors().numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(items[:, -1], torch_model.item_bias().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(vectors[:, -1], np.ones(64, dtype=np.float32))
    if model == "mf":  # a known MF user's vector is its factor row
        expected = torch_model.user_vectors(torch.from_numpy(users), {}).detach().numpy()
        np.testing.assert_allclose(vectors[:, :-1], expected, rtol=1e-5, atol=1e-7)

    # a history user's vector ranks every item as recommend_from_history does: the same scores up to a
    # constant per row (MF's folded-in user bias; 0 for the two-tower)
    graph = json.loads((version / "manifest.json").read_text())["graphs"]["user_vector_from_history"]
    history = rng.integers(0, ds.num_items, (16, 8))
    history[::2, 3:] = -1
    feed = {"history": history}
    feed |= {t["name"]: rng.integers(0, 2, 16) for t in graph["inputs"] if t["name"].startswith("user_")}
    (hist_vectors,) = _session(version / "user_vector_from_history.onnx").run(None, feed)
    rec = _session(version / "recommend_from_history.onnx")
    top, top_items = rec.run(None, feed | {"exclude": np.full((16, 1), -1), "k": np.array([20])})
    shift = top - np.einsum("bd,bkd->bk", hist_vectors.astype(np.float64), items[top_items].astype(np.float64))
    np.testing.assert_allclose(shift, shift[:, :1].repeat(20, axis=1), rtol=0, atol=TOL.allowed(max_abs_score(top)))


@pytest.mark.slow
def test_a_recall_below_the_minimum_fails_the_export_and_writes_no_version(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    opts = ExportOptions(k_max=20, max_batch=32, index="hnsw", min_recall=1.01)
    with pytest.raises(RecallError, match=r"recall@10 \d\.\d{4} of the exact top-10, below --min-recall 1.01"):
        export(runs["mf"], tmp_path / "repo", "mf", options=opts)
    assert not (tmp_path / "repo" / "mf").exists()
    assert isinstance(RecallError("x"), ExportError)


@pytest.mark.slow
@pytest.mark.parametrize(("graph", "built"), [("inner-product", "inner_product"), ("lifted-l2", "lifted_l2")])
def test_a_named_hnsw_graph_is_the_only_one_built(
    runs: dict[str, Path], tmp_path: Path, graph: str, built: str
) -> None:
    """--index-graph names the graph: the export builds that one alone (auto would build the other too when
    the first falls short of --min-recall), so the failure names it."""
    opts = ExportOptions(k_max=20, max_batch=32, index="hnsw", index_graph=graph, min_recall=1.01)
    with pytest.raises(RecallError, match=f"hnsw index \\(M 32, ef_construction 100, ef_search 256, graph {built}"):
        export(runs["mf"], tmp_path / "repo", "mf", options=opts)
    assert not (tmp_path / "repo" / "mf").exists()


@pytest.mark.slow
def test_auto_raises_ef_search_up_to_its_cap_before_it_fails(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto picked the index, so it also picks how hard to search it: ef_search doubles from
    --index-ef-search until recall@10 passes, up to AUTO_MAX_EF_SEARCH; an index named by the caller is
    searched with the caller's ef_search (the test above)."""
    monkeypatch.setattr("onnxrec.exporter.index.AUTO_MIN_ITEMS", 10)  # the 200-item catalog gets an index
    opts = ExportOptions(k_max=20, max_batch=32, index_ef_search=16, min_recall=1.01)
    with pytest.raises(
        RecallError, match=f"hnsw index \\(M 32, ef_construction 100, ef_search {AUTO_MAX_EF_SEARCH}, graph "
    ):
        export(runs["mf"], tmp_path / "repo", "mf", options=opts)
    assert not (tmp_path / "repo" / "mf").exists()


@pytest.mark.slow
def test_an_index_on_a_model_without_vectors_is_a_one_line_error(runs: dict[str, Path], tmp_path: Path) -> None:
    args = ["export", str(runs["mlp"]), "--repository", str(tmp_path / "repo"), "--name", "m", "--index", "hnsw"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        "error: --index hnsw: a mlp model's score is not a dot product of a user and an item vector, so it has "
        "no index; export it with --index exact (or auto)"
    ]
    assert not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_auto_keeps_a_small_catalog_exact(runs: dict[str, Path], tmp_path: Path) -> None:
    version = export(runs["mf"], tmp_path / "repo", "mf", options=ExportOptions(k_max=20, max_batch=32))
    manifest = inspect_version(version)
    assert manifest["index"] is None and not (version / "items.faiss").exists()
    assert set(manifest["graphs"]) == EXACT_GRAPHS | EXPLAIN_GRAPHS
    assert "retrieval: exact" in format_manifest(manifest)


@pytest.mark.slow
def test_cli_export_with_an_ivf_index_and_a_tampered_index_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    args = ["export", str(runs["mf"]), "--repository", str(repo), "--name", "ivf", "--max-batch", "16"]
    args += ["--k-max", "20", "--index", "ivf", "--index-nlist", "4", "--index-nprobe", "4", "--min-recall", "0.99"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "retrieval: ivf index items.faiss" in result.output and "nlist 4, nprobe 4" in result.output
    manifest = inspect_version(repo / "ivf" / "1")
    assert manifest["index"]["params"]["nprobe"] == 4 and manifest["index"]["recall"]["at10"] >= 0.99
    assert manifest["index"]["params"]["graph"] == "lifted_l2"
    # served: the lifted lists' L2 distances come back as the score graph's u.v scores
    model = LoadedModel(repo / "ivf" / "1")
    users = np.arange(0, model.num_users, 7)
    tops = model.recommend(users, [model.seen_row(int(u)) for u in users], 10)
    for u, top in zip(users, tops, strict=True):
        (want,) = model.score(np.array([u]), [top.items])
        np.testing.assert_allclose(top.scores, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
        assert np.all(np.diff(top.scores) <= 1e-6)
    (repo / "ivf" / "1" / "items.faiss").write_bytes(b"tampered")
    with pytest.raises(ExportError, match=r"items\.faiss does not match its hash"):
        inspect_version(repo / "ivf" / "1")


def test_auto_tries_ivf_raising_nprobe_then_falls_back_to_hnsw() -> None:
    """--index auto: IVF first, its nprobe doubled from --index-nprobe while recall@10 is short, up to an
    eighth of the lists; past that, HNSW."""
    items, users = _random_catalog(4000, 200, 16, seed=4)
    no_seen = SeenItems(np.zeros(201, dtype=np.int64), np.zeros(0, dtype=np.int64))
    opts = IndexOptions(kind="auto", nlist=64, nprobe=1, recall_users=200)
    first = measure_recall(build_index("ivf", items, opts).index, items, users, no_seen, np.arange(200))["at10"]
    cheap = prove_index("hnsw", items, users, no_seen, replace(opts, min_recall=min(1.0, first + 0.05)))
    assert cheap.built.kind == "ivf" and 1 < cheap.built.params["nprobe"] <= 8, cheap.built.params
    assert cheap.recall["at10"] >= first + 0.05
    costly = prove_index("hnsw", items, users, no_seen, replace(opts, min_recall=0.99))
    assert costly.built.kind == "hnsw" and costly.recall["at10"] >= 0.99


@pytest.mark.slow
def test_auto_exports_ivf_when_it_is_enough(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("onnxrec.exporter.index.AUTO_MIN_ITEMS", 10)  # the 200-item catalog gets an index
    version = export(runs["mf"], tmp_path / "repo", "mf", options=ExportOptions(k_max=20, max_batch=32))
    manifest = inspect_version(version)
    assert manifest["index"]["type"] == "ivf" and manifest["index"]["params"]["graph"] == "lifted_l2"
    assert manifest["stages"][0]["retrieval"] == "ivf"
    assert manifest["stages"][0]["graphs"] == ["user_vector", "user_vector_from_history"]
    assert LoadedModel(version).retrieval == "ivf"
