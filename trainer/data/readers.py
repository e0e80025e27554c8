"""Readers for the interaction-log formats onnxrec understands.

Each reader returns an :class:`~onnxrec.trainer.data.log.InteractionLog` with raw string ids. The
supported formats are MovieLens ML-100K, ML-1M, ML-20M / ml-latest and generic CSV / TSV / Parquet
logs with a column mapping (columns not named are found by their usual names; see
:mod:`onnxrec.trainer.data.columns`). Every reader refuses empty or NaN ids and unparseable times
with the line and column. :func:`read_source` detects the format of a path.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from onnxrec.errors import DataError
from onnxrec.trainer.data.columns import (
    USUAL_NAMES,
    ColumnMapping,
    ResolvedColumns,
    Where,
    check_ids,
    parse_ratings,
    parse_timestamps,
    resolve_columns,
)
from onnxrec.trainer.data.log import INTERACTION_SCHEMA, InteractionLog

__all__ = ["ColumnMapping", "detect_format", "read_log", "read_source"]

log = logging.getLogger("onnxrec.data")

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
_SEPARATORS = (",", "\t", ";", "|")


def _need_file(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    return path


def _read_delimited(
    path: Path, sep: str, names: list[str], *, encoding: str = "utf-8", types: dict[str, pa.DataType]
) -> pa.Table:
    """Read a header-less delimited file; ``sep`` may be several characters (``::``)."""
    raw = _need_file(path).read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    if encoding != "utf-8":
        raw = raw.decode(encoding).encode("utf-8")
    if len(sep) > 1:
        raw = raw.replace(sep.encode(), b"\x1f")
        sep = "\x1f"
    first = raw.split(b"\n", 1)[0]
    if first.count(sep.encode()) + 1 != len(names):
        raise DataError(
            f"{path}: expected {len(names)} fields separated by {sep!r} per line, "
            f"found {first.count(sep.encode()) + 1} in the first line (wrong file or separator?)"
        )
    try:
        return pacsv.read_csv(
            io.BytesIO(raw),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from exc


def _interactions(
    where: Where,
    names: tuple[str, str],
    users: pa.ChunkedArray,
    items: pa.ChunkedArray,
    ratings: pa.Array | None,
    ts: pa.Array | None,
) -> pa.Table:
    """The interaction table; ids checked (none empty or NaN). No timestamps: the row order is the time."""
    n = len(users)
    return pa.table(
        {
            "user_id": check_ids(where, names[0], "user", users),
            "item_id": check_ids(where, names[1], "item", items),
            "rating": pc.cast(ratings, pa.float64()) if ratings is not None else pa.nulls(n, pa.float64()),
            "timestamp": pc.cast(ts, pa.int64()) if ts is not None else pa.array(np.arange(n, dtype=np.int64)),
        },
        schema=INTERACTION_SCHEMA,
    )


def _age_group(age: int) -> str:
    """MovieLens-1M's age buckets, applied to ML-100K's exact ages so both speak the same."""
    for upper, label in ((18, "1"), (25, "18"), (35, "25"), (45, "35"), (50, "45"), (56, "50")):
        if age < upper:
            return label
    return "56"


def read_movielens_100k(folder: Path) -> InteractionLog:
    """Read ML-100K (``u.data``, ``u.item``, ``u.user``, ``u.genre``) from ``folder``."""
    folder = Path(folder)
    data = _read_delimited(
        folder / "u.data",
        "\t",
        ["user", "item", "rating", "timestamp"],
        types={"user": pa.string(), "item": pa.string(), "rating": pa.float64(), "timestamp": pa.int64()},
    )
    where = Where(folder / "u.data", "line", 1)
    ts = parse_timestamps(where, "timestamp", data["timestamp"])
    interactions = _interactions(where, ("user", "item"), data["user"], data["item"], data["rating"], ts)
    genres = [ln.split("|")[0] for ln in (folder / "u.genre").read_text("latin-1").splitlines() if ln.strip()]
    item_rows: dict[str, list[object]] = {"item_id": [], "title": [], "genres": [], "year": []}
    for line in _need_file(folder / "u.item").read_text("latin-1").splitlines():
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 5 + len(genres):
            raise DataError(f"{folder / 'u.item'}: expected {5 + len(genres)} '|' fields, found {len(f)}")
        item_rows["item_id"].append(f[0])
        item_rows["title"].append(f[1])
        item_rows["genres"].append([g for g, flag in zip(genres, f[5:], strict=True) if flag == "1"])
        item_rows["year"].append(f[2][-4:] if len(f[2]) >= 4 else "unknown")
    items = pa.table(item_rows, schema=_ITEM_SCHEMA)
    user_rows: dict[str, list[str]] = {"user_id": [], "age_group": [], "gender": [], "occupation": []}
    for line in _need_file(folder / "u.user").read_text("latin-1").splitlines():
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 5 or not f[1].isdigit():
            raise DataError(f"{folder / 'u.user'}: malformed line {line[:60]!r}")
        user_rows["user_id"].append(f[0])
        user_rows["age_group"].append(_age_group(int(f[1])))
        user_rows["gender"].append(f[2])
        user_rows["occupation"].append(f[3])
    return InteractionLog(
        interactions=interactions,
        source="movielens-100k",
        user_table=pa.table(user_rows),
        item_table=items,
        user_feature_columns=("age_group", "gender", "occupation"),
        item_feature_columns=("genres", "year"),
    )


_ITEM_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("title", pa.string()), ("genres", pa.list_(pa.string())), ("year", pa.string())]
)


def _movies_table(ids: list[str], titles: list[str], genre_strings: list[str]) -> pa.Table:
    years = []
    for t in titles:
        m = _YEAR_IN_TITLE.search(t)
        years.append(m.group(1) if m else "unknown")
    genres = [[g for g in s.split("|") if g and g != "(no genres listed)"] for s in genre_strings]
    return pa.table({"item_id": ids, "title": titles, "genres": genres, "year": years}, schema=_ITEM_SCHEMA)


def read_movielens_1m(folder: Path, ratings_file: str = "ratings.dat") -> InteractionLog:
    """Read ML-1M (``ratings.dat``, ``users.dat``, ``movies.dat``; latin-1, ``::``) from ``folder``."""
    folder = Path(folder)
    s = pa.string()
    r = _read_delimited(
        folder / ratings_file,
        "::",
        ["user", "item", "rating", "timestamp"],
        encoding="latin-1",
        types={"user": s, "item": s, "rating": pa.float64(), "timestamp": pa.int64()},
    )
    m = _read_delimited(
        folder / "movies.dat",
        "::",
        ["item", "title", "genres"],
        encoding="latin-1",
        types={"item": s, "title": s, "genres": s},
    )
    u = _read_delimited(
        folder / "users.dat",
        "::",
        ["user", "gender", "age", "occupation", "zip"],
        encoding="latin-1",
        types={"user": s, "gender": s, "age": s, "occupation": s, "zip": s},
    )
    users = pa.table(
        {"user_id": u["user"], "age_group": u["age"], "gender": u["gender"], "occupation": u["occupation"]}
    )
    where = Where(folder / ratings_file, "line", 1)
    ts = parse_timestamps(where, "timestamp", r["timestamp"])
    return InteractionLog(
        interactions=_interactions(where, ("user", "item"), r["user"], r["item"], r["rating"], ts),
        source="movielens-1m",
        user_table=users,
        item_table=_movies_table(m["item"].to_pylist(), m["title"].to_pylist(), m["genres"].to_pylist()),
        user_feature_columns=("age_group", "gender", "occupation"),
        item_feature_columns=("genres", "year"),
    )


def _csv_header(path: Path, raw: bytes, sep: str | None) -> tuple[str, list[str]]:
    """The separator (given, or the likeliest of , TAB ; |) and the column names of a CSV's header."""
    header = raw.split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r")
    if sep is None:
        counts = {c: header.count(c) for c in _SEPARATORS}
        sep = max(counts, key=lambda c: counts[c])
        if counts[sep] == 0:
            raise DataError(
                f"{path}: found a single column in the header {header.strip()[:80]!r}; wrong separator? (pass --sep)"
            )
    sep = {"tab": "\t", "\\t": "\t"}.get(sep, sep)
    if len(sep) != 1:
        raise DataError(f"--sep must be one character (or 'tab'), not {sep!r}")
    return sep, next(csv.reader([header], delimiter=sep))


