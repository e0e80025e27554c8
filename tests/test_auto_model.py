"""``--model auto``: each candidate trains as it would alone, the best on validation is the run, the
choice is recorded and said, the time budget cuts candidates short after an epoch, and options auto
cannot honour are refused before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onnxrec.trainer.auto import AUTO_CANDIDATES, auto_candidates
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.train import train
from tests.test_cli_train import assert_clean_error, onnxrec


@pytest.fixture(scope="module")
def data_dir(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_dataset(synthetic, tmp_path_factory.mktemp("auto") / "data")


def _cfg(data: Path, out: Path, model: str, **kw: object) -> TrainConfig:
    base: dict[str, object] = {"epochs": 3, "dim": 16, "progress": False, "threads": 1, "patience": 5}
    return TrainConfig(data=str(data), out=str(out), model=model, **{**base, **kw})  # type: ignore[arg-type]


def test_auto_keeps_the_best_candidate_as_trained_alone(data_dir: Path, tmp_path: Path) -> None:
    run = train(_cfg(data_dir, tmp_path / "auto", "auto"))
    summary = json.loads((run / "eval.json").read_text())
    choice = summary["auto"]
    tried = {c["model"]: c for c in choice["candidates"]}
    assert list(tried) == list(AUTO_CANDIDATES)
    # every candidate scored on validation what it scores trained alone with the same seed
    alone = {}
    for name in AUTO_CANDIDATES:
        solo = train(_cfg(data_dir, tmp_path / name, name))
        alone[name] = json.loads((solo / "eval.json").read_text())
        assert tried[name]["valid"] == pytest.approx(alone[name]["valid"]["full"]["ndcg@10"], abs=1e-6)
        assert tried[name]["best_epoch"] == alone[name]["best_epoch"]
        assert tried[name]["epochs_run"] == 3 and not tried[name]["out_of_time"]
    best = max(AUTO_CANDIDATES, key=lambda n: (tried[n]["valid"], -AUTO_CANDIDATES.index(n)))
    assert choice["picked"] == summary["model_type"] == best
    assert summary["valid"] == alone[best]["valid"] and summary["test"] == alone[best]["test"]
    # the run's model is the picked one's, weight for weight
    mine = torch.load(run / "checkpoint.pt", weights_only=True)
    theirs = torch.load(tmp_path / best / "checkpoint.pt", weights_only=True)
    assert mine["model_type"] == best and mine["model_config"] == theirs["model_config"]
    assert mine["state_dict"].keys() == theirs["state_dict"].keys()
    for key, value in mine["state_dict"].items():
        assert torch.equal(value, theirs["state_dict"][key]), key


def test_the_budget_stops_each_candidate_after_an_epoch_and_the_cli_says_the_choice(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = onnxrec(
        "train", "--data", str(data_dir), "--out", str(out), "--model", "auto", "--time-budget", "1e-9",
        "--epochs", "3", "--dim", "16", "--threads", "1", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    choice = json.loads((out / "eval.json").read_text())["auto"]
    assert choice["time_budget_s"] == 1e-9
    for candidate in choice["candidates"]:  # a budget spent before the first epoch ends: one epoch each
        assert candidate["epochs_run"] == 1 and candidate["out_of_time"], candidate
    said = [line for line in proc.stdout.splitlines() if line.startswith("auto: picked")]
    assert said == [f"auto: picked {choice['picked']} by valid full/ndcg@10: " + said[0].split(": ", 2)[2]]
    for name in AUTO_CANDIDATES:
        assert f"{name} " in said[0] and "cut by the budget" in said[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--time-budget", "0"], "--time-budget must be positive"),
        (["--candidates-from", "."], "--candidates-from needs the model named"),
        (["--resume", "."], "--resume needs the model named"),
    ],
)
def test_options_auto_cannot_honour_are_refused(tmp_path: Path, extra: list[str], needle: str) -> None:
    proc = onnxrec("train", "--data", "synthetic", "--out", str(tmp_path / "r"), "--model", "auto", *extra)
    assert_clean_error(proc, needle)
    assert not (tmp_path / "r").exists()


def test_with_item_text_auto_tries_the_models_that_read_it() -> None:
    assert auto_candidates(TrainConfig(model="auto", item_text=True)) == ("twotower", "sasrec")
    assert auto_candidates(TrainConfig(model="auto")) == AUTO_CANDIDATES
