"""The interface every recommender network implements."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Recommender(nn.Module):
    """A scoring network over contiguous user and item indices.

    ``inputs`` is a dict of extra per-user tensors some models take (``history`` [B, H] item indices
    padded with -1, and user feature tensors); models that need none ignore it.
    """

    #: Whether scores come from ``user_vectors(...) @ item_vectors().T + item_bias()``.
    factorized: bool = False
    #: Whether the model reads the user's recent history (``inputs["history"]``).
    uses_history: bool = False

    def score_candidates(self, users: torch.Tensor, items: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """Scores (logits) of ``items`` [B, N] for ``users`` [B] -> [B, N]."""
        raise NotImplementedError

    def score_all(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """Scores of every item for ``users`` [B] -> [B, num_items]."""
        return self.score_with_user([t(users) for t in self.user_tables()], None)

    def user_tables(self) -> list[nn.Embedding]:
        """The per-user embedding tables; a user unknown to the model can be folded in by giving
        :meth:`score_with_user` rows built from its history instead of rows of these tables."""
        raise NotImplementedError

    def score_with_user(self, user_rows: list[torch.Tensor], items: torch.Tensor | None) -> torch.Tensor:
        """Scores from explicit user rows (one [B, d] tensor per :meth:`user_tables` entry) for
        ``items`` [B, N], or for every item when ``items`` is None -> [B, N or num_items]."""
        raise NotImplementedError

    def item_representation(self) -> torch.Tensor:
        """One vector per item [num_items, d] whose cosine similarity says how alike items are."""
        raise NotImplementedError

    @staticmethod
    def all_items(batch: int, n: int, device: torch.device) -> torch.Tensor:
        """[batch, n] item indices 0..n-1 per row."""
        return torch.arange(n, device=device).unsqueeze(0).expand(batch, n)

    @property
    def num_items(self) -> int:
        raise NotImplementedError


class FactorizedRecommender(Recommender):
    """A model whose score is a dot product of a user vector and an item vector, plus an item bias."""

    factorized = True

    def user_vectors(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """User vectors [B, D]."""
        raise NotImplementedError

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors [N, D] (every item when ``items`` is None)."""
        raise NotImplementedError

    def item_bias(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item biases [N] (every item when ``items`` is None)."""
        raise NotImplementedError

    def score_candidates(self, users: torch.Tensor, items: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        u = self.user_vectors(users, inputs)  # [B, D]
        flat = items.reshape(-1)
        v = self.item_vectors(flat).reshape(*items.shape, -1)  # [B, N, D]
        return torch.einsum("bd,bnd->bn", u, v) + self.item_bias(flat).reshape(items.shape)

    def score_all(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        return self.user_vectors(users, inputs) @ self.item_vectors().T + self.item_bias()

    def item_representation(self) -> torch.Tensor:
        return self.item_vectors()
