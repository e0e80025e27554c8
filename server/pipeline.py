"""A recommendation's path through the server: plan -> retrieve -> post-process -> respond.

Recommend is a RecommendBatch of one. :class:`RecommendPipeline` plans every entry into a
:class:`~onnxrec.server.plan.RecommendQuery`, refuses an answer too big to send before any model runs,
then hands the whole list to each :class:`Stage` in turn; a stage fills or changes the queries it is
for and leaves the others alone. The stages today are :class:`ModelRetrieval` (the ``recommend`` and
``recommend_from_history`` graphs, through the model's batchers) and :class:`PopularityRetrieval` (the
users no model knows). A new step (an index search, a ranker, an event-store lookup, explanations) is
one more stage in the list, not a branch in the others. Responses are built last
(:mod:`onnxrec.server.respond`).

A big RecommendBatch is planned, goes to the batchers and is answered ``max_batch_size`` rows at a
time, one chunk after the other, with the event loop free in between, so requests that arrive
meanwhile run between its chunks instead of behind all of it (no head-of-line blocking).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import numpy as np

from onnxrec.server.limits import RequestError, RequestLimits, invalid
from onnxrec.server.loaded_model import TopK
from onnxrec.server.plan import Planner, RecommendQuery
from onnxrec.server.respond import check_answer_size
from onnxrec.server.served import HistoryRows, RecommendRows
from onnxrec.v1 import recommender_pb2 as pb

__all__ = ["ModelRetrieval", "PopularityRetrieval", "RecommendPipeline", "Stage"]


class Stage(Protocol):
    """One step of the pipeline: fills or changes the queries it is for, in place."""

    async def __call__(self, queries: list[RecommendQuery], deadline: float | None) -> None:
        """Process ``queries`` (``deadline``: a ``time.monotonic()`` value or None)."""


class ModelRetrieval:
    """Top-k from the model's graphs for known users and for users with a history (a pipeline version's
    candidates), through the model version's batchers, ``chunk`` rows per queue entry."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk

    async def __call__(self, queries: list[RecommendQuery], deadline: float | None) -> None:
        mine = queries if len(queries) == 1 else [q for q in queries if q.source != pb.SOURCE_POPULARITY]
        if len(mine) == 1 and mine[0].source == pb.SOURCE_POPULARITY:
            return
        await run_grouped(mine, self.chunk, deadline, _submit)


async def run_grouped(
    queries: list[RecommendQuery],
    chunk: int,
    deadline: float | None,
    submit: Callable[[list[RecommendQuery], float | None], Awaitable[None]],
) -> None:
    """``submit`` the queries of each model version and source (one graph) ``chunk`` rows at a time,
    the groups side by side; one query goes straight to ``submit`` (a Recommend call: no grouping and no
    gather, a third of a stage's cost per call)."""
    if len(queries) == 1:
        await submit(queries, deadline)
        return
    groups: dict[tuple[int, int], list[RecommendQuery]] = {}
    for q in queries:
        groups.setdefault((id(q.served), q.source), []).append(q)

    async def run_group(group: list[RecommendQuery]) -> None:
        for start in range(0, len(group), chunk):
            await submit(group[start : start + chunk], deadline)

    await asyncio.gather(*(run_group(g) for g in groups.values()))


async def _submit(part: list[RecommendQuery], deadline: float | None) -> None:
    """One queue entry of ``part``'s rows (one model version and graph; weight: the rows) on that graph's
    batcher, run with their largest k; each query gets its own answer."""
    served, k, rows = part[0].served, max(q.fetch for q in part), len(part)
    tops: list[TopK]
    if part[0].source == pb.SOURCE_MODEL:
        item = RecommendRows([q.user for q in part], [q.exclude for q in part], k)
        tops = await served.recommend.submit(item, deadline=deadline, weight=rows)
    else:
        hist = HistoryRows([q.history for q in part], [q.exclude for q in part], [q.features for q in part], k)
        tops = await served.history.submit(hist, deadline=deadline, weight=rows)
    for q, top in zip(part, tops, strict=True):
        q.top = top


class PopularityRetrieval:
    """The most popular items, minus the excluded ones, for users no graph can answer."""

    async def __call__(self, queries: list[RecommendQuery], deadline: float | None) -> None:
        for q in queries:
            if q.source == pb.SOURCE_POPULARITY and q.top is None:
                model = q.served.model
                drop = set(q.exclude.tolist())
                items = np.array([i for i in model.popular[: q.k + len(drop)] if i not in drop], dtype=np.int64)
                q.top = TopK(items=items, scores=model.popularity[items].astype(np.float32))


class RecommendPipeline:
    """Plans, size-checks and runs the stages for a list of Recommend requests (module docstring)."""

    def __init__(self, planner: Planner, limits: RequestLimits, chunk: int, stages: Sequence[Stage]) -> None:
        self.planner = planner
        self.limits = limits
        self.chunk = chunk
        self.stages = tuple(stages)

    async def run(
        self, requests: Sequence[pb.RecommendRequest], deadline: float | None, max_items: int
    ) -> list[RecommendQuery]:
        """The answered queries of ``requests``, in order (an error names the entry that caused it)."""
        n = len(requests)
        if n == 0 or n > max_items:
            raise invalid(f"requests must hold 1 to {max_items} entries, got {n}")
        queries = [self.planner.plan(requests[0])] if n == 1 else await self._plan_all(requests)
        check_answer_size(queries, self.limits)
        for stage in self.stages:
            await stage(queries, deadline)
        return queries

    async def _plan_all(self, requests: Sequence[pb.RecommendRequest]) -> list[RecommendQuery]:
        queries = []
        for j, r in enumerate(requests):
            if j and j % self.chunk == 0:
                await asyncio.sleep(0)  # let other calls run between the chunks of a big request
            try:
                queries.append(self.planner.plan(r))
            except RequestError as exc:
                raise RequestError(exc.code, f"requests[{j}]: {exc}") from exc
        return queries
