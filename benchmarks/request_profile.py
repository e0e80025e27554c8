"""Where one Recommend request's CPU goes, without gRPC: the servicer's request path in-process.

Loads a model repository through the server's own registry (``ModelRegistry``, ``RecommenderServicer``,
the same batcher and sessions ``onnxrec serve`` uses), then runs ``RecommenderServicer.answer``
sequentially for every known user and for as many unknown users (the popularity path, no model run),
and prints microseconds per request of each, then a cProfile of the known-user path. The difference
between the two paths is the model's share (the onnxruntime call plus its Python around it); the
served cost on top of both is gRPC's (compare ``benchmarks/serving.py``'s echo floor).

    python benchmarks/request_profile.py --repository REPO --model NAME [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from onnxrec.server.config import ServerConfig
from onnxrec.server.registry import ModelRegistry
from onnxrec.server.servicer import RecommenderServicer
from onnxrec.v1 import recommender_pb2 as pb


async def run(repository: Path, model: str, rounds: int, profile: bool, k: int) -> None:
    """Time the known-user and popularity paths, then optionally profile the known-user path."""
    config = ServerConfig(repository=str(repository), device="cpu")
    registry = ModelRegistry(config)
    await registry.refresh()
    servicer = RecommenderServicer(registry, config)
    loaded = registry.get(model).model
    ref = pb.ModelRef(name=model)
    known = [pb.RecommendRequest(model=ref, user_id=str(u), k=k) for u in loaded.user_ids]
    unknown = [pb.RecommendRequest(model=ref, user_id=f"unknown-{j}", k=k) for j in range(len(known))]
    for name, requests in (("known user (model)", known), ("unknown user (popularity)", unknown)):
        for r in requests[:100]:  # warm-up, and the batcher's first (executor) run
            await servicer.answer(r)
        per: list[float] = []
        for _ in range(rounds):
            t0 = time.process_time()
            for r in requests:
                await servicer.answer(r)
            per.append((time.process_time() - t0) / len(requests) * 1e6)
        print(f"{name:28s} CPU per request: " + ", ".join(f"{p:.0f}" for p in per) + " us (rounds)")
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for r in known:
            await servicer.answer(r)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    await registry.close()


def main() -> None:
    """Parse the options and run."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, required=True, help="a model repository (onnxrec export)")
    ap.add_argument("--model", required=True, help="model name in the repository")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the known-user path")
    args = ap.parse_args()
    asyncio.run(run(args.repository, args.model, args.rounds, args.profile, args.k))


if __name__ == "__main__":
    main()
