"""Which columns of a generic log hold what, and the checks that every id and time in them is usable.

A column not named by the user is looked for under its usual names (:data:`USUAL_NAMES`, compared
without case, ``_`` or ``-``); two candidates for one role are an error (name the one you mean), and
so is no candidate for the user or item column. ``none`` as a rating or timestamp column says "the
log has none". Ids that are empty or a missing-value marker (``NaN``, ``null``, ...) and times that
do not parse are refused with the line (CSV, 1-based, the header being line 1) or row (Parquet,
1-based) and the column, never turned into a user, an item or a zero.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onnxrec.errors import DataError

#: The names each role is detected by when its column is not given.
USUAL_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "userId", "user"),
    "item": ("item_id", "itemId", "movieId", "movie_id", "item"),
    "timestamp": ("timestamp", "time", "ts"),
    "rating": ("rating",),
}
#: The CLI option that names each role's column.
OPTION = {"user": "--user-col", "item": "--item-col", "timestamp": "--time-col", "rating": "--rating-col"}
#: Written for a missing id by pandas, R, SQL exports and spreadsheets; never a real user or item.
MISSING_MARKERS = ("", "nan", "null", "none", "n/a", "<na>")
#: A rating or timestamp column given as this means the log has no such column.
NO_COLUMN = "none"

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns of a generic log hold what.

    ``None`` for ``user``, ``item``, ``rating`` or ``timestamp`` means "detect it by its usual
    names"; ``"none"`` for ``rating`` or ``timestamp`` means "the log has none". Feature columns are
    copied into the user / item tables (the first value seen per id is kept); a feature whose values
    hold ``|`` is split into a multi-categorical list.
    """

    user: str | None = None
    item: str | None = None
    rating: str | None = None
    timestamp: str | None = None
    user_features: tuple[str, ...] = field(default=())
    item_features: tuple[str, ...] = field(default=())
    item_text: tuple[str, ...] = field(default=())  # kept in the item table as text, embedded by prepare

    def is_default(self) -> bool:
        """Whether nothing was named (every column detected, no features); item text columns do not count:
        they name columns of the item table, which every source has."""
        return dataclasses.replace(self, item_text=()) == ColumnMapping()


@dataclass(frozen=True)
class ResolvedColumns:
    """The columns a log is read with, and which of them were detected rather than given."""

    user: str
    item: str
    rating: str | None
    timestamp: str | None
    detected: tuple[str, ...]

    def describe(self) -> dict[str, object]:
        """The dataset metadata's ``columns`` entry."""
        return {
            "user": self.user,
            "item": self.item,
            "rating": self.rating,
            "timestamp": self.timestamp,
            "detected": list(self.detected),
            "time_order": "timestamp" if self.timestamp else "row order of the file",
        }


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "")


def _detect(path: Path, role: str, header: list[str]) -> str | None:
    wanted = {_norm(n) for n in USUAL_NAMES[role]}
    found = [c for c in header if _norm(c) in wanted]
    if len(found) > 1:
        raise DataError(
            f"{path}: both {found[0]!r} and {found[1]!r} could be the {role} column; "
            f"name the one to use with {OPTION[role]}"
        )
    return found[0] if found else None


def resolve_columns(path: Path, header: list[str], columns: ColumnMapping) -> ResolvedColumns:
    """The columns of ``header`` that hold each role: as given in ``columns``, else detected."""
    chosen: dict[str, str | None] = {}
    detected: list[str] = []
    for role in ("user", "item", "rating", "timestamp"):
        given = getattr(columns, role)
        if given is not None:
            chosen[role] = None if role in ("rating", "timestamp") and given.lower() == NO_COLUMN else given
            continue
        chosen[role] = _detect(path, role, header)
        if chosen[role] is not None:
            detected.append(role)
        elif role in ("user", "item"):
            names = ", ".join(USUAL_NAMES[role])
            raise DataError(
                f"{path}: no {role} column (looked for {names}; columns are: {', '.join(header)}); "
                f"name it with {OPTION[role]}"
            )
    wanted = [chosen["user"], chosen["item"], chosen["rating"], chosen["timestamp"]]
    wanted += [*columns.user_features, *columns.item_features, *columns.item_text]
    for col in wanted:
        if col is not None and col not in header:
            raise DataError(f"{path}: no column {col!r} (columns are: {', '.join(header)})")
    user, item = chosen["user"], chosen["item"]
    if user is None or item is None or user == item:
        raise DataError(f"{path}: the user and item columns must be two different columns (both {user!r})")
    return ResolvedColumns(user, item, chosen["rating"], chosen["timestamp"], tuple(detected))


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    """Index of the first true entry of a boolean array (nulls count as true); -1 if none."""
    return int(pc.index(pc.fill_null(mask, True), True).as_py())


