"""Preprocessing, id maps, splits, negatives, leakage and the dataset artifact."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxrec.errors import DataError
from onnxrec.trainer.data.dataset import Dataset, build_dataset, check_no_leakage, load_dataset, save_dataset
from onnxrec.trainer.data.log import INTERACTION_SCHEMA, InteractionLog
from onnxrec.trainer.data.preprocess import PreprocessSpec, preprocess
from onnxrec.trainer.data.split import Part, SplitSpec, split


def make_log(rows: list[tuple[str, str, float | None, int]]) -> InteractionLog:
    users, items, ratings, ts = zip(*rows, strict=True) if rows else ((), (), (), ())
    table = pa.table(
        {"user_id": list(users), "item_id": list(items), "rating": list(ratings), "timestamp": list(ts)},
        schema=INTERACTION_SCHEMA,
    )
    return InteractionLog(table, "test")


def test_ml100k_leave_one_out_protocol(ml100k: Dataset) -> None:
    s = ml100k.splits
    assert ml100k.num_users == 943 and ml100k.num_items == 1682
    assert len(s.test) == 943 and len(s.valid) == 943 and len(s.train) == 100_000 - 2 * 943
    assert s.test_negatives.shape == (943, 99) and s.valid_negatives.shape == (943, 99)
    check_no_leakage(ml100k)
    # the test item is the user's last interaction by (timestamp, item index), validation the one before
    all_u = np.concatenate([s.train.user_idx, s.valid.user_idx, s.test.user_idx])
    all_i = np.concatenate([s.train.item_idx, s.valid.item_idx, s.test.item_idx])
    all_t = np.concatenate([s.train.timestamp, s.valid.timestamp, s.test.timestamp])
    for u in (0, 17, 500, 942):
        mine = np.flatnonzero(all_u == u)
        order = mine[np.lexsort((all_i[mine], all_t[mine]))]
        row = np.flatnonzero(s.test.user_idx == u)[0]
        assert s.test.item_idx[row] == all_i[order[-1]]
        assert s.valid.item_idx[np.flatnonzero(s.valid.user_idx == u)[0]] == all_i[order[-2]]
        # negatives: 99 distinct items the user never interacted with
        negs = s.test_negatives[row]
        assert len(set(negs.tolist())) == 99
        assert not set(negs.tolist()) & set(all_i[mine].tolist())


def test_id_maps_round_trip(ml100k: Dataset) -> None:
    # ML-100K ids are numbers: the natural order makes user "1" index 0 and item "1682" the last index
    assert ml100k.user_ids[0] == "1" and ml100k.item_ids[-1] == "1682"
    raw_to_idx = {raw: i for i, raw in enumerate(ml100k.item_ids)}
    assert all(ml100k.item_ids[raw_to_idx[r]] == r for r in ml100k.item_ids)
    titles = ml100k.item_table["title"].to_pylist()
    assert titles[raw_to_idx["1"]] == "Toy Story (1995)"


def test_interactions_keep_their_raw_ids(ml100k_dir: Path, ml100k: Dataset) -> None:
    """Every interaction of u.data, mapped to indices and back, is the same (user, item, time)."""
    raw = {
        (f[0], f[1], int(f[3])) for f in (line.split("\t") for line in (ml100k_dir / "u.data").read_text().splitlines())
    }
    s = ml100k.splits
    back = set()
    for p in (s.train, s.valid, s.test):
        for u, i, t in zip(p.user_idx, p.item_idx, p.timestamp, strict=True):
            back.add((ml100k.user_ids[u], ml100k.item_ids[i], int(t)))
    assert back == raw
    # side features follow their ids: user "1" is a 24-year-old male technician, item "1" is Toy Story
    users = ml100k.user_table.to_pylist()
    assert users[0]["user_id"] == "1" and users[0]["occupation"] == "technician"
    occupation = ml100k.feature_spec.user[2]
    assert occupation.name == "occupation"
    assert occupation.vocabulary[ml100k.user_features["occupation"][0] - 1] == "technician"
    # the first line of u.data: user 196 rated item 242 at 881250949
    u, i = list(ml100k.user_ids).index("196"), list(ml100k.item_ids).index("242")
    in_any = [(p.user_idx == u) & (p.item_idx == i) for p in (s.train, s.valid, s.test)]
    assert sum(int(m.sum()) for m in in_any) == 1


def test_natural_order_of_mixed_ids() -> None:
    log = make_log([("10", "b", 1, 1), ("2", "a", 1, 2), ("1", "c", 1, 3)])
    enc = preprocess(log, PreprocessSpec())
    assert list(enc.user_ids) == ["1", "2", "10"]
    pairs = {(enc.user_ids[u], enc.item_ids[i]) for u, i in zip(enc.user_idx, enc.item_idx, strict=True)}
    assert pairs == {("10", "b"), ("2", "a"), ("1", "c")}


def test_same_seed_same_negatives(ml100k_dir: Path, ml100k: Dataset) -> None:
    from onnxrec.trainer.data.readers import read_movielens_100k

    again = build_dataset(read_movielens_100k(ml100k_dir), PreprocessSpec(), SplitSpec(), "x")
    assert np.array_equal(again.splits.test_negatives, ml100k.splits.test_negatives)
    assert again.content_hash == ml100k.content_hash
    other = build_dataset(read_movielens_100k(ml100k_dir), PreprocessSpec(), SplitSpec(seed=1), "x")
    assert not np.array_equal(other.splits.test_negatives, ml100k.splits.test_negatives)


def test_leakage_check_detects_leaks(ml100k: Dataset) -> None:
    s = ml100k.splits
    leaked_train = Part(
        np.concatenate([s.train.user_idx, s.test.user_idx[:1]]),
        np.concatenate([s.train.item_idx, s.test.item_idx[:1]]),
        np.concatenate([s.train.timestamp, s.test.timestamp[:1]]),
        np.concatenate([s.train.rating, s.test.rating[:1]]),
    )
    bad = dataclasses.replace(ml100k, splits=dataclasses.replace(s, train=leaked_train))
    with pytest.raises(DataError, match="leakage"):
        check_no_leakage(bad)


def test_dedupe_threshold_and_kcore() -> None:
    log = make_log(
        [
            ("a", "x", 5, 1),
            ("a", "x", 2, 9),  # duplicate: the latest (rating 2) is kept
            ("a", "y", 4, 2),
            ("b", "y", 4, 3),
            ("b", "z", 1, 4),
            ("c", "z", 5, 5),
        ]
    )
    enc = preprocess(log, PreprocessSpec())
    assert len(enc.user_idx) == 5
    kept = {
        (enc.user_ids[u], enc.item_ids[i], r) for u, i, r in zip(enc.user_idx, enc.item_idx, enc.rating, strict=True)
    }
    assert ("a", "x", 2.0) in kept
    enc = preprocess(log, PreprocessSpec(positive_threshold=4))
    assert set(zip(enc.user_ids[enc.user_idx], enc.item_ids[enc.item_idx], strict=True)) == {
        ("a", "y"),
        ("b", "y"),
        ("c", "z"),
    }
    # 2-core: c and z have one interaction each after the threshold; removing them removes nothing else
    enc = preprocess(log, PreprocessSpec(positive_threshold=4, min_user_interactions=1, min_item_interactions=2))
    assert sorted(enc.item_ids) == ["y"]
    with pytest.raises(DataError, match="nothing is left"):
        preprocess(log, PreprocessSpec(min_user_interactions=10))
    with pytest.raises(DataError, match="no rating reaches"):
        preprocess(log, PreprocessSpec(positive_threshold=6))
    with pytest.raises(DataError, match="empty"):
        preprocess(make_log([]), PreprocessSpec())


def test_too_small_to_split() -> None:
    log = make_log([("a", "x", 1, 1), ("a", "y", 1, 2), ("b", "x", 1, 1)])
    with pytest.raises(DataError, match="too small to split"):
        split(preprocess(log, PreprocessSpec()), SplitSpec())


def test_not_enough_items_for_negatives() -> None:
    log = make_log([("a", str(i), 1, i) for i in range(5)])
    with pytest.raises(DataError, match="negatives"):
        split(preprocess(log, PreprocessSpec()), SplitSpec(num_negatives=99))


def test_temporal_split(synthetic: Dataset) -> None:
    from onnxrec.trainer.data.synth import generate_synthetic

    ds = build_dataset(
        generate_synthetic(num_users=200, num_items=150, seed=1),
        PreprocessSpec(),
        SplitSpec(kind="temporal", num_negatives=20),
        "t",
    )
    s = ds.splits
    check_no_leakage(ds)
    assert s.train.timestamp.max() <= s.valid.timestamp.min() <= s.valid.timestamp.max() <= s.test.timestamp.min()
    assert set(s.test.user_idx.tolist()) <= set(s.train.user_idx.tolist())
    assert len(s.test_negatives) == len(np.unique(s.test.user_idx))


def test_artifact_round_trip_and_tamper(synthetic: Dataset, tmp_path: Path) -> None:
    out = save_dataset(synthetic, tmp_path / "ds")
    back = load_dataset(out)
    assert back.content_hash == synthetic.content_hash
    assert np.array_equal(back.splits.train.item_idx, synthetic.splits.train.item_idx)
    assert back.feature_spec == synthetic.feature_spec
    for name, arr in synthetic.item_features.items():
        assert np.array_equal(back.item_features[name], arr)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary directory may remain"
    with pytest.raises(Exception, match="already exists"):
        save_dataset(synthetic, out)
    np.save(out / "test_negatives.npy", np.zeros_like(synthetic.splits.test_negatives))
    with pytest.raises(DataError, match="content hash"):
        load_dataset(out)
    os.remove(out / "train.parquet")
    with pytest.raises(DataError, match="incomplete or damaged"):
        load_dataset(out)


def test_failed_write_leaves_nothing(synthetic: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    calls = {"n": 0}
    real = pq.write_table

    def failing(table: pa.Table, where: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(OSError, match="No space"):
        save_dataset(synthetic, tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 30), st.integers(0, 5)), min_size=1, max_size=120))
def test_split_invariants(rows: list[tuple[int, int, int]]) -> None:
    """For any log: parts are disjoint, every held-out user keeps >= 1 training item, negatives are unseen."""
    log = make_log([(f"u{u}", f"i{i}", 1.0, t) for u, i, t in rows])
    enc = preprocess(log, PreprocessSpec())
    try:
        s = split(enc, SplitSpec(num_negatives=3))
    except DataError as exc:
        assert "too small" in str(exc) or "negatives" in str(exc)
        return
    n = len(enc.user_idx)
    assert len(s.train) + len(s.valid) + len(s.test) == n
    seen: dict[int, set[int]] = {}
    for u, i in zip(enc.user_idx, enc.item_idx, strict=True):
        seen.setdefault(int(u), set()).add(int(i))
    train_users = set(s.train.user_idx.tolist())
    for row, u in enumerate(np.unique(s.test.user_idx)):
        assert int(u) in train_users
        assert not set(s.test_negatives[row].tolist()) & seen[int(u)]
