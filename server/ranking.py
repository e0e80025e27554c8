"""The ranking stage of a pipeline version: the ranker's scores of what retrieval found, then top-k.

Retrieval (:class:`~onnxrec.server.pipeline.ModelRetrieval`) answers a pipeline version's query with
its ``fetch`` candidates (the request's ``candidates``, or the version's), seen and excluded items
already left out, best first with retrieval's scores; :class:`Ranking` scores them (with those scores
and positions, for a ranker that reads retrieval's score and rank; with the request's time and the
user's latest tracked event, for one that reads the interaction's context) with the ``rank`` graph
(users the ranker knows) or ``rank_from_history`` (the others), through their own batchers, and keeps
the best ``k`` by the ranker's score. Popularity answers and one-stage versions pass through untouched.
"""

from __future__ import annotations

import numpy as np

from onnxrec.server.loaded_model import TopK
from onnxrec.server.pipeline import run_grouped
from onnxrec.server.plan import RecommendQuery
from onnxrec.server.served import RankRows
from onnxrec.v1 import recommender_pb2 as pb

__all__ = ["Ranking"]


class Ranking:
    """Re-rank retrieved candidates with the version's ranker, ``chunk`` rows per queue entry."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk

    async def __call__(self, queries: list[RecommendQuery], deadline: float | None) -> None:
        mine = [
            q
            for q in queries
            if q.top is not None and len(q.top.items) and q.source != pb.SOURCE_POPULARITY and q.model.pipeline
        ]
        if mine:
            await run_grouped(mine, self.chunk, deadline, _rank)


async def _rank(part: list[RecommendQuery], deadline: float | None) -> None:
    """One queue entry of ``part``'s candidate lists (one model version and source) on its ranking
    batcher; each query keeps its best ``k`` candidates by the ranker's score (ties: retrieval's order)."""
    served, known = part[0].served, part[0].source == pb.SOURCE_MODEL
    tops = [q.top for q in part if q.top is not None]
    candidates = [t.items for t in tops]
    retrieval = [t.scores for t in tops]
    times = [q.request_time for q in part], [q.last_time for q in part]
    if known:
        rows = RankRows(candidates, [q.user for q in part], [], [], retrieval, *times)
        scores = await served.rank.submit(rows, deadline=deadline, weight=len(part))
    else:
        rows = RankRows(candidates, [], [q.history for q in part], [q.rank_features for q in part], retrieval, *times)
        scores = await served.rank_history.submit(rows, deadline=deadline, weight=len(part))
    for q, items, s in zip(part, candidates, scores, strict=True):
        order = np.argsort(-s, kind="stable")[: q.k]
        q.top = TopK(items=items[order], scores=s[order].astype(np.float32, copy=False))
