"""Factorization machines (Rendle, 2010, "Factorization Machines") and DeepFM (Guo et al., 2017).

An FM scores an example's feature vector ``x`` (the fields of :mod:`~onnxrec.trainer.models.fields`)
as ``b + sum_j w_j x_j + sum_{i<j} <v_i, v_j> x_i x_j``, the pairwise term in O(k n) by Rendle's
identity ``0.5 * sum_f ((sum_j x_j v_jf)^2 - sum_j x_j^2 v_jf^2)``.

With the features split into a user side ``U`` and an item side ``I``, the pairwise term is the pairs
within ``U``, the pairs within ``I`` and ``<S_U, S_I>`` (``S`` = a side's ``sum_j x_j v_j``). So the FM
logit is exactly ``[S_U, c_U] . [S_I, 1] + c_I``, with ``c_U`` = the bias, the user side's linear terms
and its own pairs and ``c_I`` = the item side's linear terms and its own pairs: :class:`FM` is a
factorized model (its scores are user vectors times item vectors plus an item bias), exported through
the same graphs, and index, as MF.

:class:`DeepFM` adds an MLP over the concatenated field embeddings (shared with its FM part) to the FM
logit. Its first layer is split into a user part and an item part, so a catalog is scored as
``relu(W_U e_U + W_I e_I + b)`` without concatenating every (user, item) pair's embeddings.

An FM trained on a retrieval run's candidates also reads retrieval's score and rank of each candidate
(:class:`~onnxrec.trainer.models.fields.RetrievalFields`, ``cfg.retrieval``): their terms depend on
the (user, item) pair, so such an FM scores candidate lists (:meth:`FM.score_candidates`, the ``rank``
graphs of a pipeline version) and not a catalog.

Trained with ``--context-fields``, both read the interaction's context (hour, weekday, time since the
user's previous interaction) as three more user-side fields: an FM's user vector then depends on the
request's times (``inputs["request_time"]``, ``inputs["last_time"]``) and stays factorized.

Neither encodes a user it does not know: such a user is folded in from its history (its id rows are
estimated, see :meth:`~onnxrec.trainer.models.base.Recommender.user_tables`), its side features unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from onnxrec.trainer.models.base import FactorizedRecommender, Recommender
from onnxrec.trainer.models.config import ModelOptions
from onnxrec.trainer.models.fields import (
    FieldConfig,
    FieldSide,
    RetrievalFields,
    fold_in_values,
    once_per_item,
    retrieval_inputs,
    self_interactions,
    user_side_features,
    user_values,
)
from onnxrec.trainer.models.mlp import DEFAULT_LAYERS, mlp_stack


@dataclass(frozen=True)
class FMConfig(FieldConfig):
    """Sizes of an :class:`FM` model: ``dim`` is the size k of every feature's embedding."""

    @classmethod
    def from_options(cls, opts: ModelOptions) -> FMConfig:
        return cls(opts.num_users, opts.num_items, opts.dim, opts.user_features, opts.item_features)


