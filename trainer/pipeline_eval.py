"""A two-stage pipeline evaluated in PyTorch: retrieval's top-C candidates, ordered by a ranker.

:class:`PipelineScorer` is a scorer for :func:`~onnxrec.trainer.evaluate.evaluate` (``(users [B],
stage) -> scores [B, num_items]``) that computes what a served pipeline version answers:

1. the retrieval model scores every item; the items known at ``stage`` (training items, and the
   validation item when evaluating ``test``) are left out, and the ``C`` best of the rest (ties by
   item index) are the candidates;
2. the ranker scores the candidates (its logits);
3. the scores returned put every candidate above every other item: a candidate's is its ranker logit
   shifted so the row's lowest is 1 (``logit - min(candidate logits) + 1``), any other item's its
   retrieval score shifted below -1 (``score - max(scores) - 1``).

So the full view ranks the candidates by the ranker and the rest after them by retrieval, and the
sampled view compares the held-out item with its sampled negatives the same way: both come out of
the one evaluation code. The scorer also keeps the retrieval stage's recall@C of the held-out items
(:meth:`PipelineScorer.recall`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onnxrec.errors import ConfigError
from onnxrec.trainer.blend import Blend, fit_blend
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.evaluate import evaluate, users_per_batch
from onnxrec.trainer.history import StageTimes, UserSequences
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.fields import with_retrieval_inputs
from onnxrec.trainer.runs import open_run_trained_on
from onnxrec.trainer.scorer import ModelScorer, user_inputs

#: Candidates per user when ``--ranker`` is given without ``--candidates``.
DEFAULT_CANDIDATES = 200


def top_candidates(
    scores: np.ndarray, users: np.ndarray, known: UserSequences, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` [B, I] (user ``users[row]``), the ``n`` best items not in ``known``, best
    first, ties by item index: items [B, n] and whether each is a real candidate [B, n] (False where
    the user knows fewer than ``n`` items apart: those slots hold known items)."""
    masked = np.array(scores, dtype=np.float64, copy=True)
    users = np.asarray(users, dtype=np.int64)
    lengths = known.indptr[users + 1] - known.indptr[users]
    rows = np.repeat(np.arange(len(users)), lengths)
    if len(rows):
        masked[rows, np.concatenate([known.of(int(u)) for u in users])] = -np.inf
    num_items = masked.shape[1]
    n = min(n, num_items)
    # the n-th best score; every item above it, then the lowest-indexed items equal to it
    threshold = -np.partition(-masked, n - 1, axis=1)[:, n - 1 : n]
    above = masked > threshold
    tied = masked == threshold
    room = n - above.sum(1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
    items = np.nonzero(chosen)[1].reshape(len(users), n)
    values = np.take_along_axis(masked, items, axis=1)
    order = np.lexsort((items, -values), axis=-1)
    items = np.take_along_axis(items, order, axis=1)
    return items, np.take_along_axis(values, order, axis=1) > -np.inf


def combine(retrieval: np.ndarray, items: np.ndarray, valid: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """The pipeline's scores [B, I]: each valid candidate's ranker logit shifted to >= 1, every other
    item's retrieval score shifted to <= -1 (see the module's docstring)."""
    out = np.asarray(retrieval, dtype=np.float64)
    out = out - out.max(axis=1, keepdims=True) - 1.0
    logits = np.asarray(logits, dtype=np.float64)
    low = np.where(valid, logits, np.inf).min(axis=1, keepdims=True)
    rows, cols = np.nonzero(valid)
    out[rows, items[rows, cols]] = (logits - low + 1.0)[rows, cols]
    return out


def position_inputs(retrieval_scores: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """A ranker's retrieval fields for candidate lists in retrieval's order: the scores [B, C] as they
    are, each candidate's position as its rank."""
    scores = torch.from_numpy(np.ascontiguousarray(retrieval_scores, dtype=np.float32)).to(device)
    ranks = torch.arange(scores.shape[1], device=device).expand(scores.shape[0], -1)
    return with_retrieval_inputs(scores, ranks)


class PipelineScorer:
    """Retrieval -> rank as one scorer (see the module's docstring); the models are not changed."""

    def __init__(
        self,
        retrieval: Recommender,
        ranker: Recommender,
        ds: Dataset,
        candidates: int,
        device: torch.device | str = "cpu",
        blend: Blend | None = None,
    ) -> None:
        if not 1 <= candidates <= ds.num_items:
            raise ConfigError(
                f"--candidates must be between 1 and the catalog's {ds.num_items} items, not {candidates}"
            )
        self.retrieval = ModelScorer(retrieval, ds, device)
        self.ranker = ranker
        self.ds = ds
        self.candidates = candidates
        self.device = torch.device(device)
        self.blend = blend  # the final ranking's blend of retrieval's score and the ranker's (trainer/blend.py)
        self._times = StageTimes(ds)
        self._recall: dict[str, np.ndarray] = {}

    @contextmanager
    def items_once(self) -> Iterator[None]:
        """The retrieval model's item side computed once (the ranker may be training between calls)."""
        with self.retrieval.items_once():
            yield

    def known(self, stage: str) -> UserSequences:
        """What is known about each user at ``stage`` (left out of the candidates): the retrieval scorer's,
        computed once per stage for both."""
        return self.retrieval.known(stage)

    def candidate_sets(self, users: np.ndarray, stage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The retrieval scores [B, I] of ``users`` at ``stage``, and their candidates: items [B, C],
        best first, and whether each is real [B, C] (see :func:`top_candidates`)."""
        scores = self.retrieval(users, stage)
        items, valid = top_candidates(scores, users, self.known(stage), self.candidates)
        return scores, items, valid

    @torch.no_grad()
    def rank(
        self, users: np.ndarray, items: np.ndarray, stage: str, retrieval_scores: np.ndarray | None = None
    ) -> np.ndarray:
        """The ranker's logits [B, C] of ``items`` [B, C] (in retrieval's order) for ``users`` at ``stage``;
        a ranker that reads retrieval's score and rank is given ``retrieval_scores`` [B, C] and each
        candidate's position as its rank, as a served pipeline gives them; one that reads the context, the
        time of the user's held-out interaction and of their latest one known at ``stage``."""
        was_training = self.ranker.training
        self.ranker.eval()
        try:
            history = self.known(stage).recent(users, self.ranker.history_len) if self.ranker.history_len else None
            times = self._times(users, stage, self.known(stage)) if self.ranker.reads_context else None
            inputs = user_inputs(self.ranker, self.ds, users, history, self.device, times)
            if self.ranker.reads_retrieval:
                if retrieval_scores is None:
                    raise ConfigError("this ranker reads retrieval's scores of its candidates: give them")
                inputs |= position_inputs(retrieval_scores, self.device)
            u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device)
            it = torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64)).to(self.device)
            return self.ranker.score_candidates(u, it, inputs).double().cpu().numpy()
        finally:
            self.ranker.train(was_training)

    def ranked_candidates(
        self, users: np.ndarray, stage: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`candidate_sets` of ``users`` at ``stage`` (retrieval's scores [B, I], items [B, C], real
        [B, C]), with retrieval's scores of the candidates and the ranker's logits of them [B, C]."""
        scores, items, valid = self.candidate_sets(users, stage)
        retrieval_scores = np.take_along_axis(scores, items, axis=1)
        return scores, items, valid, retrieval_scores, self.rank(users, items, stage, retrieval_scores)

    def __call__(self, users: np.ndarray, stage: str) -> np.ndarray:
        scores, items, valid, retrieval_scores, logits = self.ranked_candidates(users, stage)
        self._count_recall(users, stage, items, valid)
        if self.blend is not None:
            logits = self.blend.apply(retrieval_scores.astype(np.float64), logits)
        return combine(scores, items, valid, logits)

    def candidate_values(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """Retrieval's scores and the ranker's logits of every real candidate of the users held out at
        ``stage`` (what :func:`~onnxrec.trainer.blend.fit_blend` standardises with)."""
        part = self.ds.splits.held_out(stage)
        users = np.unique(part.user_idx)
        step = users_per_batch(self.ds.num_items, 512)
        r_all, k_all = [], []
        with self.items_once():
            for start in range(0, len(users), step):
                _, _, valid, r, k = self.ranked_candidates(users[start : start + step], stage)
                r_all.append(r[valid])
                k_all.append(k[valid])
        return np.concatenate(r_all), np.concatenate(k_all)

    def _count_recall(self, users: np.ndarray, stage: str, items: np.ndarray, valid: np.ndarray) -> None:
        part = self.ds.splits.held_out(stage)
        if stage not in self._recall:
            self._recall[stage] = np.full(self.ds.num_users, np.nan)
        lo = np.searchsorted(part.user_idx, users, side="left")
        hi = np.searchsorted(part.user_idx, users, side="right")
        for row, u in enumerate(users):
            held_out = part.item_idx[lo[row] : hi[row]]
            if len(held_out):
                self._recall[stage][u] = np.isin(held_out, items[row][valid[row]]).mean()

    def recall(self, stage: str) -> float:
        """The retrieval stage's recall@C at ``stage``: per user, the share of its held-out items among
        its candidates, averaged over the users scored so far (NaN before any)."""
        values = self._recall.get(stage)
        if values is None or np.isnan(values).all():
            return float("nan")
        return float(np.nanmean(values))


def evaluate_pipeline(
    scorer: PipelineScorer, ds: Dataset, stage: str = "test", ks: tuple[int, ...] = (10,)
) -> dict[str, dict[str, float]]:
    """:func:`~onnxrec.trainer.evaluate.evaluate` of the pipeline, plus ``"retrieval"``: the number of
    candidates and the retrieval stage's ``recall@C`` of the held-out items."""
    out = evaluate(scorer, ds, stage, ks=ks)
    c = scorer.candidates
    out["retrieval"] = {"candidates": float(c), f"recall@{c}": round(scorer.recall(stage), 6)}
    return out


def fit_pipeline_blend(scorer: PipelineScorer, ds: Dataset) -> tuple[Blend, dict[str, float]]:
    """The blend of retrieval's score and the ranker's with the best validation full NDCG@10 (see
    :mod:`onnxrec.trainer.blend`), and every weight's figure; ``scorer`` is left without a blend."""

    def score(blend: Blend) -> float:
        scorer.blend = blend
        return float(evaluate(scorer, ds, "valid", ks=(10,))["full"]["ndcg@10"])

    try:
        return fit_blend(scorer.candidate_values("valid"), score)
    finally:
        scorer.blend = None


def open_ranker_run(ranker_run: Any, ds: Dataset) -> tuple[dict[str, Any], Recommender]:
    """The checkpoint and model of ``ranker_run``, refused unless trained on the retrieval run's ``ds``."""
    ckpt = open_run_trained_on(Path(ranker_run), ds, f"{ranker_run}: the ranker", "the retrieval run")
    return ckpt, model_from_checkpoint(ckpt)
