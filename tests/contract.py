"""The recommender contract: the same checks against every backend (PyTorch, ONNX, later gRPC).

A backend answers ``recommend(users, k, exclude)`` with item indices [B, k] and ``score(users,
items)`` with scores [B, N]. Subclasses provide ``backend`` and ``num_users`` / ``num_items``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    def recommend(self, users: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray: ...


class RecommenderContract:
    """Mixin of contract tests; a concrete test class sets ``backend``, ``num_users``, ``num_items``."""

    backend: Backend
    num_users: int
    num_items: int
    k = 10

    def _none(self, b: int) -> np.ndarray:
        return np.full((b, 1), -1, dtype=np.int64)

    def test_batch_equals_single(self) -> None:
        users = np.arange(min(self.num_users, 33))
        scores, items = self.backend.recommend(users, self.k, self._none(len(users)))
        for row, u in enumerate(users):
            s1, i1 = self.backend.recommend(np.array([u]), self.k, self._none(1))
            np.testing.assert_allclose(s1[0], scores[row], rtol=1e-5, atol=1e-5)
            tie_free = np.diff(s1[0]) < -1e-6
            assert np.array_equal(i1[0][:-1][tie_free], items[row][:-1][tie_free])

    def test_recommend_is_sorted_and_excludes(self) -> None:
        users = np.arange(min(self.num_users, 16))
        scores, items = self.backend.recommend(users, self.k, self._none(len(users)))
        assert scores.shape == items.shape == (len(users), self.k)
        assert (np.diff(scores, axis=1) <= 1e-6).all()
        assert ((items >= 0) & (items < self.num_items)).all()
        # excluding the current top-3 removes exactly them
        exclude = items[:, :3].copy()
        _, again = self.backend.recommend(users, self.k, exclude)
        for row in range(len(users)):
            assert not set(again[row].tolist()) & set(exclude[row].tolist())

    def test_score_agrees_with_recommend_order(self) -> None:
        users = np.arange(min(self.num_users, 16))
        _, items = self.backend.recommend(users, self.k, self._none(len(users)))
        scores = self.backend.score(users, items)
        assert scores.shape == items.shape
        assert (np.diff(scores, axis=1) <= 1e-4).all(), "score() must rank the recommended items in order"

    def test_score_batch_equals_single(self) -> None:
        rng = np.random.default_rng(0)
        users = np.arange(min(self.num_users, 9))
        items = rng.integers(0, self.num_items, size=(len(users), 12))
        batch = self.backend.score(users, items)
        for row, u in enumerate(users):
            np.testing.assert_allclose(
                self.backend.score(np.array([u]), items[row : row + 1])[0], batch[row], rtol=1e-5, atol=1e-5
            )
