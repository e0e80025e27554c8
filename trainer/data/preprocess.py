"""Preprocessing of a raw log: dedupe, implicit conversion, k-core filtering, contiguous ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from onnxrec.errors import DataError
from onnxrec.trainer.data.log import InteractionLog


@dataclass(frozen=True)
class PreprocessSpec:
    """How a raw log becomes implicit feedback.

    ``positive_threshold``: ratings at or above it are positives, the rest dropped; ``None`` makes
    every interaction positive. ``min_user_interactions`` / ``min_item_interactions``: the k-core
    (applied repeatedly until every remaining user and item meets both).
    """

    positive_threshold: float | None = None
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    dedupe: bool = True


@dataclass(frozen=True)
class EncodedInteractions:
    """Positive interactions with contiguous indices, and the raw ids behind the indices."""

    user_idx: np.ndarray  # int32 [N]
    item_idx: np.ndarray  # int32 [N]
    timestamp: np.ndarray  # int64 [N]
    rating: np.ndarray  # float32 [N], NaN where unknown
    user_ids: np.ndarray  # object (str) [num_users]: raw id of each user index
    item_ids: np.ndarray  # object (str) [num_items]
    raw_interactions: int


def _natural_sorted_unique(ids: np.ndarray) -> np.ndarray:
    uniq = np.unique(ids)
    if all(s.isdigit() for s in uniq):
        return uniq[np.argsort(uniq.astype(np.int64), kind="stable")]
    return uniq


def _kcore(u: np.ndarray, i: np.ndarray, min_u: int, min_i: int) -> np.ndarray:
    keep = np.ones(len(u), dtype=bool)
    while True:
        uc = np.bincount(u[keep], minlength=u.max() + 1 if len(u) else 0)
        ic = np.bincount(i[keep], minlength=i.max() + 1 if len(i) else 0)
        new_keep = keep & (uc[u] >= min_u) & (ic[i] >= min_i)
        if new_keep.sum() == keep.sum():
            return keep
        keep = new_keep


def preprocess(log: InteractionLog, spec: PreprocessSpec) -> EncodedInteractions:
    """Apply ``spec`` to ``log`` and give users and items contiguous indices.

    Indices follow the raw ids' natural order (numeric when every id is a number), so the mapping is
    stable for a given set of ids.
    """
    t = log.interactions
    if t.num_rows == 0:
        raise DataError(f"{log.source}: the log is empty")
    users = np.asarray(t["user_id"].to_numpy(zero_copy_only=False), dtype=object)
    items = np.asarray(t["item_id"].to_numpy(zero_copy_only=False), dtype=object)
    ts = t["timestamp"].to_numpy(zero_copy_only=False).astype(np.int64)
    rating_col = pc.fill_null(t["rating"], np.nan)
    rating = rating_col.to_numpy(zero_copy_only=False).astype(np.float32)
    # temporary dense codes for the filtering steps
    _u_uniq, u_code = np.unique(users, return_inverse=True)
    i_uniq, i_code = np.unique(items, return_inverse=True)
    if spec.dedupe:
        # keep the latest interaction of each (user, item) pair
        order = np.lexsort((ts, i_code, u_code))
        pair = u_code[order].astype(np.int64) * len(i_uniq) + i_code[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = pair[1:] != pair[:-1]
        sel = np.sort(order[last])
        users, items, ts, rating, u_code, i_code = (
            users[sel],
            items[sel],
            ts[sel],
            rating[sel],
            u_code[sel],
            i_code[sel],
        )
    # the threshold applies to each pair's latest rating
    if spec.positive_threshold is not None:
        if np.isnan(rating).all():
            raise DataError(f"{log.source}: a rating threshold was given but the log has no ratings")
        keep = rating >= spec.positive_threshold
        users, items, ts, rating, u_code, i_code = (
            users[keep],
            items[keep],
            ts[keep],
            rating[keep],
            u_code[keep],
            i_code[keep],
        )
        if len(users) == 0:
            raise DataError(f"{log.source}: no rating reaches the threshold {spec.positive_threshold}")
    if spec.min_user_interactions > 1 or spec.min_item_interactions > 1:
        keep = _kcore(u_code, i_code, spec.min_user_interactions, spec.min_item_interactions)
        users, items, ts, rating = users[keep], items[keep], ts[keep], rating[keep]
        if len(users) == 0:
            raise DataError(
                f"{log.source}: nothing is left after the {spec.min_user_interactions}/"
                f"{spec.min_item_interactions}-core filter"
            )
    user_ids = _natural_sorted_unique(users.astype(str)).astype(object)
    item_ids = _natural_sorted_unique(items.astype(str)).astype(object)
    user_idx = np.searchsorted(np.sort(user_ids.astype(str)), users.astype(str))
    item_idx = np.searchsorted(np.sort(item_ids.astype(str)), items.astype(str))
    # searchsorted gives each id's position in string order; map that position to the natural index
    u_rank = np.argsort(user_ids.astype(str), kind="stable")
    i_rank = np.argsort(item_ids.astype(str), kind="stable")
    return EncodedInteractions(
        user_idx=u_rank[user_idx].astype(np.int32),
        item_idx=i_rank[item_idx].astype(np.int32),
        timestamp=ts,
        rating=rating,
        user_ids=user_ids,
        item_ids=item_ids,
        raw_interactions=log.num_interactions,
    )