class _Fields(nn.Module):
    """What FM and DeepFM share: the user and item fields, the global bias, and the FM terms of each
    side (:meth:`user_terms`, :meth:`item_terms`)."""

    def __init__(self, cfg: FieldConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.user = FieldSide(cfg.num_users, user_side_features(cfg), cfg.dim)
        self.item = FieldSide(cfg.num_items, cfg.item_features, cfg.dim)
        self.bias = nn.Parameter(torch.zeros(1))
        self.retrieval = RetrievalFields(cfg.retrieval, cfg.dim) if cfg.retrieval is not None else None

    def user_values(self, users: torch.Tensor, inputs: dict[str, Any]) -> list[torch.Tensor]:
        """The user side's values in ``inputs`` (features, then the context when the model reads it)."""
        return user_values(self.cfg, users, inputs)

    def fold_in_values(self, rows: list[torch.Tensor], inputs: Mapping[str, Any] | None) -> list[torch.Tensor]:
        """The user side's values of users given by id ``rows``: features unknown, the context of ``inputs``."""
        return fold_in_values(self.cfg, rows[0].shape[0], rows[0].device, inputs)

    def user_terms(self, rows: list[torch.Tensor], values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The user side from its id rows and field values: its field embeddings [B, F_U, k] and
        ``c_U`` [B] (bias + linear terms + the pairs within the side)."""
        fields, squares = self.user.embeddings(rows, values)
        return fields, self.bias + self.user.linear(rows, values) + self_interactions(fields.sum(-2), squares)

    def item_terms(self, items: torch.Tensor, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The item side of ``items`` (any shape) with their encoded ``features``: field embeddings
        [..., F_I, k] and ``c_I`` [...] (linear terms + the pairs within the side)."""
        rows = self.item.id_rows(items)
        fields, squares = self.item.embeddings(rows, features)
        return fields, self.item.linear(rows, features) + self_interactions(fields.sum(-2), squares)


class FM(FactorizedRecommender):
    """score(u, i) = FM logit of the user's and the item's fields = ``[S_U, c_U] . [S_I, 1] + c_I``."""

    cfg: FMConfig

    def __init__(self, cfg: FMConfig) -> None:
        super().__init__(cfg)
        self.fields = _Fields(cfg)

    def _item_terms(self, items: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if items is None:
            items = torch.arange(self.cfg.num_items, device=self.fields.bias.device)
        return self.fields.item_terms(items, self.item_feature_rows(items))

    def _user_vectors(self, rows: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        fields, const = self.fields.user_terms(rows, values)
        return torch.cat([fields.sum(-2), const.unsqueeze(-1)], dim=-1)

    def user_vectors(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """``[S_U, c_U]`` [B, k + 1]."""
        return self._user_vectors(self.fields.user.id_rows(users), self.fields.user_values(users, inputs))

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """``[S_I, 1]`` [N, k + 1]."""
        total = self._item_terms(items)[0].sum(-2)
        return torch.cat([total, torch.ones_like(total[..., :1])], dim=-1)

    def item_bias(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """``c_I`` [N]."""
        return self._item_terms(items)[1]

    def user_tables(self) -> list[nn.Embedding]:
        return self.fields.user.tables()

    def fold_in_user_vectors(
        self, user_rows: list[torch.Tensor], inputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        """The user vector of the id rows ``user_rows``, the user's side features unknown and the context
        that of ``inputs``' times: exactly :meth:`score_with_user`'s scores."""
        return self._user_vectors(user_rows, self.fields.fold_in_values(user_rows, inputs))

    @property
    def reads_retrieval(self) -> bool:
        return self.fields.retrieval is not None

    def score_with_user(
        self, user_rows: list[torch.Tensor], items: torch.Tensor | None, inputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        retrieval = retrieval_inputs(inputs) if inputs is not None else None
        return self._scores(self.fold_in_user_vectors(user_rows, inputs), items, retrieval)

    def score_all(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        if self.reads_retrieval:
            raise ValueError("this FM reads retrieval's score and rank: it scores candidate lists, not a catalog")
        return super().score_all(users, inputs)

    def score_candidates(self, users: torch.Tensor, items: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """The factorized form with the item side computed once (not once for the vectors and again for
        the biases): most of a training step's time; plus the retrieval fields' terms when the model
        reads them (``inputs["retrieval_score"]``, ``inputs["retrieval_rank"]``)."""
        return self._scores(self.user_vectors(users, inputs), items, retrieval_inputs(inputs))

    def retrieval_term(
        self, u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor, ranks: torch.Tensor
    ) -> torch.Tensor:
        """The retrieval fields' terms [B, N] from user vectors ``u`` [B, k + 1] and the candidates' item
        vectors ``v`` [B, N, k + 1] (``[S_U, c_U]`` and ``[S_I, 1]``)."""
        if self.fields.retrieval is None:
            raise ValueError("this FM was not trained on a retrieval run's candidates")
        return self.fields.retrieval(scores, ranks, u[:, None, :-1] + v[..., :-1])

    def _item_side(self, items: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``S_I`` [..., k] and ``c_I`` [...] of ``items`` (None: every item)."""
        fields, c_i = self._item_terms(items)
        return fields.sum(-2), c_i

    def _scores(
        self, u: torch.Tensor, items: torch.Tensor | None, retrieval: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``u @ [S_I, 1] + c_I`` for ``items`` [B, N] (None: every item), from user vectors ``u`` [B, k + 1];
        plus the retrieval fields' terms of ``retrieval`` (scores, ranks [B, N]) when the model reads them."""
        if self.fields.retrieval is not None and (retrieval is None or items is None):
            raise ValueError("this FM reads retrieval's score and rank: give them for a candidate list")
        if items is None:
            s_i, c_i = self._item_side(None)
            return u[:, :-1] @ s_i.T + u[:, -1:] + c_i
        s_i, c_i = once_per_item(items, self._item_side, self.training)
        out = torch.einsum("bd,bnd->bn", u[:, :-1], s_i) + u[:, -1:] + c_i
        if self.fields.retrieval is not None and retrieval is not None:
            out = out + self.fields.retrieval(*retrieval, u[:, None, :-1] + s_i)
        return out

    def item_representation(self) -> torch.Tensor:
        """``S_I``, the sum of the item's field embeddings."""
        return self._item_terms(None)[0].sum(-2)


@dataclass(frozen=True)
class DeepFMConfig(FieldConfig):
    """Sizes of a :class:`DeepFM` model: the field embedding size and the MLP's hidden layers."""

    layers: tuple[int, ...] = DEFAULT_LAYERS
    dropout: float = 0.0

    @classmethod
    def from_options(cls, opts: ModelOptions) -> DeepFMConfig:
        return cls(
            opts.num_users,
            opts.num_items,
            opts.dim,
            opts.user_features,
            opts.item_features,
            layers=opts.layers or DEFAULT_LAYERS,
            dropout=opts.dropout,
        )


class DeepFM(Recommender):
    """score(u, i) = FM logit + MLP(concatenated field embeddings), the embeddings shared."""

    cfg: DeepFMConfig

    def __init__(self, cfg: DeepFMConfig) -> None:
        super().__init__(cfg)
        self.fields = _Fields(cfg)
        width = (self.fields.user.num_fields + self.fields.item.num_fields) * cfg.dim
        self.deep = nn.Sequential(
            *mlp_stack([width, *cfg.layers], cfg.dropout), nn.Linear(cfg.layers[-1] if cfg.layers else width, 1)
        )

    def user_tables(self) -> list[nn.Embedding]:
        return self.fields.user.tables()

    def item_representation(self) -> torch.Tensor:
        """The sum of the item's field embeddings (FM's ``S_I``)."""
        items = torch.arange(self.cfg.num_items, device=self.fields.bias.device)
        return self.fields.item_terms(items, self.item_feature_rows(items))[0].sum(-2)

    def score_with_user(
        self, user_rows: list[torch.Tensor], items: torch.Tensor | None, inputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        """Scores of a user given by its id rows, its side features unknown (the context of ``inputs``)."""
        return self._score(user_rows, self.fields.fold_in_values(user_rows, inputs), items)

    def score_candidates(self, users: torch.Tensor, items: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        return self._score(self.fields.user.id_rows(users), self.fields.user_values(users, inputs), items)

    def score_all(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        return self._score(self.fields.user.id_rows(users), self.fields.user_values(users, inputs), None)

    def _score(self, rows: list[torch.Tensor], values: list[torch.Tensor], items: torch.Tensor | None) -> torch.Tensor:
        """FM + MLP logits [B, N] of the user (id rows, features) for ``items`` [B, N] (None: every
        item, whose side is computed once for the batch)."""
        u_fields, c_u = self.fields.user_terms(rows, values)  # [B, F_U, k], [B]
        s_u = u_fields.sum(-2)
        # the first layer on [e_U, e_I] is W_U e_U + W_I e_I + b: the user part once per user
        first = self._first_layer()
        h_u = u_fields.flatten(-2) @ first.weight[:, : u_fields.shape[-2] * self.cfg.dim].T + first.bias  # [B, h]
        if items is None:  # the item side once for the batch
            s_i, c_i, h_i = self._item_side(torch.arange(self.cfg.num_items, device=c_u.device))
            fm = s_u @ s_i.T + c_u.unsqueeze(-1) + c_i.unsqueeze(0)
            hidden = h_u.unsqueeze(1) + h_i.unsqueeze(0)
        else:
            s_i, c_i, h_i = once_per_item(items, self._item_side, self.training)  # [B, N, ...]
            fm = torch.einsum("bd,bnd->bn", s_u, s_i) + c_u.unsqueeze(-1) + c_i
            hidden = h_u.unsqueeze(1) + h_i
        return fm + self.deep[1:](hidden).squeeze(-1)

    def _first_layer(self) -> nn.Linear:
        first = self.deep[0]
        assert isinstance(first, nn.Linear)
        return first

    def _item_side(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Of ``items`` (any shape): ``S_I`` [..., k], ``c_I`` [...] and ``W_I e_I`` [..., h], the item
        part of the MLP's first layer."""
        fields, c_i = self.fields.item_terms(items, self.item_feature_rows(items))
        split = self.fields.user.num_fields * self.cfg.dim
        return fields.sum(-2), c_i, fields.flatten(-2) @ self._first_layer().weight[:, split:].T
