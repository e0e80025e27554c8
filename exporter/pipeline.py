"""The ranking stage of a pipeline version: ``onnxrec export RETRIEVAL_RUN --ranker RANKER_RUN``.

A pipeline version holds every graph of its retrieval run (the first stage: top ``candidates`` items
per user, from the exact graphs or the index) and two graphs of its ranker run (the second stage):

* ``rank``: (user_idx [B], items [B, C]) -> the ranker's scores [B, C], for users the ranker knows
  (what a pipeline version's Score answers with, too);
* ``rank_from_history``: (history [B, H], items [B, C], user features...) -> scores [B, C], for users
  it does not know, folded in from their history like ``recommend_from_history``.

After the items, both take retrieval's scores of the candidates [B, C] when the ranker reads them (or
blends them), then ``request_time`` and ``last_time`` [B] when it reads the interaction's context.

Both runs must have been trained on the same dataset (their user and item indices are the version's
id maps); the manifest's ``stages`` says which run, model type and graphs each stage is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onnxrec.errors import ExportError
from onnxrec.exporter.graph_jobs import GraphJob, JobSizes, chunks, example_inputs, fold_in_history_len
from onnxrec.exporter.graphs import (
    BlendedRankGraph,
    ContextRankGraph,
    ContextRankHistoryGraph,
    HistoryScoreGraph,
    RetrievalRankGraph,
    RetrievalRankHistoryGraph,
    ScoreGraph,
    ServingTables,
)
from onnxrec.exporter.spec import rank_history_spec, rank_spec
from onnxrec.trainer.blend import Blend
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.history import known_sequences
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.runs import open_run_trained_on

RANK_GRAPHS = ("rank", "rank_from_history")


@dataclass(frozen=True)
class Ranker:
    """A ranker run opened for export: its checkpoint, rebuilt model and where it came from."""

    run: Path
    ckpt: dict[str, Any]
    model: Recommender

    @property
    def blend(self) -> Blend | None:
        """The blend of retrieval's score and the ranker's the run chose on validation (None: none)."""
        return Blend.from_dict(self.ckpt.get("blend"))

    @property
    def reads_retrieval(self) -> bool:
        """Whether the ranking graphs take retrieval's scores (retrieval fields, or a blend)."""
        return self.model.reads_retrieval or self.blend is not None


def open_ranker(run: Path, ds: Dataset, retrieval_run: Path) -> Ranker:
    """The ranker run at ``run``, refused unless it was trained on the retrieval run's dataset ``ds``, and,
    when it reads retrieval's scores, on the candidates of the retrieval run at ``retrieval_run`` (another
    model's scores are on another scale)."""
    ckpt = open_run_trained_on(Path(run), ds, f"{run}: the ranker", "the retrieval run", ExportError)
    ranker = Ranker(Path(run), ckpt, model_from_checkpoint(ckpt))
    trained_on = ckpt.get("metrics", {}).get("negatives", {}).get("run")
    if ranker.reads_retrieval and trained_on != str(Path(retrieval_run).resolve()):
        raise ExportError(
            f"{run}: the ranker reads retrieval's scores and was trained on the candidates of {trained_on}, "
            f"not of {retrieval_run}; export it behind that run"
        )
    return ranker


def check_candidates(candidates: int, k_max: int, num_items: int) -> None:
    """Refuse a candidate count no pipeline can use."""
    if candidates < 1:
        raise ExportError(f"--candidates must be at least 1, not {candidates}")
    if candidates > num_items:
        raise ExportError(f"--candidates {candidates} is more than the catalog's {num_items} items")
    if k_max > candidates:
        raise ExportError(
            f"--k-max {k_max} is more than --candidates {candidates}: the ranker can only return what was retrieved"
        )


def context_times(rng: np.random.Generator, ds: Dataset, b: int) -> tuple[np.ndarray, ...]:
    """Request and previous-interaction times [b] for checking a context-reading ranker's graphs: request
    times across the data's span and a month past it, previous interactions unknown (-1), minutes to
    months before, or (clock skew) after the request."""
    times = np.concatenate([p.timestamp for p in (ds.splits.train, ds.splits.valid, ds.splits.test)])
    lo, hi = int(times.min()), int(times.max()) + 30 * 86_400
    request = rng.integers(lo, hi + 1, size=b)
    gaps = np.exp(rng.uniform(0.0, np.log(90 * 86_400), size=b)).astype(np.int64)
    last = np.where(rng.random(b) < 0.25, -1, request - gaps)
    last = np.where(rng.random(b) < 0.1, request + 60, last)
    return request.astype(np.int64), last.astype(np.int64)


