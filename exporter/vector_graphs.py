"""The graphs of a version with a nearest-neighbour index: the user side of a factorized model's score
as its own graph, and the item side as the index's vectors.

A factorized model scores ``user_vectors @ item_vectors.T + item_bias``. The index holds each item's
vector with its bias appended (``[v, b]``), and these graphs return each user's vector with a 1
appended (``[u, 1]``), so an item's score is one dot product: ``[u, 1] . [v, b] = u . v + b``, the
score graph's score. What a model can export is read from its contract, never from its class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onnxrec.errors import ParityError
from onnxrec.exporter.graphs import FoldIn, ServingTables, _Base
from onnxrec.exporter.onnx_io import cpu_session
from onnxrec.exporter.parity import Tolerance, max_abs_score
from onnxrec.trainer.models.base import Recommender


def with_ones(vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` [B, D] with a column of ones appended -> [B, D + 1] (the item bias's weight)."""
    return torch.cat([vectors, torch.ones_like(vectors[:, :1])], dim=1)


def item_index_vectors(model: Recommender) -> np.ndarray:
    """Every item's vector with its bias appended, [num_items, D + 1] float32, row = item index: what
    the index holds."""
    with torch.no_grad():
        vectors = model.item_vectors().detach().float()
        bias = model.item_bias().detach().float()
    return np.ascontiguousarray(torch.cat([vectors, bias[:, None]], dim=1).numpy(), dtype=np.float32)


class UserVectorGraph(_Base):
    """user_idx [B] -> user_vector [B, D + 1]: a known user's vector, computed at export, and a 1."""

    user_matrix: torch.Tensor  # [num_users, D + 1]

    def __init__(self, model: Recommender, tables: ServingTables) -> None:
        super().__init__(model, tables)
        self.register_buffer("user_matrix", with_ones(self.known_user_matrix()).contiguous())
        self.drop_user_tables()
        del self._buffers["item_matrix"], self._buffers["item_bias"]

    def forward(self, user_idx: torch.Tensor) -> torch.Tensor:
        return torch.index_select(self.user_matrix, 0, user_idx)


class HistoryVectorGraph(FoldIn):
    """(history [B, H], user features...) -> user_vector [B, D + 1], for users the model does not know:
    its own user encoder (user -1), or the vector of the folded-in user rows; and a 1."""

    def __init__(self, model: Recommender, tables: ServingTables) -> None:
        super().__init__(model, tables)
        self.drop_user_tables()  # features and history come as inputs
        if not self.encodes:  # the folded-in rows make the vector; the item side is the index's
            del self._buffers["item_matrix"], self._buffers["item_bias"]

    def forward(self, history: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        if self.encodes:
            users = self.unknown_users(history)
            vectors = self.model.user_vectors(users, self.user_inputs(features, history))
        else:
            vectors = self.model.fold_in_user_vectors(self.fold_in_rows(history))
        return with_ones(vectors)


Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (users [B], items [B, N]) -> scores [B, N]


def check_vector_scores(
    version_dir: Path,
    item_vectors: np.ndarray,
    batches: Iterable[tuple[np.ndarray, ...]],
    tolerance: Tolerance,
    scorer: Scorer,
) -> dict[str, Any]:
    """The contract the index rests on, in onnxruntime: ``user_vector(user) . item_vectors[item]`` is
    ``scorer``'s score of (user, item) (the ``score`` graph's, or the PyTorch model's), within the parity
    tolerance, for every (user, candidates) batch. Raises :class:`ParityError`; returns the figures for
    the manifest."""
    vector_session = cpu_session(version_dir / "user_vector.onnx")
    worst, scale, rows = 0.0, 0.0, 0
    for batch in batches:
        users, items = np.asarray(batch[0], dtype=np.int64), np.asarray(batch[1], dtype=np.int64)
        (u,) = vector_session.run(["user_vector"], {"user_idx": users})
        scores = scorer(users, items)
        dots = np.einsum("bd,bnd->bn", u.astype(np.float64), item_vectors[items].astype(np.float64))
        worst = max(worst, float(np.abs(dots - scores).max(initial=0.0)))
        scale = max(scale, max_abs_score(scores))
        rows += len(users)
    allowed = tolerance.allowed(scale)
    if worst > allowed:
        raise ParityError(
            f"user_vector . index vector differs from the score graph's score by {worst:.3g} "
            f"(allowed {allowed:.3g} at the largest |score| {scale:.3g}); report a bug"
        )
    return {"rows": rows, "max_abs_diff": worst, "max_abs_score": scale, "allowed": allowed}
