"""Two-tower model: a user tower and an item tower meet in a dot product.

The item tower embeds the item id and the item's side features. The user tower embeds the user id,
the user's side features and the user's recent history (a learned recency-weighted mean of the
history items' tower outputs), and, trained as a ranker with ``--context-fields``, the interaction's
context (:mod:`~onnxrec.trainer.models.context`) like three more user features. Ids pass through
index 0 = "unknown", and training drops ids at random (``id_dropout``), so a user or item unseen in
training but with features or a history still gets a sensible vector.

With ``text_dim`` > 0 the item tower also reads each item's text vector (``data prepare --item-text``,
a buffer given once by ``set_item_text`` and saved with the weights) through a linear
projection, so an item nobody has interacted with, or one added after training with only its text
(:meth:`TwoTower.text_item_vectors`), gets a vector from what it is about.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from onnxrec.trainer.models.base import FactorizedRecommender
from onnxrec.trainer.models.config import FeatureInput, ModelConfig, ModelOptions
from onnxrec.trainer.models.context import CONTEXT_FEATURES, read_context
from onnxrec.trainer.models.mlp import mlp_stack

DEFAULT_HIDDEN = (128,)


@dataclass(frozen=True)
class TwoTowerConfig(ModelConfig):
    """Sizes of a :class:`TwoTower` model."""

    num_users: int
    num_items: int
    dim: int = 64
    feature_dim: int = 16
    user_features: tuple[FeatureInput, ...] = field(default=())
    item_features: tuple[FeatureInput, ...] = field(default=())
    history_len: int = 0  # 0 = no history input
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    dropout: float = 0.0
    id_dropout: float = 0.0
    text_dim: int = 0  # 0 = no item text input
    context: bool = False  # the user tower also reads the interaction's context (trained as a ranker)

    @classmethod
    def from_options(cls, opts: ModelOptions) -> TwoTowerConfig:
        return cls(
            num_users=opts.num_users,
            num_items=opts.num_items,
            dim=opts.dim,
            feature_dim=opts.feature_dim,
            user_features=opts.user_features,
            item_features=opts.item_features,
            history_len=opts.history_len,
            hidden=opts.layers or DEFAULT_HIDDEN,
            dropout=opts.dropout,
            id_dropout=opts.id_dropout,
            text_dim=opts.text_dim,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TwoTowerConfig:
        features = {k: [FeatureInput(**f) for f in d[k]] for k in ("user_features", "item_features") if k in d}
        return super().from_dict({**d, **features})


class _FeatureEmbeddings(nn.Module):
    def __init__(self, features: tuple[FeatureInput, ...], dim: int) -> None:
        super().__init__()
        self.features = features
        embeddings = [nn.Embedding(f.cardinality, dim, padding_idx=0) for f in features]
        self.emb = nn.ModuleList(embeddings)
        self.dim = dim
        for e in embeddings:
            nn.init.normal_(e.weight, std=0.05)
            with torch.no_grad():
                e.weight[0].zero_()

    @property
    def out_dim(self) -> int:
        return self.dim * len(self.features)

    def forward(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for f, module, v in zip(self.features, self.emb, values, strict=True):
            e = cast(nn.Embedding, module)
            if f.width == 1:
                out.append(e(v))
            else:  # mean over the non-padding entries
                mask = (v > 0).unsqueeze(-1).to(e.weight.dtype)
                out.append((e(v) * mask).sum(-2) / mask.sum(-2).clamp_min(1.0))
        return out


class TwoTower(FactorizedRecommender):
    """score(u, i) = <user_tower(u), item_tower(i)> + b_i."""

    cfg: TwoTowerConfig
    encodes_unknown_users = True  # id 0 is "unknown": features and history alone make the vector

    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__(cfg)
        d = cfg.dim
        self.user_id = nn.Embedding(cfg.num_users + 1, d, padding_idx=0)
        self.item_id = nn.Embedding(cfg.num_items + 1, d, padding_idx=0)
        nn.init.normal_(self.user_id.weight, std=0.05)
        nn.init.normal_(self.item_id.weight, std=0.05)
        self.user_feats = _FeatureEmbeddings(
            cfg.user_features + (CONTEXT_FEATURES if cfg.context else ()), cfg.feature_dim
        )
        self.item_feats = _FeatureEmbeddings(cfg.item_features, cfg.feature_dim)
        self.item_b = nn.Parameter(torch.zeros(cfg.num_items))
        user_in = d + self.user_feats.out_dim + (d if cfg.history_len else 0)
        item_in = d + self.item_feats.out_dim + (d if cfg.text_dim else 0)
        if cfg.text_dim:
            self.item_text_proj = nn.Linear(cfg.text_dim, d, bias=False)
            self.register_buffer("item_text", torch.zeros(cfg.num_items, cfg.text_dim))
        self.user_mlp = nn.Sequential(
            mlp_stack([user_in, *cfg.hidden], cfg.dropout), nn.Linear(cfg.hidden[-1] if cfg.hidden else user_in, d)
        )
        self.item_mlp = nn.Sequential(
            mlp_stack([item_in, *cfg.hidden], cfg.dropout), nn.Linear(cfg.hidden[-1] if cfg.hidden else item_in, d)
        )
        # recency weights: position 0 is the newest history item
        self.recency = nn.Parameter(torch.zeros(max(cfg.history_len, 1)))

    @property
    def history_len(self) -> int:
        return self.cfg.history_len

    def _ids(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """Index + 1, with 0 for out-of-range (unknown) ids and, in training, for dropped ids."""
        ids = torch.where((idx >= 0) & (idx < n), idx + 1, torch.zeros_like(idx))
        if self.training and self.cfg.id_dropout > 0:
            drop = torch.rand(ids.shape, device=ids.device) < self.cfg.id_dropout
            ids = ids.masked_fill(drop, 0)
        return ids

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        if items is None:
            items = torch.arange(self.cfg.num_items, device=self.item_b.device)
        x = [self.item_id(self._ids(items, self.cfg.num_items)), *self.item_feats(self.item_feature_rows(items))]
        if self.cfg.text_dim:
            x.append(self.item_text_proj(cast(torch.Tensor, self.item_text)[items]))
        return self.item_mlp(torch.cat(x, dim=-1))

    @property
    def reads_item_text(self) -> bool:
        return self.cfg.text_dim > 0

    def with_new_text_items(self, text: torch.Tensor) -> tuple[TwoTower, float]:
        """Items appended with the unknown id's embedding row, unknown side features, their text vectors
        and the median of the trained items' biases (a typical item): their vectors are exactly
        :meth:`text_item_vectors`."""
        if not self.reads_item_text:
            raise NotImplementedError("this two-tower model was trained without item text")
        n = text.shape[0]
        state = self.state_dict()
        bias = float(torch.median(state["item_b"]).item())
        grown: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key == "item_id.weight":  # row 0 is the unknown id
                grown[key] = torch.cat([value, value[:1].expand(n, -1)])
            elif key == "item_b":
                grown[key] = torch.cat([value, value.new_full((n,), bias)])
            elif key == "item_text":
                grown[key] = torch.cat([value, text.to(value.dtype)])
            elif key.startswith("item_feature_"):  # side features unknown (index 0)
                grown[key] = torch.cat([value, value.new_zeros((n, *value.shape[1:]))])
            else:
                grown[key] = value
        bigger = TwoTower(dataclasses.replace(self.cfg, num_items=self.cfg.num_items + n))
        feats = {k[len("item_feature_") :]: v for k, v in grown.items() if k.startswith("item_feature_")}
        if feats:
            bigger.set_item_features(feats)
        bigger.load_state_dict(grown)
        return bigger.train(self.training), bias

    def text_item_vectors(self, text: torch.Tensor) -> torch.Tensor:
        """Vectors [N, D] of items the model does not know, from their text vectors [N, text_dim] alone:
        the item tower with the id and every side feature unknown (index 0)."""
        n = text.shape[0]
        unknown = torch.zeros(n, dtype=torch.long, device=text.device)
        feats = [unknown if f.width == 1 else unknown.new_zeros(n, f.width) for f in self.cfg.item_features]
        x = [self.item_id(unknown), *self.item_feats(feats), self.item_text_proj(text)]
        return self.item_mlp(torch.cat(x, dim=-1))

    def item_bias(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_b if items is None else self.item_b[items]

    def history_vector(self, history: torch.Tensor, item_table: torch.Tensor | None = None) -> torch.Tensor:
        """Recency-weighted mean of the history items' vectors; ``history`` [B, H], newest first,
        padded with -1. ``item_table`` ([num_items, D]) avoids recomputing the item tower."""
        mask = history >= 0
        safe = history.clamp_min(0)
        vecs = (
            item_table[safe]
            if item_table is not None
            else self.item_vectors(safe.reshape(-1)).reshape(*history.shape, -1)
        )
        w = self.recency[: history.shape[1]].unsqueeze(0).expand(history.shape[0], -1)
        w = w.masked_fill(~mask, float("-inf"))
        w = torch.nan_to_num(torch.softmax(w, dim=1), nan=0.0)
        return (w.unsqueeze(-1) * vecs).sum(1)

    def user_vectors(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        x = [self.user_id(self._ids(users, self.cfg.num_users))]
        values = [inputs[f"user_{f.name}"] for f in self.cfg.user_features]
        if self.cfg.context:
            values += read_context(inputs, users.shape[0], users.device)
        x += self.user_feats(values)
        if self.history_len:
            x.append(self.history_vector(inputs["history"], inputs.get("item_table")))
        return self.user_mlp(torch.cat(x, dim=-1))
