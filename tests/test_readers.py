"""Readers on the real MovieLens files and on generic logs."""

from __future__ import annotations

import string
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxrec.errors import DataError
from onnxrec.trainer.data.columns import MISSING_MARKERS
from onnxrec.trainer.data.log import INTERACTION_SCHEMA
from onnxrec.trainer.data.readers import (
    ColumnMapping,
    detect_format,
    read_log,
    read_movielens_1m,
    read_movielens_20m,
    read_movielens_100k,
    read_source,
)


def test_ml100k_counts_and_side_information(ml100k_dir: Path) -> None:
    log = read_movielens_100k(ml100k_dir)
    t = log.interactions
    assert t.schema == INTERACTION_SCHEMA
    assert t.num_rows == 100_000
    assert len(set(t["user_id"].to_pylist())) == 943
    assert len(set(t["item_id"].to_pylist())) == 1682
    assert min(t["timestamp"].to_pylist()) == 874724710
    assert max(t["timestamp"].to_pylist()) == 893286638
    assert log.item_table is not None and log.user_table is not None
    toy = log.item_table.slice(0, 1).to_pylist()[0]
    assert toy == {
        "item_id": "1",
        "title": "Toy Story (1995)",
        "genres": ["Animation", "Children's", "Comedy"],
        "year": "1995",
    }
    assert log.user_table.slice(0, 1).to_pylist()[0] == {
        "user_id": "1",
        "age_group": "18",
        "gender": "M",
        "occupation": "technician",
    }
    assert log.user_table.num_rows == 943


def test_ml1m_reader_latin1_and_double_colon(ml1m_dir: Path, tmp_path: Path) -> None:
    # the full ratings.dat is not available here; the reader is checked on the real 3,000-line sample
    log = read_movielens_1m(ml1m_dir, ratings_file="ratings-sample.dat")
    assert log.interactions.num_rows == 3000
    assert log.interactions.slice(0, 1).to_pylist()[0] == {
        "user_id": "1",
        "item_id": "1193",
        "rating": 5.0,
        "timestamp": 978300760,
    }
    assert log.item_table is not None and log.item_table.num_rows == 3883
    assert log.user_table is not None and log.user_table.num_rows == 6040
    titles = log.item_table["title"].to_pylist()
    assert any("é" in t for t in titles), "latin-1 titles must decode to accented characters"
    # the folder detection needs ratings.dat: link the sample under that name
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    for name in ("movies.dat", "users.dat"):
        (folder / name).symlink_to(ml1m_dir / name)
    (folder / "ratings.dat").symlink_to(ml1m_dir / "ratings-sample.dat")
    assert detect_format(folder) == "movielens-1m"
    assert read_source(folder).interactions.num_rows == 3000


def test_ml20m_format(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n2,2,4.0,974820889\n"
    )
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n2,Jumanji (1995),Adventure|Children|Fantasy\n"
        '29,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Adventure|Drama\n'
    )
    assert detect_format(tmp_path) == "movielens-20m"
    log = read_movielens_20m(tmp_path)
    assert log.interactions.num_rows == 3
    assert log.item_table is not None
    rows = log.item_table.to_pylist()
    assert rows[1]["title"].startswith("City of Lost Children, The")
    assert rows[1]["year"] == "1995"
    assert rows[0]["genres"] == ["Adventure", "Children", "Fantasy"]


def test_generic_csv_with_mapping_and_features(tmp_path: Path) -> None:
    p = tmp_path / "log.tsv"
    p.write_text("uid\tsku\tstars\tts\tcountry\tcats\nA\tx\t5\t10\tDE\ta|b\nB\tx\t1\t11\tFR\ta|b\nA\ty\t3\t12\tDE\tc\n")
    log = read_log(p, ColumnMapping("uid", "sku", "stars", "ts", ("country",), ("cats",)))
    assert log.interactions.to_pylist()[0] == {"user_id": "A", "item_id": "x", "rating": 5.0, "timestamp": 10}
    assert log.user_table is not None and log.user_table.to_pylist() == [
        {"user_id": "A", "country": "DE"},
        {"user_id": "B", "country": "FR"},
    ]
    assert log.item_table is not None
    assert log.item_table.to_pylist()[0] == {"item_id": "x", "cats": ["a", "b"]}


def test_ids_keep_leading_zeros(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id\n007,0042\n7,42\n")
    log = read_log(p)
    assert log.interactions["user_id"].to_pylist() == ["007", "7"]
    assert log.interactions["item_id"].to_pylist() == ["0042", "42"]


def test_generic_parquet(tmp_path: Path) -> None:
    p = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [7, 8], "when": [5, 6]}), p)
    log = read_log(p, ColumnMapping(timestamp="when"))
    assert log.interactions["user_id"].to_pylist() == ["1", "2"]
    assert log.interactions["rating"].null_count == 2


@pytest.mark.parametrize(
    ("content", "mapping", "message"),
    [
        ("", ColumnMapping(), "empty"),
        ("user_id item_id\n1 2\n", ColumnMapping(), "separator"),
        ("user_id,item_id\n1,2\n", ColumnMapping(rating="score"), "no column 'score'"),
        ("user_id,item_id\n", ColumnMapping(), "no rows"),
        ("user_id,item_id,ts\n1,2,yesterday\n", ColumnMapping(timestamp="ts"), "timestamp"),
    ],
)
def test_generic_log_errors_name_the_problem(
    tmp_path: Path, content: str, mapping: ColumnMapping, message: str
) -> None:
    p = tmp_path / "log.csv"
    p.write_text(content)
    with pytest.raises(DataError, match=message):
        read_log(p, mapping)


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_source(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="not a MovieLens folder"):
        read_source(tmp_path)
    with pytest.raises(DataError, match=r"u\.data: no such file"):
        read_movielens_100k(tmp_path)


def test_ml100k_reader_rejects_wrong_separator(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1,2,3,4\n")
    with pytest.raises(DataError, match="expected 4 fields"):
        read_movielens_100k(tmp_path)


# any id but a missing-value marker (those are refused: see tests/test_data_validation.py)
_ids = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=8).filter(
    lambda s: s.lower() not in MISSING_MARKERS
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(_ids, _ids, st.integers(1, 5), st.integers(0, 2**40)), min_size=1, max_size=40),
    st.sampled_from([",", "\t", ";"]),
)
def test_generic_csv_round_trip(tmp_path: Path, rows: list[tuple[str, str, int, int]], sep: str) -> None:
    """Whatever ids, ratings and times a log holds, the reader gives them back as written."""
    p = tmp_path / "rt.csv"
    lines = [sep.join(["u", "i", "r", "t"])] + [sep.join([u, i, str(r), str(t)]) for u, i, r, t in rows]
    p.write_text("\n".join(lines) + "\n")
    log = read_log(p, ColumnMapping("u", "i", "r", "t"))
    got = log.interactions.to_pylist()
    assert [(g["user_id"], g["item_id"], int(g["rating"]), g["timestamp"]) for g in got] == list(rows)
