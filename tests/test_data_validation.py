"""No silently wrong data: columns found by their usual names (and said so), timestamps used when a
log has them, and empty/NaN ids or unparseable times refused with the line and column."""

from __future__ import annotations

import logging
import string
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxrec.errors import DataError
from onnxrec.trainer.data.columns import (
    MISSING_MARKERS,
    ColumnMapping,
    Where,
    check_ids,
    parse_timestamp,
    parse_timestamps,
    resolve_columns,
)
from onnxrec.trainer.data.dataset import Dataset, build_dataset
from onnxrec.trainer.data.log import INTERACTION_SCHEMA, InteractionLog
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.readers import read_log
from onnxrec.trainer.data.split import SplitSpec


@pytest.fixture(scope="module")
def ml100k_rows(ml100k_dir: Path) -> list[list[str]]:
    """u.data's rows (user, item, rating, timestamp), shuffled so the file order is not the time order."""
    rows = [line.split("\t") for line in (ml100k_dir / "u.data").read_text().splitlines()]
    order = np.random.default_rng(0).permutation(len(rows))
    return [rows[i] for i in order]


def _write(path: Path, header: str, rows: list[list[str]], sep: str = ",") -> Path:
    path.write_text(header + "\n" + "\n".join(sep.join(r) for r in rows) + "\n")
    return path


def _test_pairs(ds: Dataset) -> set[tuple[str, str]]:
    s = ds.splits.test
    return {(ds.user_ids[u], ds.item_ids[i]) for u, i in zip(s.user_idx, s.item_idx, strict=True)}


