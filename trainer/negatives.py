"""A training example's negatives: drawn uniformly from the catalog, or mixed with hard ones from each
user's retrieval candidates (:class:`CandidatePool`, computed by :mod:`onnxrec.trainer.candidates`).

Each negative is, with probability ``fraction``, one of its user's candidates drawn uniformly (a hard
negative), else an item drawn uniformly from the catalog. The draws come from the epoch's generator
(seeded from ``(seed, epoch)``), the hard ones after the uniform draws a run without candidates makes,
so such a run's negatives are what they were before candidates existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxrec.errors import TrainingError
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.retrieval_features import RetrievalFeatures


@dataclass(frozen=True)
class CandidatePool:
    """Each user's retrieval candidates, best first (CSR: ``items[indptr[u]:indptr[u + 1]]``), the
    retrieval model they came from, what a run records about them (:attr:`source`) and, for a factorized
    retrieval model, retrieval's score and rank of any pair (:attr:`features`, a ranker's retrieval
    fields)."""

    indptr: np.ndarray  # int64 [num_users + 1]
    items: np.ndarray  # int64 [nnz]
    retrieval: Recommender
    source: dict[str, Any]
    features: RetrievalFeatures | None = None

    def of(self, user: int) -> np.ndarray:
        """The candidates of ``user``, best first."""
        return self.items[self.indptr[user] : self.indptr[user + 1]]


class NegativeSampler:
    """Draws each training example's negatives: uniformly, or mixed with hard ones from ``pool``
    (each negative hard with probability ``fraction``; a user without candidates gets uniform ones)."""

    def __init__(self, num_items: int, pool: CandidatePool | None = None, fraction: float = 0.0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise TrainingError(f"--hard-negatives must be in [0, 1], not {fraction}")
        self.num_items = num_items
        self.pool = pool
        self.fraction = fraction if pool is not None else 0.0

    def draw(self, gen: np.random.Generator, users: np.ndarray, n: int) -> np.ndarray:
        """Negatives [B, n] for the examples of ``users`` [B]."""
        return self.draw_marked(gen, users, n)[0]

    def draw_marked(self, gen: np.random.Generator, users: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Negatives [B, n] and which of them are hard [B, n]."""
        negatives = gen.integers(0, self.num_items, size=(len(users), n))
        if self.pool is None:
            return negatives, np.zeros(negatives.shape, dtype=bool)
        users = np.asarray(users, dtype=np.int64)
        start = self.pool.indptr[users][:, None]
        count = (self.pool.indptr[users + 1] - self.pool.indptr[users])[:, None]
        hard = (gen.random((len(users), n)) < self.fraction) & (count > 0)
        pick = start + np.minimum((gen.random((len(users), n)) * count).astype(np.int64), np.maximum(count - 1, 0))
        if len(self.pool.items):
            negatives = np.where(hard, self.pool.items[np.minimum(pick, len(self.pool.items) - 1)], negatives)
        return negatives, hard

    def describe(self) -> dict[str, Any]:
        """Where the negatives come from, as a run records it."""
        if self.pool is None:
            return {"kind": "uniform"}
        return {"kind": "retrieval candidates", "hard_fraction": self.fraction, **self.pool.source}
