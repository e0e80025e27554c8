"""The explain graphs as export jobs (exporter/explain.py): their specs, modules, tracing examples and
parity batches, and the check that the tower method reads the user tower as the model computes it."""

from __future__ import annotations

import numpy as np
import torch

from onnxrec.errors import ExportError
from onnxrec.exporter.explain import ExplainGraph, ExplainHistoryGraph, ExplainMethods, _Explain, explain_methods
from onnxrec.exporter.graph_jobs import GraphJob, JobSizes, chunks, example_inputs, fold_in_history_len
from onnxrec.exporter.graphs import ServingTables
from onnxrec.exporter.spec import explain_history_spec, explain_spec
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.history import known_sequences
from onnxrec.trainer.models.base import Recommender

RECOMMENDED = 10  # recommended items per parity row


def explain_jobs(
    model: Recommender, model_type: str, ds: Dataset, tables: ServingTables, sizes: JobSizes
) -> tuple[list[GraphJob], ExplainMethods]:
    """The ``explain`` and ``explain_from_history`` jobs of ``model`` (none when it cannot be explained),
    checked on real users' histories and random ones (with repeated items) at batch sizes 1, an odd size
    and the largest; and the methods, for the manifest."""
    methods = explain_methods(model, model_type)
    if methods.known is None:
        return [], methods
    rng = np.random.default_rng(sizes.seed + 2)
    n_users, n_items = ds.num_users, ds.num_items
    seqs = known_sequences(ds, "serve")
    features = model.user_feature_names
    k = min(RECOMMENDED, n_items)
    real = list(chunks(min(n_users, sizes.parity_users), sizes.max_batch))
    odd = 7 if sizes.max_batch > 7 else 1
    random_users = [rng.integers(0, n_users, size=b) for b in sorted({1, odd, sizes.max_batch})]

    def histories(users: np.ndarray, h: int, real_rows: bool) -> np.ndarray:
        if real_rows:
            return seqs.recent(users, h)
        hist = rng.integers(0, n_items, size=(len(users), h))
        if h > 1:
            hist[::2, 1] = hist[::2, 0]  # a repeated item
        hist[:, rng.integers(2, h + 1) if h > 2 else h :] = -1
        return hist

    def batches(h: int, known: bool) -> list[tuple[np.ndarray, ...]]:
        out: list[tuple[np.ndarray, ...]] = []
        for users, real_rows in [(u, True) for u in real] + [(u, False) for u in random_users]:
            hist, rec = histories(users, h, real_rows), rng.integers(0, n_items, size=(len(users), k))
            if known:
                out.append((users, hist, rec))
            else:
                out.append((hist, rec, *(tables.user_features[f][users] for f in features)))
        return out

    known_graph = ExplainGraph(model, tables, methods)
    history_graph = ExplainHistoryGraph(model, tables, methods)
    known_batches = batches(methods.known_history_len, known=True)
    history_batches = batches(fold_in_history_len(model), known=False)
    if methods.known == "tower":
        _check_tower(model, known_graph, known_batches[0], known=True)
        _check_tower(model, history_graph, history_batches[0], known=False)
    b0 = 3
    return [
        GraphJob(
            explain_spec(),
            known_graph,
            example_inputs(np.arange(b0) % n_users, np.zeros((b0, 5)), np.zeros((b0, 4))),
            known_batches,
        ),
        GraphJob(
            explain_history_spec(features),
            history_graph,
            example_inputs(np.zeros((b0, 5)), np.zeros((b0, 4)), *[np.ones(b0)] * len(features)),
            history_batches,
        ),
    ], methods


def _check_tower(model: Recommender, graph: _Explain, batch: tuple[np.ndarray, ...], known: bool) -> None:
    """The tower method rebuilds the user tower's input from the two-tower's parts; its user vectors must
    be the model's own (else the model's layout changed and the linearization would read it wrong)."""
    names = model.user_feature_names
    if known:
        users, hist = torch.from_numpy(batch[0]), torch.from_numpy(batch[1])
        feats = [getattr(graph, f"uf_{n}")[users] for n in names]
        ids = graph.id_rows[users]
    else:
        hist = torch.from_numpy(batch[0])
        users = torch.full((len(hist),), -1, dtype=torch.long)
        feats = [torch.from_numpy(np.asarray(f, dtype=np.int64)) for f in batch[2:]]
        ids = graph.unknown_id.expand(len(hist), -1)
    inputs = {"history": hist, "item_table": graph.item_matrix}
    inputs |= {f"user_{n}": f for n, f in zip(names, feats, strict=True)}
    with torch.no_grad():
        want = model.user_vectors(users, inputs)
        got = graph.tower_user_vectors(ids, feats, hist)
    if want.shape != got.shape or float((want - got).abs().max()) > 1e-5 * max(float(want.abs().max()), 1.0):
        raise ExportError(
            "explain: the user tower's input as exporter/explain.py rebuilds it does not give the model's user "
            "vectors (the two-tower's layout changed); report a bug"
        )
