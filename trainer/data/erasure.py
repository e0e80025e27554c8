"""Honouring the deletion ledger that ``onnxrec forget`` appends to: forgotten users' interactions and
side features leave a log before it becomes a dataset, and a prepared dataset that still holds a
forgotten user is refused (prepare it again)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from onnxrec.errors import DataError
from onnxrec.ledger import ledger_users
from onnxrec.trainer.data.log import InteractionLog

__all__ = ["Erasure", "check_prepared", "erase", "read_ledger"]


@dataclass(frozen=True)
class Erasure:
    """The ledger's users, and what dropping them removed (for the dataset's record)."""

    ledger: str
    users: frozenset[str]

    def record(self, users_dropped: int, interactions_dropped: int) -> dict[str, object]:
        """What ``dataset.json`` (and so every run trained on it) records."""
        return {
            "ledger": self.ledger,
            "users_in_ledger": len(self.users),
            "users_dropped": users_dropped,
            "interactions_dropped": interactions_dropped,
        }


def read_ledger(path: str | Path | None) -> Erasure | None:
    """The ledger at ``path`` (a ``deletions.jsonl`` written by ``onnxrec forget``), or None."""
    if path is None:
        return None
    ledger = Path(path)
    if not ledger.is_file():
        raise DataError(f"--deletions {ledger}: no such file (onnxrec forget writes REPOSITORY/deletions.jsonl)")
    try:
        users = ledger_users(ledger)
    except DataError as exc:
        raise DataError(f"--deletions {exc}") from exc
    return Erasure(str(ledger.resolve()), users)


def erase(log: InteractionLog, erasure: Erasure) -> tuple[InteractionLog, dict[str, object]]:
    """``log`` without the ledger's users (their interactions and user-table rows) and the record."""
    if not erasure.users:
        return log, erasure.record(0, 0)
    forgotten = pa.array(sorted(erasure.users), type=pa.string())
    user_col = pc.cast(log.interactions["user_id"], pa.string())
    drop = pc.is_in(user_col, value_set=forgotten)
    interactions = log.interactions.filter(pc.invert(drop))
    users_dropped = len(set(pc.unique(pc.filter(user_col, drop)).to_pylist()))
    user_table = log.user_table
    if user_table is not None:
        user_table = user_table.filter(
            pc.invert(pc.is_in(pc.cast(user_table["user_id"], pa.string()), value_set=forgotten))
        )
    erased = dataclasses.replace(log, interactions=interactions, user_table=user_table)
    return erased, erasure.record(users_dropped, log.interactions.num_rows - interactions.num_rows)


def check_prepared(user_ids: object, erasure: Erasure, path: Path) -> None:
    """Refuse a prepared dataset that still holds a forgotten user (its indices are fixed: prepare the
    source again with the ledger)."""
    held = erasure.users.intersection(str(u) for u in user_ids)  # type: ignore[attr-defined]
    if held:
        raise DataError(
            f"{path} was prepared before {len(held)} of its users were forgotten; prepare the source again "
            f"with --deletions {erasure.ledger}"
        )
