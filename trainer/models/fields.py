"""Fields of the ranker models (linear, FM, DeepFM): what they share.

A ranker reads an example as fields: the user id, each user side feature, the item id and each item
side feature. A field's values are one-hot (an id, a categorical feature) or multi-hot (a feature of
width > 1, such as genres: its ``n`` known values each weigh ``x = 1/n``, so a field sums to 1). Every
value ``j`` has a linear weight ``w_j`` and, in the factorization models, an embedding ``v_j``; value 0
of a side feature is "unknown" and weighs nothing (``x = 0``; its rows are zero and never train), as in
the two-tower model.

The fields split into a user side and an item side (:class:`FieldSide`), so a score is built from one
side's terms and the other's: :meth:`FieldSide.linear` (``sum_j w_j x_j``) and
:meth:`FieldSide.embeddings` (each field's ``sum_j x_j v_j`` and the side's ``sum_j x_j^2 v_j^2``, the
two sums Rendle's O(k n) identity for the pairwise term needs).

The id fields' rows are looked up by the caller (:meth:`FieldSide.id_rows`), so a user the model does
not know can be scored from estimated id rows (fold-in) instead; such a user's side features are
scored as unknown (0), the values :func:`fold_in_values` gives.

A ranker trained on a retrieval run's candidates (``onnxrec train --candidates-from RUN``) also reads two
fields of the (user, item) pair, :class:`RetrievalFields`: the retrieval model's score of the item
(standardised with the candidates' mean and spread) and the item's rank among the user's candidates,
as one of a few log-spaced buckets (0, 1, 2-3, 4-7, ..., and one for "beyond the candidates").

A ranker trained with ``--context-fields`` also reads the interaction's context (hour of day, day of
week, time since the user's previous interaction: :mod:`~onnxrec.trainer.models.context`) as three
more user-side fields: :func:`user_side_features` lists them after the user features,
:func:`user_values` and :func:`fold_in_values` give their values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Self, cast

import torch
from torch import nn

from onnxrec.trainer.models.config import FeatureInput, ModelConfig
from onnxrec.trainer.models.context import CONTEXT_FEATURES, read_context

#: Standard deviation of the embeddings' initial values (linear weights start at zero).
INIT_STD = 0.05


@dataclass(frozen=True)
class FieldConfig(ModelConfig):
    """What every ranker's config holds: the sizes, the embedding size and the side features it reads."""

    num_users: int
    num_items: int
    dim: int = 16
    user_features: tuple[FeatureInput, ...] = field(default=())
    item_features: tuple[FeatureInput, ...] = field(default=())
    # the retrieval stage's score and rank as fields (a ranker trained on a retrieval run's candidates)
    retrieval: RetrievalFieldsConfig | None = None
    # the interaction's context (hour, weekday, time since the previous interaction) as user-side fields
    context: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        nested: dict[str, Any] = {
            k: [FeatureInput(**f) for f in d[k]] for k in ("user_features", "item_features") if k in d
        }
        if d.get("retrieval") is not None:
            nested["retrieval"] = RetrievalFieldsConfig(**d["retrieval"])
        return super().from_dict({**d, **nested})

    def with_retrieval(self, retrieval: RetrievalFieldsConfig) -> Self:
        """This config, reading retrieval's score and rank of each candidate too."""
        return replace(self, retrieval=retrieval)


def user_side_features(cfg: FieldConfig) -> tuple[FeatureInput, ...]:
    """The user side's fields after its id: the user features, then the context's when ``cfg.context``."""
    return cfg.user_features + (CONTEXT_FEATURES if cfg.context else ())


def _context(
    cfg: FieldConfig, inputs: Mapping[str, Any] | None, batch: int, device: torch.device
) -> list[torch.Tensor]:
    return read_context(inputs, batch, device) if cfg.context else []


def user_values(cfg: FieldConfig, users: torch.Tensor, inputs: Mapping[str, Any]) -> list[torch.Tensor]:
    """The user side's field values for ``users`` [B] (every field after the id, in
    :func:`user_side_features` order): the encoded user features of ``inputs`` and the context of its
    times (unknown when it holds none)."""
    values = [inputs[f"user_{f.name}"] for f in cfg.user_features]
    return values + _context(cfg, inputs, users.shape[0], users.device)


