"""Evaluation of any scorer on a dataset split, in the sampled and the full-ranking view.

* ``sampled``: each held-out item ranked against the user's sampled negatives (99 by default).
* ``full``: against every item except those the user is already known to have (training items,
  and validation items when evaluating the test split).

A scorer is any callable ``(users [B], stage) -> scores [B, num_items]``: PyTorch models, the
popularity and ItemKNN baselines and (later) ONNX sessions are all evaluated by this same code.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import numpy as np

from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.history import known_sequences
from onnxrec.trainer.metrics import coverage, single_positive_metrics, topk_metrics

Scorer = Callable[[np.ndarray, str], np.ndarray]
VIEWS = ("sampled", "full")
#: Most bytes of float64 scores one batch of users may hold (fewer users per batch for big catalogs).
SCORE_BATCH_BYTES = 256 << 20


def users_per_batch(num_items: int, most: int) -> int:
    """Users scored at once: at most ``most``, fewer when their float64 scores over ``num_items`` items
    would pass :data:`SCORE_BATCH_BYTES`, at least 1."""
    return max(1, min(most, SCORE_BATCH_BYTES // (8 * max(num_items, 1))))


def _rank_counts(scores: np.ndarray, pos_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    greater = (scores > pos_scores[:, None]).sum(1)
    equal = (scores == pos_scores[:, None]).sum(1)
    return greater, equal


def evaluate(
    scorer: Scorer,
    ds: Dataset,
    stage: str = "test",
    ks: tuple[int, ...] = (10,),
    views: tuple[str, ...] = VIEWS,
    batch_size: int = 512,
) -> dict[str, dict[str, float]]:
    """Metrics of ``scorer`` on ``stage`` (``valid`` or ``test``): ``{view: {"hr@10": ..., ...}}``.

    Users are scored ``batch_size`` at a time, fewer when their scores would pass
    :data:`SCORE_BATCH_BYTES`; a scorer with an ``items_once()`` context (a PyTorch model's
    :class:`~onnxrec.trainer.fit.ModelScorer`) computes its item side once for the whole pass.
    """
    batch_size = users_per_batch(ds.num_items, batch_size)
    once = getattr(scorer, "items_once", None)
    with once() if once is not None else nullcontext():
        return _evaluate(scorer, ds, stage, ks, views, batch_size)


def _evaluate(
    scorer: Scorer, ds: Dataset, stage: str, ks: tuple[int, ...], views: tuple[str, ...], batch_size: int
) -> dict[str, dict[str, float]]:
    part = ds.splits.held_out(stage)
    negatives = ds.splits.valid_negatives if stage == "valid" else ds.splits.test_negatives
    users = np.unique(part.user_idx)
    single = len(users) == len(part.user_idx)
    known = known_sequences(ds, stage)
    # relevant items per evaluated user (part is sorted by user)
    bounds = np.searchsorted(part.user_idx, users, side="left"), np.searchsorted(part.user_idx, users, "right")
    kmax = max(ks)
    sampled_g: list[np.ndarray] = []
    sampled_e: list[np.ndarray] = []
    full_g: list[np.ndarray] = []
    full_e: list[np.ndarray] = []
    tops: list[np.ndarray] = []
    relevant: list[np.ndarray] = []
    for start in range(0, len(users), batch_size):
        b_users = users[start : start + batch_size]
        scores = np.asarray(scorer(b_users, stage), dtype=np.float64)
        for row, u in enumerate(b_users):
            j = start + row
            rel = part.item_idx[bounds[0][j] : bounds[1][j]]
            relevant.append(rel)
            s = scores[row]
            neg_s = s[negatives[j]]
            for r in rel:
                sampled_g.append(np.array([(neg_s > s[r]).sum()]))
                sampled_e.append(np.array([(neg_s == s[r]).sum()]))
            masked = s.copy()
            masked[known.of(int(u))] = -np.inf
            if single:
                p = masked[rel[0]]
                full_g.append(np.array([(masked > p).sum()]))
                full_e.append(np.array([(masked == p).sum() - 1]))
            top = np.argpartition(-masked, kmax - 1)[:kmax] if kmax < len(masked) else np.arange(len(masked))
            top = top[np.lexsort((top, -masked[top]))]
            tops.append(top[:kmax])
    out: dict[str, dict[str, float]] = {}
    top_arr = np.stack(tops) if tops else np.zeros((0, kmax), dtype=np.int64)
    for view in views:
        res: dict[str, float] = {}
        for k in ks:
            if view == "sampled":
                m = single_positive_metrics(np.concatenate(sampled_g), np.concatenate(sampled_e), k)
            elif single:
                m = single_positive_metrics(np.concatenate(full_g), np.concatenate(full_e), k)
            else:
                m = topk_metrics(top_arr, relevant, k)
            res.update({f"{name}@{k}": round(v, 6) for name, v in m.items()})
            if view == "full":
                res[f"coverage@{k}"] = round(coverage(top_arr, ds.num_items, k), 6)
        out[view] = res
    out["users"] = {"evaluated": float(len(users))}
    return out
