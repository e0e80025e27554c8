"""What the exporter turns into ONNX files: each graph's spec, module, tracing example and parity
batches (real users and items of the dataset, then random inputs at batch sizes 1, an odd size and the
largest)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from onnxrec.exporter.graphs import HistoryGraph, RecommendGraph, ScoreGraph, ServingTables, SimilarItemsGraph
from onnxrec.exporter.spec import (
    GraphSpec,
    history_spec,
    history_vector_spec,
    recommend_spec,
    score_spec,
    similar_spec,
    user_vector_spec,
)
from onnxrec.exporter.vector_graphs import HistoryVectorGraph, UserVectorGraph
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.history import known_sequences
from onnxrec.trainer.models.base import Recommender

FOLD_IN_HISTORY = 50  # history length the fold-in graph is checked with for models without their own


def fold_in_history_len(model: Recommender) -> int:
    """The history length of the fold-in graph's parity batches and the manifest's ``history_len``:
    the model's own, or :data:`FOLD_IN_HISTORY` for a model that reads none."""
    return model.history_len or FOLD_IN_HISTORY


@dataclass(frozen=True)
class JobSizes:
    """How the parity batches are drawn: the graphs' top-k, the largest batch, how many real users
    (and items) are checked, and the seed of the random ones."""

    k_max: int
    max_batch: int
    parity_users: int
    seed: int


@dataclass
class GraphJob:
    """One graph to export: its spec, the module it is exported from, the example it is traced with
    and the batches its parity is checked on."""

    spec: GraphSpec
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    batches: Sequence[tuple[np.ndarray, ...]]


def chunks(n: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(n, start + size))


def _pad_rows(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.full((len(rows), max(width, 1)), -1, dtype=np.int64)
    for j, r in enumerate(rows):
        out[j, : min(len(r), width)] = r[:width]
    return out


def example_inputs(*arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in arrays)


def parity_batches(model: Recommender, ds: Dataset, tables: ServingTables, sizes: JobSizes) -> dict[str, list[Any]]:
    """The batches each graph's parity is checked on, by graph name (recommend, recommend_from_history,
    score, similar_items): real users (and items) first, then random inputs at batch sizes 1, an odd
    size and the largest."""
    rng = np.random.default_rng(sizes.seed)
    n_users, n_items = ds.num_users, ds.num_items
    seqs = known_sequences(ds, "serve")
    real_users = np.arange(min(n_users, sizes.parity_users))
    odd = 7 if sizes.max_batch > 7 else 1
    batch_sizes = sorted({1, odd, sizes.max_batch})
    h = fold_in_history_len(model)

    def rand_exclude(b: int) -> np.ndarray:
        ex = rng.integers(-1, n_items, size=(b, 5))
        ex[:, -1] = -1  # format 3: every row holds at least one -1
        return ex

    def user_feats(users: np.ndarray) -> list[np.ndarray]:
        return [tables.user_features[f][users] for f in model.user_feature_names]

    rec_batches = [
        (u, _pad_rows([seqs.of(int(x)) for x in u], 1 + max(len(seqs.of(int(x))) for x in u)))
        for u in chunks(len(real_users), sizes.max_batch)
    ]
    rec_batches += [(rng.integers(0, n_users, size=b), rand_exclude(b)) for b in batch_sizes]

    hist_batches = []
    for u in chunks(len(real_users), sizes.max_batch):
        hist = np.stack([seqs.recent(np.array([x]), h)[0] for x in u])
        hist_batches.append((hist, _pad_rows(list(hist), h + 1), *user_feats(u)))
    for b in batch_sizes:
        hist = rng.integers(0, n_items, size=(b, h))
        hist[:, rng.integers(1, h + 1) :] = -1
        hist_batches.append((hist, rand_exclude(b), *user_feats(rng.integers(0, n_users, size=b))))

    n_cand = min(50, n_items)
    score_batches = [
        (u, rng.integers(0, n_items, size=(len(u), n_cand))) for u in chunks(len(real_users), sizes.max_batch)
    ]
    score_batches += [
        (rng.integers(0, n_users, size=b), rng.integers(0, n_items, size=(b, n_cand))) for b in batch_sizes
    ]

    sim_batches = [(i,) for i in chunks(min(n_items, sizes.parity_users), sizes.max_batch)]
    sim_batches += [(rng.integers(0, n_items, size=b),) for b in batch_sizes]
    return {
        "recommend": rec_batches,
        "recommend_from_history": hist_batches,
        "score": score_batches,
        "similar_items": sim_batches,
    }


def graph_jobs(
    model: Recommender, ds: Dataset, tables: ServingTables, sizes: JobSizes, batches: dict[str, list[Any]]
) -> list[GraphJob]:
    """The four exact graphs of a version: recommend, recommend_from_history, score, similar_items,
    checked on :func:`parity_batches`' ``batches``."""
    k = min(sizes.k_max, ds.num_items)
    n_users, n_items = ds.num_users, ds.num_items
    feature_names = model.user_feature_names
    b0, k_sim = 3, min(k, max(n_items - 1, 1))
    features0 = [np.ones(b0)] * len(feature_names)
    return [
        GraphJob(
            recommend_spec(k),
            RecommendGraph(model, tables, k),
            example_inputs(np.arange(b0) % n_users, np.full((b0, 4), -1)),
            batches["recommend"],
        ),
        GraphJob(
            history_spec(k, feature_names),
            HistoryGraph(model, tables, k),
            example_inputs(np.zeros((b0, 5)), np.full((b0, 4), -1), *features0),
            batches["recommend_from_history"],
        ),
        GraphJob(
            score_spec(),
            ScoreGraph(model, tables),
            example_inputs(np.arange(b0) % n_users, np.zeros((b0, 6))),
            batches["score"],
        ),
        GraphJob(
            similar_spec(k_sim),
            SimilarItemsGraph(model, k_sim),
            example_inputs(np.arange(b0) % n_items),
            batches["similar_items"],
        ),
    ]


def vector_jobs(model: Recommender, tables: ServingTables, batches: dict[str, list[Any]]) -> list[GraphJob]:
    """The two user-vector graphs of a version with an index (``user_vector`` and
    ``user_vector_from_history``), checked on the batches of ``recommend`` and
    ``recommend_from_history`` (:func:`parity_batches`) less their ``exclude``."""
    known, unknown = UserVectorGraph(model, tables), HistoryVectorGraph(model, tables)
    dim = int(known.user_matrix.shape[1])
    features = model.user_feature_names
    b0 = 3
    return [
        GraphJob(
            user_vector_spec(dim),
            known,
            example_inputs(np.arange(b0) % max(model.num_users, 1)),
            [(b[0],) for b in batches["recommend"]],
        ),
        GraphJob(
            history_vector_spec(dim, features),
            unknown,
            example_inputs(np.zeros((b0, 5)), *[np.ones(b0)] * len(features)),
            [(b[0], *b[2:]) for b in batches["recommend_from_history"]],
        ),
    ]
