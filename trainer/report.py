"""``onnxrec evaluate``: re-score a run (and the baselines) on its split, as a table or JSON."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from onnxrec.trainer.baselines import ItemKNN, Popularity
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.evaluate import VIEWS, Scorer, evaluate
from onnxrec.trainer.fit import ModelScorer
from onnxrec.trainer.runs import open_run


def evaluate_run(
    run: Path, *, stage: str = "test", ks: tuple[int, ...] = (10,), baselines: bool = True
) -> dict[str, Any]:
    """Metrics of a run's model (and optionally Popularity and ItemKNN) on ``stage``.

    Returns ``{"run", "dataset", "stage", "models": {name: {"sampled": {...}, "full": {...}}}}``; the
    view keys say which protocol each figure comes from.
    """
    ckpt, ds = open_run(run)
    model = model_from_checkpoint(ckpt)
    scorers: dict[str, Scorer] = {ckpt["model_type"]: ModelScorer(model, ds)}
    if baselines:
        scorers["popularity"] = Popularity(ds)
        scorers["itemknn"] = ItemKNN(ds)
    models: dict[str, Any] = {}
    for name, scorer in scorers.items():
        t0 = time.perf_counter()
        result = evaluate(scorer, ds, stage, ks=ks)
        result["seconds"] = {"evaluate": round(time.perf_counter() - t0, 3)}
        models[name] = result
    return {
        "run": str(run),
        "dataset": {"name": ds.name, "users": ds.num_users, "items": ds.num_items, "hash": ds.content_hash},
        "stage": stage,
        "model": ckpt["model_type"],
        "train_seconds": ckpt.get("metrics", {}).get("train_seconds"),
        "models": models,
    }


def format_table(report: dict[str, Any]) -> str:
    """A readable table: one row per model; HR, NDCG, MRR (and coverage) per view."""
    models = report["models"]
    first = next(iter(models.values()))
    shown = ("hr", "ndcg", "mrr", "coverage")  # the rest is in --json
    cols = [(v, m) for v in VIEWS if v in first for m in first[v] if m.split("@")[0] in shown]
    header = ["model", *[f"{v}/{m}" for v, m in cols]]
    rows = [[name, *[f"{res[v][m]:.4f}" for v, m in cols]] for name, res in models.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"{report['stage']} split of {report['dataset']['name']} ({report['dataset']['users']:,} users, "
        f"{report['dataset']['items']:,} items)",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