@dataclass(frozen=True)
class Where:
    """How to name a row of a log in an error: ``log.csv line 7`` or ``log.parquet row 6``."""

    path: Path
    unit: str = "line"  # "line" or "row"
    first: int = 2  # number of the first data row (a CSV header is line 1)

    def at(self, index: int) -> str:
        """The 0-based data row ``index`` as the user counts it."""
        return f"{self.path} {self.unit} {self.first + index}"


def check_ids(where: Where, column: str, role: str, values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """``values`` as strings; a :class:`DataError` naming the first empty or missing-marker id."""
    text = pc.cast(values, pa.string())
    if isinstance(text, pa.Array):
        text = pa.chunked_array([text], pa.string())
    markers = pa.array(MISSING_MARKERS, pa.string())
    bad = pc.or_kleene(pc.is_null(text), pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(text)), value_set=markers))
    i = _first(bad)
    if i >= 0:
        value = text[i].as_py()
        what = "is empty" if value is None or not value.strip() else f"holds {value!r}, a missing-value marker"
        raise DataError(f"{where.at(i)}: {role} column {column!r} {what}, not a {role} id (fix or drop the row)")
    return text


def parse_timestamp(text: str) -> int | None:
    """Unix seconds from a unix time (``978300760``, ``978300760.5``) or an ISO 8601 date or time
    (``2001-01-01``, ``2001-01-01T10:00:00Z``; no zone means UTC); None when it is neither."""
    s = text.strip()
    if _INT.match(s):
        return int(s)
    if _FLOAT.match(s):
        value = float(s)
        return math.floor(value) if math.isfinite(value) else None
    if not s[:1].isdigit():
        return None
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return math.floor(dt.timestamp())


def _bad_time(where: Where, column: str, index: int, value: object, detected: bool) -> DataError:
    empty = value is None or (isinstance(value, str) and not value.strip())
    shown = "is empty" if empty else f"holds {value!r}"
    hint = f" (found by its name; --time-col names another, --time-col {NO_COLUMN} uses none)" if detected else ""
    return DataError(
        f"{where.at(index)}: timestamp column {column!r}{hint} {shown}, "
        "not a unix time or an ISO 8601 date (fix or drop the row)"
    )


def parse_timestamps(
    where: Where, column: str, values: pa.ChunkedArray | pa.Array, *, detected: bool = False
) -> pa.Array:
    """A timestamp column as int64 unix seconds; a :class:`DataError` naming the first row that is
    empty or does not parse (integers, finite floats, Arrow timestamps and dates, and text holding
    either a unix time or an ISO 8601 date or time are accepted)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    typ = arr.type
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        floats = pc.cast(arr, pa.float64())
        i = _first(pc.invert(pc.is_finite(floats)))
        if i >= 0:
            raise _bad_time(where, column, i, arr[i].as_py(), detected)
        return pc.cast(arr, pa.int64()) if pa.types.is_integer(typ) else pc.cast(pc.floor(floats), pa.int64())
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        i = _first(pc.is_null(arr))
        if i >= 0:
            raise _bad_time(where, column, i, None, detected)
        if pa.types.is_date(typ):
            arr = pc.cast(arr, pa.date64())
            return pc.divide(pc.cast(arr, pa.int64()), 1000)
        return pc.cast(pc.cast(arr, pa.timestamp("s", tz=typ.tz), safe=False), pa.int64())
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        for fast in (pa.int64(), pa.timestamp("s")):  # whole columns of integers or ISO times, vectorised
            try:
                converted = pc.cast(arr, fast)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            if converted.null_count == 0:
                return pc.cast(converted, pa.int64())
        parsed = [None if v is None else parse_timestamp(v) for v in arr.to_pylist()]
        for i, v in enumerate(parsed):
            if v is None:
                raise _bad_time(where, column, i, arr[i].as_py(), detected)
        return pa.array(np.asarray(parsed, dtype=np.int64))
    raise DataError(f"{where.path}: timestamp column {column!r} holds {typ} values, not times")


def parse_ratings(where: Where, column: str, values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A rating column as float64 (empty stays null); a :class:`DataError` naming the first value
    that is not a number."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type):
        return pc.cast(arr, pa.float64())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise DataError(f"{where.path}: rating column {column!r} holds {arr.type} values, not numbers")
    out: list[float | None] = []
    for i, v in enumerate(arr.to_pylist()):
        s = "" if v is None else v.strip()
        if not s:
            out.append(None)
        elif _FLOAT.match(s):
            out.append(float(s))
        else:
            raise DataError(f"{where.at(i)}: rating column {column!r} holds {v!r}, not a number")
    return pa.array(out, pa.float64())
