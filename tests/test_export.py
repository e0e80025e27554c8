"""Export: every model type to ONNX with parity, the repository layout, inspect, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxrec.errors import ExportError, ParityError, TrainingError
from onnxrec.exporter.export import ExportOptions, export, serving_tables
from onnxrec.exporter.graphs import RecommendGraph, ScoreGraph, masked_topk, topk_excluding
from onnxrec.exporter.inspect import inspect_version
from onnxrec.exporter.onnx_io import add_k_input
from onnxrec.exporter.parity import check_values
from onnxrec.exporter.repository import list_versions
from onnxrec.exporter.spec import recommend_spec, score_spec
from onnxrec.trainer.checkpoint import load_checkpoint, model_from_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.scorer import ModelScorer
from onnxrec.trainer.train import train
from tests.contract import RecommenderContract
from tests.small_runs import train_small_runs

pytestmark = pytest.mark.slow  # end to end; left out of make test-quick

MODELS = ("mf", "mlp", "neumf", "twotower")


@pytest.fixture(scope="module")
def runs(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_small_runs(synthetic, tmp_path_factory.mktemp("runs"), MODELS)


@pytest.fixture(scope="module")
def repo(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for m, run in runs.items():
        export(run, root, m, options=ExportOptions(k_max=20, max_batch=64))
    return root


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model", MODELS)
def test_every_model_exports_with_parity(model: str, repo: Path, runs: dict[str, Path]) -> None:
    version = repo / model / "1"
    manifest = inspect_version(version)  # also verifies every file's hash
    assert manifest["model_type"] == model and manifest["opset"] >= 17
    explain = {"explain", "explain_from_history"} if model in ("mf", "twotower") else set()  # exporter/explain.py
    assert set(manifest["graphs"]) == {"recommend", "recommend_from_history", "score", "similar_items"} | explain
    for name, g in manifest["graphs"].items():
        onnx.checker.check_model(str(version / g["file"]))
        p = manifest["parity"]["graphs"][name]
        assert p["tolerance_used"] <= 1.0 and p["max_rel_diff"] <= p["rtol"] and p["rows"] > 0
        assert {1, 7, 64} <= set(p["batch_sizes"])
        if name != "score":
            assert p["topk_agreement"] >= 0.999
    for f in ("items.parquet", "users.parquet", "seen.npz", "popular.npy", "manifest.json"):
        assert (version / f).is_file()
    # onnxruntime's top-10 equals PyTorch's for every user (seen items excluded the same way)
    ckpt, ds = open_run(runs[model])
    torch_model = model_from_checkpoint(ckpt)
    seen = np.load(version / "seen.npz", allow_pickle=False)
    users = np.arange(ds.num_users)
    exclude = np.full((len(users), 1 + int(np.diff(seen["indptr"]).max())), -1, dtype=np.int64)
    for u in users:
        row = seen["indices"][seen["indptr"][u] : seen["indptr"][u + 1]]
        exclude[u, : len(row)] = row
    feed = {"user_idx": users, "exclude": exclude, "k": np.array([10])}
    _, onnx_items = _session(version / "recommend.onnx").run(None, feed)
    assert onnx_items.shape == (len(users), 10)  # the runtime k, not k_max
    ref = ModelScorer(torch_model, ds)(users, "serve")
    for u in users:
        ref[u, exclude[u][exclude[u] >= 0]] = -np.inf
    ref_top = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    agree = np.mean([set(a) == set(b) for a, b in zip(ref_top.tolist(), onnx_items[:, :10].tolist(), strict=True)])
    assert agree >= 0.999


@pytest.mark.parametrize("model", MODELS)
def test_top_k_graphs_take_k_at_run_time(model: str, repo: Path) -> None:
    """recommend and similar_items return k columns for any k in [1, k_max], the first columns of the
    k_max answer (format 3 graphs do not clamp k: the server refuses a k outside that range)."""
    version = repo / model / "1"
    rec = _session(version / "recommend.onnx")
    users = np.arange(12, dtype=np.int64)
    base = {"user_idx": users, "exclude": np.full((12, 1), -1, dtype=np.int64)}
    full_s, full_i = rec.run(None, {**base, "k": np.array([20])})
    for k in (1, 5, 19, 20):
        s, i = rec.run(None, {**base, "k": np.array([k])})
        assert s.shape == i.shape == (12, k)
        np.testing.assert_allclose(s, full_s[:, :k], rtol=1e-6)
        assert (i[:, 0] == full_i[:, 0]).all()
    sim = _session(version / "similar_items.onnx")
    s, i = sim.run(None, {"item_idx": np.arange(4, dtype=np.int64), "k": np.array([3])})
    assert s.shape == (4, 3) and not (i == np.arange(4)[:, None]).any()


def test_a_graph_without_top_k_gets_no_k_input(tmp_path: Path) -> None:
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    with pytest.raises(ExportError, match="one TopK node"):
        add_k_input(model, recommend_spec(10))


@pytest.mark.parametrize("model", ["mf", "neumf"])
def test_fp16_variant_of_every_model_family(model: str, runs: dict[str, Path], tmp_path: Path) -> None:
    """fp16 variants load in onnxruntime for factorized and MLP models alike (their fold-in graph mixes
    its history mask with the half-precision tables) and answer close to fp32."""
    out = export(runs[model], tmp_path, model, options=ExportOptions(k_max=10, max_batch=16, precisions=("fp16",)))
    history = np.array([[1, 2, 3, -1, -1]], dtype=np.int64)
    feed = {"history": history, "exclude": np.full((1, 1), -1, dtype=np.int64), "k": np.array([10])}
    s32, _ = _session(out / "recommend_from_history.onnx").run(None, feed)
    s16, _ = _session(out / "recommend_from_history.fp16.onnx").run(None, feed)
    assert s16.dtype == np.float32
    np.testing.assert_allclose(s16, s32, rtol=2e-2, atol=2e-2)


def test_real_ml100k_model_exports(ml100k: Dataset, tmp_path: Path) -> None:
    data = save_dataset(ml100k, tmp_path / "ml100k")
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, progress=False))
    out = export(run, tmp_path / "repo", "ml100k", options=ExportOptions(precisions=("fp16", "int8")))
    m = inspect_version(out)
    assert m["num_items"] == 1682 and m["k_max"] == 100
    exact = {"recommend", "recommend_from_history", "score", "similar_items"}
    assert m["index"] is None and set(m["graphs"]) == exact | {"explain", "explain_from_history"}
    for precision in ("fp16", "int8"):
        v = m["variants"][precision]
        assert len(v["files"]) == 6
        # reduced precision changes validation quality only a little on this model
        assert abs(v["quality"]["sampled/hr@10_change"]) < 0.05
        _session(out / f"recommend.{precision}.onnx")


class _OnnxBackend:
    def __init__(self, version: Path) -> None:
        self.rec = _session(version / "recommend.onnx")
        self.score_s = _session(version / "score.onnx")

    def recommend(self, users: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pad = np.full((len(users), 1), -1, dtype=np.int64)  # the format 3 contract: a -1 in every row
        feed = {"user_idx": users.astype(np.int64), "exclude": np.hstack([exclude.astype(np.int64), pad])}
        feed["k"] = np.array([k])
        s, i = self.rec.run(None, feed)
        assert s.shape == (len(users), k)
        return s, i

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.asarray(
            self.score_s.run(None, {"user_idx": users.astype(np.int64), "items": items.astype(np.int64)})[0]
        )


class _TorchBackend:
    def __init__(self, run: Path) -> None:
        ckpt, ds = open_run(run)
        model = model_from_checkpoint(ckpt)
        tables = serving_tables(model, ds)
        self.rec = RecommendGraph(model, tables, 20).eval()
        self.score_m = ScoreGraph(model, tables).eval()

    def recommend(self, users: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            s, i = self.rec(torch.from_numpy(users.astype(np.int64)), torch.from_numpy(exclude.astype(np.int64)))
        return s.numpy()[:, :k], i.numpy()[:, :k]

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.score_m(
                torch.from_numpy(users.astype(np.int64)), torch.from_numpy(items.astype(np.int64))
            ).numpy()


@pytest.fixture(scope="module", params=MODELS)
def contract_target(
    request: pytest.FixtureRequest, repo: Path, runs: dict[str, Path], synthetic: Dataset
) -> dict[str, object]:
    return {
        "onnx": _OnnxBackend(repo / request.param / "1"),
        "torch": _TorchBackend(runs[request.param]),
        "num_users": synthetic.num_users,
        "num_items": synthetic.num_items,
    }


class TestOnnxContract(RecommenderContract):
    """The contract against the exported ONNX sessions."""

    @pytest.fixture(autouse=True)
    def _bind(self, contract_target: dict[str, object]) -> None:
        self.backend = contract_target["onnx"]  # type: ignore[assignment]
        self.num_users = int(contract_target["num_users"])  # type: ignore[call-overload]
        self.num_items = int(contract_target["num_items"])  # type: ignore[call-overload]


class TestTorchContract(RecommenderContract):
    """The same contract against the PyTorch modules the graphs came from."""

    @pytest.fixture(autouse=True)
    def _bind(self, contract_target: dict[str, object]) -> None:
        self.backend = contract_target["torch"]  # type: ignore[assignment]
        self.num_users = int(contract_target["num_users"])  # type: ignore[call-overload]
        self.num_items = int(contract_target["num_items"])  # type: ignore[call-overload]


def test_versions_count_up_and_existing_versions_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    opts = ExportOptions(k_max=10, max_batch=16)
    first = export(runs["mf"], tmp_path, "m", options=opts)
    second = export(runs["mf"], tmp_path, "m", options=opts)
    assert (first.name, second.name) == ("1", "2")
    before = (first / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        export(runs["mf"], tmp_path, "m", version=1, options=opts)
    assert (first / "manifest.json").read_bytes() == before
    assert list_versions(tmp_path / "m") == [1, 2]


def test_parity_catches_a_graph_that_computes_something_else(runs: dict[str, Path], tmp_path: Path) -> None:
    ckpt, ds = open_run(runs["mf"])
    model = model_from_checkpoint(ckpt)
    tables = serving_tables(model, ds)
    version = tmp_path / "v"
    export(runs["mf"], tmp_path, "v", options=ExportOptions(k_max=10, max_batch=16))
    session = _session(version / "1" / "score.onnx")
    other = model_from_checkpoint(load_checkpoint(runs["mf"]))
    with torch.no_grad():
        other.item_emb.weight.add_(0.01)  # type: ignore[union-attr]
    batches = [(np.arange(8), np.tile(np.arange(10), (8, 1)))]
    with pytest.raises(ParityError, match="score"):
        check_values(session, ScoreGraph(other, tables), score_spec(), batches)
    check_values(session, ScoreGraph(model, tables), score_spec(), batches)


def test_bad_runs_and_repositories(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no such run"):
        export(tmp_path / "nothing", tmp_path / "repo", "m")
    (tmp_path / "notrun").mkdir()
    with pytest.raises(TrainingError, match="no checkpoint"):
        export(tmp_path / "notrun", tmp_path / "repo", "m")
    with pytest.raises(ExportError, match="invalid model name"):
        export(runs["mf"], tmp_path / "repo", "../escape")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export(runs["mf"], tmp_path / "afile", "m")
    assert not (tmp_path / "repo").exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxrec", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
    )


def test_cli_export_inspect_and_errors(runs: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    p = _cli(
        "export",
        str(runs["twotower"]),
        *("--repository", str(repo), "--name", "tt", "--max-batch", "16", "--precision", "int8"),
        *("--rtol", "2e-4", "--atol", "0"),
    )
    assert p.returncode == 0, p.stderr
    assert "parity with PyTorch" in p.stdout and "wrote" in p.stdout
    # onnxruntime's notes about initializers its optimiser drops and its quantizer's advice are not the user's
    assert "Removing initializer" not in p.stderr and "[W:onnxruntime" not in p.stderr, p.stderr
    assert "WARNING" not in p.stderr, p.stderr
    j = _cli("inspect", str(repo / "tt" / "1"), "--json")
    assert j.returncode == 0 and json.loads(j.stdout)["model_type"] == "twotower"
    parity = json.loads(j.stdout)["parity"]
    assert (parity["rtol"], parity["atol"]) == (2e-4, 0.0)
    assert all(g["rtol"] == 2e-4 and g["tolerance_used"] <= 1.0 for g in parity["graphs"].values())
    cases: list[tuple[list[str], str]] = [
        (["export", str(tmp_path / "none"), "--repository", str(repo), "--name", "x"], "no such run directory"),
        (["export", str(runs["mf"]), "--repository", str(repo), "--name", "tt", "--version", "1"], "already exists"),
        (["export", str(runs["mf"]), "--repository", "/proc/onnxrec-repo", "--name", "x"], "/proc"),
        (["inspect", str(tmp_path)], "not a model version"),
    ]
    for args, needle in cases:
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and needle in r.stderr, r.stderr
    # a tampered file is caught by inspect
    (repo / "tt" / "1" / "popular.npy").write_bytes(b"tampered")
    r = _cli("inspect", str(repo / "tt" / "1"))
    assert r.returncode == 2 and "does not match its hash" in r.stderr


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 300),
    k=st.integers(1, 12),
    width=st.integers(1, 8),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    padded=st.booleans(),
)
def test_masked_topk_is_the_top_k_of_the_items_left(
    n: int, k: int, width: int, batch: int, seed: int, padded: bool
) -> None:
    """Against a plain sort: the k best scores among the items not excluded (-1 pads ignored), in order;
    when fewer than k items are left the rest is -inf, and no excluded or padding item has a finite score.
    ``masked_topk`` takes any rows; ``topk_excluding`` (the format 3 graphs) takes scores with a padding
    column and rows that each hold a -1, whatever that column's score was."""
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, n, generator=gen)
    exclude = torch.randint(-1, n, (batch, width), generator=gen)
    if padded:
        exclude[:, -1] = -1
        pad_column = torch.randn(batch, 1, generator=gen) + 5.0  # would win if the -1 did not mask it
        values, items = topk_excluding(torch.cat([scores, pad_column], dim=1), exclude, k)
    else:
        values, items = masked_topk(scores, exclude, k)
    assert values.shape == items.shape == (batch, k)
    for row in range(batch):
        banned = {int(e) for e in exclude[row] if e >= 0}
        left = sorted((float(scores[row, i]), i) for i in range(n) if i not in banned)[::-1][:k]
        want = [v for v, _ in left] + [float("-inf")] * (k - len(left))
        np.testing.assert_allclose(values[row].numpy(), np.array(want, dtype=np.float32))
        finite = torch.isfinite(values[row])
        assert items[row][finite].tolist() == [i for _, i in left]
