"""Train / validation / test splits and the sampled evaluation candidates.

* ``leave_one_out`` (the NCF protocol): per user, interactions ordered by (timestamp, item index);
  the last is the test item, the second-last the validation item, the rest is training. Users with
  fewer than three interactions stay in training only.
* ``temporal``: one global time cut; the latest ``test_fraction`` of interactions are the test set,
  the ``valid_fraction`` before them validation; validation and test keep only users and items seen
  in training.

For every evaluated user, ``num_negatives`` items the user never interacted with (in any split) are
sampled with a fixed seed, separately for validation and test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnxrec.errors import DataError
from onnxrec.trainer.data.preprocess import EncodedInteractions

SplitKind = Literal["leave_one_out", "temporal"]


@dataclass(frozen=True)
class SplitSpec:
    """How interactions are split and how many sampled negatives each evaluated user gets."""

    kind: SplitKind = "leave_one_out"
    num_negatives: int = 99
    seed: int = 0
    valid_fraction: float = 0.1  # temporal only
    test_fraction: float = 0.1  # temporal only


@dataclass(frozen=True)
class Part:
    """One split part: parallel arrays of interactions."""

    user_idx: np.ndarray
    item_idx: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray

    def __len__(self) -> int:
        return len(self.user_idx)

    def take(self, mask: np.ndarray) -> Part:
        """The rows where ``mask`` is true (or at the given indices)."""
        return Part(self.user_idx[mask], self.item_idx[mask], self.timestamp[mask], self.rating[mask])


@dataclass(frozen=True)
class Splits:
    """Train / valid / test parts and, per evaluated user, the sampled negatives."""

    train: Part
    valid: Part
    test: Part
    valid_negatives: np.ndarray  # int32 [num valid users, num_negatives], rows follow unique(valid.user_idx)
    test_negatives: np.ndarray

    def held_out(self, stage: str) -> Part:
        """The part evaluated at ``stage``: validation for ``valid``, test otherwise."""
        return self.valid if stage == "valid" else self.test


def _part(enc: EncodedInteractions, rows: np.ndarray) -> Part:
    return Part(enc.user_idx[rows], enc.item_idx[rows], enc.timestamp[rows], enc.rating[rows])


def sample_negatives(
    users: np.ndarray,
    user_items_indptr: np.ndarray,
    user_items: np.ndarray,
    num_items: int,
    num_negatives: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """For each user in ``users``, ``num_negatives`` distinct items outside that user's items."""
    out = np.empty((len(users), num_negatives), dtype=np.int32)
    for row, u in enumerate(users):
        seen = user_items[user_items_indptr[u] : user_items_indptr[u + 1]]
        free = num_items - len(np.unique(seen))
        if free < num_negatives:
            raise DataError(
                f"user index {u} has only {free} items left to sample {num_negatives} negatives from "
                "(lower the number of negatives or filter the data)"
            )  # split() names the raw id before it gets here
        seen_mask = np.zeros(num_items, dtype=bool)
        seen_mask[seen] = True
        picked: list[np.ndarray] = []
        need = num_negatives
        while need > 0:
            cand = rng.integers(0, num_items, size=2 * num_negatives)
            cand = cand[~seen_mask[cand]]
            _, first = np.unique(cand, return_index=True)
            take = cand[np.sort(first)][:need]
            seen_mask[take] = True
            picked.append(take)
            need -= len(take)
        out[row] = np.concatenate(picked)
    return out


def check_negatives_fit(enc: EncodedInteractions, users: np.ndarray, num_negatives: int) -> None:
    """A :class:`DataError` naming the raw id of the evaluated user with the fewest items left to
    sample ``num_negatives`` distinct negatives from, if that is too few, and the options to change."""
    num_items = len(enc.item_ids)
    pairs = np.unique(enc.user_idx.astype(np.int64) * num_items + enc.item_idx)
    seen = np.bincount(pairs // num_items, minlength=len(enc.user_ids))
    if not len(users):
        return
    worst = users[np.argmax(seen[users])]
    free = num_items - int(seen[worst])
    if free >= num_negatives:
        return
    raise DataError(
        f"user {enc.user_ids[worst]!r} has interacted with {int(seen[worst]):,} of the {num_items:,} items, leaving "
        f"{free} to sample {num_negatives} evaluation negatives from: lower the negatives to {free} or fewer "
        "(--negatives for data prepare, --eval-negatives for train) or use a log with more items"
    )


def _csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=indptr[1:])
    return indptr, items[order]