def rank_jobs(opened: Ranker, ds: Dataset, tables: ServingTables, sizes: JobSizes, candidates: int) -> list[GraphJob]:
    """The two ranking graphs, checked on real users with random candidate lists of width ``candidates``
    and on random users at batch sizes 1, an odd size and the largest."""
    ranker = opened.model
    rng = np.random.default_rng(sizes.seed + 1)
    n_users, n_items = ds.num_users, ds.num_items
    seqs = known_sequences(ds, "serve")
    features = ranker.user_feature_names
    h = fold_in_history_len(ranker)
    real = list(chunks(min(n_users, sizes.parity_users), sizes.max_batch))
    odd = 7 if sizes.max_batch > 7 else 1
    random_users = [rng.integers(0, n_users, size=b) for b in sorted({1, odd, sizes.max_batch})]
    reads, context = opened.reads_retrieval, ranker.reads_context

    def cands(b: int) -> np.ndarray:
        return rng.integers(0, n_items, size=(b, candidates))

    def request(b: int) -> tuple[np.ndarray, ...]:
        """Retrieval's scores of a batch's candidates (best first) and the request's times, when the
        ranker reads them."""
        scores = (-np.sort(-rng.normal(size=(b, candidates)), axis=1).astype(np.float32),) if reads else ()
        return scores + (context_times(rng, ds, b) if context else ())

    known_batches = [(u, cands(len(u)), *request(len(u))) for u in real + random_users]
    history_batches = []
    for u in real + random_users:
        hist = np.stack([seqs.recent(np.array([x]), h)[0] for x in u])
        history_batches.append((hist, cands(len(u)), *request(len(u)), *(tables.user_features[f][u] for f in features)))
    b0 = 3
    example_request = ((torch.zeros((b0, 6)),) if reads else ()) + (
        example_inputs(*context_times(rng, ds, b0)) if context else ()
    )
    known, unknown = rank_modules(opened, tables)
    return [
        GraphJob(
            rank_spec(reads, context),
            known,
            (*example_inputs(np.arange(b0) % n_users, np.zeros((b0, 6))), *example_request),
            known_batches,
        ),
        GraphJob(
            rank_history_spec(features, reads, context),
            unknown,
            (
                *example_inputs(np.zeros((b0, 5)), np.zeros((b0, 6))),
                *example_request,
                *example_inputs(*[np.ones(b0)] * len(features)),
            ),
            history_batches,
        ),
    ]


def rank_modules(opened: Ranker, tables: ServingTables) -> tuple[nn.Module, nn.Module]:
    """The modules of the ``rank`` and ``rank_from_history`` graphs of ``opened``."""
    ranker = opened.model
    known: nn.Module
    unknown: nn.Module
    if ranker.reads_context:
        known, unknown = ContextRankGraph(ranker, tables), ContextRankHistoryGraph(ranker, tables)
    elif ranker.reads_retrieval:
        known, unknown = RetrievalRankGraph(ranker, tables), RetrievalRankHistoryGraph(ranker, tables)
    else:
        known, unknown = ScoreGraph(ranker, tables), HistoryScoreGraph(ranker, tables)
    blend = opened.blend
    if blend is not None and not ranker.reads_retrieval:
        known, unknown = BlendedRankGraph(known, blend), BlendedRankGraph(unknown, blend)
    return known, unknown


def stages_entry(
    run: Path, ckpt: dict[str, Any], index: str, ranker: Ranker | None, candidates: int
) -> list[dict[str, Any]]:
    """The manifest's ``stages``: what answers a Recommend, in order."""
    retrieve = {
        "stage": "retrieve",
        "run": str(Path(run).resolve()),
        "model_type": ckpt["model_type"],
        "retrieval": index,
        "graphs": ["recommend", "recommend_from_history"]
        if index == "exact"
        else ["user_vector", "user_vector_from_history"],
    }
    if ranker is None:
        return [retrieve]
    rank = {
        "stage": "rank",
        "run": str(ranker.run.resolve()),
        "model_type": ranker.ckpt["model_type"],
        "model_config": ranker.ckpt["model_config"],
        "metrics": ranker.ckpt.get("metrics", {}),
        "graphs": list(RANK_GRAPHS),
        "retrieval_fields": ranker.model.reads_retrieval,
        "context_fields": ranker.model.reads_context,
        "blend": ranker.ckpt.get("blend"),
        "candidates": candidates,
    }
    return [retrieve | {"candidates": candidates}, rank]
