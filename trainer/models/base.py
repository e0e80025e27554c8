"""The model contract: what every recommender network computes and states about itself.

The exporter reads a model only through this contract, never its class:

* **sizes**: :attr:`num_users`, :attr:`num_items` (from ``cfg``);
* **inputs and features**: :attr:`history_len` (how many recent items ``inputs["history"]`` holds;
  0 = the model reads no history), :attr:`user_feature_names` (read as ``inputs["user_<name>"]``),
  :attr:`item_feature_names` (carried by the model, given once by :meth:`set_item_features`);
* **a full-catalog scorer**: :meth:`score_all`, and :meth:`score_candidates` for given items;
* **user and item vectors**: when :attr:`factorized`, a score is
  ``user_vectors(users, inputs) @ item_vectors().T + item_bias()``, so known users' vectors can be
  computed once at export;
* **history fold-in** of a user the model does not know: when :attr:`encodes_unknown_users`, the
  model's own user encoder takes user ``-1`` with its history and features; otherwise the user's rows
  of :meth:`user_tables` are estimated from its history and scored by :meth:`score_with_user` (a
  factorized model also turns such rows into its user vector: :meth:`fold_in_user_vectors`);
* **item similarity**: :meth:`item_representation`;
* **item text** (optional): :attr:`reads_item_text`, and :meth:`with_new_text_items` to serve items
  added after training from their text alone.

``inputs`` is a dict of per-user tensors: ``history`` [B, H] (item indices, newest first, -1 pads),
``user_<name>`` [B] per user feature, and optionally ``item_table`` ([num_items, D], the item vectors
of a factorized model when the caller already has them, so the history need not recompute them); a
ranker also reads retrieval's scores and ranks of its candidates and the request's times, when it
reads them (:meth:`Recommender.retrieval_inputs`, :meth:`Recommender.context_inputs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from onnxrec.trainer.models.config import ModelConfig
from onnxrec.trainer.models.context import context_inputs
from onnxrec.trainer.models.fields import with_retrieval_inputs


class Recommender(nn.Module):
    """A scoring network over contiguous user and item indices, built from its config ``cfg``.

    A subclass implements either :meth:`user_tables` and :meth:`score_with_user` (the defaults of
    :meth:`score_candidates` and :meth:`score_all` use them) or, being :attr:`factorized`, the vector
    methods (see :class:`FactorizedRecommender`); and :meth:`item_representation`."""

    #: Whether scores are ``user_vectors(...) @ item_vectors().T + item_bias()``.
    factorized: bool = False
    #: Whether :meth:`user_vectors` builds a vector for a user the model does not know (index -1) from
    #: ``inputs`` alone (history, user features); if not, such users are folded in by :meth:`user_tables`.
    encodes_unknown_users: bool = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg

    # ------------------------------------------------------------------ sizes, inputs, features
    @property
    def num_users(self) -> int:
        """Users the model knows (indices 0 .. num_users - 1)."""
        return self.cfg.num_users

    @property
    def num_items(self) -> int:
        """Items in the catalog (indices 0 .. num_items - 1)."""
        return self.cfg.num_items

    @property
    def history_len(self) -> int:
        """How many of a user's most recent items the model reads (``inputs["history"]``); 0 = none."""
        return 0

    @property
    def user_feature_names(self) -> tuple[str, ...]:
        """The user side features the model reads, each as ``inputs["user_<name>"]`` [B] (encoded): those
        of its config's ``user_features`` (:class:`~onnxrec.trainer.models.config.FeatureInput`), if any."""
        return tuple(f.name for f in getattr(self.cfg, "user_features", ()))

    @property
    def item_feature_names(self) -> tuple[str, ...]:
        """The item side features the model carries (see :meth:`set_item_features`): those of its config's
        ``item_features``, if any."""
        return tuple(f.name for f in getattr(self.cfg, "item_features", ()))

    def set_item_features(self, features: Mapping[str, torch.Tensor]) -> None:
        """Give the model the encoded item features it reads (row = item index; features it does not
        read are ignored); they are saved with its weights."""
        for name in self.item_feature_names:
            self.register_buffer(f"item_feature_{name}", features[name].long())

    def item_feature_rows(self, items: torch.Tensor) -> list[torch.Tensor]:
        """The encoded item features of ``items``, one tensor per :attr:`item_feature_names` entry."""
        return [getattr(self, f"item_feature_{name}")[items] for name in self.item_feature_names]

    # ------------------------------------------------------------------ scoring
    def score_candidates(self, users: torch.Tensor, items: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """Scores (logits) of ``items`` [B, N] for ``users`` [B] -> [B, N]."""
        return self.score_with_user([t(users) for t in self.user_tables()], items)

    def score_all(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """Scores of every item for ``users`` [B] -> [B, num_items]."""
        return self.score_with_user([t(users) for t in self.user_tables()], None)

    def user_tables(self) -> list[nn.Embedding]:
        """The per-user embedding tables; a user unknown to the model is folded in by giving
        :meth:`score_with_user` rows built from its history instead of rows of these tables."""
        raise NotImplementedError(f"{type(self).__name__} has no per-user tables")

    def score_with_user(
        self, user_rows: list[torch.Tensor], items: torch.Tensor | None, inputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        """Scores from explicit user rows (one [B, d] tensor per :meth:`user_tables` entry) for
        ``items`` [B, N], or for every item when ``items`` is None -> [B, N or num_items]. A model that
        reads user side features scores such a user with every feature unknown (0): the rows are all
        it is given. ``inputs`` holds what a ranker reads besides the user, when it reads it: retrieval's
        scores and ranks of ``items`` (:attr:`reads_retrieval`), the request's times
        (:attr:`reads_context`)."""
        raise NotImplementedError(f"{type(self).__name__} does not score from user rows")

    def item_representation(self) -> torch.Tensor:
        """One vector per item [num_items, d] whose cosine similarity says how alike items are."""
        raise NotImplementedError(f"{type(self).__name__} has no item representation")

    # ------------------------------------------------------------------ item text
    @property
    def reads_item_text(self) -> bool:
        """Whether the item tower reads item text vectors (trained with ``--item-text``)."""
        return False

    def set_item_text(self, vectors: torch.Tensor) -> None:
        """Give the model every item's text vector ([num_items, text dim], row = item index) in its
        ``item_text`` buffer (models that :attr:`reads_item_text`)."""
        if not self.reads_item_text:
            raise NotImplementedError(f"{type(self).__name__} reads no item text")
        table = cast(torch.Tensor, self.item_text)
        if vectors.shape != table.shape:
            raise ValueError(f"item text vectors {tuple(vectors.shape)}, expected {tuple(table.shape)}")
        table.copy_(vectors)

    def with_new_text_items(self, text: torch.Tensor) -> tuple[Recommender, float]:
        """A copy of the model whose catalog also holds items known only by their text vectors
        ``text`` [N, text dim], as items ``num_items .. num_items + N - 1``, and the bias they were given
        (models that :attr:`reads_item_text`)."""
        raise NotImplementedError(f"{type(self).__name__} reads no item text")

    # ------------------------------------------------------------------ a ranker's retrieval fields
    @property
    def reads_retrieval(self) -> bool:
        """Whether the model also reads retrieval's score and rank of each candidate (``inputs
        ["retrieval_score"]``, ``inputs["retrieval_rank"]`` [B, N]): an FM or linear ranker trained on a
        retrieval run's candidates. Such a model scores candidate lists, never a whole catalog."""
        return False

    @property
    def reads_context(self) -> bool:
        """Whether the model also reads the interaction's context (hour, weekday, time since the user's
        previous interaction) from ``inputs["request_time"]`` and ``inputs["last_time"]`` [B] (unix
        seconds; a ranker trained with ``--context-fields``, :mod:`~onnxrec.trainer.models.context`)."""
        return bool(getattr(self.cfg, "context", False))

    @staticmethod
    def retrieval_inputs(scores: torch.Tensor, ranks: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``inputs`` entries of retrieval's ``scores`` and ``ranks`` of candidates [B, N]."""
        return with_retrieval_inputs(scores, ranks)

    @staticmethod
    def context_inputs(request_time: torch.Tensor, last_time: torch.Tensor) -> dict[str, torch.Tensor]:
        """The ``inputs`` entries of the request's times [B] (unix seconds; ``last_time`` -1: none)."""
        return context_inputs(request_time, last_time)

    def retrieval_term(
        self, u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor, ranks: torch.Tensor
    ) -> torch.Tensor:
        """The retrieval fields' part [B, N] of the scores of candidates whose item vectors are ``v``
        [B, N, D], for user vectors ``u`` [B, D] (:attr:`reads_retrieval` models)."""
        raise NotImplementedError(f"{type(self).__name__} reads no retrieval fields")

    # ------------------------------------------------------------------ factorized models
    def user_vectors(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """User vectors [B, D] (:attr:`factorized` models)."""
        raise NotImplementedError(f"{type(self).__name__} is not factorized")

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors [N, D], of every item when ``items`` is None (:attr:`factorized` models)."""
        raise NotImplementedError(f"{type(self).__name__} is not factorized")

    def item_bias(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item biases [N], of every item when ``items`` is None (:attr:`factorized` models)."""
        raise NotImplementedError(f"{type(self).__name__} is not factorized")

    def fold_in_user_vectors(self, user_rows: list[torch.Tensor]) -> torch.Tensor:
        """User vectors [B, D] from explicit user rows (one [B, d] tensor per :meth:`user_tables`
        entry), for :attr:`factorized` models that do not encode unknown users:
        ``fold_in_user_vectors(rows) @ item_vectors().T + item_bias()`` is ``score_with_user(rows, None)``
        up to a constant per row (a user bias), which changes no ranking."""
        raise NotImplementedError(f"{type(self).__name__} builds no user vector from user rows")

    @staticmethod
    def all_items(batch: int, n: int, device: torch.device) -> torch.Tensor:
        """[batch, n] item indices 0..n-1 per row."""
        return torch.arange(n, device=device).unsqueeze(0).expand(batch, n)


class FactorizedRecommender(Recommender):
    """A model whose score is a dot product of a user vector and an item vector, plus an item bias:
    it implements :meth:`user_vectors`, :meth:`item_vectors` and :meth:`item_bias`, and scores,
    candidates and item similarity follow from them."""

    factorized = True

    def score_candidates(self, users: torch.Tensor, items: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        u = self.user_vectors(users, inputs)  # [B, D]
        flat = items.reshape(-1)
        v = self.item_vectors(flat).reshape(*items.shape, -1)  # [B, N, D]
        return torch.einsum("bd,bnd->bn", u, v) + self.item_bias(flat).reshape(items.shape)

    def score_all(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        return self.user_vectors(users, inputs) @ self.item_vectors().T + self.item_bias()

    def item_representation(self) -> torch.Tensor:
        return self.item_vectors()
