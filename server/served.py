"""A loaded model version as the request path sees it: the model and one dynamic batcher per graph,
with the typed rows each batcher takes.

A batcher item carries one or more rows of one graph (a RecommendBatch call queues a chunk of its rows
as one item); a batch concatenates its items' rows into one onnxruntime run with the batch's largest
``k``, and hands each item back its own rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxrec.server.batch_policy import AdaptivePolicy, BatchPolicy
from onnxrec.server.batcher import BatcherConfig, DynamicBatcher
from onnxrec.server.feeds import Times
from onnxrec.server.loaded_model import LoadedModel, TopK

__all__ = ["ExplainRows", "HistoryRows", "RankRows", "RecommendRows", "ScoreRow", "ServedModel", "SimilarRow"]


@dataclass(slots=True)
class RecommendRows:
    """Known users' rows of the ``recommend`` graph: user indices, their exclusion lists, and the k."""

    users: list[int]
    exclude: list[np.ndarray]
    k: int

    def __len__(self) -> int:
        return len(self.users)


@dataclass(slots=True)
class HistoryRows:
    """Unknown users' rows of ``recommend_from_history``: histories (newest first), exclusion lists,
    encoded user features, and the k."""

    history: list[np.ndarray]
    exclude: list[np.ndarray]
    features: list[Sequence[int]]
    k: int

    def __len__(self) -> int:
        return len(self.history)


@dataclass(slots=True)
class RankRows:
    """Rows of a pipeline's ranking stage: each user's retrieved candidates (retrieval's order) and their
    retrieval scores, and who the user is: an index the ranker knows (``users``), or a history and encoded
    features (``history``, ``features``)."""

    candidates: list[np.ndarray]
    users: list[int]
    history: list[np.ndarray]
    features: list[Sequence[int]]
    retrieval: list[np.ndarray]  # retrieval's scores of each candidate list (its order)
    request_time: list[int]  # when each user asks (unix seconds)
    last_time: list[int]  # each user's latest tracked event (unix seconds; -1: none)

    def __len__(self) -> int:
        return len(self.candidates)

    @staticmethod
    def times(items: Sequence[RankRows]) -> Times:
        """The request's times of every row of ``items``, in order."""
        request = np.array([t for it in items for t in it.request_time], dtype=np.int64)
        return request, np.array([t for it in items for t in it.last_time], dtype=np.int64)


@dataclass(slots=True)
class ExplainRows:
    """Rows of the explain graphs: each user's history (newest first) and recommended items, and who the
    user is: an index (``explain``) or encoded features (``explain_from_history``)."""

    users: list[int]
    history: list[np.ndarray]
    recommended: list[np.ndarray]
    features: list[Sequence[int]]

    def __len__(self) -> int:
        return len(self.history)


@dataclass(slots=True)
class ScoreRow:
    """One ``score`` row: a user index and the candidates' item indices."""

    user: int
    candidates: np.ndarray
    request_time: int  # when the user asks (unix seconds), for a ranker that reads the context


@dataclass(slots=True)
class SimilarRow:
    """One ``similar_items`` row: an item index and the k."""

    item: int
    k: int


