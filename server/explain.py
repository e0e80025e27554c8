"""The explanation stage (issue #18): for requests with ``explain``, the history items that most support
each recommended item.

After retrieval (and a pipeline's ranking), :class:`Explanation` sends each explained query's answered
items and the user's history to the version's explain graphs (exporter/explain.py), through their own
batchers like every graph: ``explain`` for a user the model knows (their newest known items, as many as
the version's ``explain.history_len``), ``explain_from_history`` for a history query (the history the
answer came from: the request's, or tracked events then known items). Each item keeps the
:data:`MAX_REASONS` history items with the largest positive contribution, strongest first; only items
of that history are ever named. Popularity answers have no history and get no reasons. A version
exported without the graphs refuses explain requests when they are planned (FAILED_PRECONDITION).
"""

from __future__ import annotations

import numpy as np

from onnxrec.server.limits import MAX_REASONS
from onnxrec.server.loaded_model import Reasons
from onnxrec.server.pipeline import run_grouped
from onnxrec.server.plan import RecommendQuery
from onnxrec.server.served import ExplainRows
from onnxrec.v1 import recommender_pb2 as pb

__all__ = ["MAX_REASONS", "Explanation", "top_reasons"]


class Explanation:
    """Fill the reasons of explained queries, ``chunk`` rows per queue entry."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk

    async def __call__(self, queries: list[RecommendQuery], deadline: float | None) -> None:
        mine = [
            q
            for q in queries
            if q.explain and q.top is not None and len(q.top.items) and q.source != pb.SOURCE_POPULARITY
        ]
        if mine:
            await run_grouped(mine, self.chunk, deadline, _explain)


async def _explain(part: list[RecommendQuery], deadline: float | None) -> None:
    """One queue entry of ``part``'s rows (one model version and source) on its explain batcher."""
    served, known = part[0].served, part[0].source == pb.SOURCE_MODEL
    model = served.model
    recommended = [q.top.items[: q.k] if q.top is not None else q.history[:0] for q in part]
    if known:
        history = [model.explain_history(q.user) for q in part]
        rows = ExplainRows([q.user for q in part], history, recommended, [])
        out = await served.explain.submit(rows, deadline=deadline, weight=len(part))
    else:
        history = [q.history for q in part]
        rows = ExplainRows([], history, recommended, [q.features for q in part])
        out = await served.explain_history.submit(rows, deadline=deadline, weight=len(part))
    for q, h, c in zip(part, history, out, strict=True):
        q.reasons = top_reasons(c, h)


def top_reasons(contributions: np.ndarray, history: np.ndarray, most: int = MAX_REASONS) -> Reasons:
    """Per recommended item (a row of ``contributions`` [K, H]), the ``most`` history items (of
    ``history`` [H]) with the largest positive contribution, strongest first (ties: the newer first);
    -1 where an item has fewer."""
    k, h = contributions.shape
    r = min(most, h)
    if r == 0:
        return Reasons(np.full((k, 0), -1, dtype=np.int64), np.zeros((k, 0), dtype=np.float32))
    # the strongest r per row, then sorted by (-contribution, position)
    cand = np.argpartition(-contributions, r - 1, axis=1)[:, :r] if h > r else np.broadcast_to(np.arange(h), (k, h))
    values = np.take_along_axis(contributions, cand, axis=1)
    order = np.lexsort((cand, -values), axis=1)
    cand, values = np.take_along_axis(cand, order, axis=1), np.take_along_axis(values, order, axis=1)
    items = np.asarray(history, dtype=np.int64)[cand]
    items[~(values > 0)] = -1  # padding and repeats (-inf), and items that do not support it
    return Reasons(items, values.astype(np.float32))
