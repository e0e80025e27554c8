"""``onnxrec evaluate``: re-score a run (and the baselines, and a pipeline with a ranker run) on its split,
as a table or JSON."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from onnxrec.trainer.baselines import ItemKNN, Popularity
from onnxrec.trainer.blend import Blend
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.evaluate import VIEWS, Scorer, evaluate
from onnxrec.trainer.pipeline_eval import DEFAULT_CANDIDATES, PipelineScorer, evaluate_pipeline, open_ranker_run
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.scorer import ModelScorer


def evaluate_run(
    run: Path,
    *,
    stage: str = "test",
    ks: tuple[int, ...] = (10,),
    baselines: bool = True,
    ranker: Path | None = None,
    candidates: int | None = None,
) -> dict[str, Any]:
    """Metrics of a run's model (and optionally Popularity and ItemKNN) on ``stage``; with ``ranker``,
    also of the pipeline: the run's top ``candidates`` (default 200) items per user ordered by the ranker run's model
    (see :mod:`onnxrec.trainer.pipeline_eval`), and the retrieval stage's recall@``candidates``.

    Returns ``{"run", "dataset", "stage", "models": {name: {"sampled": {...}, "full": {...}}}}`` (and
    ``"pipeline"`` with a ranker); the view keys say which protocol each figure comes from.
    """
    ckpt, ds = open_run(run)
    model = model_from_checkpoint(ckpt)
    scorers: dict[str, Scorer] = {ckpt["model_type"]: ModelScorer(model, ds)}
    pipeline: dict[str, Any] | None = None
    if ranker is not None:
        candidates = DEFAULT_CANDIDATES if candidates is None else candidates
        ranker_ckpt, ranker_model = open_ranker_run(ranker, ds)
        name = f"{ckpt['model_type']} -> {ranker_ckpt['model_type']} ({candidates})"
        blend = Blend.from_dict(ranker_ckpt.get("blend"))
        scorers[name] = PipelineScorer(model, ranker_model, ds, candidates, blend=blend)
        pipeline = {"name": name, "ranker_run": str(ranker), "ranker": ranker_ckpt["model_type"]}
        if blend is not None:
            pipeline["blend_weight"] = blend.weight
    if baselines:
        scorers["popularity"] = Popularity(ds)
        scorers["itemknn"] = ItemKNN(ds)
    models: dict[str, Any] = {}
    for name, scorer in scorers.items():
        t0 = time.perf_counter()
        if isinstance(scorer, PipelineScorer):
            result: dict[str, Any] = evaluate_pipeline(scorer, ds, stage, ks=ks)
            assert pipeline is not None
            pipeline["retrieval"] = result.pop("retrieval")
        else:
            result = evaluate(scorer, ds, stage, ks=ks)
        result["seconds"] = {"evaluate": round(time.perf_counter() - t0, 3)}
        models[name] = result
    report: dict[str, Any] = {
        "run": str(run),
        "dataset": {"name": ds.name, "users": ds.num_users, "items": ds.num_items, "hash": ds.content_hash},
        "stage": stage,
        "model": ckpt["model_type"],
        "train_seconds": ckpt.get("metrics", {}).get("train_seconds"),
        "models": models,
    }
    if pipeline is not None:
        report["pipeline"] = pipeline
    return report


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
    if "pipeline" in report:
        recall = report["pipeline"]["retrieval"]
        c = int(recall["candidates"])
        lines.append(f"retrieval recall@{c} of the held-out items: {recall[f'recall@{c}']:.4f}")
    return "\n".join(lines)