class ServedModel:
    """A loaded version with one dynamic batcher per graph (``policy`` makes each one's batch policy)."""

    def __init__(
        self,
        model: LoadedModel,
        config: BatcherConfig,
        policy: Callable[[], BatchPolicy] = AdaptivePolicy,
        on_batch: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.model = model

        def batcher(run: Callable[[list[Any]], Sequence[Any]], graph: str) -> DynamicBatcher[Any, Any]:
            hook = None if on_batch is None else (lambda rows, queued: on_batch(model.name, graph, rows, queued))
            return DynamicBatcher(run, config, policy=policy(), name=f"{model.name}/{graph}", on_batch=hook)

        self.recommend: DynamicBatcher[RecommendRows, list[TopK]] = batcher(self._run_recommend, "recommend")
        self.history: DynamicBatcher[HistoryRows, list[TopK]] = batcher(self._run_history, "recommend_from_history")
        self.score: DynamicBatcher[ScoreRow, np.ndarray] = batcher(self._run_score, "score")
        self.similar: DynamicBatcher[SimilarRow, TopK] = batcher(self._run_similar, "similar_items")
        self._batchers: list[DynamicBatcher[Any, Any]] = [self.recommend, self.history, self.score, self.similar]
        if model.pipeline:  # the ranking stage: one batcher per graph, like the others
            self.rank: DynamicBatcher[RankRows, list[np.ndarray]] = batcher(self._run_rank, "rank")
            self.rank_history: DynamicBatcher[RankRows, list[np.ndarray]] = batcher(
                self._run_rank_history, "rank_from_history"
            )
            self._batchers += [self.rank, self.rank_history]
        if model.explain_refusal is None:  # the explanation stage (server/explain.py)
            self.explain: DynamicBatcher[ExplainRows, list[np.ndarray]] = batcher(self._run_explain, "explain")
            self.explain_history: DynamicBatcher[ExplainRows, list[np.ndarray]] = batcher(
                self._run_explain_history, "explain_from_history"
            )
            self._batchers += [self.explain, self.explain_history]

    def _run_recommend(self, items: list[RecommendRows]) -> list[list[TopK]]:
        if len(items) == 1:  # one caller: its own lists, no regrouping
            (one,) = items
            return [self.model.recommend(np.asarray(one.users, dtype=np.int64), one.exclude, one.k)]
        users = np.array([u for it in items for u in it.users], dtype=np.int64)
        exclude = [e for it in items for e in it.exclude]
        return _per_item(self.model.recommend(users, exclude, max(it.k for it in items)), items)

    def _run_history(self, items: list[HistoryRows]) -> list[list[TopK]]:
        history = [h for it in items for h in it.history]
        exclude = [e for it in items for e in it.exclude]
        features = [f for it in items for f in it.features]
        k = max(it.k for it in items)
        return _per_item(self.model.recommend_from_history(history, exclude, features, k), items)

    def _run_score(self, items: list[ScoreRow]) -> list[np.ndarray]:
        times = (np.array([it.request_time for it in items]), np.full(len(items), -1))
        return self.model.score(np.array([it.user for it in items]), [it.candidates for it in items], times)

    def _run_similar(self, items: list[SimilarRow]) -> list[TopK]:
        return self.model.similar(np.array([it.item for it in items]), max(it.k for it in items))

    def _run_rank(self, items: list[RankRows]) -> list[list[np.ndarray]]:
        users = np.array([u for it in items for u in it.users], dtype=np.int64)
        retrieval = [r for it in items for r in it.retrieval]
        scores = self.model.rank(users, [c for it in items for c in it.candidates], retrieval, RankRows.times(items))
        return _per_item(scores, items)

    def _run_rank_history(self, items: list[RankRows]) -> list[list[np.ndarray]]:
        history = [h for it in items for h in it.history]
        features = [f for it in items for f in it.features]
        retrieval = [r for it in items for r in it.retrieval]
        candidates = [c for it in items for c in it.candidates]
        times = RankRows.times(items)
        return _per_item(self.model.rank_from_history(history, candidates, features, retrieval, times), items)

    def _run_explain(self, items: list[ExplainRows]) -> list[list[np.ndarray]]:
        users = np.array([u for it in items for u in it.users], dtype=np.int64)
        history = [h for it in items for h in it.history]
        out = self.model.explain(users, history, [r for it in items for r in it.recommended])
        return _per_item(out, items)

    def _run_explain_history(self, items: list[ExplainRows]) -> list[list[np.ndarray]]:
        history = [h for it in items for h in it.history]
        features = [f for it in items for f in it.features]
        out = self.model.explain_from_history(history, [r for it in items for r in it.recommended], features)
        return _per_item(out, items)

    async def close(self) -> None:
        """Finish what is queued, then stop the batchers."""
        for b in self._batchers:
            await b.close(drain=True)


def _per_item(
    results: list[Any], items: Sequence[RecommendRows | HistoryRows | RankRows | ExplainRows]
) -> list[list[Any]]:
    """Split a batch's rows back into its items (each item's rows are consecutive)."""
    out, start = [], 0
    for item in items:
        n = len(item)
        out.append(results[start : start + n])
        start += n
    return out
