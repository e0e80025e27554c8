"""Seeded runs repeat: one seed gives bit-identical weights and metrics on CPU, whatever the caller's
global RNG state was, and a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from onnxrec.trainer.checkpoint import load_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.determinism import epoch_seeds, reproducible
from onnxrec.trainer.train import train


@pytest.fixture(scope="module")
def data_dir(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_dataset(synthetic, tmp_path_factory.mktemp("det") / "synthetic")


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    # the two-tower model with everything random switched on: history gather, id dropout, dropout
    base: dict[str, object] = {
        "data": str(data),
        "out": str(out),
        "model": "twotower",
        "epochs": 2,
        "patience": 5,
        "progress": False,
        "dim": 16,
        "feature_dim": 8,
        "batch_size": 256,
        "history_len": 10,
        "layers": (32,),
        "id_dropout": 0.2,
        "dropout": 0.1,
        "seed": 11,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _same_tensors(a: Path, b: Path) -> list[str]:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def _epochs(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_one_seed_twice_gives_identical_weights_and_metrics(data_dir: Path, tmp_path: Path) -> None:
    a = train(_cfg(data_dir, tmp_path / "a"))
    # whatever the caller did to the global RNGs in between must not matter
    torch.rand(1000)
    np.random.default_rng().random(10)
    before = torch.get_rng_state()
    b = train(_cfg(data_dir, tmp_path / "b"))
    assert torch.equal(torch.get_rng_state(), before), "training must not consume the caller's global RNG"
    assert _same_tensors(a, b) == []
    ea, eb = (json.loads((r / "eval.json").read_text()) for r in (a, b))
    assert ea["test"] == eb["test"] and ea["valid"] == eb["valid"]
    assert ea["threads"] == eb["threads"] == torch.get_num_threads()
    assert [e["loss"] for e in _epochs(a)] == [e["loss"] for e in _epochs(b)]
    c = train(_cfg(data_dir, tmp_path / "c", seed=12))
    assert _same_tensors(a, c), "another seed must give other weights"


def test_same_seed_on_one_thread_repeats_too(data_dir: Path, tmp_path: Path) -> None:
    a = train(_cfg(data_dir, tmp_path / "a", model="mf", loss="bpr", epochs=1, threads=1))
    b = train(_cfg(data_dir, tmp_path / "b", model="mf", loss="bpr", epochs=1, threads=1))
    assert _same_tensors(a, b) == []
    assert json.loads((a / "eval.json").read_text())["threads"] == 1


def test_a_resumed_run_repeats_the_uninterrupted_epochs(data_dir: Path, tmp_path: Path) -> None:
    whole = train(_cfg(data_dir, tmp_path / "whole", epochs=2))
    first = train(_cfg(data_dir, tmp_path / "first", epochs=1))
    resumed = train(_cfg(data_dir, tmp_path / "resumed", epochs=2, resume=str(first)))
    w, r = _epochs(whole), _epochs(resumed)
    assert [e["epoch"] for e in r] == [2]
    assert w[1]["loss"] == r[0]["loss"]
    assert w[1]["valid"] == r[0]["valid"]


def test_reproducible_restores_what_it_changes() -> None:
    threads = torch.get_num_threads()
    flag = torch.are_deterministic_algorithms_enabled()
    state = torch.get_rng_state()
    with reproducible(5, threads=1) as used:
        assert used == 1 == torch.get_num_threads()
        assert torch.are_deterministic_algorithms_enabled()
        inside = torch.rand(3)
    with reproducible(5, threads=1):
        assert torch.equal(torch.rand(3), inside)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == flag
    assert torch.equal(torch.get_rng_state(), state)


def test_epoch_seeds_depend_on_seed_and_epoch_only() -> None:
    g1, t1 = epoch_seeds(3, 4)
    g2, t2 = epoch_seeds(3, 4)
    assert t1 == t2 and np.array_equal(g1.permutation(50), g2.permutation(50))
    assert len({epoch_seeds(3, e)[1] for e in range(20)} | {epoch_seeds(s, 0)[1] for s in range(20)}) == 39
    assert 0 <= t1 < 2**63
