"""A trained model as the evaluation code's scorer (:class:`ModelScorer`), and the per-user inputs a
model reads (:func:`user_inputs`): what training's validation, the final metrics, candidate pools and
the benchmarks score with."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from onnxrec.errors import TrainingError
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.history import StageTimes, UserSequences, known_sequences
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.context import context_inputs


def user_inputs(
    model: Recommender,
    ds: Dataset,
    users: np.ndarray,
    history: np.ndarray | None,
    device: torch.device,
    times: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The extra per-user inputs ``model`` reads: user features, (if used) the history, and (a ranker that
    reads the interaction's context) the request's and the previous interaction's ``times`` [B] each."""
    inputs: dict[str, Any] = {}
    for name in model.user_feature_names:
        inputs[f"user_{name}"] = torch.from_numpy(ds.user_features[name][users]).to(device)
    if model.history_len and history is not None:
        inputs["history"] = torch.from_numpy(history).to(device)
    if model.reads_context and times is not None:
        request, last = (torch.from_numpy(np.ascontiguousarray(t, dtype=np.int64)).to(device) for t in times)
        inputs |= context_inputs(request, last)
    return inputs


class ModelScorer:
    """Adapts a trained model to the evaluation code's scorer interface.

    Inside :meth:`items_once` (which :func:`~onnxrec.trainer.evaluate.evaluate` enters) a
    factorized model's item vectors are computed once for all batches of users instead of once
    per batch: at 10^6 items the item tower is the cost of scoring.
    """

    def __init__(self, model: Recommender, ds: Dataset, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.ds = ds
        self.device = torch.device(device)
        self._known: dict[str, UserSequences] = {}
        self._items: tuple[torch.Tensor, torch.Tensor] | None = None
        self._times = StageTimes(ds)

    @contextmanager
    def items_once(self) -> Iterator[None]:
        """Score with item vectors computed once on entry (the weights must not change inside)."""
        if self.model.factorized:
            self.model.eval()
            with torch.no_grad():
                self._items = (self.model.item_vectors(), self.model.item_bias())
        try:
            yield
        finally:
            self._items = None

    def known(self, stage: str) -> UserSequences:
        """What is known about each user at ``stage`` (computed once per stage)."""
        if stage not in self._known:
            self._known[stage] = known_sequences(self.ds, stage)
        return self._known[stage]

    def _inputs(self, users: np.ndarray, stage: str) -> tuple[torch.Tensor, dict[str, Any]]:
        history = self.known(stage).recent(users, self.model.history_len) if self.model.history_len else None
        times = self._times(users, stage, self.known(stage)) if self.model.reads_context else None
        inputs = user_inputs(self.model, self.ds, users, history, self.device, times)
        if self._items is not None and self.model.history_len:
            inputs["item_table"] = self._items[0]
        return torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device), inputs

    @torch.no_grad()
    def user_vectors(self, users: np.ndarray, stage: str) -> torch.Tensor:
        """The user vectors [B, D] of a factorized model for ``users`` at ``stage`` (their history that
        of ``stage``), inside :meth:`items_once`."""
        self.model.eval()
        return self.model.user_vectors(*self._inputs(users, stage))

    @property
    def item_side(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The item vectors [N, D] and biases [N] :meth:`items_once` computed."""
        if self._items is None:
            raise RuntimeError("the item side is computed inside items_once() of a factorized model")
        return self._items

    @torch.no_grad()
    def __call__(self, users: np.ndarray, stage: str) -> np.ndarray:
        self.model.eval()
        if self.model.reads_retrieval:
            raise TrainingError(
                "this ranker reads the retrieval stage's score and rank of each candidate: evaluate it "
                "behind its retrieval run (onnxrec evaluate RETRIEVAL_RUN --ranker RUN)"
            )
        u, inputs = self._inputs(users, stage)
        if self._items is not None:
            table, bias = self._items
            return (self.model.user_vectors(u, inputs) @ table.T + bias).float().cpu().numpy()
        return self.model.score_all(u, inputs).float().cpu().numpy()
