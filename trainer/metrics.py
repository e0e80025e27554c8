"""Ranking metrics at K.

Two forms:

* :func:`single_positive_metrics` for one held-out item per user (leave-one-out), from the number
  of candidates scored above the positive (``greater``) and level with it (``equal``). The
  positive's position is taken as uniform over the tied positions, so a tie counts half (the
  expected value under random tie-breaking) instead of favouring or punishing the model.
* :func:`topk_metrics` for any number of relevant items per user, from each user's top-K list.

Every function returns the mean over users.
"""

from __future__ import annotations

import numpy as np

METRICS = ("hr", "ndcg", "recall", "precision", "f1", "mrr", "map")


def single_positive_metrics(greater: np.ndarray, equal: np.ndarray, k: int) -> dict[str, float]:
    """Metrics@k for one relevant item per user.

    ``greater[u]``: candidates scored strictly above the positive; ``equal[u]``: other candidates
    scored exactly as the positive.
    """
    greater = np.asarray(greater, dtype=np.int64)
    equal = np.asarray(equal, dtype=np.int64)
    if len(greater) == 0:
        return dict.fromkeys(METRICS, 0.0)
    # average over positions p = greater .. greater + equal, restricted to p < k
    max_e = int(equal.max())
    offsets = np.arange(max_e + 1)
    pos = greater[:, None] + offsets[None, :]  # [U, max_e + 1]
    valid = offsets[None, :] <= equal[:, None]
    weight = valid / (equal[:, None] + 1.0)
    inside = pos < k
    hr = (weight * inside).sum(1)
    ndcg = (weight * inside / np.log2(pos + 2.0)).sum(1)
    mrr = (weight * inside / (pos + 1.0)).sum(1)
    return {
        "hr": float(hr.mean()),
        "ndcg": float(ndcg.mean()),
        "recall": float(hr.mean()),
        "precision": float(hr.mean() / k),
        "f1": float((hr * 2.0 / (k + 1)).mean()),
        "mrr": float(mrr.mean()),
        "map": float(mrr.mean()),
    }


def topk_metrics(topk: np.ndarray, relevant: list[np.ndarray], k: int) -> dict[str, float]:
    """Metrics@k from ranked lists ``topk`` [U, >=k] and each user's relevant items."""
    if len(relevant) == 0:
        return dict.fromkeys(METRICS, 0.0)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    sums = dict.fromkeys(METRICS, 0.0)
    for row, rel in zip(topk[:, :k], relevant, strict=True):
        if len(rel) == 0:
            continue
        hits = np.isin(row, rel)
        n_hit = int(hits.sum())
        n_rel = len(rel)
        precision = n_hit / k
        recall = n_hit / n_rel
        sums["hr"] += float(n_hit > 0)
        sums["precision"] += precision
        sums["recall"] += recall
        sums["f1"] += 0.0 if n_hit == 0 else 2 * precision * recall / (precision + recall)
        sums["ndcg"] += float((hits * disc).sum() / disc[: min(n_rel, k)].sum())
        first = np.flatnonzero(hits)
        sums["mrr"] += 0.0 if len(first) == 0 else 1.0 / (first[0] + 1)
        cum_hits = np.cumsum(hits)
        sums["map"] += float((hits * cum_hits / np.arange(1, k + 1)).sum() / min(n_rel, k))
    return {m: v / len(relevant) for m, v in sums.items()}


def coverage(topk: np.ndarray, num_items: int, k: int) -> float:
    """Share of the catalog that appears in at least one user's top-k."""
    if num_items == 0 or topk.size == 0:
        return 0.0
    return float(len(np.unique(topk[:, :k])) / num_items)
