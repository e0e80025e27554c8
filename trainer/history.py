"""Per-user interaction sequences: what a user has seen, newest last, for exclusion and history."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.data.split import Part


@dataclass(frozen=True)
class UserSequences:
    """Items per user in time order (CSR): ``items[indptr[u]:indptr[u + 1]]``, oldest first, and when
    each happened (``times``, unix seconds; empty when not given)."""

    indptr: np.ndarray  # int64 [num_users + 1]
    items: np.ndarray  # int64 [nnz]
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # int64 [nnz]

    @classmethod
    def from_parts(cls, parts: list[Part], num_users: int) -> UserSequences:
        """Merge ``parts`` and order each user's items by (timestamp, item index)."""
        u = np.concatenate([p.user_idx for p in parts]).astype(np.int64)
        i = np.concatenate([p.item_idx for p in parts]).astype(np.int64)
        t = np.concatenate([p.timestamp for p in parts]).astype(np.int64)
        order = np.lexsort((i, t, u))
        indptr = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=num_users), out=indptr[1:])
        return cls(indptr, i[order], t[order])

    def recent(self, users: np.ndarray, length: int) -> np.ndarray:
        """The last ``length`` items of each user, newest first, padded with -1: [B, length]."""
        users = np.asarray(users, dtype=np.int64)
        return _items_before(self.items, self.indptr[users + 1], self.indptr[users], length)

    def last_times(self, users: np.ndarray) -> np.ndarray:
        """Each user's latest interaction time [B] (unix seconds; -1 for a user with none)."""
        users = np.asarray(users, dtype=np.int64)
        ends = self.indptr[users + 1]
        has = ends > self.indptr[users]
        return np.where(has, self.times[np.maximum(ends - 1, 0)] if len(self.times) else -1, -1).astype(np.int64)

    def times_before(self, positions: np.ndarray) -> np.ndarray:
        """For training examples at ``positions`` of :attr:`items`: when the same user's previous
        interaction happened [B] (-1 for a user's first)."""
        positions = np.asarray(positions, dtype=np.int64)
        owner = np.searchsorted(self.indptr, positions, side="right") - 1
        first = positions == self.indptr[owner]
        return np.where(first, -1, self.times[np.maximum(positions - 1, 0)]).astype(np.int64)

    def of(self, user: int) -> np.ndarray:
        """All items of ``user``, oldest first."""
        return self.items[self.indptr[user] : self.indptr[user + 1]]


def known_sequences(ds: Dataset, stage: str) -> UserSequences:
    """What is known about each user when evaluating ``stage``: training for ``valid``; training and
    validation for ``test``; everything for ``serve``."""
    s = ds.splits
    parts = {"valid": [s.train], "test": [s.train, s.valid], "serve": [s.train, s.valid, s.test]}[stage]
    return UserSequences.from_parts(parts, ds.num_users)


class StageTimes:
    """The request times of an evaluation: per stage, each user's first held-out interaction (when the
    user asks; -1 for a user with none) and their latest interaction known at that stage (-1: none), for
    rankers that read the interaction's context. Computed once per stage."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, users: np.ndarray, stage: str, known: UserSequences) -> tuple[np.ndarray, np.ndarray]:
        """``request_time`` and ``last_time`` [B] of ``users`` at ``stage`` (``valid`` or ``test``), whose
        known interactions are ``known`` (the caller's :func:`known_sequences` of the stage)."""
        if stage not in self._cache:
            part = self.ds.splits.held_out(stage)
            never = np.iinfo(np.int64).max
            first = np.full(self.ds.num_users, never, dtype=np.int64)
            np.minimum.at(first, part.user_idx.astype(np.int64), part.timestamp.astype(np.int64))
            last = known.last_times(np.arange(self.ds.num_users))
            self._cache[stage] = (np.where(first == never, -1, first), last)
        request, last = self._cache[stage]
        users = np.asarray(users, dtype=np.int64)
        return request[users], last[users]


def training_histories(seq: UserSequences, length: int, positions: np.ndarray) -> np.ndarray:
    """For training examples at ``positions`` of ``seq.items``: the ``length`` items before each,
    newest first, never crossing into another user's sequence, padded with -1: [B, length]."""
    positions = np.asarray(positions, dtype=np.int64)
    owner = np.searchsorted(seq.indptr, positions, side="right") - 1
    return _items_before(seq.items, positions, seq.indptr[owner], length)


def _items_before(items: np.ndarray, ends: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Per row, ``items[start:end]``'s last ``length`` entries, newest first, padded with -1."""
    pos = ends[:, None] - 1 - np.arange(length)[None, :]
    ok = pos >= starts[:, None]
    if not len(items):
        return np.full(pos.shape, -1, dtype=np.int64)
    return np.where(ok, items[np.clip(pos, 0, len(items) - 1)], -1).astype(np.int64)
