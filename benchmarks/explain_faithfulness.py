"""Are explanations faithful? Removing the top reason from the history should cost the explained item
more of its score than removing a random history item (issue #18: in at least 80 % of cases).

For ``--users`` users of an exported version (drawn with ``--seed``), each sent as a history request
(an unknown user id, their ``history_len`` newest known items as the request's history): the server's
answer with ``explain`` (in-process, :meth:`RecommenderServicer.answer`, the whole request path: plan,
retrieval, the explanation stage), then for the explained item (the top item; every answered item with
``--all-items``) its score with the history less the top reason and with the history less a random
other history item, both from the version's ``recommend_from_history`` graph (every other item
excluded, so its top-1 is that item's score). A case counts as faithful when the top reason's removal
lowers the score strictly more; an item without a reason counts as unfaithful.

    python benchmarks/explain_faithfulness.py VERSION_DIR [--users 500] [--seed 0] [--all-items]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from onnxrec.server.config import ServerConfig
from onnxrec.server.loaded_model import LoadedModel
from onnxrec.server.registry import ModelRegistry
from onnxrec.server.servicer import RecommenderServicer
from onnxrec.v1 import recommender_pb2 as pb


def score_without(model: LoadedModel, history: np.ndarray, drop: int, item: int, features: list[int]) -> float:
    """``item``'s score from the history graph with every occurrence of ``drop`` left out of ``history``."""
    kept = history[history != drop]
    exclude = np.concatenate([np.delete(np.arange(model.num_items), item), [-1]])
    (top,) = model.recommend_from_history([kept], [exclude], [features], 1)
    assert int(top.items[0]) == item
    return float(top.scores[0])


async def measure(version: Path, users: int, seed: int, k: int, all_items: bool) -> dict[str, Any]:
    """The figures of one version (module docstring)."""
    config = ServerConfig(repository=str(version.parent.parent), device="cpu", reload_interval_s=0)
    registry = ModelRegistry(config)
    await registry.refresh()
    servicer = RecommenderServicer(registry, config)
    ref = pb.ModelRef(name=version.parent.name, version=int(version.name))
    model = registry.get(ref.name, ref.version).model
    rng = np.random.default_rng(seed)
    chosen = rng.choice(model.num_users, size=min(users, model.num_users), replace=False)
    features = model.encode_user_features({})
    cases = faithful = unexplained = 0
    drops_top, drops_random = [], []
    for u in chosen:
        history = model.seen(int(u))[::-1][: model.history_len]  # newest first
        if len(np.unique(history)) < 2:
            continue
        ids = [model.item_id_text[i] for i in history[::-1]]  # a request's history is oldest first
        request = pb.RecommendRequest(model=ref, user_id=f"faithfulness-{u}", k=k, history=ids, explain=True)
        answer = await servicer.answer(request)
        for scored in answer.items if all_items else answer.items[:1]:
            cases += 1
            if not scored.reasons:
                unexplained += 1
                continue
            item, top = model.item_index[scored.item_id], model.item_index[scored.reasons[0].item_id]
            other = rng.choice(np.unique(history[history != top]))
            full = score_without(model, history, -2, item, features)
            drop_top = full - score_without(model, history, top, item, features)
            drop_random = full - score_without(model, history, int(other), item, features)
            faithful += drop_top > drop_random
            drops_top.append(drop_top)
            drops_random.append(drop_random)
    await registry.close()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "version": str(version),
        "model_type": model.model_type,
        "explain": model.manifest["explain"]["methods"]["explain_from_history"],
        "users": len(chosen),
        "cases": cases,
        "faithful": faithful,
        "faithful_fraction": round(faithful / cases, 4) if cases else None,
        "unexplained": unexplained,
        "mean_score_drop_top_reason": round(float(np.mean(drops_top)), 5) if drops_top else None,
        "mean_score_drop_random_item": round(float(np.mean(drops_random)), 5) if drops_random else None,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }


def main() -> None:
    """Measure one version and print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version", type=Path, help="an exported version directory (REPO/NAME/N) with explain graphs")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-k", type=int, default=10, help="items per answer")
    ap.add_argument("--all-items", action="store_true", help="explain every answered item, not only the top one")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(measure(args.version.resolve(), args.users, args.seed, args.k, args.all_items))))


if __name__ == "__main__":
    main()
