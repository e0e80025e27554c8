"""The raw interaction log every reader produces, before preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

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
