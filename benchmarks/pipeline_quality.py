"""Two-stage quality on MovieLens-100K (issue #17): the default two-tower alone against retrieval (the same
two-tower, top-200 candidates) -> a ranker, in the full-ranking view, with paired tests over users.

Protocol: onnxrec's ``leave_one_out`` split of ML-100K (every rating a positive; per user by (timestamp,
item id): last = test, second-last = validation, rest = train), the dataset prepared once and every
run trained on it. Every figure comes from :func:`onnxrec.trainer.evaluate.evaluate`; a pipeline is
scored by :class:`onnxrec.trainer.pipeline_eval.PipelineScorer` (retrieval's top-200 items minus the
user's known ones, ordered by the ranker; every other item after them in retrieval's order), so the
full view ranks the held-out item against every item the user does not know.

Runs (``TrainConfig`` defaults unless named; one torch thread):

* retrieval and one stage: ``model="twotower"``;
* rankers: ``fm`` standalone (``loss=softmax, epochs=30, weight_decay=0.1``, the best FM setting of
  ``quality_ml100k.py``); ``fm``, ``deepfm``, ``mlp`` trained on the two-tower's top-200 candidates
  (``--candidates-from``, BCE, hard-negative fraction 0.5 and 1.0); FM on the candidates with the
  softmax setting (4 and 32 negatives per positive); the two-tower itself retrained on the
  candidates as a ranker (fraction 1.0 with 4 negatives, 0.5 with 32); and FM, DeepFM and that two-tower
  ranker reading the interaction's context (``--context-fields``), each paired with its twin without it:
  see :data:`RANKERS`.

Each ranker model's setting is selected on the validation split's pipeline full NDCG@10; the test split
is reported for every setting, selected or not. Paired tests on the test split, one stage against each
pipeline, over the users' ranks of their held-out item: the sign test (two-sided binomial over the users
whose rank differs) and the Wilcoxon signed-rank test on per-user NDCG@10 (zero differences dropped).

Run from the repository root (about 30 minutes on 2 busy cores, most of it the two-tower rankers)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pipeline_quality.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pipeline_quality.py --quick   # 1 epoch each, a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bench_common
import numpy as np
import scipy
import torch
from scipy import stats

from onnxrec.trainer.blend import Blend
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, check_no_leakage, save_dataset
from onnxrec.trainer.evaluate import Scorer, evaluate
from onnxrec.trainer.history import known_sequences
from onnxrec.trainer.metrics import single_positive_metrics
from onnxrec.trainer.pipeline_eval import PipelineScorer, evaluate_pipeline
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.scorer import ModelScorer
from onnxrec.trainer.train import load_for_training, run_summary, train

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = 200
K = 10
AIM = 0.05  # the aim: +5 % full NDCG@10 over one stage

#: (name, ranker model, overrides of TrainConfig); ``hard`` is the hard-negative fraction (None: standalone).
RANKERS: list[tuple[str, str, dict[str, Any]]] = [
    ("fm standalone", "fm", {"loss": "softmax", "epochs": 30, "weight_decay": 0.1}),
    ("fm hard 0.5", "fm", {"hard": 0.5, "retrieval_fields": False}),
    ("fm hard 1.0", "fm", {"hard": 1.0, "retrieval_fields": False}),
    ("deepfm hard 0.5", "deepfm", {"hard": 0.5}),
    ("deepfm hard 1.0", "deepfm", {"hard": 1.0}),
    ("mlp hard 0.5", "mlp", {"hard": 0.5}),
    ("mlp hard 1.0", "mlp", {"hard": 1.0}),
    # beyond the list: the softmax FM setting on hard negatives, more negatives per positive, and
    # the history-aware two-tower itself as a ranker trained on the candidates
    (
        "fm hard 0.5 softmax",
        "fm",
        {"hard": 0.5, "loss": "softmax", "epochs": 30, "weight_decay": 0.1, "retrieval_fields": False},
    ),
    (
        "fm hard 0.5 softmax 32neg",
        "fm",
        {
            "hard": 0.5,
            "loss": "softmax",
            "epochs": 30,
            "weight_decay": 0.1,
            "num_negatives": 32,
            "retrieval_fields": False,
        },
    ),
    ("twotower hard 1.0", "twotower", {"hard": 1.0}),
    ("twotower hard 0.5 32neg", "twotower", {"hard": 0.5, "num_negatives": 32}),
    # the control: the two-tower retrained on the candidates' pipeline with uniform negatives only
    ("twotower uniform 32neg", "twotower", {"hard": 0.0, "num_negatives": 32}),
    # rankers that also read retrieval's score and rank of each candidate as fields (the default of fm and
    # linear trained on candidates)
    ("fm fields hard 0.5", "fm", {"hard": 0.5}),
    ("fm fields hard 1.0", "fm", {"hard": 1.0}),
    ("fm fields hard 0.5 softmax", "fm", {"hard": 0.5, "loss": "softmax"}),
    ("linear fields hard 0.5", "linear", {"hard": 0.5}),
    # rankers that also read the interaction's context (hour, weekday, time since the previous interaction);
    # each is compared with its twin without it (the same name less " context")
    ("fm context hard 0.5", "fm", {"hard": 0.5, "retrieval_fields": False, "context_fields": True}),
    ("deepfm context hard 0.5", "deepfm", {"hard": 0.5, "context_fields": True}),
    ("fm fields context hard 0.5", "fm", {"hard": 0.5, "context_fields": True}),
    ("twotower context hard 0.5 32neg", "twotower", {"hard": 0.5, "num_negatives": 32, "context_fields": True}),
]


@dataclass
class Ranker:
    """One trained ranker setting and its pipeline's figures."""

    name: str
    model: str
    setting: dict[str, Any]
    train_seconds: float
    wall_seconds: float
    best_epoch: int
    epochs_run: int
    negatives: dict[str, Any]
    blend: dict[str, Any] | None = None  # the run's blend of retrieval's score and the ranker's (validation)
    valid: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    selected: bool = False
    paired: dict[str, Any] = field(default_factory=dict)
    paired_vs_twin: dict[str, Any] = field(default_factory=dict)  # a context ranker against its twin without


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_run(data: Path, out: Path, model: str, setting: dict[str, Any], retrieval: Path | None, quick: bool) -> Path:
    """One run through ``train()`` (one thread, no progress bar); a complete run already at ``out`` (a
    ``--work`` directory of an earlier call) is reused."""
    if (out / "eval.json").is_file():
        return out
    overrides = {k: v for k, v in setting.items() if k != "hard"}
    if "hard" in setting:
        assert retrieval is not None
        overrides.update(candidates_from=str(retrieval), candidates=CANDIDATES, hard_negatives=setting["hard"])
    if quick:
        overrides["epochs"] = 1
    cfg = TrainConfig(data=str(data), out=str(out), model=model, threads=1, progress=False, **overrides)
    return train(cfg)