def split(enc: EncodedInteractions, spec: SplitSpec) -> Splits:
    """Split encoded interactions as ``spec`` says."""
    n = len(enc.user_idx)
    num_users, num_items = len(enc.user_ids), len(enc.item_ids)
    if spec.kind == "leave_one_out":
        order = np.lexsort((enc.item_idx, enc.timestamp, enc.user_idx))
        u_sorted = enc.user_idx[order]
        counts = np.bincount(u_sorted, minlength=num_users)
        ends = np.cumsum(counts)
        eligible = counts >= 3
        if not eligible.any():
            raise DataError(
                f"too small to split: no user has the 3 interactions leave-one-out needs ({n} interactions)"
            )
        test_rows = order[ends[eligible] - 1]
        valid_rows = order[ends[eligible] - 2]
        mask = np.ones(n, dtype=bool)
        mask[test_rows] = False
        mask[valid_rows] = False
        train_rows = np.flatnonzero(mask)
    elif spec.kind == "temporal":
        if not (0 < spec.test_fraction < 1 and 0 < spec.valid_fraction < 1):
            raise DataError("temporal split fractions must lie strictly between 0 and 1")
        if spec.valid_fraction + spec.test_fraction >= 1:
            raise DataError("temporal split: valid_fraction + test_fraction must be below 1")
        order = np.lexsort((enc.item_idx, enc.user_idx, enc.timestamp))
        n_test = round(n * spec.test_fraction)
        n_valid = round(n * spec.valid_fraction)
        if n_test == 0 or n_valid == 0 or n - n_test - n_valid == 0:
            raise DataError(f"too small to split: {n} interactions cannot make train, valid and test parts")
        train_rows = order[: n - n_test - n_valid]
        valid_rows = order[n - n_test - n_valid : n - n_test]
        test_rows = order[n - n_test :]
        seen_u = np.zeros(num_users, bool)
        seen_u[enc.user_idx[train_rows]] = True
        seen_i = np.zeros(num_items, bool)
        seen_i[enc.item_idx[train_rows]] = True
        valid_rows = valid_rows[seen_u[enc.user_idx[valid_rows]] & seen_i[enc.item_idx[valid_rows]]]
        test_rows = test_rows[seen_u[enc.user_idx[test_rows]] & seen_i[enc.item_idx[test_rows]]]
        if len(test_rows) == 0 or len(valid_rows) == 0:
            raise DataError(
                "too small to split: no test or validation interaction has a user and item seen in training"
            )
    else:
        raise DataError(f"unknown split kind {spec.kind!r} (use leave_one_out or temporal)")
    train_rows = np.sort(train_rows)
    valid_rows = valid_rows[np.lexsort((enc.timestamp[valid_rows], enc.user_idx[valid_rows]))]
    test_rows = test_rows[np.lexsort((enc.timestamp[test_rows], enc.user_idx[test_rows]))]
    indptr, all_items = _csr(enc.user_idx, enc.item_idx, num_users)
    evaluated = np.union1d(enc.user_idx[valid_rows], enc.user_idx[test_rows])
    check_negatives_fit(enc, evaluated, spec.num_negatives)
    rng = np.random.default_rng(spec.seed)
    valid_neg = sample_negatives(
        np.unique(enc.user_idx[valid_rows]), indptr, all_items, num_items, spec.num_negatives, rng
    )
    test_neg = sample_negatives(
        np.unique(enc.user_idx[test_rows]), indptr, all_items, num_items, spec.num_negatives, rng
    )
    return Splits(
        train=_part(enc, train_rows),
        valid=_part(enc, valid_rows),
        test=_part(enc, test_rows),
        valid_negatives=valid_neg,
        test_negatives=test_neg,
    )
