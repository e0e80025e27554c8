"""Tests of the synthetic interaction-log generator and write_log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxrec.errors import DataError
from onnxrec.trainer.data.log import INTERACTION_SCHEMA, InteractionLog, write_log
from onnxrec.trainer.data.synth import generate_synthetic

START = 1_600_000_000
WINDOW = 180 * 86_400


@pytest.fixture(scope="module")
def default_log() -> InteractionLog:
    return generate_synthetic()


def _check_invariants(log: InteractionLog, num_users: int, num_items: int, start_time: int = START) -> None:
    table = log.interactions
    assert table.schema == INTERACTION_SCHEMA
    assert table.num_rows > 0
    users = table["user_id"].to_pylist()
    items = table["item_id"].to_pylist()
    # No duplicate (user, item) pairs.
    assert len(set(zip(users, items, strict=True))) == table.num_rows
    # Ids are valid and match the side tables.
    assert log.user_table is not None
    assert log.item_table is not None
    user_ids = log.user_table["user_id"].to_pylist()
    item_ids = log.item_table["item_id"].to_pylist()
    assert user_ids == [f"u{i}" for i in range(1, num_users + 1)]
    assert item_ids == [f"i{i}" for i in range(1, num_items + 1)]
    assert set(users) <= set(user_ids)
    assert set(items) <= set(item_ids)
    # Every user interacts, at least min(5, num_items) times.
    per_user = pc.value_counts(table["user_id"])
    assert len(per_user) == num_users
    assert pc.min(per_user.field("counts")).as_py() >= min(5, num_items)
    # Ratings 1..5, timestamps in range and non-decreasing per user.
    ratings = table["rating"].to_numpy()
    assert np.all((ratings >= 1) & (ratings <= 5))
    assert np.all(ratings == np.rint(ratings))
    ts = table["timestamp"].to_numpy()
    assert ts.min() >= start_time
    assert ts.max() <= start_time + WINDOW
    user_index = np.array([int(u[1:]) for u in users])
    assert np.all(np.diff(user_index) >= 0)  # grouped by user
    same_user = np.diff(user_index) == 0
    assert np.all(np.diff(ts)[same_user] >= 0)


def test_default_log_invariants(default_log: InteractionLog) -> None:
    _check_invariants(default_log, 2000, 1000)
    assert 60_000 < default_log.num_interactions < 100_000  # about 40 per user
    assert default_log.user_feature_columns == ("age_group", "segment")
    assert default_log.item_feature_columns == ("genres", "year")
    assert default_log.user_table is not None
    assert default_log.item_table is not None
    assert default_log.user_table.schema == pa.schema(
        [("user_id", pa.string()), ("age_group", pa.string()), ("segment", pa.string())]
    )
    assert default_log.item_table.schema == pa.schema(
        [
            ("item_id", pa.string()),
            ("title", pa.string()),
            ("genres", pa.list_(pa.string())),
            ("year", pa.string()),
        ]
    )
    first = default_log.item_table.slice(0, 1).to_pylist()[0]
    assert first["title"] == "Item 1"
    assert 1 <= len(first["genres"]) <= 2
    assert first["year"].isdigit()


def test_deterministic_for_a_seed(default_log: InteractionLog) -> None:
    again = generate_synthetic()
    assert again.interactions.equals(default_log.interactions)
    assert again.user_table is not None
    assert again.item_table is not None
    assert again.user_table.equals(default_log.user_table)
    assert again.item_table.equals(default_log.item_table)


def test_different_seeds_differ(default_log: InteractionLog) -> None:
    other = generate_synthetic(seed=1)
    assert not other.interactions.equals(default_log.interactions)


def test_popularity_is_skewed(default_log: InteractionLog) -> None:
    counts = np.sort(pc.value_counts(default_log.interactions["item_id"]).field("counts").to_numpy())[::-1]
    top_share = counts[: 1000 // 10].sum() / counts.sum()
    assert top_share > 0.4


def test_heavy_tailed_user_activity(default_log: InteractionLog) -> None:
    per_user = pc.value_counts(default_log.interactions["user_id"]).field("counts").to_numpy()
    assert per_user.min() >= 5
    assert per_user.max() > 4 * np.median(per_user)  # a long tail of heavy users


def test_ratings_follow_taste(default_log: InteractionLog) -> None:
    table = default_log.interactions
    ratings = table["rating"].to_numpy()
    assert 3.0 < ratings.mean() < 4.2
    assert set(np.unique(ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # Items of a user's most frequent genre (their main taste) get higher ratings than the rest.
    assert default_log.item_table is not None
    primary = pc.list_element(default_log.item_table["genres"], 0).to_numpy(zero_copy_only=False)
    genre_codes = np.unique(primary, return_inverse=True)[1]
    item_index = np.array([int(i[1:]) - 1 for i in table["item_id"].to_pylist()])
    user_index = np.array([int(u[1:]) - 1 for u in table["user_id"].to_pylist()])
    genre = genre_codes[item_index]
    num_genres = int(genre_codes.max()) + 1
    per_user_genre = np.zeros((2000, num_genres), dtype=np.int64)
    np.add.at(per_user_genre, (user_index, genre), 1)
    favourite = per_user_genre.argmax(axis=1)
    match = genre == favourite[user_index]
    assert 0.2 < match.mean() < 0.95
    assert ratings[match].mean() > ratings[~match].mean() + 0.4


def test_timestamps_have_sessions(default_log: InteractionLog) -> None:
    table = default_log.interactions
    users = table["user_id"].to_numpy(zero_copy_only=False)
    ts = table["timestamp"].to_numpy()
    gaps = np.diff(ts)[users[1:] == users[:-1]]
    # Most consecutive interactions are minutes apart (within a session), some days apart.
    assert np.mean(gaps < 3600) > 0.5
    assert np.mean(gaps > 86_400) > 0.02


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="num_users"):
        generate_synthetic(num_users=0)
    with pytest.raises(DataError, match="num_items"):
        generate_synthetic(num_items=0)
    with pytest.raises(DataError, match="interactions_per_user"):
        generate_synthetic(interactions_per_user=0)
    with pytest.raises(DataError, match="num_clusters"):
        generate_synthetic(num_clusters=0)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_log_round_trip(default_log: InteractionLog, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "out" / f"log{suffix}"
    write_log(default_log, path)
    if suffix == ".csv":
        convert = pacsv.ConvertOptions(column_types=INTERACTION_SCHEMA)
        back = pacsv.read_csv(path, convert_options=convert)
    else:
        back = pq.read_table(path)
    assert back.cast(INTERACTION_SCHEMA).equals(default_log.interactions)
    users = pq.read_table(tmp_path / "out" / "log.users.parquet")
    items = pq.read_table(tmp_path / "out" / "log.items.parquet")
    assert default_log.user_table is not None
    assert default_log.item_table is not None
    assert users.equals(default_log.user_table)
    assert items.equals(default_log.item_table)
    # Only the three files: no temporary files left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"log{suffix}", "log.users.parquet", "log.items.parquet"]
    )


def test_write_log_without_side_tables(tmp_path: Path) -> None:
    log = InteractionLog(
        interactions=pa.table({"user_id": ["a"], "item_id": ["b"], "rating": [None], "timestamp": [0]}).cast(
            INTERACTION_SCHEMA
        ),
        source="tiny",
    )
    write_log(log, tmp_path / "tiny.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.parquet"]
    assert pq.read_table(tmp_path / "tiny.parquet").equals(log.interactions)


def test_write_log_rejects_other_suffixes(default_log: InteractionLog, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\.csv or \.parquet"):
        write_log(default_log, tmp_path / "log.json")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=60, deadline=None)
@given(
    num_users=st.integers(1, 50),
    num_items=st.integers(2, 60),
    interactions_per_user=st.floats(0.5, 80.0),
    num_clusters=st.integers(1, 15),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants_hold_for_small_sizes(
    num_users: int, num_items: int, interactions_per_user: float, num_clusters: int, seed: int
) -> None:
    log = generate_synthetic(
        num_users=num_users,
        num_items=num_items,
        interactions_per_user=interactions_per_user,
        num_clusters=num_clusters,
        seed=seed,
        start_time=START,
    )
    _check_invariants(log, num_users, num_items)
    assert log.item_table is not None
    assert pc.all(pc.greater(pc.list_value_length(log.item_table["genres"]), 0)).as_py()
