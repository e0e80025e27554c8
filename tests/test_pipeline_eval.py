"""Pipeline evaluation in PyTorch (issue #17): retrieval's top-C candidates ranked by a ranker, scored by
the same evaluation code as one stage, and ``onnxrec evaluate RUN --ranker RANKER_RUN``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxrec.cli import main
from onnxrec.errors import ConfigError, TrainingError
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset, build_dataset
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.split import SplitSpec
from onnxrec.trainer.data.synth import generate_synthetic
from onnxrec.trainer.evaluate import evaluate
from onnxrec.trainer.history import UserSequences, known_sequences
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.pipeline_eval import PipelineScorer, evaluate_pipeline, open_ranker_run, top_candidates
from onnxrec.trainer.report import evaluate_run
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.scorer import ModelScorer
from tests.small_runs import train_small_runs

STAGES = ("valid", "test")


@pytest.fixture(scope="module")
def runs(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_small_runs(synthetic, tmp_path_factory.mktemp("pipeline-eval"), ("mf", "twotower", "fm"))


@pytest.fixture(scope="module")
def other_fm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FM run on another dataset (the same generator, another seed)."""
    log = generate_synthetic(num_users=120, num_items=200, interactions_per_user=15, seed=11)
    ds = build_dataset(log, PreprocessSpec(), SplitSpec(num_negatives=50), "synthetic-other")
    return train_small_runs(ds, tmp_path_factory.mktemp("pipeline-eval-other"), ("fm",))["fm"]


def _model(run: Path) -> Recommender:
    ckpt, _ = open_run(run)
    return model_from_checkpoint(ckpt)


def _brute_force_candidates(scores: np.ndarray, known: np.ndarray, c: int) -> list[int]:
    """The ``c`` best items not in ``known``, by (-score, item index)."""
    rest = sorted(set(range(len(scores))) - set(known.tolist()), key=lambda i: (-scores[i], i))
    return rest[:c]


@pytest.mark.parametrize("retrieval", ["mf", "twotower"])
def test_all_items_ranked_by_the_retrieval_model_itself_is_one_stage(
    retrieval: str, runs: dict[str, Path], synthetic: Dataset
) -> None:
    model = _model(runs[retrieval])
    for stage in STAGES:
        one_stage = evaluate(ModelScorer(model, synthetic), synthetic, stage, ks=(5, 10))
        scorer = PipelineScorer(model, model, synthetic, candidates=synthetic.num_items)
        pipeline = evaluate_pipeline(scorer, synthetic, stage, ks=(5, 10))
        assert pipeline.pop("retrieval") == {"candidates": synthetic.num_items, f"recall@{synthetic.num_items}": 1.0}
        assert pipeline == one_stage


@pytest.mark.parametrize("c", [1, 17, 200])
def test_candidates_are_retrievals_top_c_minus_known_items(c: int, runs: dict[str, Path], synthetic: Dataset) -> None:
    retrieval, ranker = _model(runs["twotower"]), _model(runs["fm"])
    scorer = PipelineScorer(retrieval, ranker, synthetic, candidates=c)
    users = np.arange(0, synthetic.num_users, 7)
    for stage in STAGES:
        known = known_sequences(synthetic, stage)
        retrieval_scores = ModelScorer(retrieval, synthetic)(users, stage)
        _, items, valid = scorer.candidate_sets(users, stage)
        final = scorer(users, stage)
        logits = scorer.rank(users, items, stage)
        for row, u in enumerate(users):
            expected = _brute_force_candidates(retrieval_scores[row], known.of(int(u)), c)
            assert items[row][valid[row]].tolist() == expected
            # the candidates, and only they, score above every other item, in the ranker's order
            assert sorted(np.nonzero(final[row] > 0)[0].tolist()) == sorted(expected)
            shift = final[row, expected] - logits[row][valid[row]]
            np.testing.assert_allclose(shift, shift[0], rtol=0, atol=1e-9)


