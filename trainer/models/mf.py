"""Matrix factorisation: dot product of user and item embeddings plus biases."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from onnxrec.trainer.models.base import FactorizedRecommender, Recommender
from onnxrec.trainer.models.config import ModelConfig, ModelOptions


@dataclass(frozen=True)
class MFConfig(ModelConfig):
    """Sizes of an :class:`MF` model."""

    num_users: int
    num_items: int
    dim: int = 64

    @classmethod
    def from_options(cls, opts: ModelOptions) -> MFConfig:
        return cls(opts.num_users, opts.num_items, opts.dim)


class MF(FactorizedRecommender):
    """score(u, i) = <p_u, q_i> + b_i (+ b_u, which does not change a user's ranking)."""

    cfg: MFConfig

    def __init__(self, cfg: MFConfig) -> None:
        super().__init__(cfg)
        self.user_emb = nn.Embedding(cfg.num_users, cfg.dim)
        self.item_emb = nn.Embedding(cfg.num_items, cfg.dim)
        self.user_b = nn.Embedding(cfg.num_users, 1)
        self.item_b = nn.Embedding(cfg.num_items, 1)
        for e in (self.user_emb, self.item_emb):
            nn.init.normal_(e.weight, std=0.05)
        nn.init.zeros_(self.user_b.weight)
        nn.init.zeros_(self.item_b.weight)

    def user_vectors(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        return self.user_emb(users)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_emb.weight if items is None else self.item_emb(items)

    def item_bias(self, items: torch.Tensor | None = None) -> torch.Tensor:
        w = self.item_b.weight.squeeze(-1)
        return w if items is None else w[items]

    def user_tables(self) -> list[nn.Embedding]:
        return [self.user_emb, self.user_b]

    def fold_in_user_vectors(self, user_rows: list[torch.Tensor]) -> torch.Tensor:
        """The factor row; the user bias row only shifts every score of the user alike."""
        return user_rows[0]

    def score_with_user(
        self, user_rows: list[torch.Tensor], items: torch.Tensor | None, inputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        p, bu = user_rows
        if items is None:
            return p @ self.item_emb.weight.T + self.item_bias() + bu
        return torch.einsum("bd,bnd->bn", p, self.item_emb(items)) + self.item_bias(items) + bu

    def score_candidates(self, users: torch.Tensor, items: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """From the user tables, so the user bias counts (it changes a sampled loss, not a ranking)."""
        return Recommender.score_candidates(self, users, items, inputs)
