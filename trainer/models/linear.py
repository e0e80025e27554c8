"""The linear model: logistic regression over the user's and the item's fields.

score(u, i) = ``b + sum_j w_j x_j`` over the fields of :mod:`~onnxrec.trainer.models.fields` (user id,
user side features, item id, item side features), a logit: the sigmoid lives in the BCE loss. Each
value's weight is a 1-dim embedding row. The score splits into a user part ``c_U`` (the bias and the
user side's terms) and an item part ``c_I``, so the model is factorized with 1-dim vectors:
``[c_U] . [1] + c_I``.

A user the model does not know is folded in from its history (its id weight estimated), its side
features unknown; a user's part does not change its ranking, so it ranks items by ``c_I``.

Trained on a retrieval run's candidates, it also weighs retrieval's score and rank of each candidate
(:class:`~onnxrec.trainer.models.fields.RetrievalFields`, linear terms only). With ``--context-fields``
it weighs the interaction's context too; being user-side terms only, they change a user's scores, not
their order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from onnxrec.trainer.models.base import FactorizedRecommender
from onnxrec.trainer.models.config import ModelOptions
from onnxrec.trainer.models.fields import (
    FieldConfig,
    FieldSide,
    RetrievalFields,
    fold_in_values,
    multi_hot_weights,
    retrieval_inputs,
    user_side_features,
    user_values,
)


@dataclass(frozen=True)
class LinearConfig(FieldConfig):
    """Sizes of a :class:`Linear` model (``dim`` is unused: every weight is one number)."""

    dim: int = 0

    @classmethod
    def from_options(cls, opts: ModelOptions) -> LinearConfig:
        return cls(opts.num_users, opts.num_items, 0, opts.user_features, opts.item_features)


class Linear(FactorizedRecommender):
    """score(u, i) = w . x + b over the user and item fields = ``[c_U] . [1] + c_I``."""

    cfg: LinearConfig

    def __init__(self, cfg: LinearConfig) -> None:
        super().__init__(cfg)
        self.user = FieldSide(cfg.num_users, user_side_features(cfg), 0)
        self.item = FieldSide(cfg.num_items, cfg.item_features, 0)
        self.bias = nn.Parameter(torch.zeros(1))
        self.retrieval = RetrievalFields(cfg.retrieval, 0) if cfg.retrieval is not None else None

    @property
    def reads_retrieval(self) -> bool:
        return self.retrieval is not None

    def _retrieval(self, scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        if self.retrieval is None:
            raise ValueError("this linear model was not trained on a retrieval run's candidates")
        return self.retrieval(scores, ranks)

    def retrieval_term(
        self, u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor, ranks: torch.Tensor
    ) -> torch.Tensor:
        """The retrieval fields' weights [B, N] (a linear model has no pairwise terms)."""
        return self._retrieval(scores, ranks)

    def score_candidates(self, users: torch.Tensor, items: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        out = super().score_candidates(users, items, inputs)
        retrieval = retrieval_inputs(inputs)
        if self.retrieval is not None:
            if retrieval is None:
                raise ValueError("this linear model reads retrieval's score and rank: give them")
            out = out + self._retrieval(*retrieval)
        return out

    def score_all(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        if self.retrieval is not None:
            raise ValueError("this linear model reads retrieval's score and rank: it scores candidate lists")
        return super().score_all(users, inputs)

    def _all(self, items: torch.Tensor | None) -> torch.Tensor:
        return torch.arange(self.cfg.num_items, device=self.bias.device) if items is None else items

    def user_vectors(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """``[c_U]`` [B, 1]: the bias and the user id's and user features' weights."""
        values = user_values(self.cfg, users, inputs)
        return (self.bias + self.user.linear(self.user.id_rows(users), values)).unsqueeze(-1)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Ones [N, 1]: the user part weighs the same for every item."""
        return torch.ones(self._all(items).shape[0], 1, dtype=self.bias.dtype, device=self.bias.device)

    def item_bias(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """``c_I`` [N]: the item id's and item features' weights."""
        items = self._all(items)
        return self.item.linear(self.item.id_rows(items), self.item_feature_rows(items))

    def user_tables(self) -> list[nn.Embedding]:
        return self.user.tables()

    def fold_in_user_vectors(
        self, user_rows: list[torch.Tensor], inputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        """``[c_U]`` of the id weight ``user_rows[0]``, the user's side features unknown, the context that
        of ``inputs``' times."""
        values = fold_in_values(self.cfg, user_rows[0].shape[0], self.bias.device, inputs)
        return (self.bias + self.user.linear(user_rows, values)).unsqueeze(-1)

    def score_with_user(
        self, user_rows: list[torch.Tensor], items: torch.Tensor | None, inputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        u = self.fold_in_user_vectors(user_rows, inputs)  # [B, 1]
        if items is None:
            return self._checked(u + self.item_bias().unsqueeze(0), None)
        out = u + self.item_bias(items.reshape(-1)).reshape(items.shape)
        return self._checked(out, retrieval_inputs(inputs) if inputs is not None else None)

    def _checked(self, out: torch.Tensor, retrieval: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """``out`` plus the retrieval fields' weights of ``retrieval`` when the model reads them."""
        if self.retrieval is None:
            return out
        if retrieval is None:
            raise ValueError("this linear model reads retrieval's score and rank: give them for a candidate list")
        return out + self._retrieval(*retrieval)

    def item_representation(self) -> torch.Tensor:
        """Per item, each of its side-feature values' contribution to the logit (``w_j x_j`` at the
        value's position, one block per feature) and its id weight: items alike where their features'
        weights are; only the id weight when there are no item features."""
        items = self._all(None)
        parts = [self.item.id_lin(items)]
        for f, module, v in zip(
            self.cfg.item_features, self.item.feature_lin, self.item_feature_rows(items), strict=True
        ):
            w = cast(nn.Embedding, module).weight.squeeze(-1)  # [cardinality]
            x = F.one_hot(v, f.cardinality).to(w.dtype)  # [N, cardinality] or [N, width, cardinality]
            if f.width > 1:
                x = (x * multi_hot_weights(v, w.dtype).unsqueeze(-1)).sum(-2)
            parts.append(x * w)
        return torch.cat(parts, dim=-1)
