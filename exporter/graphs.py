"""The modules that become ONNX graphs: thin wrappers around a trained model's own methods.

Everything that does not depend on the request is computed once here and stored in the graph as a
constant: item vectors and biases of factorized models, each known user's recent history and side
features (for models that read them), the fold-in centroids, normalised item vectors for similarity.
The top-k is taken inside the graph. What a model can export is read from its contract
(:class:`~onnxrec.trainer.models.base.Recommender`), never from its class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from onnxrec.trainer.blend import Blend
from onnxrec.trainer.models.base import Recommender


def topk_excluding(scores: torch.Tensor, exclude: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``scores`` [B, num_items + 1] after setting the ``exclude`` [B, E] columns to -inf, for
    callers that hold to the model format 3 contract: -1 pads, and every row holds at least one -1. A -1
    lands on the last (padding) column, whatever it held, so that column is -inf and surfaces only where
    a row has fewer than k finite scores (the server drops -inf entries): Mod -> ScatterElements -> TopK,
    8 nodes in the recommend graph where appending a pad to every row in the graph took 14 (each node
    costs a served request CPU; BENCHMARKS.md)."""
    index = torch.remainder(exclude, scores.shape[1])  # -1 -> num_items (floored modulo, ONNX Mod fmod=0)
    values, items = torch.topk(scores.scatter(1, index, float("-inf")), k, dim=1)
    return values, items


