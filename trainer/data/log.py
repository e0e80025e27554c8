"""The raw interaction log every reader produces, before preprocessing, and :func:`write_log`, which
writes one as files the readers read back."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from onnxrec.atomic import atomic_write_bytes
from onnxrec.errors import DataError

#: Columns of :attr:`InteractionLog.interactions`.
INTERACTION_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.float64()),  # null where the log has no rating
        ("timestamp", pa.int64()),  # unix seconds; 0 where the log has no time
    ]
)


@dataclass(frozen=True)
class InteractionLog:
    """Interactions with raw (string) ids, plus optional side information.

    ``user_table`` has a ``user_id`` string column and ``item_table`` an ``item_id`` string column;
    their other columns are either side features (named in ``user_feature_columns`` /
    ``item_feature_columns``; a string column is categorical, a list<string> column is
    multi-categorical) or metadata returned to callers (title, ...). ``columns`` says which columns
    of a generic log were read as what (see :meth:`ResolvedColumns.describe
    <onnxrec.trainer.data.columns.ResolvedColumns.describe>`); empty for the MovieLens formats.
    """

    interactions: pa.Table
    source: str
    user_table: pa.Table | None = None
    item_table: pa.Table | None = None
    user_feature_columns: tuple[str, ...] = field(default=())
    item_feature_columns: tuple[str, ...] = field(default=())
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def num_interactions(self) -> int:
        """Rows in the log."""
        return int(self.interactions.num_rows)


def _table_bytes(table: pa.Table, fmt: str) -> bytes:
    if fmt == "csv":
        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer)
        return buffer.getvalue()
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def write_log(log: InteractionLog, path: Path) -> None:
    """Write ``log.interactions`` to ``path`` (``.csv`` or ``.parquet``, by suffix), atomically.

    Where the log has them, the user and item tables are written beside it as
    ``<stem>.users.parquet`` and ``<stem>.items.parquet`` (atomically too). Raises
    :class:`~onnxrec.errors.DataError` for another suffix or when the files cannot be written.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("csv", "parquet"):
        raise DataError(f"cannot write {path}: the suffix must be .csv or .parquet")
    outputs: list[tuple[Path, bytes]] = [(path, _table_bytes(log.interactions, fmt))]
    for kind, table in (("users", log.user_table), ("items", log.item_table)):
        if table is not None:
            outputs.append((path.with_name(f"{path.stem}.{kind}.parquet"), _table_bytes(table, "parquet")))
    for target, data in outputs:
        try:
            atomic_write_bytes(target, data)
        except OSError as exc:
            raise DataError(f"cannot write {target}: {exc.strerror or exc}") from exc
