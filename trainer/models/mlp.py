"""The MLP model and NeuMF (He et al., 2017, "Neural Collaborative Filtering")."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.config import ModelConfig, ModelOptions

DEFAULT_LAYERS = (64, 32, 16)


def mlp_stack(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear + ReLU (+ dropout) layers through ``sizes``."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class MLPConfig(ModelConfig):
    """Sizes of an :class:`MLP` model: embedding size and hidden layer widths."""

    num_users: int
    num_items: int
    dim: int = 32
    layers: tuple[int, ...] = DEFAULT_LAYERS
    dropout: float = 0.0

    @classmethod
    def from_options(cls, opts: ModelOptions) -> MLPConfig:
        return cls(opts.num_users, opts.num_items, opts.dim, opts.layers or DEFAULT_LAYERS, opts.dropout)


class MLP(Recommender):
    """User and item embeddings concatenated -> ReLU MLP -> one logit (sigmoid in the BCE loss)."""

    cfg: MLPConfig

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__(cfg)
        self.user_emb = nn.Embedding(cfg.num_users, cfg.dim)
        self.item_emb = nn.Embedding(cfg.num_items, cfg.dim)
        nn.init.normal_(self.user_emb.weight, std=0.05)
        nn.init.normal_(self.item_emb.weight, std=0.05)
        self.mlp = mlp_stack([2 * cfg.dim, *cfg.layers], cfg.dropout)
        self.out = nn.Linear(cfg.layers[-1] if cfg.layers else 2 * cfg.dim, 1)

    def user_tables(self) -> list[nn.Embedding]:
        return [self.user_emb]

    def item_representation(self) -> torch.Tensor:
        return self.item_emb.weight

    def score_with_user(
        self, user_rows: list[torch.Tensor], items: torch.Tensor | None, inputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        (ue,) = user_rows
        if items is None:
            items = self.all_items(ue.shape[0], self.cfg.num_items, ue.device)
        u = ue.unsqueeze(1).expand(-1, items.shape[1], -1)
        x = torch.cat([u, self.item_emb(items)], dim=-1)
        return self.out(self.mlp(x)).squeeze(-1)


@dataclass(frozen=True)
class NeuMFConfig(ModelConfig):
    """Sizes of a :class:`NeuMF` model (GMF branch and MLP branch)."""

    num_users: int
    num_items: int
    mf_dim: int = 32
    mlp_dim: int = 32
    layers: tuple[int, ...] = DEFAULT_LAYERS
    dropout: float = 0.0

    @classmethod
    def from_options(cls, opts: ModelOptions) -> NeuMFConfig:
        layers = opts.layers or DEFAULT_LAYERS
        return cls(opts.num_users, opts.num_items, opts.dim, opts.dim, layers, opts.dropout)


class NeuMF(Recommender):
    """GMF (element-wise product) and MLP branches, concatenated into one logit."""

    cfg: NeuMFConfig

    def __init__(self, cfg: NeuMFConfig) -> None:
        super().__init__(cfg)
        self.gmf_user = nn.Embedding(cfg.num_users, cfg.mf_dim)
        self.gmf_item = nn.Embedding(cfg.num_items, cfg.mf_dim)
        self.mlp_user = nn.Embedding(cfg.num_users, cfg.mlp_dim)
        self.mlp_item = nn.Embedding(cfg.num_items, cfg.mlp_dim)
        for e in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(e.weight, std=0.05)
        self.mlp = mlp_stack([2 * cfg.mlp_dim, *cfg.layers], cfg.dropout)
        self.out = nn.Linear(cfg.mf_dim + (cfg.layers[-1] if cfg.layers else 2 * cfg.mlp_dim), 1)

    def user_tables(self) -> list[nn.Embedding]:
        return [self.gmf_user, self.mlp_user]

    def item_representation(self) -> torch.Tensor:
        return torch.cat([self.gmf_item.weight, self.mlp_item.weight], dim=1)

    def score_with_user(
        self, user_rows: list[torch.Tensor], items: torch.Tensor | None, inputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        gu, mu = user_rows
        if items is None:
            items = self.all_items(gu.shape[0], self.cfg.num_items, gu.device)
        n = items.shape[1]
        gmf = gu.unsqueeze(1) * self.gmf_item(items)
        mlp = self.mlp(torch.cat([mu.unsqueeze(1).expand(-1, n, -1), self.mlp_item(items)], dim=-1))
        return self.out(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)