def masked_topk(scores: torch.Tensor, exclude: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``scores`` [B, N] after setting the ``exclude`` [B, E] columns (-1 pads) to -inf, for
    rows that need not hold a -1: a padding column on the scores and a -1 on every row, then
    :func:`topk_excluding`."""
    return topk_excluding(F.pad(scores, (0, 1)), F.pad(exclude, (0, 1), value=-1), k)


@dataclass(frozen=True)
class ServingTables:
    """Per-user data the graphs embed, built from the dataset at export time."""

    history: np.ndarray  # [num_users, H] newest first, -1 pads (H: the model's history_len, may be 0)
    user_features: dict[str, np.ndarray]  # encoded, row = user index
    centroids: list[np.ndarray]  # fold-in: per user table, the mean user row of each item's users
    last_time: np.ndarray  # [num_users] int64: each user's last known interaction (unix seconds; -1: none)


def fold_in_centroids(model: Recommender, users: np.ndarray, items: np.ndarray, num_items: int) -> list[np.ndarray]:
    """For each user table of ``model``: per item, the mean row of the users who interacted with it
    (the table's mean for items nobody interacted with). A model that encodes unknown users itself
    needs none (an empty list)."""
    if model.encodes_unknown_users:
        return []
    out = []
    u = torch.from_numpy(users.astype(np.int64))
    i = torch.from_numpy(items.astype(np.int64))
    counts = torch.zeros(num_items).index_add_(0, i, torch.ones(len(i)))
    with torch.no_grad():
        for table in model.user_tables():
            w = table.weight.detach().float()
            sums = torch.zeros(num_items, w.shape[1]).index_add_(0, i, w[u])
            mean = w.mean(0, keepdim=True).expand(num_items, -1)
            cent = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], mean)
            out.append(cent.numpy().astype(np.float32))
    return out


class _Base(nn.Module):
    """What every graph module holds: the model, and the constants its contract says it needs (item
    vectors and biases of a factorized model, the known users' side features and recent history)."""

    item_matrix: torch.Tensor
    item_bias: torch.Tensor
    history_table: torch.Tensor

    def __init__(self, model: Recommender, tables: ServingTables) -> None:
        super().__init__()
        self.model = model
        self.factorized = model.factorized
        self.history_len = model.history_len
        with torch.no_grad():
            if self.factorized:
                self.register_buffer("item_matrix", model.item_vectors().detach().clone())
                self.register_buffer("item_bias", model.item_bias().detach().clone())
        self.feature_names = list(model.user_feature_names)
        for name in self.feature_names:
            self.register_buffer(f"uf_{name}", torch.from_numpy(tables.user_features[name]).long())
        if self.history_len:
            self.register_buffer("history_table", torch.from_numpy(tables.history).long())

    def user_inputs(self, features: Sequence[torch.Tensor], history: torch.Tensor | None) -> dict[str, Any]:
        """The model's ``inputs`` from user features (in :attr:`feature_names` order) and a history
        (newest first; cut to the model's length), with the item vectors computed at export."""
        inputs: dict[str, Any] = {f"user_{n}": f for n, f in zip(self.feature_names, features, strict=True)}
        if self.history_len and history is not None:
            inputs["history"] = history[:, : self.history_len]
            if self.factorized:
                inputs["item_table"] = self.item_matrix
        return inputs

    def known_user_inputs(self, users: torch.Tensor) -> dict[str, Any]:
        """The model's ``inputs`` for known ``users``, from the tables embedded at export."""
        features = [getattr(self, f"uf_{name}")[users] for name in self.feature_names]
        return self.user_inputs(features, self.history_table[users] if self.history_len else None)

    def catalog_scores(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """Every item's score for ``users`` [B] -> [B, num_items]; a factorized model's item side is the
        export-time matrix."""
        if self.factorized:
            return self.model.user_vectors(users, inputs) @ self.item_matrix.T + self.item_bias
        return self.model.score_all(users, inputs)

    def known_user_matrix(self, chunk: int = 4096) -> torch.Tensor:
        """Every known user's vector [num_users, D] (factorized models), computed once at export.

        A known user's vector depends only on tables fixed at export time (their embedding, recent
        history and side features), so the serving graphs gather it instead of running the user tower
        per request: the known-user graphs become Gather -> MatMul -> TopK."""
        rows = []
        with torch.no_grad():
            for start in range(0, self.model.num_users, chunk):
                users = torch.arange(start, min(start + chunk, self.model.num_users))
                rows.append(self.model.user_vectors(users, self.known_user_inputs(users)).detach().float())
        return torch.cat(rows) if rows else torch.zeros(0, self.item_matrix.shape[1])

    def drop_user_tables(self) -> None:
        """Forget the per-user tables once :meth:`known_user_matrix` replaced them (smaller graphs)."""
        for name in [*(f"uf_{n}" for n in self.feature_names), "history_table"]:
            if name in self._buffers:
                del self._buffers[name]


class RecommendGraph(_Base):
    """(user_idx [B], exclude [B, E]) -> (scores [B, K], items [B, K])."""

    user_matrix: torch.Tensor  # [num_users, D + 1]: user vectors and a column of ones
    scoring_matrix: torch.Tensor  # [D + 1, num_items + 1]: item vectors (transposed) and biases, a zero pad column

    def __init__(self, model: Recommender, tables: ServingTables, k: int) -> None:
        super().__init__(model, tables)
        self.k = k
        if self.factorized:
            # score = [u, 1] . [v, b]: one Gather and one MatMul, the bias folded in. The padding column
            # topk_excluding needs is a zero column of the matrix, so the MatMul writes it and no Pad copies
            # the [B, N] scores again (zero, not -inf: int8 quantization scales by the largest magnitude;
            # the scatter in topk_excluding sets it to -inf).
            users = self.known_user_matrix()
            self.register_buffer("user_matrix", torch.cat([users, torch.ones(len(users), 1)], dim=1))
            scoring = torch.cat([self.item_matrix, self.item_bias[:, None]], dim=1).T
            pad = torch.zeros(scoring.shape[0], 1)
            self.register_buffer("scoring_matrix", torch.cat([scoring, pad], dim=1).contiguous())
            self.drop_user_tables()
            del self._buffers["item_matrix"], self._buffers["item_bias"]

    def forward(self, user_idx: torch.Tensor, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.factorized:
            scores = torch.index_select(self.user_matrix, 0, user_idx) @ self.scoring_matrix
            return topk_excluding(scores, exclude, self.k)
        scores = self.model.score_all(user_idx, self.known_user_inputs(user_idx))
        return topk_excluding(F.pad(scores, (0, 1)), exclude, self.k)


class FoldIn(_Base):
    """What the graphs of users the model does not know hold: a model that encodes unknown users gets
    user -1 with the history and features (:meth:`unknown_user_inputs`); any other is folded in: each
    user-table row is the mean, over the history, of the items' centroids (:meth:`fold_in_rows`)."""

    def __init__(self, model: Recommender, tables: ServingTables) -> None:
        super().__init__(model, tables)
        self.encodes = model.encodes_unknown_users
        for j, c in enumerate(tables.centroids):
            self.register_buffer(f"centroid_{j}", torch.from_numpy(c))
        self.num_centroids = len(tables.centroids)

    def unknown_users(self, history: torch.Tensor) -> torch.Tensor:
        """User index -1 for every row of ``history``."""
        return torch.full_like(history[:, 0], -1)

    def fold_in_rows(self, history: torch.Tensor) -> list[torch.Tensor]:
        """One estimated [B, d] row per user table: the mean of the history items' centroids."""
        mask = (history >= 0).unsqueeze(-1)
        safe = history.clamp_min(0)
        rows = []
        for j in range(self.num_centroids):
            c = getattr(self, f"centroid_{j}")[safe]  # [B, H, d]
            m = mask.to(c.dtype)  # the tables' dtype: float32, or float16 in the fp16 variant
            rows.append((c * m).sum(1) / m.sum(1).clamp_min(1.0))
        return rows


class HistoryGraph(FoldIn):
    """(history [B, H], exclude [B, E], user features...) -> (scores [B, K], items [B, K])."""

    def __init__(self, model: Recommender, tables: ServingTables, k: int) -> None:
        super().__init__(model, tables)
        self.k = k

    def forward(
        self, history: torch.Tensor, exclude: torch.Tensor, *features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encodes:
            scores = self.catalog_scores(self.unknown_users(history), self.user_inputs(features, history))
        else:
            scores = self.model.score_with_user(self.fold_in_rows(history), None)
        return topk_excluding(F.pad(scores, (0, 1)), exclude, self.k)


class HistoryScoreGraph(FoldIn):
    """(history [B, H], items [B, N], user features...) -> scores [B, N] for users the model does not
    know (the ranking stage of a pipeline version)."""

    def forward(self, history: torch.Tensor, items: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        if self.encodes:
            return self.model.score_candidates(self.unknown_users(history), items, self.user_inputs(features, history))
        return self.model.score_with_user(self.fold_in_rows(history), items)


class ScoreGraph(_Base):
    """(user_idx [B], items [B, N]) -> scores [B, N]."""

    user_matrix: torch.Tensor

    def __init__(self, model: Recommender, tables: ServingTables) -> None:
        super().__init__(model, tables)
        if self.factorized:
            self.register_buffer("user_matrix", self.known_user_matrix())
            self.drop_user_tables()

    def forward(self, user_idx: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if self.factorized:
            return self.factorized_scores(user_idx, items)[2]
        return self.model.score_candidates(user_idx, items, self.known_user_inputs(user_idx))

    def factorized_scores(
        self, user_idx: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The users' vectors [B, D], the items' vectors [B, N, D] and the scores [B, N] (factorized models)."""
        u = torch.index_select(self.user_matrix, 0, user_idx)
        v = self.item_matrix[items]
        return u, v, (v @ u.unsqueeze(-1)).squeeze(-1) + self.item_bias[items]


def _positions(scores: torch.Tensor) -> torch.Tensor:
    """Each candidate's rank [B, C]: its position in retrieval's list."""
    ones = torch.ones_like(scores, dtype=torch.long)
    return torch.cumsum(ones, dim=1) - 1


class RetrievalRankGraph(ScoreGraph):
    """(user_idx [B], items [B, C], retrieval_scores [B, C]) -> scores [B, C]: the ranking stage of a
    ranker that reads retrieval's score and rank of each candidate (the candidates in retrieval's order,
    so a candidate's rank is its position)."""

    def forward(self, user_idx: torch.Tensor, items: torch.Tensor, retrieval_scores: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        u, v, base = self.factorized_scores(user_idx, items)
        return base + self.model.retrieval_term(u, v, retrieval_scores, _positions(retrieval_scores))


class RetrievalRankHistoryGraph(FoldIn):
    """(history [B, H], items [B, C], retrieval_scores [B, C], user features...) -> scores [B, C]:
    :class:`RetrievalRankGraph` for users the ranker does not know (folded in from their history)."""

    def forward(
        self, history: torch.Tensor, items: torch.Tensor, retrieval_scores: torch.Tensor, *features: torch.Tensor
    ) -> torch.Tensor:
        inputs = Recommender.retrieval_inputs(retrieval_scores, _positions(retrieval_scores))
        return self.model.score_with_user(self.fold_in_rows(history), items, inputs)


def request_inputs(
    model: Recommender, rest: Sequence[torch.Tensor], last_known: torch.Tensor | None = None
) -> tuple[dict[str, Any], Sequence[torch.Tensor]]:
    """The ranker's per-request ``inputs`` from a ranking graph's inputs after the items: retrieval's
    scores [B, C] when it reads them (each candidate's position its rank), then ``request_time`` and
    ``last_time`` [B] when it reads the context; the user's previous interaction is the later of
    ``last_time`` and ``last_known`` [B] (known users' last interaction at export). Also the graph's
    inputs after those (the user features of a history graph)."""
    inputs: dict[str, Any] = {}
    at = 0
    if model.reads_retrieval:
        inputs |= Recommender.retrieval_inputs(rest[0], _positions(rest[0]))
        at = 1
    if model.reads_context:
        request_time, last_time = rest[at], rest[at + 1]
        if last_known is not None:
            last_time = torch.maximum(last_time, last_known)
        inputs |= Recommender.context_inputs(request_time, last_time)
        at += 2
    return inputs, rest[at:]


class ContextRankGraph(_Base):
    """(user_idx [B], items [B, C], retrieval_scores [B, C] when the ranker reads them, request_time [B],
    last_time [B]) -> scores [B, C]: the ranking stage of a ranker that reads the interaction's context.
    Its user side depends on the request, so it is computed per request (no user matrix); each known
    user's last interaction at export is embedded, ``last_time`` only ever makes it later (a tracked
    event)."""

    last_table: torch.Tensor

    def __init__(self, model: Recommender, tables: ServingTables) -> None:
        super().__init__(model, tables)
        if not self.history_len:  # the item side is the model's own here (the history reads item_matrix)
            for name in ("item_matrix", "item_bias"):
                self._buffers.pop(name, None)
        self.register_buffer("last_table", torch.from_numpy(tables.last_time.astype(np.int64)))

    def forward(self, user_idx: torch.Tensor, items: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        inputs, _ = request_inputs(self.model, rest, self.last_table[user_idx])
        return self.model.score_candidates(user_idx, items, self.known_user_inputs(user_idx) | inputs)


class ContextRankHistoryGraph(FoldIn):
    """(history [B, H], items [B, C], retrieval_scores [B, C] when the ranker reads them, request_time [B],
    last_time [B], user features...) -> scores [B, C]: :class:`ContextRankGraph` for users the ranker does
    not know (folded in from their history; ``last_time`` -1 when no interaction of theirs is known)."""

    def forward(self, history: torch.Tensor, items: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        inputs, features = request_inputs(self.model, rest)
        if self.encodes:  # the model's own user encoder: user -1 with the history and features
            inputs |= self.user_inputs(features, history)
            return self.model.score_candidates(self.unknown_users(history), items, inputs)
        return self.model.score_with_user(self.fold_in_rows(history), items, inputs)


class BlendedRankGraph(nn.Module):
    """(user_idx or history, items [B, C], retrieval_scores [B, C], user features...) -> the blend of
    retrieval's score and the ranker's (``inner``, a ranking graph without retrieval_scores) of each
    candidate, as a pipeline trained with a blend ranks them (trainer/blend.py)."""

    def __init__(self, inner: nn.Module, blend: Blend) -> None:
        super().__init__()
        self.inner = inner
        self.blend = blend

    def forward(
        self, who: torch.Tensor, items: torch.Tensor, retrieval_scores: torch.Tensor, *features: torch.Tensor
    ) -> torch.Tensor:
        return self.blend.apply(retrieval_scores, self.inner(who, items, *features))


class SimilarItemsGraph(nn.Module):
    """item_idx [B] -> (cosine scores [B, K], items [B, K]), the item itself excluded."""

    normed: torch.Tensor

    def __init__(self, model: Recommender, k: int) -> None:
        super().__init__()
        with torch.no_grad():
            self.register_buffer("normed", F.normalize(model.item_representation().detach().float(), dim=-1))
        self.k = k

    def forward(self, item_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sims = self.normed[item_idx] @ self.normed.T
        return masked_topk(sims, item_idx.unsqueeze(1), self.k)