def fold_in_values(
    cfg: FieldConfig, batch: int, device: torch.device, inputs: Mapping[str, Any] | None
) -> list[torch.Tensor]:
    """:func:`user_values` of ``batch`` users known by their id rows alone (folded in): their user
    features unknown (0), the context of ``inputs``' times (unknown when None or absent)."""
    shapes = [(batch,) if f.width == 1 else (batch, f.width) for f in cfg.user_features]
    values = [torch.zeros(s, dtype=torch.long, device=device) for s in shapes]
    return values + _context(cfg, inputs, batch, device)


@dataclass(frozen=True)
class RetrievalFieldsConfig:
    """How a ranker reads the retrieval stage: the number of candidates retrieval passes it (ranks at or
    beyond it share one bucket) and the shift and scale that standardise retrieval's scores (the mean and
    standard deviation of the training candidates' scores)."""

    candidates: int
    score_shift: float
    score_scale: float

    @property
    def num_buckets(self) -> int:
        """Rank buckets: ``floor(log2(rank + 1))`` for ranks below :attr:`candidates`, and one more."""
        return int(self.candidates).bit_length() + 1


def known(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The ``x`` of a categorical feature's encoded values: 1 where known, 0 where unknown (0)."""
    return (values > 0).to(dtype)


def multi_hot_weights(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The ``x`` of a multi-hot feature's encoded values [..., width]: 1/n for each of its n known
    (non-zero) values, 0 for the padding."""
    x = known(values, dtype)
    return x / x.sum(-1, keepdim=True).clamp_min(1.0)


def _table(rows: int, width: int, std: float, padding: bool) -> nn.Embedding:
    """An embedding table with normal(0, ``std``) rows (zeros when ``std`` is 0); row 0 is zero and
    never trains when ``padding``."""
    table = nn.Embedding(rows, width, padding_idx=0 if padding else None)
    if std > 0:
        nn.init.normal_(table.weight, std=std)
    else:
        nn.init.zeros_(table.weight)
    if padding:
        with torch.no_grad():
            table.weight[0].zero_()
    return table


class FieldSide(nn.Module):
    """The fields of one side (user or item): an id field of ``num_ids`` values and one field per side
    feature in ``features``; each value has a linear weight and, when ``dim`` > 0, an embedding."""

    def __init__(self, num_ids: int, features: tuple[FeatureInput, ...], dim: int) -> None:
        super().__init__()
        self.features = features
        self.dim = dim
        self.id_lin = _table(num_ids, 1, 0.0, padding=False)
        self.feature_lin = nn.ModuleList(_table(f.cardinality, 1, 0.0, padding=True) for f in features)
        self.id_emb = _table(num_ids, dim, INIT_STD, padding=False) if dim else None
        self.feature_emb = nn.ModuleList(_table(f.cardinality, dim, INIT_STD, padding=True) for f in features if dim)

    @property
    def num_fields(self) -> int:
        """The id field and one field per side feature."""
        return 1 + len(self.features)

    def tables(self) -> list[nn.Embedding]:
        """The per-id tables: the linear weights, and the embeddings when the side has them."""
        return [self.id_lin] if self.id_emb is None else [self.id_lin, self.id_emb]

    def id_rows(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """The rows of :meth:`tables` for ``ids`` (any shape): [..., 1] and [..., dim]."""
        return [t(ids) for t in self.tables()]

    def linear(self, id_rows: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        """``sum_j w_j x_j`` over the side's fields [...], from the id field's rows (``id_rows[0]``,
        [..., 1]) and each side feature's encoded values ([...] or [..., width])."""
        out = id_rows[0].squeeze(-1)
        for f, module, v in zip(self.features, self.feature_lin, values, strict=True):
            w = cast(nn.Embedding, module)(v).squeeze(-1)
            out = out + (w * known(v, w.dtype) if f.width == 1 else (w * multi_hot_weights(v, w.dtype)).sum(-1))
        return out

    def embeddings(self, id_rows: list[torch.Tensor], values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each field's ``sum_j x_j v_j`` [..., num_fields, dim] (the id field first, from ``id_rows[1]``)
        and the side's ``sum_j x_j^2 v_j^2`` [..., dim]."""
        fields = [id_rows[1]]
        squares = id_rows[1] ** 2
        for f, module, v in zip(self.features, self.feature_emb, values, strict=True):
            e = cast(nn.Embedding, module)(v)
            if f.width == 1:
                e = e * known(v, e.dtype).unsqueeze(-1)
                fields.append(e)
                squares = squares + e**2
            else:
                xe = e * multi_hot_weights(v, e.dtype).unsqueeze(-1)  # x_j v_j [..., width, dim]
                fields.append(xe.sum(-2))
                squares = squares + (xe**2).sum(-2)
        return torch.stack(fields, dim=-2), squares


class RetrievalFields(nn.Module):
    """The pair fields of a ranker trained on a retrieval run's candidates: retrieval's score ``s`` (a
    numeric field, ``x = (s - shift) / scale``) and its rank ``r`` among the user's candidates (a one-hot
    field over log-spaced buckets ``floor(log2(r + 1))``, every rank >= ``candidates`` in the last).

    Their terms of an FM logit: each field's linear weight, their pairwise term, and, when ``dim`` > 0,
    their pairwise terms with every user and item field, ``<x v_s + v_r, S_U + S_I>`` (``S`` = a side's
    sum of field embeddings, Rendle's identity again)."""

    thresholds: torch.Tensor

    def __init__(self, cfg: RetrievalFieldsConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        # rank r is in bucket b when 2^b <= r + 1 < 2^(b+1): b = the number of thresholds 2, 4, ... <= r + 1
        limits = [2**b for b in range(1, cfg.num_buckets - 1)]
        self.register_buffer("thresholds", torch.tensor(limits, dtype=torch.long), persistent=False)
        # retrieval's order to start from: a standardised score weighs 1 (the other weights start at 0)
        self.score_lin = nn.Parameter(torch.ones(1))
        self.rank_lin = _table(cfg.num_buckets, 1, 0.0, padding=False)
        self.score_emb = nn.Parameter(torch.randn(dim) * INIT_STD) if dim else None
        self.rank_emb = _table(cfg.num_buckets, dim, INIT_STD, padding=False) if dim else None

    def buckets(self, ranks: torch.Tensor) -> torch.Tensor:
        """The bucket of each rank (int64, any shape): log-spaced below ``candidates``, the last one from it."""
        b = (ranks.unsqueeze(-1) + 1 >= self.thresholds).sum(-1)
        return torch.where(ranks >= self.cfg.candidates, torch.full_like(b, self.cfg.num_buckets - 1), b)

    def forward(self, scores: torch.Tensor, ranks: torch.Tensor, sides: torch.Tensor | None = None) -> torch.Tensor:
        """The fields' terms [B, N] for retrieval ``scores`` and ``ranks`` [B, N]; ``sides`` [B, N, dim] is
        ``S_U + S_I`` of each pair (None when ``dim`` is 0)."""
        x = (scores - self.cfg.score_shift) / self.cfg.score_scale
        b = self.buckets(ranks)
        out = self.score_lin * x + self.rank_lin(b).squeeze(-1)
        if self.score_emb is None or self.rank_emb is None or sides is None:
            return out
        v_r = self.rank_emb(b)  # [B, N, dim]
        fields = x.unsqueeze(-1) * self.score_emb + v_r
        return out + x * (v_r * self.score_emb).sum(-1) + (fields * sides).sum(-1)


def with_retrieval_inputs(scores: torch.Tensor, ranks: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``inputs`` entries of the retrieval fields' values: scores and ranks [B, N] (what
    :func:`retrieval_inputs` reads)."""
    return {"retrieval_score": scores, "retrieval_rank": ranks}


def retrieval_inputs(inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The retrieval fields' values in a model's ``inputs``: ``retrieval_score`` and ``retrieval_rank``
    [B, N] (None when absent)."""
    if "retrieval_score" not in inputs:
        return None
    return inputs["retrieval_score"], inputs["retrieval_rank"]


def self_interactions(total: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
    """The pairwise term within one side, ``sum_{i<j} <v_i, v_j> x_i x_j``, by Rendle's identity
    ``0.5 * sum_f ((sum_j x_j v_jf)^2 - sum_j x_j^2 v_jf^2)`` from ``total`` and ``squares`` [..., dim]."""
    return 0.5 * (total**2 - squares).sum(-1)


def once_per_item(
    items: torch.Tensor, side: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], dedupe: bool
) -> tuple[torch.Tensor, ...]:
    """``side(items)`` (tensors whose leading dimensions are ``items``'), computed once per distinct item
    and gathered back when ``dedupe``: a training batch's candidates repeat items, and the item side is
    most of a step's time (3-4x fewer rows on ML-100K). Its output shape depends on the data, so the
    models dedupe only in training, never in a graph the exporter traces."""
    if not dedupe:
        return side(items)
    unique, inverse = torch.unique(items, return_inverse=True)
    return tuple(t[inverse] for t in side(unique))
