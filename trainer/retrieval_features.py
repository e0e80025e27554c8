"""Retrieval's score and rank of any (user, item) pair while a ranker trains: the values of its
retrieval fields (:class:`~onnxrec.trainer.models.fields.RetrievalFields`).

A served pipeline hands its ranker each candidate's retrieval score and its position in retrieval's
list (the rank among the items the user does not know). Training reproduces both for the positive and
every negative of an example: the score from the retrieval model's user and item vectors (a factorized
retrieval model: every retrieval model onnxrec trains), the rank as the number of the user's candidates
(:class:`~onnxrec.trainer.negatives.CandidatePool`, the user's best items it did not train on) that score
higher, so a candidate's rank is its position and anything below the candidates ranks ``candidates``.

A training positive is an item retrieval was trained on, so its score is in-sample: higher than a
held-out item's would be. The ranker sees that gap in training and not at serving time (the pipeline
measurements in BENCHMARKS.md say what it costs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxrec.trainer.models.fields import RetrievalFieldsConfig


@dataclass(frozen=True)
class RetrievalFeatures:
    """A retrieval model's vectors at training time (history: the training split) and its candidates'
    scores per user, best first (CSR, aligned with the pool's items)."""

    user_vectors: np.ndarray  # float32 [num_users, D]
    item_vectors: np.ndarray  # float32 [num_items, D]
    item_bias: np.ndarray  # float32 [num_items]
    indptr: np.ndarray  # int64 [num_users + 1]
    candidate_scores: np.ndarray  # float32 [nnz], each user's best first
    candidates: int

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Retrieval's scores [B, N] of ``items`` [B, N] for ``users`` [B]."""
        u = self.user_vectors[np.asarray(users, dtype=np.int64)]
        items = np.asarray(items, dtype=np.int64)
        return pair_scores(u[:, None, :], self.item_vectors[items], self.item_bias[items])

    def rank(self, users: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Each score's rank [B, N] among its user's candidates: how many of them score higher, or
        :attr:`candidates` ("beyond the candidates") for a score below all of them, as a served pipeline
        never passes such an item (a user with fewer candidates than that included)."""
        out = np.empty(scores.shape, dtype=np.int64)
        for row, u in enumerate(np.asarray(users, dtype=np.int64)):
            ranked = self.candidate_scores[self.indptr[u] : self.indptr[u + 1]]
            above = np.searchsorted(-ranked, -scores[row], side="left")
            out[row] = np.where(above >= len(ranked), self.candidates, above)
        return out

    def inputs(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The retrieval fields of ``items`` [B, N] for ``users`` [B]: scores (float32) and ranks (int64)."""
        scores = self.score(users, items).astype(np.float32, copy=False)
        return scores, self.rank(users, scores)

    def fields_config(self) -> RetrievalFieldsConfig:
        """How a ranker trained on these candidates reads them: the candidate count, and the mean and
        standard deviation of the candidates' scores (its standardisation)."""
        s = self.candidate_scores.astype(np.float64)
        shift = float(s.mean()) if len(s) else 0.0
        scale = float(s.std()) if len(s) > 1 else 1.0
        return RetrievalFieldsConfig(self.candidates, round(shift, 6), round(scale, 6) if scale > 1e-6 else 1.0)


def pair_scores(u: np.ndarray, v: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``sum_d u_d v_d + bias`` per pair (``u`` broadcast against ``v``): an elementwise product summed
    over the last axis, so a pair's score is the same bits whatever batch it is computed in (a
    candidate's rank among the candidates counts no copy of itself)."""
    return (u * v).sum(-1) + bias


def candidate_scores(
    user_vectors: np.ndarray, item_vectors: np.ndarray, item_bias: np.ndarray, indptr: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """The scores [nnz] of each user's candidates (CSR ``indptr``, ``items``), by the same arithmetic as
    :meth:`RetrievalFeatures.score`, best first within each user."""
    owners = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    out = np.empty(len(items), dtype=np.float32)
    step = 1 << 16
    for start in range(0, len(items), step):
        sl = slice(start, start + step)
        out[sl] = pair_scores(user_vectors[owners[sl]], item_vectors[items[sl]], item_bias[items[sl]])
    # best first within each user (the candidates came in that order from other arithmetic: re-sort)
    return out[np.lexsort((-out, owners))]