def test_movielens_style_columns_are_detected_and_time_orders_the_split(
    ml100k_rows: list[list[str]], ml100k: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ML-100K written as ratings.csv-style CSV (userId,movieId,rating,timestamp): read with no column
    option, it splits exactly as the MovieLens reader does, by time, not by file or item order."""
    log_path = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp", ml100k_rows)
    with caplog.at_level(logging.INFO, logger="onnxrec.data"):
        log = read_log(log_path)
    assert log.columns["user"] == "userId" and log.columns["item"] == "movieId"
    assert log.columns["timestamp"] == "timestamp" and log.columns["rating"] == "rating"
    assert log.columns["detected"] == ["user", "item", "rating", "timestamp"]
    assert "user 'userId' (detected)" in caplog.text and "timestamp 'timestamp' (detected)" in caplog.text
    ds = build_dataset(log, PreprocessSpec(), SplitSpec(), "csv")
    assert ds.meta["columns"]["timestamp"] == "timestamp"
    assert _test_pairs(ds) == _test_pairs(ml100k)


def test_without_a_timestamp_the_file_order_is_the_time_and_a_warning_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [["u1", f"i{k}"] for k in (5, 3, 9, 1)] + [["u2", f"i{k}"] for k in (2, 8, 4)]
    with caplog.at_level(logging.INFO, logger="onnxrec.data"):
        log = read_log(_write(tmp_path / "log.csv", "user,item", rows))
    assert "no timestamp column" in caplog.text and "--time-col" in caplog.text
    ds = build_dataset(log, PreprocessSpec(), SplitSpec(num_negatives=2), "rows")
    # the last row of each user is the test item, whatever the item ids' order
    assert _test_pairs(ds) == {("u1", "i1"), ("u2", "i4")}
    assert ds.meta["columns"]["time_order"] == "row order of the file"


def test_time_col_none_ignores_a_detected_time_column(tmp_path: Path) -> None:
    p = _write(tmp_path / "log.csv", "user_id,item_id,time", [["a", "x", "3 min"], ["a", "y", "oops"]])
    with pytest.raises(DataError, match=r"line 2: timestamp column 'time' \(found by its name;.*--time-col none"):
        read_log(p)
    log = read_log(p, ColumnMapping(timestamp="none"))
    assert log.columns["timestamp"] is None
    assert log.interactions["timestamp"].to_pylist() == [0, 1]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            "user,user_id,item_id",
            "both 'user' and 'user_id' could be the user column; name the one to use with --user-col",
        ),
        ("who,item_id", "no user column (looked for user_id, userId, user; columns are: who, item_id); name it with"),
        ("user_id,thing", "no item column"),
        ("user_id,item_id,ts,time", "both 'ts' and 'time' could be the timestamp column"),
    ],
)
def test_missing_or_ambiguous_columns_must_be_named(tmp_path: Path, header: str, message: str) -> None:
    p = tmp_path / "log.csv"
    p.write_text(header + "\n" + ",".join("1" for _ in header.split(",")) + "\n")
    with pytest.raises(DataError) as err:
        read_log(p)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", ["t0", "oops", "", "12:30", "nan", "inf"])
def test_bad_timestamps_name_the_line_and_column(ml100k_rows: list[list[str]], tmp_path: Path, bad: str) -> None:
    rows = [list(r) for r in ml100k_rows[:5000]]
    rows[3140][3] = bad  # data row 3141, file line 3142 (the header is line 1)
    p = _write(tmp_path / "log.csv", "user_id,item_id,rating,timestamp", rows)
    with pytest.raises(DataError) as err:
        read_log(p)
    message = str(err.value)
    assert message.startswith(f"{p} line 3142: timestamp column 'timestamp'"), message
    assert (f"holds {bad!r}" if bad else "is empty") in message and "\n" not in message


@pytest.mark.parametrize("bad", ["", "NaN", "nan", " ", "NULL", "None"])
@pytest.mark.parametrize("column", ["user_id", "item_id"])
def test_empty_and_nan_ids_name_the_line_and_column(
    ml100k_rows: list[list[str]], tmp_path: Path, bad: str, column: str
) -> None:
    rows = [list(r) for r in ml100k_rows[:2000]]
    rows[1776][0 if column == "user_id" else 1] = bad
    p = _write(tmp_path / "log.tsv", "user_id\titem_id\trating\ttimestamp", rows, sep="\t")
    with pytest.raises(DataError) as err:
        read_log(p)
    role = column.split("_", maxsplit=1)[0]
    assert str(err.value).startswith(f"{p} line 1778: {role} column {column!r} "), str(err.value)
    assert f"not a {role} id" in str(err.value)


def test_parquet_nulls_and_nan_ids_name_the_row(tmp_path: Path) -> None:
    p = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": [1.0, 2.0, float("nan")], "item": [3, 4, 5], "ts": [1, 2, 3]}), p)
    with pytest.raises(DataError, match=r"log\.parquet row 3: user column 'user' holds 'nan'"):
        read_log(p)
    pq.write_table(pa.table({"user": [1, 2, 3], "item": [3, 4, 5], "ts": [1, None, 3]}), p)
    with pytest.raises(DataError, match=r"log\.parquet row 2: timestamp column 'ts'"):
        read_log(p)


def test_iso_dates_and_arrow_timestamps_are_times(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "log.csv",
        "user_id,item_id,time",
        [["a", "x", "2001-01-01T00:00:10Z"], ["a", "y", "2001-01-01 00:00:20"], ["a", "z", "2001-01-02"]],
    )
    assert read_log(p).interactions["timestamp"].to_pylist() == [978307210, 978307220, 978393600]
    q = tmp_path / "log.parquet"
    when = pa.array([10_000, 20_500], pa.timestamp("ms"))
    pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": when}), q)
    assert read_log(q).interactions["timestamp"].to_pylist() == [10, 20]


def test_too_few_items_for_the_negatives_names_the_raw_user_and_the_options() -> None:
    rows = [("alice", f"i{k}", None, k) for k in range(6)] + [("bob", "i0", None, 1), ("bob", "i1", None, 2)]
    rows += [("bob", "i2", None, 3)]
    table = pa.table(dict(zip(INTERACTION_SCHEMA.names, zip(*rows, strict=True), strict=True)), INTERACTION_SCHEMA)
    with pytest.raises(DataError) as err:
        build_dataset(InteractionLog(table, "tiny"), PreprocessSpec(), SplitSpec(num_negatives=99), "tiny")
    message = str(err.value)
    assert "user 'alice' has interacted with 6 of the 6 items, leaving 0" in message
    assert "--negatives" in message and "--eval-negatives" in message


# ---- properties of the parsers -------------------------------------------------------------------

_id_text = st.text(alphabet=string.ascii_letters + string.digits + "_-.:", min_size=1, max_size=10)
_ids = _id_text.filter(lambda s: s.strip().lower() not in MISSING_MARKERS)
_markers = st.sampled_from(MISSING_MARKERS).flatmap(lambda m: st.sampled_from([m, m.upper(), m.title(), f" {m} "]))


@settings(max_examples=60, deadline=None)
@given(st.lists(_ids, min_size=1, max_size=60), st.data())
def test_check_ids_refuses_exactly_the_missing_markers(ids: list[str], data: st.DataObject) -> None:
    where = Where(Path("log.csv"))
    assert check_ids(where, "uid", "user", pa.array(ids)).to_pylist() == ids
    at = data.draw(st.integers(0, len(ids) - 1))
    marker = data.draw(_markers)
    broken = [*ids[:at], marker, *ids[at + 1 :]]
    with pytest.raises(DataError, match=rf"^log\.csv line {at + 2}: user column 'uid' "):
        check_ids(where, "uid", "user", pa.array(broken))


@settings(max_examples=80, deadline=None)
@given(st.integers(-(2**53), 2**53))
def test_integer_times_are_read_as_written(t: int) -> None:
    assert parse_timestamp(str(t)) == t
    assert parse_timestamp(f" {t} ") == t


@settings(max_examples=80, deadline=None)
@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)))
def test_iso_times_are_utc_seconds(dt: datetime) -> None:
    dt = dt.replace(microsecond=0)
    assert parse_timestamp(dt.isoformat()) == int(dt.replace(tzinfo=UTC).timestamp())
    assert parse_timestamp(dt.isoformat(sep=" ") + "Z") == int(dt.replace(tzinfo=UTC).timestamp())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=30), st.text(string.ascii_letters, min_size=1), st.data())
def test_any_word_among_times_is_refused_at_its_line(times: list[int], word: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(times) - 1))
    values = [str(t) for t in times]
    values[at] = word
    assert parse_timestamp(word) is None
    with pytest.raises(DataError, match=rf"^log\.csv line {at + 2}: timestamp column 'ts' holds {word!r}"):
        parse_timestamps(Where(Path("log.csv")), "ts", pa.array(values))


def test_given_columns_are_used_as_given() -> None:
    cols = resolve_columns(Path("x.csv"), ["a", "b", "user_id", "ts"], ColumnMapping(user="a", item="b"))
    assert (cols.user, cols.item, cols.timestamp, cols.detected) == ("a", "b", "ts", ("timestamp",))
    with pytest.raises(DataError, match="no column 'z'"):
        resolve_columns(Path("x.csv"), ["a", "b"], ColumnMapping(user="a", item="b", rating="z"))
