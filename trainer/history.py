"""Per-user interaction sequences: what a user has seen, newest last, for exclusion and history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.data.split import Part


@dataclass(frozen=True)
class UserSequences:
    """Items per user in time order (CSR): ``items[indptr[u]:indptr[u + 1]]``, oldest first."""

    indptr: np.ndarray  # int64 [num_users + 1]
    items: np.ndarray  # int64 [nnz]

    @classmethod
    def from_parts(cls, parts: list[Part], num_users: int) -> UserSequences:
        """Merge ``parts`` and order each user's items by (timestamp, item index)."""
        u = np.concatenate([p.user_idx for p in parts]).astype(np.int64)
        i = np.concatenate([p.item_idx for p in parts]).astype(np.int64)
        t = np.concatenate([p.timestamp for p in parts]).astype(np.int64)
        order = np.lexsort((i, t, u))
        indptr = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=num_users), out=indptr[1:])
        return cls(indptr, i[order])

    def recent(self, users: np.ndarray, length: int) -> np.ndarray:
        """The last ``length`` items of each user, newest first, padded with -1: [B, length]."""
        users = np.asarray(users, dtype=np.int64)
        return _items_before(self.items, self.indptr[users + 1], self.indptr[users], length)

    def of(self, user: int) -> np.ndarray:
        """All items of ``user``, oldest first."""
        return self.items[self.indptr[user] : self.indptr[user + 1]]


def known_sequences(ds: Dataset, stage: str) -> UserSequences:
    """What is known about each user when evaluating ``stage``: training for ``valid``; training and
    validation for ``test``; everything for ``serve``."""
    s = ds.splits
    parts = {"valid": [s.train], "test": [s.train, s.valid], "serve": [s.train, s.valid, s.test]}[stage]
    return UserSequences.from_parts(parts, ds.num_users)


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
