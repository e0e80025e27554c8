"""The deletion ledger: ``REPOSITORY/deletions.jsonl``, one JSON object per forgotten user.

``onnxrec forget`` (exporter/forget.py) appends to it; ``onnxrec data prepare --deletions`` and
``onnxrec train --deletions`` (trainer/data/erasure.py) read it and leave those users out. Both stages
read and write it here, so neither imports the other for it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from onnxrec.atomic import atomic_write_text
from onnxrec.errors import DataError

__all__ = ["LEDGER", "append_user", "ledger_users"]

LEDGER = "deletions.jsonl"


def ledger_users(path: Path) -> frozenset[str]:
    """The raw user ids of the ledger at ``path``; a line that is not a record is a :class:`DataError`."""
    users = set()
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                users.add(str(json.loads(line)["user_id"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{n}: not a deletion record ({exc})") from exc
    return frozenset(users)


def append_user(repository: Path, model: str, user_id: str) -> Path:
    """Add ``user_id`` (forgotten from ``model``) to ``repository``'s ledger (rewritten whole, atomically)."""
    ledger = Path(repository) / LEDGER
    old = ledger.read_text() if ledger.is_file() else ""
    entry = {"user_id": user_id, "model": model, "forgotten_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(ledger, old + json.dumps(entry) + "\n")
    return ledger
