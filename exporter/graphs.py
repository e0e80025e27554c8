"""The modules that become ONNX graphs: thin wrappers around a trained model's own methods.

Everything that does not depend on the request is computed once here and stored in the graph as a
constant: item vectors and biases of factorized models, each known user's recent history and side
features (two-tower), the fold-in centroids, normalised item vectors for similarity. The top-k is
taken inside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from onnxrec.trainer.models.base import FactorizedRecommender, Recommender
from onnxrec.trainer.models.two_tower import TwoTower


def masked_topk(scores: torch.Tensor, exclude: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``scores`` [B, N] after setting the ``exclude`` [B, E] columns (-1 pads) to -inf."""
    n = scores.shape[1]
    pad = torch.full_like(scores[:, :1], float("-inf"))
    extended = torch.cat([scores, pad], dim=1)
    index = torch.where((exclude < 0) | (exclude >= n), torch.full_like(exclude, n), exclude)
    extended = extended.scatter(1, index, float("-inf"))
    values, items = torch.topk(extended[:, :n], k, dim=1)
    return values, items


@dataclass(frozen=True)
class ServingTables:
    """Per-user data the graphs embed, built from the dataset at export time."""

    history: np.ndarray  # [num_users, H] newest first, -1 pads (two-tower only; H may be 0)
    user_features: dict[str, np.ndarray]  # encoded, row = user index
    centroids: list[np.ndarray]  # fold-in: per user table, the mean user row of each item's users


def fold_in_centroids(model: Recommender, users: np.ndarray, items: np.ndarray, num_items: int) -> list[np.ndarray]:
    """For each user table of ``model``: per item, the mean row of the users who interacted with it
    (the table's mean for items nobody interacted with)."""
    if isinstance(model, TwoTower):
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
    item_matrix: torch.Tensor
    item_bias: torch.Tensor
    history_table: torch.Tensor

    def __init__(self, model: Recommender, tables: ServingTables) -> None:
        super().__init__()
        self.model = model
        self.factorized = isinstance(model, FactorizedRecommender)
        self.two_tower = isinstance(model, TwoTower)
        with torch.no_grad():
            if isinstance(model, FactorizedRecommender):
                self.register_buffer("item_matrix", model.item_vectors().detach().clone())
                self.register_buffer("item_bias", model.item_bias().detach().clone())
        self.feature_names = [f.name for f in getattr(model.cfg, "user_features", ())] if self.two_tower else []
        for name in self.feature_names:
            self.register_buffer(f"uf_{name}", torch.from_numpy(tables.user_features[name]).long())
        if self.two_tower and model.uses_history:
            self.register_buffer("history_table", torch.from_numpy(tables.history).long())

    def known_user_inputs(self, users: torch.Tensor) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        for name in self.feature_names:
            inputs[f"user_{name}"] = getattr(self, f"uf_{name}")[users]
        if self.two_tower and self.model.uses_history:
            inputs["history"] = self.history_table[users]
            inputs["item_table"] = self.item_matrix
        return inputs

    def factor_scores(self, user_vectors: torch.Tensor) -> torch.Tensor:
        return user_vectors @ self.item_matrix.T + self.item_bias


class RecommendGraph(_Base):
    """(user_idx [B], exclude [B, E]) -> (scores [B, K], items [B, K])."""

    def __init__(self, model: Recommender, tables: ServingTables, k: int) -> None:
        super().__init__(model, tables)
        self.k = k

    def forward(self, user_idx: torch.Tensor, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.factorized:
            model = cast(FactorizedRecommender, self.model)
            scores = self.factor_scores(model.user_vectors(user_idx, self.known_user_inputs(user_idx)))
        else:
            scores = self.model.score_all(user_idx, {})
        return masked_topk(scores, exclude, self.k)


class HistoryGraph(_Base):
    """(history [B, H], exclude [B, E], user features...) -> (scores [B, K], items [B, K])."""

    def __init__(self, model: Recommender, tables: ServingTables, k: int) -> None:
        super().__init__(model, tables)
        self.k = k
        self.history_len = int(getattr(model.cfg, "history_len", 0))
        for j, c in enumerate(tables.centroids):
            self.register_buffer(f"centroid_{j}", torch.from_numpy(c))
        self.num_centroids = len(tables.centroids)

    def forward(
        self, history: torch.Tensor, exclude: torch.Tensor, *features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (history >= 0).unsqueeze(-1).float()
        safe = history.clamp_min(0)
        if self.two_tower:
            model = cast(TwoTower, self.model)
            users = torch.full_like(history[:, 0], -1)
            inputs: dict[str, Any] = {f"user_{n}": f for n, f in zip(self.feature_names, features, strict=True)}
            if model.uses_history:
                inputs["history"] = history[:, : self.history_len]
                inputs["item_table"] = self.item_matrix
            scores = self.factor_scores(model.user_vectors(users, inputs))
        else:
            rows = []
            for j in range(self.num_centroids):
                c = getattr(self, f"centroid_{j}")[safe]  # [B, H, d]
                rows.append((c * mask).sum(1) / mask.sum(1).clamp_min(1.0))
            scores = self.model.score_with_user(rows, None)
        return masked_topk(scores, exclude, self.k)


class ScoreGraph(_Base):
    """(user_idx [B], items [B, N]) -> scores [B, N]."""

    def forward(self, user_idx: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.score_candidates(user_idx, items, self.known_user_inputs(user_idx))


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
