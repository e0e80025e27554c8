"""Versions over catalogs too large for the exact graphs: ``onnxrec export --index ... --index-only``.

The exact graphs (recommend, recommend_from_history, score, similar_items, explain) each hold the whole
item table: at 10M 64-dim items that is 2.6 GB per graph, past one protobuf message's 2 GiB, and
exporting and checking four of them needs several times that in memory (1M items: 11 GB at peak,
BENCHMARKS.md). An index-only version holds the user-vector graphs and the index alone: Recommend and
RecommendBatch, for known users and history requests, search the index; Score takes each item's vector
from the index (``user_vector . item vector``, the score graph's score, checked at export against the
PyTorch model); SimilarItems and Explain have no graph and are refused with FAILED_PRECONDITION. A
graph that still holds a catalog-sized table (the fold-in centroids of an MF history graph) keeps its
weights as ONNX external data beside it (exporter/onnx_io.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from onnxrec.errors import ExportError
from onnxrec.exporter.explain import ExplainMethods
from onnxrec.exporter.graphs import ScoreGraph, ServingTables
from onnxrec.exporter.onnx_io import cpu_session
from onnxrec.exporter.vector_graphs import Scorer
from onnxrec.trainer.models.base import Recommender

if TYPE_CHECKING:
    from onnxrec.exporter.export import ExportOptions

#: an exact version whose item table passes this many bytes is refused: each of its graphs would pass
#: protobuf's 2 GiB (the table is held by four graphs, and by their parity sessions at once)
EXACT_MAX_TABLE_BYTES = 1 << 30
INDEX_ONLY_WHY = (
    "it was exported with --index-only: it holds no catalog-sized graph, and explanations need one "
    "(export it without --index-only to explain)"
)


def item_table_bytes(model: Recommender) -> int:
    """The bytes of a factorized model's item vectors and biases (0 for other models)."""
    if not model.factorized:
        return 0
    with torch.no_grad():
        one = model.item_vectors(torch.zeros(1, dtype=torch.long))
    return int(model.num_items) * (int(one.shape[-1]) + 1) * 4


def check_catalog(model: Recommender, kind: str, opts: ExportOptions) -> None:
    """Refuse an ``--index-only`` export the version could not serve, and an exact export whose graphs
    the catalog would make too large (naming the option that fixes it)."""
    if opts.index_only:
        if kind == "exact":
            raise ExportError("--index-only needs an index: add --index hnsw, ivf or flat")
        for given, label in (
            (opts.ranker, "--ranker"),
            (opts.precisions, "--precision"),
            (opts.new_items, "--new-items"),
        ):
            if given:
                raise ExportError(f"--index-only and {label} together are not supported")
        return
    size = item_table_bytes(model)
    if size > EXACT_MAX_TABLE_BYTES:
        raise ExportError(
            f"the catalog's item vectors take {size / 2**30:.1f} GiB, too large for the exact graphs that each "
            f"hold them; export with an index and without those graphs: --index ivf (or hnsw) --index-only"
        )


def index_only_explain() -> ExplainMethods:
    """The manifest's ``explain`` of an index-only version: none, and why."""
    return ExplainMethods(None, None, why=INDEX_ONLY_WHY)


def vector_scorer(version_dir: Path, model: Recommender, tables: ServingTables, index_only: bool) -> Scorer:
    """What the index's vectors are checked against: the version's ``score`` graph in onnxruntime, or for
    an index-only version (no such graph) the same module in PyTorch."""
    if not index_only:
        session = cpu_session(version_dir / "score.onnx")

        def from_graph(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            (scores,) = session.run(["scores"], {"user_idx": users, "items": items})
            return np.asarray(scores)

        return from_graph
    module = ScoreGraph(model, tables).eval()

    def from_model(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: Any = module(torch.from_numpy(users), torch.from_numpy(items))
        return np.asarray(out.numpy())

    return from_model