def held_out_ranks(scorer: Scorer, ds: Dataset, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """Per evaluated user, the full view's items above the held-out item and level with it (exactly
    what :func:`~onnxrec.trainer.evaluate.evaluate` counts; leave-one-out: one held-out item each)."""
    part = ds.splits.held_out(stage)
    known = known_sequences(ds, stage)
    greater, equal = np.zeros(len(part.user_idx), np.int64), np.zeros(len(part.user_idx), np.int64)
    once = getattr(scorer, "items_once", None)
    with once() if once is not None else nullcontext():
        for start in range(0, len(part.user_idx), 256):
            users = part.user_idx[start : start + 256]
            scores = np.asarray(scorer(users, stage), dtype=np.float64)
            for row, u in enumerate(users):
                s = scores[row].copy()
                s[known.of(int(u))] = -np.inf
                p = s[part.item_idx[start + row]]
                greater[start + row] = (s > p).sum()
                equal[start + row] = (s == p).sum() - 1
    return greater, equal


def per_user_ndcg(greater: np.ndarray, equal: np.ndarray, k: int = K) -> np.ndarray:
    """Each user's NDCG@k, ties counted as :func:`single_positive_metrics` counts them."""
    return np.array(
        [single_positive_metrics(greater[i : i + 1], equal[i : i + 1], k)["ndcg"] for i in range(len(greater))]
    )


def paired_tests(base: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Sign test over the users' expected ranks (ties at half) and Wilcoxon on per-user NDCG@10."""
    rank_a = base[0] + base[1] / 2.0
    rank_b = other[0] + other[1] / 2.0
    better, worse = int((rank_b < rank_a).sum()), int((rank_b > rank_a).sum())
    n = better + worse
    sign_p = float(stats.binomtest(better, n, 0.5).pvalue) if n else 1.0
    tail = sum(math.comb(n, i) for i in range(min(better, worse) + 1)) / 2.0**n if n else 0.5
    ndcg_a, ndcg_b = per_user_ndcg(*base), per_user_ndcg(*other)
    diff = ndcg_b - ndcg_a
    nonzero = int((diff != 0).sum())
    wilcoxon = stats.wilcoxon(ndcg_b, ndcg_a, zero_method="wilcox") if nonzero else None
    return {
        "users": len(rank_a),
        "sign_test": {
            "pipeline_better": better,
            "pipeline_worse": worse,
            "ties": len(rank_a) - n,
            "p_value": sign_p,
            "p_value_math_comb": min(1.0, 2.0 * tail),
        },
        "wilcoxon_ndcg@10": {
            "nonzero_differences": nonzero,
            "statistic": float(wilcoxon.statistic) if wilcoxon is not None else None,
            "p_value": float(wilcoxon.pvalue) if wilcoxon is not None else 1.0,
            "mean_difference": float(diff.mean()),
            "mean_ndcg@10_one_stage": float(ndcg_a.mean()),
            "mean_ndcg@10_pipeline": float(ndcg_b.mean()),
        },
    }


def _slim(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {view: {m: metrics[view][m] for m in (f"hr@{K}", f"ndcg@{K}", f"mrr@{K}")} for view in ("sampled", "full")}
    if "retrieval" in metrics:
        out["retrieval_recall"] = metrics["retrieval"][f"recall@{CANDIDATES}"]
    return out


def train_ranker(
    name: str, model: str, setting: dict[str, Any], data: Path, tmp: Path, retrieval: Path, quick: bool
) -> tuple[Ranker, Path]:
    """Train one ranker setting; its run directory and record (figures filled in later)."""
    t0 = time.perf_counter()
    run = train_run(data, tmp / name.replace(" ", "-"), model, setting, retrieval, quick)
    wall = time.perf_counter() - t0
    summary = run_summary(run)
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    record = Ranker(
        name=name,
        model=model,
        setting=setting,
        train_seconds=round(sum(e["seconds"] for e in epochs), 2),
        wall_seconds=round(wall, 2),
        best_epoch=summary["best_epoch"],
        epochs_run=summary["epochs_run"],
        negatives=summary.get("negatives", {}),
        blend=summary.get("blend"),
    )
    return record, run


def score_pipeline(record: Ranker, run: Path, retrieval: Any, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's validation and test figures (into ``record``) and its test ranks."""
    ckpt, _ = open_run(run)
    blend = Blend.from_dict(ckpt.get("blend"))
    scorer = PipelineScorer(retrieval, model_from_checkpoint(ckpt), ds, CANDIDATES, blend=blend)
    record.valid = _slim(evaluate_pipeline(scorer, ds, "valid", ks=(K,)))
    record.test = _slim(evaluate_pipeline(scorer, ds, "test", ks=(K,)))
    summary = run_summary(run)
    if summary.get("evaluated_as") == "pipeline":  # the run validated itself as this pipeline: the same figures
        diff = max(
            abs(summary["valid"][v][m] - record.valid[v][m]) for v in ("sampled", "full") for m in record.valid[v]
        )
        record.negatives["valid_in_run_vs_rescored_max_abs_diff"] = diff
    return held_out_ranks(scorer, ds, "test")


def select(rankers: list[Ranker]) -> Ranker:
    """Per ranker model, the setting with the best validation pipeline full NDCG@10 (marked
    ``selected``); returns the best of all on validation."""
    for model in {r.model for r in rankers}:
        best = max((r for r in rankers if r.model == model), key=lambda r: r.valid["full"][f"ndcg@{K}"])
        best.selected = True
    return max(rankers, key=lambda r: r.valid["full"][f"ndcg@{K}"])


def markdown_table(one_stage: dict[str, Any], rankers: list[Ranker]) -> str:
    """Test split, full view: one stage, then each pipeline with its paired tests against one stage."""
    base = one_stage["test"]["full"][f"ndcg@{K}"]
    head = (
        "| system | selected | valid full NDCG@10 | test full HR@10 | test full NDCG@10 | vs one stage | "
        "sign test: better / worse, p | Wilcoxon p | recall@200 | blend weight | train s |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    t = one_stage["test"]["full"]
    lines.append(
        f"| two-tower, one stage | | {one_stage['valid']['full'][f'ndcg@{K}']:.4f} | {t[f'hr@{K}']:.4f} | "
        f"{t[f'ndcg@{K}']:.4f} | | | | | | {one_stage['train_seconds']:.1f} |"
    )
    for r in rankers:
        t = r.test["full"]
        sign, wil = r.paired["sign_test"], r.paired["wilcoxon_ndcg@10"]
        lines.append(
            f"| two-tower top-200 -> {r.name} | {'yes' if r.selected else ''} | {r.valid['full'][f'ndcg@{K}']:.4f} | "
            f"{t[f'hr@{K}']:.4f} | {t[f'ndcg@{K}']:.4f} | {100 * (t[f'ndcg@{K}'] / base - 1):+.1f} % | "
            f"{sign['pipeline_better']} / {sign['pipeline_worse']}, {sign['p_value']:.2g} | {wil['p_value']:.2g} | "
            f"{r.test['retrieval_recall']:.4f} | {r.blend['weight'] if r.blend else '-'} | {r.train_seconds:.1f} |"
        )
    return "\n".join(lines)


def run_all(ds: Dataset, tmp: Path, names: list[str], quick: bool) -> tuple[dict[str, Any], list[Ranker]]:
    """Train the two-tower and every ranker of ``names``; score one stage and each pipeline."""
    data = tmp / "data" if (tmp / "data" / "dataset.json").is_file() else save_dataset(ds, tmp / "data")
    t0 = time.perf_counter()
    retrieval_run = train_run(data, tmp / "twotower", "twotower", {}, None, quick)
    wall = time.perf_counter() - t0
    epochs = [json.loads(line) for line in (retrieval_run / "metrics.jsonl").read_text().splitlines() if line]
    retrieval = model_from_checkpoint(open_run(retrieval_run)[0])
    one = ModelScorer(retrieval, ds)
    one_stage: dict[str, Any] = {stage: _slim(evaluate(one, ds, stage, ks=(K,))) for stage in ("valid", "test")}
    one_stage.update(train_seconds=round(sum(e["seconds"] for e in epochs), 2), wall_seconds=round(wall, 2))
    base_ranks = held_out_ranks(one, ds, "test")
    # the harness itself: ranking the candidates by the retrieval model is one stage again
    itself = evaluate_pipeline(PipelineScorer(retrieval, retrieval, ds, CANDIDATES), ds, "test", ks=(K,))
    one_stage["check_twotower_ranking_its_own_candidates"] = _slim(itself)
    one_stage["test_recall@200"] = itself["retrieval"][f"recall@{CANDIDATES}"]
    log(f"two-tower: test full NDCG@10 {one_stage['test']['full'][f'ndcg@{K}']:.4f} ({wall:.0f} s)")
    rankers = []
    test_ranks = {}
    for name, model, setting in (r for r in RANKERS if r[0] in names):
        record, run = train_ranker(name, model, setting, data, tmp, retrieval_run, quick)
        ranks = test_ranks[name] = score_pipeline(record, run, retrieval, ds)
        record.paired = paired_tests(base_ranks, ranks)
        twin = name.replace(" context", "")
        if twin != name and twin in test_ranks:
            record.paired_vs_twin = {"twin": twin, **paired_tests(test_ranks[twin], ranks)}
        rankers.append(record)
        log(
            f"{name}: valid full NDCG@10 {record.valid['full'][f'ndcg@{K}']:.4f}, test "
            f"{record.test['full'][f'ndcg@{K}']:.4f} (train {record.train_seconds:.0f} s, "
            f"wall {record.wall_seconds:.0f} s)"
        )
    return one_stage, rankers


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; writes the JSON report and prints the markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--data", type=Path, default=bench_common.default_data(), help="MovieLens-100K folder")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pipeline_quality.json")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch per run")
    names = [r[0] for r in RANKERS]
    p.add_argument("--rankers", default=",".join(names), help="comma-separated rankers to train (default: all)")
    p.add_argument("--work", type=Path, help="keep the runs here, and reuse the complete ones found there")
    args = p.parse_args(argv)
    chosen = [n.strip() for n in args.rankers.split(",") if n.strip()]
    if not args.data.exists() or not chosen or set(chosen) - set(names):
        p.error(f"--data must exist and --rankers be some of: {', '.join(names)}")
    started = time.perf_counter()
    torch.set_num_threads(1)
    info = bench_common.machine_info(numpy=np.__version__, scipy=scipy.__version__)
    ds, _ = load_for_training(TrainConfig(data=str(args.data), progress=False))
    check_no_leakage(ds)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    with nullcontext(str(args.work)) if args.work else tempfile.TemporaryDirectory(prefix="onnxrec-pipeline-") as tmp:
        one_stage, rankers = run_all(ds, Path(tmp), chosen, args.quick)
    best = select(rankers)
    gain = best.test["full"][f"ndcg@{K}"] / one_stage["test"]["full"][f"ndcg@{K}"] - 1
    valid_gain = best.valid["full"][f"ndcg@{K}"] / one_stage["valid"]["full"][f"ndcg@{K}"] - 1
    table = markdown_table(one_stage, rankers)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "benchmark": "pipeline_quality",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "OMP_NUM_THREADS=1 python " + " ".join([str(Path(sys.argv[0])), *sys.argv[1:]]),
        "quick": args.quick,
        "machine": info,
        "dataset": {
            "path": str(args.data),
            "name": ds.name,
            "counts": ds.meta.get("counts", {}),
            "content_hash": ds.content_hash,
        },
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "candidates": CANDIDATES,
        "selection": "per ranker model, the setting of best validation pipeline full NDCG@10; best overall likewise",
        "one_stage": one_stage,
        "rankers": [asdict(r) for r in rankers],
        "best_on_validation": best.name,
        "aim": {
            "full_ndcg@10_gain": AIM,
            "best": best.name,
            "best_valid_gain": round(valid_gain, 4),
            "best_test_gain": round(gain, 4),
            "best_test_sign_p": best.paired["sign_test"]["p_value"],
            "best_test_wilcoxon_p": best.paired["wilcoxon_ndcg@10"]["p_value"],
            "gain_at_least_aim_on_test": bool(gain >= AIM),
            "better_than_one_stage_on_validation": bool(valid_gain > 0),
            "significant_at_0.05_both_tests": bool(
                best.paired["sign_test"]["p_value"] < 0.05 and best.paired["wilcoxon_ndcg@10"]["p_value"] < 0.05
            ),
        },
        "total_seconds": round(time.perf_counter() - started, 1),
        "table_markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(
        f"\nbest on validation: {best.name}; full NDCG@10 against one stage: valid {100 * valid_gain:+.1f} %, "
        f"test {100 * gain:+.1f} % (aim +5 %)"
    )
    print(f"total {report['total_seconds']:.0f} s; report written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
