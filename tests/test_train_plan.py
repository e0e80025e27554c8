"""Training plans for the catalog it meets: a log whose item count makes a full softmax
intractable trains with the sampled softmax automatically, and a model too big for the machine is
refused with the options that shrink it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from onnxrec.errors import TrainingError
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, build_dataset, save_dataset
from onnxrec.trainer.data.log import INTERACTION_SCHEMA, InteractionLog
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.split import SplitSpec
from onnxrec.trainer.fit import compact_history
from onnxrec.trainer.models.two_tower import TwoTower, TwoTowerConfig
from onnxrec.trainer.plan import FULL_SOFTMAX_BYTES, check_model_memory, choose_softmax, long_epoch_warning
from onnxrec.trainer.train import train


def test_the_full_softmax_needs_a_small_catalog_and_logits_that_fit() -> None:
    assert choose_softmax(1682, 1024, 200_000).full  # ML-100K: 20 MB of logits
    assert choose_softmax(27_278, 1024, 200_000).full  # ML-20M's catalog: 320 MB
    # 10^6 items, one row each: above --max-softmax-items
    plan = choose_softmax(1_000_000, 1024, 200_000)
    assert not plan.full and "--max-softmax-items" in plan.reason
    # 150,000 items is within the item limit, but 1024 x 150,000 logits (1.7 GB) are not
    plan = choose_softmax(150_000, 1024, 200_000)
    assert not plan.full and plan.logits_bytes > FULL_SOFTMAX_BYTES and "--batch-size" in plan.reason
    assert choose_softmax(150_000, 128, 200_000).full  # a smaller batch keeps it
    assert not choose_softmax(10, 8, 5).full


def test_a_model_too_big_for_the_machine_is_refused_with_the_options() -> None:
    assert check_model_memory(1_000, 10, 10, available=1 << 30) == 16_000
    with pytest.raises(TrainingError) as err:
        check_model_memory(64 * 10**9 // 16, 1000, 10**9, available=32 << 30)
    message = str(err.value)
    assert "--min-item-interactions" in message and "--dim" in message and "\n" not in message


def test_an_epoch_estimated_at_hours_is_warned_about() -> None:
    # issue #14's log: 10^6 items, about 1,000 batches of 1,024, 11-13 s each before the fix
    warning = long_epoch_warning(12.0, 977, 1_000_000)
    assert warning is not None and "about 195 min" in warning and "--min-item-interactions" in warning
    assert long_epoch_warning(0.05, 96, 1682) is None  # ML-100K


def test_compact_history_gives_the_full_tables_answer() -> None:
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(num_users=5, num_items=40, dim=8, history_len=6, hidden=(16,))).eval()
    history = torch.tensor([[3, 7, 3, -1, -1, -1], [39, 0, 12, 7, 5, 1]])
    full = model.history_vector(history, model.item_vectors())
    compact = compact_history(model, {"history": history})
    assert compact["item_table"].shape[0] == 7  # the distinct items of the histories (padding reads item 0)
    assert torch.allclose(model.history_vector(compact["history"], compact["item_table"]), full, atol=1e-6)


def _one_row_per_item_log(num_users: int, per_user: int, seed: int) -> InteractionLog:
    """Every row a new item (the shape of issue #14's intractable log), but for a few popular items
    each user also has, so leave-one-out and the evaluation negatives still work."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    fresh = 0
    for u in range(num_users):
        for k in range(per_user):
            users.append(f"u{u}")
            if k % 4 == 0:
                items.append(f"pop{rng.integers(0, 50)}")
            else:
                items.append(f"i{fresh}")
                fresh += 1
            ts.append(k)
    table = pa.table(
        {"user_id": users, "item_id": items, "rating": [None] * len(users), "timestamp": ts}, INTERACTION_SCHEMA
    )
    return InteractionLog(table, "one-row-per-item")


@pytest.fixture(scope="module")
def wide_catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    ds = build_dataset(_one_row_per_item_log(400, 300, 0), PreprocessSpec(), SplitSpec(num_negatives=20), "wide")
    return ds, save_dataset(ds, tmp_path_factory.mktemp("wide") / "wide")


def test_a_catalog_too_wide_for_the_full_softmax_trains_sampled(
    wide_catalog: tuple[Dataset, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds, data = wide_catalog
    assert 90_000 < ds.num_items < 200_000  # within --max-softmax-items: the old rule took the full softmax
    assert not choose_softmax(ds.num_items, 1024, 200_000).full
    cfg = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), epochs=1, dim=8, feature_dim=4, history_len=5, layers=(16,)
    )
    with caplog.at_level(logging.INFO, logger="onnxrec.train"):
        run = train(TrainConfig(**{**cfg.__dict__, "progress": False}))
    assert any("sampled softmax" in r.getMessage() and "--batch-size" in r.getMessage() for r in caplog.records)
    summary = json.loads((run / "eval.json").read_text())
    assert summary["model_type"] == "twotower" and summary["loss"] == "softmax"
    assert 0 <= summary["test"]["full"]["hr@10"] <= 1
