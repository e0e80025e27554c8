"""Rejected model versions, and when the registry tries one again.

A version directory can be rejected because it is still being written: ``manifest.json`` copied first
and ``items.parquet`` a moment later reads as "items.parquet is missing". So a rejection is not final.
The registry records the directory's *signature* (every file's relative path, size and modification
time) when it tried, and tries again once the signature differs, but not before a backoff since the
last attempt (1 s, doubling to 60 s while the version keeps failing). A version whose files do not
change is not tried again (loading is expensive and would fail the same way). Each distinct failure is
logged once as an error; a retry that fails for the same reason again is logged at debug level.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0

Signature = tuple[tuple[str, int, int], ...]
VersionKey = tuple[str, int]


def dir_signature(path: Path) -> Signature:
    """``(relative path, size, mtime in ns)`` of every file under ``path``, sorted (empty if it is gone)."""
    out: list[tuple[str, int, int]] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:  # removed while listed: the next scan sees the new state
                continue
            out.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass
class Rejection:
    """Why a version was rejected, what its files looked like then, and when it may be tried again."""

    reason: str
    signature: Signature
    attempts: int
    retry_at: float


class Rejections:
    """The versions that failed to load (see the module docstring)."""

    def __init__(
        self,
        first_s: float = BACKOFF_FIRST_S,
        max_s: float = BACKOFF_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._clock = clock
        self._failed: dict[VersionKey, Rejection] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._failed

    def get(self, key: VersionKey) -> Rejection | None:
        """The version's rejection, if it has one."""
        return self._failed.get(key)

    def should_try(self, key: VersionKey, signature: Signature) -> bool:
        """Whether to load the version now: never rejected, or its files changed and its backoff is over."""
        rejection = self._failed.get(key)
        if rejection is None:
            return True
        return signature != rejection.signature and self._clock() >= rejection.retry_at

    def record(self, key: VersionKey, signature: Signature, reason: str) -> bool:
        """Record a failed attempt made on files with ``signature``; returns whether ``reason`` is new
        for this version (to be logged as an error)."""
        previous = self._failed.get(key)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(self.max_s, self.first_s * 2 ** (attempts - 1))
        self._failed[key] = Rejection(reason, signature, attempts, self._clock() + delay)
        return previous is None or previous.reason != reason

    def clear(self, key: VersionKey) -> None:
        """The version loaded: forget its rejection."""
        self._failed.pop(key, None)

    def keep_only(self, present: Iterable[VersionKey]) -> None:
        """Forget the rejections of versions no longer on disk."""
        keep = set(present)
        for key in [k for k in self._failed if k not in keep]:
            del self._failed[key]