def test_top_candidates_breaks_ties_by_item_and_marks_known_slots() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 0.0, 2.0], [3.0, 2.0, 1.0, 0.0, 5.0]])
    nobody = UserSequences(np.zeros(3, dtype=np.int64), np.zeros(0, dtype=np.int64))
    items, valid = top_candidates(scores, np.array([0, 1]), nobody, 3)
    assert items.tolist() == [[4, 0, 1], [4, 0, 1]] and valid.all()
    # user 1 knows items 0, 1, 2 and 4: one real candidate, then known items fill the row
    known = UserSequences(np.array([0, 1, 5]), np.array([4, 0, 1, 2, 4]))
    items, valid = top_candidates(scores, np.array([0, 1]), known, 3)
    assert items.tolist() == [[0, 1, 2], [3, 0, 1]]
    assert valid.tolist() == [[True, True, True], [True, False, False]]


def test_recall_is_the_share_of_held_out_items_among_the_candidates(runs: dict[str, Path], synthetic: Dataset) -> None:
    retrieval, ranker = _model(runs["mf"]), _model(runs["fm"])
    scores = ModelScorer(retrieval, synthetic)
    for stage in STAGES:
        part = synthetic.splits.valid if stage == "valid" else synthetic.splits.test
        known = known_sequences(synthetic, stage)
        users = np.unique(part.user_idx)
        s = scores(users, stage)
        hits = [
            part.item_idx[part.user_idx == u][0] in _brute_force_candidates(s[row], known.of(int(u)), 20)
            for row, u in enumerate(users)
        ]
        result = evaluate_pipeline(PipelineScorer(retrieval, ranker, synthetic, candidates=20), synthetic, stage)
        assert result["retrieval"]["recall@20"] == pytest.approx(np.mean(hits), abs=1e-6)
        everything = PipelineScorer(retrieval, ranker, synthetic, candidates=synthetic.num_items)
        assert evaluate_pipeline(everything, synthetic, stage)["retrieval"][f"recall@{synthetic.num_items}"] == 1.0


def test_a_candidate_count_outside_the_catalog_is_refused(runs: dict[str, Path], synthetic: Dataset) -> None:
    model = _model(runs["mf"])
    for c in (0, synthetic.num_items + 1):
        with pytest.raises(ConfigError, match="--candidates must be between 1 and the catalog's 200 items"):
            PipelineScorer(model, model, synthetic, candidates=c)


def test_a_ranker_of_another_dataset_is_refused(other_fm: Path, synthetic: Dataset) -> None:
    with pytest.raises(TrainingError, match="the ranker was trained on another dataset than the retrieval run"):
        open_ranker_run(other_fm, synthetic)


def test_evaluate_command_scores_the_pipeline(runs: dict[str, Path]) -> None:
    args = ["evaluate", str(runs["twotower"]), "--ranker", str(runs["fm"]), "--candidates", "30", "--no-baselines"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    name = "twotower -> fm (30)"
    assert list(report["models"]) == ["twotower", name]
    assert report["pipeline"]["name"] == name and 0 < report["pipeline"]["retrieval"]["recall@30"] <= 1
    again = evaluate_run(runs["twotower"], ranker=runs["fm"], candidates=30, baselines=False)
    for model, res in again["models"].items():
        assert {v: res[v] for v in ("sampled", "full")} == {v: report["models"][model][v] for v in ("sampled", "full")}
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0 and name in table.output and "retrieval recall@30 of the held-out items" in table.output


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--ranker", "OTHER"], "the ranker was trained on another dataset than the retrieval run"),
        (["--candidates", "30"], "--candidates needs --ranker"),
        (["--ranker", "FM", "--candidates", "201"], "--candidates must be between 1 and the catalog's 200 items"),
        (["--ranker", "MISSING"], "no such run directory"),
    ],
)
def test_evaluate_command_errors_are_one_line_and_exit_2(
    extra: list[str], needle: str, runs: dict[str, Path], other_fm: Path, tmp_path: Path
) -> None:
    paths = {"OTHER": str(other_fm), "FM": str(runs["fm"]), "MISSING": str(tmp_path / "nope")}
    args = ["evaluate", str(runs["mf"]), "--no-baselines", *(paths.get(a, a) for a in extra)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and needle in errors[0], result.output
    assert "Traceback" not in result.output
