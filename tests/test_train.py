"""Training: every model learns, runs are complete and reproducible, checkpoints rebuild the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from onnxrec.errors import TrainingError
from onnxrec.trainer.baselines import ItemKNN, Popularity
from onnxrec.trainer.checkpoint import load_checkpoint, model_from_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.evaluate import evaluate
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.scorer import ModelScorer
from onnxrec.trainer.train import train


@pytest.fixture(scope="module")
def synthetic_dir(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_dataset(synthetic, tmp_path_factory.mktemp("data") / "synthetic")


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "data": str(data),
        "out": str(out),
        "epochs": 3,
        "progress": False,
        "dim": 16,
        "batch_size": 256,
        "history_len": 10,
        "layers": (32,),
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["mf", "mlp", "neumf", "twotower"])
def test_every_model_trains_and_beats_random(model: str, synthetic_dir: Path, tmp_path: Path) -> None:
    run = train(_cfg(synthetic_dir, tmp_path / model, model=model, epochs=3, lr=0.01))
    for name in ("checkpoint.pt", "config.toml", "metrics.jsonl", "eval.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "eval.json").read_text())
    assert summary["model_type"] == model
    # random ranking of 1 positive among 51 candidates gives HR@10 = 10/51
    assert summary["test"]["sampled"]["hr@10"] > 0.3
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= len(epochs) <= 3 and epochs[0]["examples_per_second"] > 0
    # the checkpoint is a plain dict that loads with weights_only=True and rebuilds the same model
    ckpt = load_checkpoint(run)
    assert {"state_dict", "model_config", "feature_spec", "dataset", "user_ids", "item_ids", "metrics"} <= set(ckpt)
    rebuilt = model_from_checkpoint(ckpt)
    _, ds = open_run(run)
    again = evaluate(ModelScorer(rebuilt, ds), ds, "test")
    assert again["sampled"] == summary["test"]["sampled"]


@pytest.mark.slow
def test_default_model_on_ml100k_beats_the_baselines(ml100k: Dataset, tmp_path: Path) -> None:
    data = save_dataset(ml100k, tmp_path / "ml100k")
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=3, progress=False))
    result = json.loads((run / "eval.json").read_text())["test"]
    pop = evaluate(Popularity(ml100k), ml100k, "test")
    knn = evaluate(ItemKNN(ml100k), ml100k, "test")
    for view in ("sampled", "full"):
        assert result[view]["ndcg@10"] > pop[view]["ndcg@10"]
        assert result[view]["ndcg@10"] > knn[view]["ndcg@10"]


def test_same_seed_same_metrics(synthetic_dir: Path, tmp_path: Path) -> None:
    a = train(_cfg(synthetic_dir, tmp_path / "a", epochs=2))
    b = train(_cfg(synthetic_dir, tmp_path / "b", epochs=2))
    c = train(_cfg(synthetic_dir, tmp_path / "c", epochs=2, seed=7))
    ea, eb, ec = (json.loads((r / "eval.json").read_text())["test"] for r in (a, b, c))
    assert ea == eb
    assert ea != ec
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "one seed must give bit-identical weights on CPU"


def test_resume_continues_from_the_checkpoint(synthetic_dir: Path, tmp_path: Path) -> None:
    first = train(_cfg(synthetic_dir, tmp_path / "first", epochs=2, patience=5))
    resumed = train(_cfg(synthetic_dir, tmp_path / "resumed", epochs=4, patience=5, resume=str(first)))
    epochs = [json.loads(line)["epoch"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [3, 4]
    assert load_checkpoint(resumed)["epoch"] == 4


def test_existing_run_is_not_overwritten(synthetic_dir: Path, tmp_path: Path) -> None:
    run = train(_cfg(synthetic_dir, tmp_path / "run", epochs=1))
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(TrainingError, match="already exists"):
        train(_cfg(synthetic_dir, run, epochs=1))
    assert (run / "checkpoint.pt").read_bytes() == before


def test_nan_loss_stops_with_a_clear_error_and_no_run(synthetic_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="loss became"):
        train(_cfg(synthetic_dir, tmp_path / "nan", epochs=3, temperature=1e-45))
    assert list(tmp_path.iterdir()) == []


def test_two_tower_serves_unknown_users_from_features_and_history(
    synthetic: Dataset, synthetic_dir: Path, tmp_path: Path
) -> None:
    run = train(_cfg(synthetic_dir, tmp_path / "tt", model="twotower", epochs=3, id_dropout=0.3))
    model = model_from_checkpoint(load_checkpoint(run))
    users = torch.tensor([0, 1])
    hist = torch.full((2, 10), -1, dtype=torch.long)
    hist[0, :3] = torch.tensor([1, 2, 3])
    feats = {
        f"user_{f.name}": torch.from_numpy(synthetic.user_features[f.name][[0, 1]]) for f in model.cfg.user_features
    }  # type: ignore[attr-defined]
    unknown = torch.tensor([-1, synthetic.num_users + 5])  # ids the model never saw
    with torch.no_grad():
        scores = model.score_all(unknown, {**feats, "history": hist})
        known = model.score_all(users, {**feats, "history": hist})
    assert torch.isfinite(scores).all()
    assert not torch.equal(scores[0], scores[1]), "history and features must shape an unknown user's scores"
    assert not torch.equal(scores, known)
    assert np.isfinite(scores.numpy()).all()
