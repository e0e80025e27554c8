"""Pipeline versions (issue #17): a retrieval run and a ranker run exported as one version, its ranking
graphs proven against PyTorch, its manifest round trip, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnxrec.errors import ExportError
from onnxrec.exporter.export import ExportOptions, export
from onnxrec.exporter.inspect import format_manifest, inspect_version
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.runs import open_run
from tests.small_runs import train_small_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_small_runs(synthetic, tmp_path_factory.mktemp("pipeline-runs"), ("twotower", "mf", "mlp"))


@pytest.fixture(scope="module")
def pipeline(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two-tower retrieval (30 candidates) ranked by the MLP."""
    repo = tmp_path_factory.mktemp("pipeline-repo")
    opts = ExportOptions(k_max=10, max_batch=16, parity_users=64, ranker=runs["mlp"], candidates=30)
    return export(runs["twotower"], repo, "pipe", options=opts)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_manifest_lists_the_stages_and_their_graphs(pipeline: Path, runs: dict[str, Path]) -> None:
    manifest = json.loads((pipeline / "manifest.json").read_text())
    retrieve, rank = manifest["stages"]
    assert retrieve["stage"] == "retrieve" and retrieve["model_type"] == "twotower" and retrieve["candidates"] == 30
    assert rank["stage"] == "rank" and rank["model_type"] == "mlp" and rank["candidates"] == 30
    assert Path(rank["run"]) == runs["mlp"].resolve()
    assert manifest["k_max"] == 10  # what a request may ask for; retrieval's graphs return up to 30
    assert manifest["graphs"]["recommend"]["k_max"] == 30
    for graph in ("rank", "rank_from_history"):
        assert graph in manifest["graphs"] and graph in manifest["parity"]["graphs"]
        assert f"{graph}.onnx" in manifest["files"]
        assert manifest["parity"]["graphs"][graph]["tolerance_used"] <= 1.0
    # the manifest round trip: inspect reads it back (hashes verified) and shows the stages
    again = inspect_version(pipeline)
    assert again["stages"] == manifest["stages"]
    assert "rank" in format_manifest(again)


def test_rank_graphs_are_the_rankers_scores(pipeline: Path, runs: dict[str, Path], synthetic: Dataset) -> None:
    """``rank`` equals the MLP's score_candidates for known users, and ``rank_from_history`` its fold-in."""
    ckpt, _ = open_run(runs["mlp"])
    mlp = model_from_checkpoint(ckpt).eval()
    rng = np.random.default_rng(0)
    users = rng.integers(0, synthetic.num_users, size=5)
    items = rng.integers(0, synthetic.num_items, size=(5, 30))
    (got,) = _session(pipeline / "rank.onnx").run(None, {"user_idx": users, "items": items})
    with torch.no_grad():
        want = mlp.score_candidates(torch.from_numpy(users), torch.from_numpy(items), {}).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    history = np.array([[3, 7, -1, -1], [1, 2, 4, 5]], dtype=np.int64)
    (scores,) = _session(pipeline / "rank_from_history.onnx").run(None, {"history": history, "items": items[:2]})
    assert scores.shape == (2, 30) and np.isfinite(scores).all()
    # a history of one item ranks like the users who have that item: the fold-in, not a constant
    assert not np.allclose(scores[0], scores[1])


def test_one_stage_versions_say_so(runs: dict[str, Path], tmp_path: Path) -> None:
    out = export(runs["mf"], tmp_path, "mf", options=ExportOptions(k_max=10, max_batch=8, parity_users=32))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["stage"] for s in manifest["stages"]] == ["retrieve"]
    assert "rank" not in manifest["graphs"]


def test_a_ranker_from_another_dataset_or_too_few_candidates_is_refused(
    runs: dict[str, Path], tmp_path: Path, synthetic: Dataset
) -> None:
    from onnxrec.trainer.data.dataset import build_dataset
    from onnxrec.trainer.data.preprocess import PreprocessSpec
    from onnxrec.trainer.data.split import SplitSpec
    from onnxrec.trainer.data.synth import generate_synthetic

    other = build_dataset(
        generate_synthetic(num_users=120, num_items=90, interactions_per_user=20, seed=9),
        PreprocessSpec(),
        SplitSpec(num_negatives=20),
        "other",
    )
    foreign = train_small_runs(other, tmp_path / "other", ("mlp",))["mlp"]
    with pytest.raises(ExportError, match="another dataset"):
        export(runs["twotower"], tmp_path / "repo", "x", options=ExportOptions(ranker=foreign, candidates=30))
    with pytest.raises(ExportError, match="more than --candidates"):
        export(
            runs["twotower"], tmp_path / "repo", "x", options=ExportOptions(k_max=50, ranker=runs["mlp"], candidates=30)
        )
    assert not (tmp_path / "repo" / "x").exists() or not any((tmp_path / "repo" / "x").iterdir())