def _read_csv_with_header(path: Path, sep: str | None, string_columns: tuple[str, ...] = ()) -> pa.Table:
    raw = _need_file(path).read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    sep, _ = _csv_header(path, raw, sep)
    try:
        return pacsv.read_csv(
            io.BytesIO(raw),
            parse_options=pacsv.ParseOptions(delimiter=sep),
            # ids stay strings: "007" must not become 7
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(string_columns, pa.string())),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot parse as {sep!r}-separated: {str(exc).splitlines()[0]}") from exc


def read_movielens_20m(folder: Path) -> InteractionLog:
    """Read ML-20M / ml-latest(-small) (``ratings.csv``, ``movies.csv``) from ``folder``."""
    folder = Path(folder)
    r = _read_csv_with_header(folder / "ratings.csv", ",", ("userId", "movieId"))
    _require_columns(folder / "ratings.csv", r, ["userId", "movieId", "rating", "timestamp"])
    where = Where(folder / "ratings.csv")
    ts = parse_timestamps(where, "timestamp", r["timestamp"])
    m = _read_csv_with_header(folder / "movies.csv", ",")
    _require_columns(folder / "movies.csv", m, ["movieId", "title", "genres"])
    items = _movies_table(
        pc.cast(m["movieId"], pa.string()).to_pylist(), m["title"].to_pylist(), m["genres"].to_pylist()
    )
    return InteractionLog(
        interactions=_interactions(where, ("userId", "movieId"), r["userId"], r["movieId"], r["rating"], ts),
        source="movielens-20m",
        item_table=items,
        item_feature_columns=("genres", "year"),
    )


