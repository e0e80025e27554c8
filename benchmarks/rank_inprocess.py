"""Retrieve + rank at batch 1, in-process: what a pipeline version's Recommend costs without gRPC.

Two measurements of one model version (one-stage or pipeline), each over the same random known users,
one call at a time, each user's seen items excluded (as the server does by default):

* :func:`stage_times`: the model calls the server's stages make for one Recommend, timed per call
  and per stage on the server's ``LoadedModel``: retrieval (``ModelRetrieval``: ``recommend`` with
  the exclusion row ``seen_row(user)`` and the version's ``candidates`` as k, through the index
  when the version has one), then ranking (``Ranking``: ``score``, which runs the ``rank`` graph on a
  pipeline version (``rank``, with retrieval's scores, where the server has that call), and the stable
  top-k of its scores). A one-stage version is timed at k only.
* :func:`servicer_times`: the server's whole request path without gRPC, ``RecommenderServicer.answer``
  on one ``RecommendRequest(user_id, k)`` at a time, on an event loop, through the server's own
  ``ModelRegistry`` and batchers (planning, id maps, retrieve -> rank -> top-k, the response message),
  as ``benchmarks/request_profile.py`` runs it; the answer's ``stages`` are recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

K = 10


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 / p99 / mean of per-call times, in ms."""
    t = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(t, 50)), 3),
        "p99_ms": round(float(np.percentile(t, 99)), 3),
        "mean_ms": round(float(t.mean()), 3),
    }


def timed_loop(call: Callable[[int], list[float]], n_users: int, seconds: float, min_calls: int) -> list[list[float]]:
    """``call(j)`` for j = 0, 1, ... (cycling over ``n_users``) after ``min(n_users, 20)`` warm-up calls,
    for ``seconds`` and at least ``min_calls`` calls; each call returns its stage times (s)."""
    for j in range(min(n_users, 20)):
        call(j)
    out: list[list[float]] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(out) < min_calls:
        out.append(call(len(out) % n_users))
    return out


def stage_times(version: Path, seconds: float, n_users: int, seed: int, k: int = K) -> dict[str, Any]:
    """Batch-1 times of a version's stages through ``LoadedModel`` (module docstring)."""
    from onnxrec.server.loaded_model import LoadedModel, TopK

    model = LoadedModel(version, device="cpu")
    users = np.random.default_rng(seed).integers(0, model.num_users, size=n_users)
    fetch = model.candidates if model.pipeline else k
    rank = getattr(model, "rank", None)  # the ranking stage's call where the server has it, else ``score``

    def call(j: int) -> list[float]:
        user = np.array([users[j]], dtype=np.int64)
        t0 = time.perf_counter()
        (top,) = model.recommend(user, [model.seen_row(int(users[j]))], fetch)
        t1 = time.perf_counter()
        if model.pipeline:
            (s,) = rank(user, [top.items], [top.scores]) if rank else model.score(user, [top.items])
            order = np.argsort(-s, kind="stable")[:k]
            top = TopK(items=top.items[order], scores=s[order].astype(np.float32, copy=False))
        t2 = time.perf_counter()
        assert len(top.items) == k
        return [t1 - t0, t2 - t1, t2 - t0]

    times = timed_loop(call, n_users, seconds, 200)
    out: dict[str, Any] = {
        "calls": len(times),
        "users": n_users,
        "k": k,
        "stages": list(model.stages),
        "retrieval": model.retrieval,
        "candidates": model.candidates,
        "retrieve": percentiles([t[0] for t in times]),
        "total": percentiles([t[2] for t in times]),
    }
    if model.pipeline:
        out["rank"] = percentiles([t[1] for t in times])
    return out


def servicer_times(
    repo: Path, name: str, seconds: float, n_users: int, seed: int, k: int = K, inline_max_us: int = 500
) -> dict[str, Any]:
    """Batch-1 times of ``RecommenderServicer.answer`` (module docstring) with ``onnxrec serve
    --inline-max-us`` (a batch expected to run within it runs on the event loop, else in the batcher's
    thread: a thread hop per stage)."""
    return asyncio.run(_servicer_times(repo, name, seconds, n_users, seed, k, inline_max_us))


async def _servicer_times(
    repo: Path, name: str, seconds: float, n_users: int, seed: int, k: int, inline_max_us: int
) -> dict[str, Any]:
    from onnxrec.server.config import ServerConfig
    from onnxrec.server.registry import ModelRegistry
    from onnxrec.server.servicer import RecommenderServicer
    from onnxrec.v1 import recommender_pb2 as pb

    config = ServerConfig(repository=str(repo), device="cpu", inline_max_us=inline_max_us)
    registry = ModelRegistry(config)
    await registry.refresh()
    try:
        servicer = RecommenderServicer(registry, config)
        model = registry.get(name).model
        users = np.random.default_rng(seed).integers(0, model.num_users, size=n_users)
        ref = pb.ModelRef(name=name)
        requests = [pb.RecommendRequest(model=ref, user_id=str(model.user_ids[u]), k=k) for u in users]
        answers = [await servicer.answer(r) for r in requests[:20]]  # warm-up
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 200:
            r = requests[len(times) % n_users]
            t0 = time.perf_counter()
            await servicer.answer(r)
            times.append(time.perf_counter() - t0)
        last = answers[-1]
        return {
            "calls": len(times),
            "users": n_users,
            "k": k,
            "inline_max_us": inline_max_us,
            "answer": {"stages": list(last.stages), "retrieval": last.retrieval, "items": len(last.items)},
            **percentiles(times),
        }
    finally:
        await registry.close()
