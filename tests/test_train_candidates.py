"""Training a ranker on a retrieval run's candidates (issue #17): hard negatives from the retrieval
top-N minus the user's training items, mixed with uniform ones at the asked fraction, a retrieval run of
other data refused, seeded runs that repeat, and where the negatives came from in the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onnxrec.cli import main
from onnxrec.errors import ConfigError, TrainingError
from onnxrec.trainer.candidates import load_pool, user_candidates
from onnxrec.trainer.checkpoint import load_checkpoint, model_from_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, build_dataset, save_dataset
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.split import SplitSpec
from onnxrec.trainer.data.synth import generate_synthetic
from onnxrec.trainer.determinism import epoch_seeds
from onnxrec.trainer.history import known_sequences
from onnxrec.trainer.negatives import CandidatePool, NegativeSampler
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.scorer import ModelScorer
from onnxrec.trainer.train import train
from tests.small_runs import train_small_runs

N = 20  # candidates per user in these tests (of 200 items)


@pytest.fixture(scope="module")
def retrieval(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_runs(synthetic, tmp_path_factory.mktemp("candidates"), ("twotower",))["twotower"]


@pytest.fixture(scope="module")
def pool(retrieval: Path, synthetic: Dataset) -> CandidatePool:
    return load_pool(retrieval, synthetic, N)


def _ranker_cfg(data: Path, out: Path, retrieval: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "data": str(data),
        "out": str(out),
        "model": "fm",
        "epochs": 2,
        "progress": False,
        "dim": 8,
        "batch_size": 512,
        "threads": 1,
        "candidates_from": str(retrieval),
        "candidates": N,
    }
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_candidates_are_the_retrieval_top_n_minus_training_items(
    retrieval: Path, pool: CandidatePool, synthetic: Dataset
) -> None:
    ckpt, _ = open_run(retrieval)
    scores = ModelScorer(model_from_checkpoint(ckpt), synthetic)(np.arange(synthetic.num_users), "valid")
    trained = known_sequences(synthetic, "valid")
    for u in range(synthetic.num_users):
        seen = set(trained.of(u).tolist())
        expected = sorted(set(range(synthetic.num_items)) - seen, key=lambda i: (-scores[u, i], i))[:N]
        assert pool.of(u).tolist() == expected
        assert not seen & set(pool.of(u).tolist())
    # validation and test items are unknown to training: they stay candidates when retrieval finds them
    assert pool.source["candidates"] == N and pool.source["mean_candidates_per_user"] == N
    indptr, items = user_candidates(pool.retrieval, synthetic, synthetic.num_items)
    lengths = np.diff(indptr)
    assert (lengths == synthetic.num_items - np.diff(trained.indptr)).all() and len(items) == lengths.sum()


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_hard_negatives_come_from_the_candidates_at_the_asked_fraction(
    fraction: float, pool: CandidatePool, synthetic: Dataset
) -> None:
    sampler = NegativeSampler(synthetic.num_items, pool, fraction)
    users = np.repeat(np.arange(synthetic.num_users), 40)
    negatives, hard = sampler.draw_marked(np.random.default_rng(5), users, 8)
    assert negatives.shape == hard.shape == (len(users), 8)
    assert abs(hard.mean() - fraction) < 0.01
    trained = known_sequences(synthetic, "valid")
    for u in range(0, synthetic.num_users, 3):
        rows = users == u
        drawn = negatives[rows][hard[rows]]
        assert set(drawn.tolist()) <= set(pool.of(u).tolist())
        assert not set(drawn.tolist()) & set(trained.of(u).tolist())
    if fraction == 1.0:  # every candidate is drawn at some point
        assert set(negatives[users == 0].ravel().tolist()) == set(pool.of(0).tolist())


def test_without_candidates_the_negatives_are_the_uniform_draws_of_before(synthetic: Dataset) -> None:
    gen, _ = epoch_seeds(0, 3)
    before, _ = epoch_seeds(0, 3)
    users = np.arange(50)
    drawn = NegativeSampler(synthetic.num_items).draw(gen, users, 4)
    assert (drawn == before.integers(0, synthetic.num_items, size=(50, 4))).all()
    with pytest.raises(TrainingError, match=r"--hard-negatives must be in \[0, 1\]"):
        NegativeSampler(synthetic.num_items, None, 1.5)


def test_a_retrieval_run_of_other_data_is_refused(retrieval: Path, tmp_path: Path) -> None:
    log = generate_synthetic(num_users=120, num_items=200, interactions_per_user=15, seed=11)
    other = save_dataset(build_dataset(log, PreprocessSpec(), SplitSpec(num_negatives=50), "other"), tmp_path / "d")
    with pytest.raises(TrainingError, match="the retrieval run was trained on another dataset than --data"):
        train(_ranker_cfg(other, tmp_path / "fm", retrieval))
    assert not (tmp_path / "fm").exists()


def test_option_values_are_checked_before_training(retrieval: Path, synthetic: Dataset, tmp_path: Path) -> None:
    data = save_dataset(synthetic, tmp_path / "data")
    with pytest.raises(ConfigError, match="candidates must be at least 1"):
        train(_ranker_cfg(data, tmp_path / "a", retrieval, candidates=0))
    with pytest.raises(ConfigError, match=r"hard_negatives must be in \[0, 1\]"):
        train(_ranker_cfg(data, tmp_path / "b", retrieval, hard_negatives=1.5))
    with pytest.raises(TrainingError, match=r"--candidates-from .*: no such run directory"):
        train(_ranker_cfg(data, tmp_path / "c", tmp_path / "missing"))
    with pytest.raises(TrainingError, match="--candidates 201 is more than the catalog's 200 items"):
        train(_ranker_cfg(data, tmp_path / "d", retrieval, candidates=201))


def test_training_on_candidates_repeats_for_a_seed_and_records_its_negatives(
    retrieval: Path, synthetic: Dataset, tmp_path: Path
) -> None:
    data = save_dataset(synthetic, tmp_path / "data")
    runs = [train(_ranker_cfg(data, tmp_path / f"fm{i}", retrieval, seed=7)) for i in range(2)]
    other_seed = train(_ranker_cfg(data, tmp_path / "fm-seed8", retrieval, seed=8))
    uniform = train(_ranker_cfg(data, tmp_path / "fm-uniform", retrieval, seed=7, hard_negatives=0.0))
    states = [load_checkpoint(r)["state_dict"] for r in (*runs, other_seed, uniform)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[3][k]) for k in states[0])
    summaries = [json.loads((r / "eval.json").read_text()) for r in runs]
    assert summaries[0]["test"] == summaries[1]["test"] and summaries[0]["valid"] == summaries[1]["valid"]
    summary = summaries[0]
    assert summary["negatives"] == {
        "kind": "retrieval candidates",
        "hard_fraction": 0.5,
        "run": str(retrieval.resolve()),
        "model_type": "twotower",
        "content_hash": synthetic.content_hash,
        "candidates": N,
        "mean_candidates_per_user": float(N),
    }
    # validated and tested as the pipeline it is trained for; an FM reading retrieval's score and rank
    # scores candidate lists only, so it has no metrics of its own
    assert summary["evaluated_as"] == "pipeline" and summary["test"]["retrieval"]["candidates"] == N
    assert summary["retrieval_fields"] is True and "standalone" not in summary
    ckpt = load_checkpoint(runs[0])
    assert ckpt["metrics"]["negatives"] == summary["negatives"]
    assert ckpt["train_config"]["candidates_from"] == str(retrieval)
    assert ckpt["model_config"]["retrieval"]["candidates"] == N
    # without the fields: its own metrics beside the pipeline's
    plain = train(_ranker_cfg(data, tmp_path / "fm-plain", retrieval, seed=7, retrieval_fields=False))
    plain_summary = json.loads((plain / "eval.json").read_text())
    assert set(plain_summary["standalone"]) == {"valid", "test"}
    assert load_checkpoint(plain)["model_config"]["retrieval"] is None


def test_train_command_takes_the_candidate_options(retrieval: Path, synthetic: Dataset, tmp_path: Path) -> None:
    data = save_dataset(synthetic, tmp_path / "data")
    args = ["train", "--data", str(data), "--out", str(tmp_path / "fm"), "--model", "fm", "--epochs", "1"]
    args += ["--candidates-from", str(retrieval), "--candidates", "30", "--hard-negatives", "0.25", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"(pipeline {retrieval.resolve()} top-30 -> fm)" in result.output
    negatives = json.loads((tmp_path / "fm" / "eval.json").read_text())["negatives"]
    assert negatives["hard_fraction"] == 0.25 and negatives["candidates"] == 30