def _require_columns(path: Path, table: pa.Table, wanted: list[str | None]) -> None:
    have = table.column_names
    for col in wanted:
        if col is not None and col not in have:
            raise DataError(f"{path}: no column {col!r} (columns are: {', '.join(have)})")


def _feature_table(
    table: pa.Table, key: str, columns: tuple[str, ...], out_key: str, text: tuple[str, ...] = ()
) -> pa.Table | None:
    columns = (*columns, *(c for c in text if c not in columns))
    if not columns:
        return None
    ids = pc.cast(table[key], pa.string()).to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    first.sort()
    data: dict[str, pa.Array] = {out_key: pa.array(ids[first], pa.string())}
    for col in columns:
        values = pc.cast(table[col], pa.string()).take(pa.array(first))
        values = pc.fill_null(values, "")
        if col not in text and any("|" in v for v in values.to_pylist()):
            data[col] = pc.split_pattern(values, "|")
        else:
            data[col] = values
    return pa.table(data)


def _read_generic(path: Path, columns: ColumnMapping, sep: str | None) -> tuple[pa.Table, ResolvedColumns, Where]:
    if path.suffix.lower() == ".parquet":
        try:
            table = pq.read_table(_need_file(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
        return table, resolve_columns(path, table.column_names, columns), Where(path, "row", 1)
    raw = _need_file(path).read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    sep, header = _csv_header(path, raw, sep)
    cols = resolve_columns(path, header, columns)
    # ids stay text ("007" is not 7); so do times, so that an error quotes the value as written
    text = (cols.user, cols.item) + ((cols.timestamp,) if cols.timestamp else ())
    return _read_csv_with_header(path, sep, text), cols, Where(path, "line", 2)


def _announce(path: Path, cols: ResolvedColumns) -> None:
    def name(role: str, col: str | None) -> str:
        return f"{role} {col!r}" + (" (detected)" if role in cols.detected else "")

    log.info(
        "%s: columns %s",
        path,
        ", ".join(name(r, getattr(cols, r)) for r in ("user", "item", "rating", "timestamp") if getattr(cols, r)),
    )
    if cols.timestamp is None:
        log.warning(
            "%s: no timestamp column (looked for %s; name one with --time-col): the file's row order stands in "
            "for time, so leave-one-out holds out each user's last rows",
            path,
            ", ".join(USUAL_NAMES["timestamp"]),
        )


def read_log(path: Path, columns: ColumnMapping | None = None, *, sep: str | None = None) -> InteractionLog:
    """Read a generic interaction log (CSV / TSV with a header, or Parquet) with a column mapping.

    Columns the mapping leaves unnamed are detected by their usual names (see
    :mod:`onnxrec.trainer.data.columns`); the columns used are logged and kept in
    :attr:`InteractionLog.columns`. Empty or NaN ids and unparseable times are a :class:`DataError`
    naming the line and column.
    """
    path = Path(path)
    columns = columns or ColumnMapping()
    table, cols, where = _read_generic(path, columns, sep)
    if table.num_rows == 0:
        raise DataError(f"{path}: the log has no rows")
    _announce(path, cols)
    ts = None
    if cols.timestamp is not None:
        ts = parse_timestamps(where, cols.timestamp, table[cols.timestamp], detected="timestamp" in cols.detected)
    rating = parse_ratings(where, cols.rating, table[cols.rating]) if cols.rating else None
    interactions = _interactions(where, (cols.user, cols.item), table[cols.user], table[cols.item], rating, ts)
    return InteractionLog(
        interactions=interactions,
        source=f"log:{path.name}",
        user_table=_feature_table(table, cols.user, columns.user_features, "user_id"),
        item_table=_feature_table(table, cols.item, columns.item_features, "item_id", columns.item_text),
        user_feature_columns=columns.user_features,
        item_feature_columns=columns.item_features,
        columns=cols.describe(),
    )


def detect_format(path: Path) -> str:
    """Name the format of ``path``: movielens-100k, movielens-1m, movielens-20m, csv or parquet."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "u.data").exists():
            return "movielens-100k"
        if (path / "ratings.dat").exists():
            return "movielens-1m"
        if (path / "ratings.csv").exists() and (path / "movies.csv").exists():
            return "movielens-20m"
        raise DataError(
            f"{path}: not a MovieLens folder (no u.data, ratings.dat or ratings.csv) "
            "and not a prepared dataset (no dataset.json)"
        )
    if path.suffix.lower() == ".parquet":
        return "parquet"
    return "csv"


def read_source(path: Path, columns: ColumnMapping | None = None, *, sep: str | None = None) -> InteractionLog:
    """Read any supported source, detecting its format."""
    fmt = detect_format(path)
    if fmt == "movielens-100k":
        return read_movielens_100k(path)
    if fmt == "movielens-1m":
        return read_movielens_1m(path)
    if fmt == "movielens-20m":
        return read_movielens_20m(path)
    return read_log(path, columns, sep=sep)
