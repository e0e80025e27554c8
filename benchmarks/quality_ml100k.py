"""Training quality on MovieLens-100K (leave-one-out): every onnxrec model next to baselines and peers.

One run, one split, one evaluation code path. The split is onnxrec's ``leave_one_out`` (per user,
interactions ordered by (timestamp, item id): last = test, second-last = validation, rest = train;
every rating is an implicit positive) and every figure comes from :func:`onnxrec.trainer.evaluate.evaluate`:

* ``sampled``: the held-out item ranked against the user's 99 sampled negatives;
* ``full``: against every item except the user's known ones (train; train + validation for test).
  Ties count half in both views.

Models:

* Popularity and ItemKNN (onnxrec's baselines, no training settings);
* MF, MLP, NeuMF, TwoTower, SASRec and the rankers Linear, FM and DeepFM through
  :func:`onnxrec.trainer.train.train` with the default command settings
  (``TrainConfig(data=..., out=..., progress=False)``, only ``model`` changed); MF, MLP, NeuMF and FM
  are also tried with a few other settings;
* the peers ``implicit`` ALS and BPR (CPU), trained on the training split's user x item matrix and
  tuned over a small grid.

Every tuned model is selected on the validation split's full-ranking NDCG@10; only the selected
setting (and the default one, when tuning picked another) is scored on the test split. Torch and
``implicit`` run with ``--threads`` threads (default 1: the machine this was written for has two
cores shared with other work, where two torch threads were several times slower than one).

Run from the repository root::

    python benchmarks/quality_ml100k.py            # ~15-20 minutes on a 2-core CPU (SASRec about half)
    python benchmarks/quality_ml100k.py --quick    # smoke run, about a minute
    python benchmarks/quality_ml100k.py --models fm,linear --out /tmp/fm.json   # some rows only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import bench_common
import numpy as np
import scipy.sparse as sp
import torch
from pipeline_quality import held_out_ranks, paired_tests
from threadpoolctl import threadpool_limits

from onnxrec.trainer.baselines import ItemKNN, Popularity
from onnxrec.trainer.checkpoint import CHECKPOINT_FILE, load_checkpoint, model_from_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, check_no_leakage
from onnxrec.trainer.evaluate import Scorer, evaluate
from onnxrec.trainer.report import evaluate_run
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.scorer import ModelScorer
from onnxrec.trainer.train import load_for_training, run_summary, train

REPO = Path(__file__).resolve().parents[1]
SELECT_ON = ("full", "ndcg@10")  # validation metric every tuned model is selected on

#: Settings tried per onnxrec model (overrides of TrainConfig); the first is the default command.
#: ``layers`` is left at its default, ``()`` = each model's own ((64, 32, 16) for MLP and NeuMF).
ONNXREC_GRIDS: dict[str, list[dict[str, Any]]] = {
    "mf": [{}, {"epochs": 30, "weight_decay": 0.1}, {"epochs": 30, "lr": 0.002}],
    "mlp": [{}, {"epochs": 20}, {"loss": "softmax"}],
    "neumf": [{}, {"dim": 32, "weight_decay": 0.1}, {"epochs": 20, "lr": 0.002}],
    "twotower": [{}],
    "linear": [{}],
    "fm": [
        {},
        {"loss": "softmax"},
        {"loss": "softmax", "epochs": 30, "weight_decay": 0.1},
        {"epochs": 20, "weight_decay": 0.1},
        {"dim": 32, "epochs": 20},
    ],
    "deepfm": [{}],
    # the all-positions objective, relative positions, 10 epochs: the default (1 block, chosen by the run of
    # 2026-11-29 10:00, where the default was 2 blocks and {"blocks": 1, "epochs": 15} won on validation; 512 target
    # positions per step, chosen at 13:45 over 3 seeds; the weight average at 0.995 per step, chosen on 2026-11-29
    # 22:00 over 3 seeds), the same without the average, the earlier 1024 per step, and 2 blocks (#19)
    "sasrec": [{}, {"ema": 0.0}, {"sequence_batch_size": 1024}, {"blocks": 2}],
}

#: implicit's own defaults first, then a small grid.
ALS_GRID: list[dict[str, Any]] = [
    {"factors": 100, "regularization": 0.01, "alpha": 1.0, "iterations": 15},
    *(
        {"factors": f, "regularization": r, "alpha": a, "iterations": 15}
        for f in (32, 64, 128)
        for r in (1.0, 3.0, 10.0)
        for a in (0.5, 1.0, 3.0)
    ),
]
BPR_GRID: list[dict[str, Any]] = [
    {"factors": 100, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100},
    *(
        {"factors": f, "learning_rate": lr, "regularization": r, "iterations": it}
        for f in (32, 64)
        for lr in (0.01, 0.02)
        for r in (0.001, 0.01)
        for it in (60, 100)
    ),
]

#: What ``--models`` chooses from: the baselines, each onnxrec model and each implicit peer.
ROW_GROUPS = ("baselines", *ONNXREC_GRIDS, "implicit_als", "implicit_bpr")

DISPLAY = {
    "popularity": "Popularity",
    "itemknn": "ItemKNN",
    "mf": "MF",
    "mlp": "MLP",
    "neumf": "NeuMF",
    "twotower": "TwoTower",
    "linear": "Linear",
    "fm": "FM",
    "deepfm": "DeepFM",
    "sasrec": "SASRec",
    "implicit_als": "implicit ALS",
    "implicit_als_foldin": "implicit ALS + fold-in",
    "implicit_bpr": "implicit BPR",
}


@dataclass
class Trial:
    """One trained setting of one model: its validation metrics and training time."""

    setting: dict[str, Any]
    valid: dict[str, dict[str, float]]
    train_seconds: float  # time spent training (onnxrec: the epochs' training steps, no evaluation)
    wall_seconds: float  # the whole call (onnxrec: data loading, per-epoch validation, test, writing the run)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """The selection metric (validation full-ranking NDCG@10)."""
        return float(self.valid[SELECT_ON[0]][SELECT_ON[1]])


@dataclass
class Row:
    """One line of the result table."""

    name: str
    kind: str  # baseline | onnxrec | peer
    setting: dict[str, Any]
    valid: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    train_seconds: float
    wall_seconds: float
    tuning: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


default_data = bench_common.default_data


def machine_info() -> dict[str, Any]:
    """The machine, library versions and load, for the record."""
    import implicit

    return bench_common.machine_info(numpy=np.__version__, implicit=implicit.__version__)


def _slim(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The views' metrics without the ``users`` count."""
    return {view: dict(metrics[view]) for view in ("sampled", "full")}


def _fmt_setting(setting: dict[str, Any]) -> str:
    if not setting:
        return "default"
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple | list) else v}" for k, v in setting.items())


def train_matrix(ds: Dataset, stage: str = "valid") -> sp.csr_matrix:
    """Binary user x item CSR of what is known at ``stage``: train (``valid``) or train + valid (``test``)."""
    parts = [ds.splits.train] if stage == "valid" else [ds.splits.train, ds.splits.valid]
    users = np.concatenate([p.user_idx for p in parts])
    items = np.concatenate([p.item_idx for p in parts])
    m = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=(ds.num_users, ds.num_items), dtype=np.float32
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


class FactorScorer:
    """Scores all items as ``user_factors[u] @ item_factors.T``.

    For implicit's BPR the last column of ``item_factors`` is the item bias and the matching column
    of ``user_factors`` is fixed at 1, so the product already includes the bias.
    """

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        self.user_factors = np.asarray(user_factors)
        self.item_factors = np.asarray(item_factors)

    def __call__(self, users: np.ndarray, stage: str) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T


class ALSFoldInScorer:
    """ALS with the user vector re-solved from everything known at the stage (train, plus the validation
    item for ``test``), with the item factors from training on train only: the same inputs that
    history-aware models (TwoTower, ItemKNN) get at test time."""

    def __init__(self, model: Any, ds: Dataset) -> None:
        self.model = model
        self.known = {stage: train_matrix(ds, stage) for stage in ("valid", "test")}

    def __call__(self, users: np.ndarray, stage: str) -> np.ndarray:
        with threadpool_limits(1, "blas"):
            u = self.model.recalculate_user(users, self.known[stage][users])
        return np.asarray(u) @ np.asarray(self.model.item_factors).T


def _eval(scorer: Scorer, ds: Dataset, stage: str) -> dict[str, dict[str, float]]:
    return _slim(evaluate(scorer, ds, stage, ks=(10,)))


def protocol_check(ds: Dataset, data: Path) -> dict[str, Any]:
    """Recompute the held-out items from the raw ``u.data`` independently of onnxrec and compare by raw ids.

    Per user, ratings ordered by (timestamp, numeric item id): last = test, second-last = validation.
    Also checks that each user index's raw id has as many interactions in the dataset as in the file
    (i.e. that ``user_ids`` names the right user). ``ok`` needs all three to match fully.
    """
    path = data / "u.data"
    if not path.is_file():
        return {"checked": False, "reason": f"{path} not found"}
    raw = np.loadtxt(path, dtype=np.int64, usecols=(0, 1, 3))
    u, i, t = raw[:, 0], raw[:, 1], raw[:, 2]
    order = np.lexsort((i, t, u))
    u, i = u[order], i[order]
    last = np.r_[u[1:] != u[:-1], True]
    second = np.r_[last[1:], False] & ~last
    result: dict[str, Any] = {"checked": True}
    for stage, mask, part in (("test", last, ds.splits.test), ("valid", second, ds.splits.valid)):
        expected = dict(zip(u[mask].tolist(), i[mask].tolist(), strict=True))
        got = {int(ds.user_ids[a]): int(ds.item_ids[b]) for a, b in zip(part.user_idx, part.item_idx, strict=True)}
        result[f"{stage}_items_matching"] = round(float(np.mean([got.get(k) == v for k, v in expected.items()])), 4)
    raw_counts = np.bincount(u)
    parts = (ds.splits.train, ds.splits.valid, ds.splits.test)
    ds_counts = np.bincount(np.concatenate([p.user_idx for p in parts]), minlength=ds.num_users)
    ids = ds.user_ids.astype(np.int64)
    result["user_id_map_consistent"] = round(float(np.mean(raw_counts[ids] == ds_counts)), 4)
    checks = ("test_items_matching", "valid_items_matching", "user_id_map_consistent")
    result["ok"] = all(result[k] == 1.0 for k in checks)
    return result


# --------------------------------------------------------------------------- onnxrec models


def _reset_threads(threads: int, default_threads: int) -> None:
    # train() only calls torch.set_num_threads when threads > 0; restore torch's default otherwise
    torch.set_num_threads(threads if threads > 0 else default_threads)


def train_onnxrec(
    model: str, setting: dict[str, Any], data: Path, tmp: Path, threads: int, default_threads: int, quick: bool
) -> tuple[Trial, Path]:
    """Train one onnxrec model with ``setting`` through ``train()``; returns the trial and run directory."""
    overrides = dict(setting)
    if quick:
        overrides["epochs"] = 1
    _reset_threads(threads, default_threads)
    out = tmp / f"{model}-{len(list(tmp.glob(f'{model}-*')))}"
    cfg = TrainConfig(data=str(data), out=str(out), progress=False, model=model, threads=threads, **overrides)
    t0 = time.perf_counter()
    run = train(cfg)
    wall = time.perf_counter() - t0
    summary = run_summary(run)
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trial = Trial(
        setting=setting,
        valid=_slim(summary["valid"]),
        train_seconds=round(sum(e["seconds"] for e in epochs), 2),
        wall_seconds=round(wall, 2),
        extra={
            "loss": summary["loss"],
            "best_epoch": summary["best_epoch"],
            "epochs_run": summary["epochs_run"],
            "fit_seconds_with_validation": summary["train_seconds"],
            "train_cpu_seconds": round(sum(e.get("cpu_seconds", 0.0) for e in epochs), 2),
            "test_from_eval_json": _slim(summary["test"]),
        },
    )
    return trial, run


#: The pairs of rows compared user by user (``--paired``): (baseline row, challenger row).
PAIRED = (("twotower", "sasrec"),)


def run_ranks(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per stage, each user's count of items above and level with the held-out item in the full view
    (what the paired tests compare), from the run's checkpoint."""
    ckpt, run_ds = open_run(run)
    scorer = ModelScorer(model_from_checkpoint(ckpt), run_ds)
    return {stage: held_out_ranks(scorer, run_ds, stage) for stage in ("valid", "test")}


def tune_onnxrec(
    model: str,
    ds: Dataset,
    data: Path,
    tmp: Path,
    threads: int,
    default_threads: int,
    quick: bool,
    log: Callable[[str], None],
    ranks: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None,
) -> list[Row]:
    """Train every setting of ``model``'s grid, keep the best on validation; rows for it (and the default).
    With ``ranks``, the selected run's per-user full-view ranks are added under the model's name."""
    grid = ONNXREC_GRIDS[model][:1] if quick else ONNXREC_GRIDS[model]
    trials: list[tuple[Trial, Path]] = []
    for setting in grid:
        trial, run = train_onnxrec(model, setting, data, tmp, threads, default_threads, quick)
        ckpt = load_checkpoint(run / CHECKPOINT_FILE)
        if ckpt["dataset"]["content_hash"] != ds.content_hash:
            raise SystemExit(f"{model}: trained on another split than the baselines (content hash differs)")
        trials.append((trial, run))
        log(
            f"  {model} {_fmt_setting(setting)}: valid full NDCG@10 {trial.score:.4f}, "
            f"best epoch {trial.extra['best_epoch']}/{trial.extra['epochs_run']}, "
            f"train {trial.train_seconds:.1f}s (wall {trial.wall_seconds:.1f}s)"
        )
    best = max(range(len(trials)), key=lambda i: (trials[i][0].score, -i))
    tuning = [{"setting": t.setting, "valid": t.valid, "train_seconds": t.train_seconds, **t.extra} for t, _ in trials]
    for entry in tuning:
        entry.pop("test_from_eval_json")  # selection sees validation only
    chosen = [best] if best == 0 else [best, 0]
    if ranks is not None:
        ranks[model] = run_ranks(trials[best][1])
    rows = []
    for i in chosen:
        trial, run = trials[i]
        # re-score the saved run from its checkpoint (onnxrec evaluate) and compare with train()'s eval.json
        rescored = _slim(evaluate_run(run, stage="test", ks=(10,), baselines=False)["models"][model])
        in_run = trial.extra["test_from_eval_json"]
        diff = max(abs(rescored[v][m] - in_run[v][m]) for v in rescored for m in rescored[v])
        if diff > 1e-4:
            log(f"  WARNING: {model}: checkpoint re-evaluation differs from eval.json by {diff:.2e}")
        extra = {k: v for k, v in trial.extra.items() if k != "test_from_eval_json"}
        extra["test_eval_json_vs_checkpoint_max_abs_diff"] = diff
        rows.append(
            Row(
                name=model if i == best else f"{model} (default)",
                kind="onnxrec",
                setting=trial.setting,
                valid=trial.valid,
                test=rescored,
                train_seconds=trial.train_seconds,
                wall_seconds=trial.wall_seconds,
                tuning=tuning if i == best else [],
                note="selected on validation" if len(trials) > 1 and i == best else "",
                extra=extra,
            )
        )
    return rows


def paired_comparisons(
    ranks: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], log: Callable[[str], None]
) -> dict[str, Any]:
    """For each pair of :data:`PAIRED` with both rows run (each model's setting selected on validation),
    per stage: the sign test over the users' full-view ranks of their held-out item and the Wilcoxon
    signed-rank test on per-user full NDCG@10 (``pipeline_quality.paired_tests``; its "pipeline" is
    the challenger, its "one stage" the baseline)."""
    out: dict[str, Any] = {}
    for base, other in PAIRED:
        if base not in ranks or other not in ranks:
            continue
        key = f"{other}_vs_{base}"
        out[key] = {stage: paired_tests(ranks[base][stage], ranks[other][stage]) for stage in ("valid", "test")}
        for stage in ("valid", "test"):
            t = out[key][stage]
            sign, wil = t["sign_test"], t["wilcoxon_ndcg@10"]
            log(
                f"  {other} vs {base} ({stage}, full view): {other} better for {sign['pipeline_better']} users, "
                f"worse for {sign['pipeline_worse']}, sign p {sign['p_value']:.3g}; NDCG@10 "
                f"{wil['mean_ndcg@10_pipeline']:.4f} vs {wil['mean_ndcg@10_one_stage']:.4f} "
                f"(mean difference {wil['mean_difference']:+.4f}), Wilcoxon p {wil['p_value']:.3g}"
            )
    return out


# --------------------------------------------------------------------------- implicit peers


def _fit_implicit(kind: str, setting: dict[str, Any], matrix: sp.csr_matrix, threads: int, seed: int) -> Any:
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    cls = AlternatingLeastSquares if kind == "als" else BayesianPersonalizedRanking
    with threadpool_limits(1, "blas"):  # implicit checks BLAS threads when the model is built
        model = cls(**setting, num_threads=threads, random_state=seed)
        model.fit(matrix, show_progress=False)
    return model


def tune_implicit(
    kind: str, ds: Dataset, threads: int, seed: int, quick: bool, log: Callable[[str], None]
) -> list[Row]:
    """Fit ``implicit`` ALS or BPR over its grid on the training matrix; rows for the best, the default
    and (ALS) the fold-in variant."""
    grid = ALS_GRID if kind == "als" else BPR_GRID
    if quick:
        grid = [{**grid[0], "iterations": 3 if kind == "als" else 10}]
    matrix = train_matrix(ds, "valid")  # the training split only, for both stages
    trials: list[tuple[Trial, Any]] = []
    for setting in grid:
        t0 = time.perf_counter()
        model = _fit_implicit(kind, setting, matrix, threads, seed)
        fit_s = time.perf_counter() - t0
        valid = _eval(FactorScorer(model.user_factors, model.item_factors), ds, "valid")
        trial = Trial(setting, valid, round(fit_s, 3), round(time.perf_counter() - t0, 3))
        trials.append((trial, model))
    best = max(range(len(trials)), key=lambda i: (trials[i][0].score, -i))
    name = f"implicit_{kind}"
    log(
        f"  {name}: {len(trials)} settings, best {_fmt_setting(trials[best][0].setting)} "
        f"(valid full NDCG@10 {trials[best][0].score:.4f}; implicit default {trials[0][0].score:.4f})"
    )
    tuning = [{"setting": t.setting, "valid": t.valid, "train_seconds": t.train_seconds} for t, _ in trials]
    rows = []
    for i in [best] if best == 0 else [best, 0]:
        trial, model = trials[i]
        test = _eval(FactorScorer(model.user_factors, model.item_factors), ds, "test")
        rows.append(
            Row(
                name=name if i == best else f"{name} (default)",
                kind="peer",
                setting=trial.setting,
                valid=trial.valid,
                test=test,
                train_seconds=trial.train_seconds,
                wall_seconds=trial.wall_seconds,
                tuning=tuning if i == best else [],
                note=("selected on validation" if i == best else "implicit's default parameters")
                + ("; scores include BPR's item-bias column" if kind == "bpr" else ""),
            )
        )
        if kind == "als" and i == best:
            fold = ALSFoldInScorer(model, ds)
            rows.append(
                Row(
                    name="implicit_als_foldin",
                    kind="peer",
                    setting=trial.setting,
                    valid=_eval(fold, ds, "valid"),
                    test=_eval(fold, ds, "test"),
                    train_seconds=trial.train_seconds,
                    wall_seconds=trial.wall_seconds,
                    note="the selected ALS; user vectors re-solved from train (+ the validation item at test)",
                )
            )
    return rows


# --------------------------------------------------------------------------- baselines


def baselines(ds: Dataset) -> list[Row]:
    """Popularity and ItemKNN, built on the training split (ItemKNN uses train + valid history at test)."""
    rows = []
    for name, build in (("popularity", Popularity), ("itemknn", ItemKNN)):
        t0 = time.perf_counter()
        scorer = build(ds)
        built = time.perf_counter() - t0
        valid, test = _eval(scorer, ds, "valid"), _eval(scorer, ds, "test")
        rows.append(
            Row(
                name, "baseline", {}, valid, test, round(built, 3), round(time.perf_counter() - t0, 3), note="no tuning"
            )
        )
    return rows


# --------------------------------------------------------------------------- report


def markdown_table(rows: list[Row]) -> str:
    """The result table: test metrics, training seconds and the setting used."""
    head = "| model | sampled HR@10 | sampled NDCG@10 | full HR@10 | full NDCG@10 | train s | setting |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        base = r.name.replace(" (default)", "")
        label = DISPLAY.get(base, base) + (" (default)" if r.name.endswith("(default)") else "")
        t = r.test
        lines.append(
            f"| {label} | {t['sampled']['hr@10']:.4f} | {t['sampled']['ndcg@10']:.4f} | {t['full']['hr@10']:.4f} | "
            f"{t['full']['ndcg@10']:.4f} | {r.train_seconds:.2f} | {_fmt_setting(r.setting)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; writes the JSON report and prints the markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--data", type=Path, default=default_data(), help="MovieLens-100K folder (default: %(default)s)")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "quality_ml100k.json",
        help="JSON report path (default: %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, one setting per model")
    p.add_argument("--threads", type=int, default=1, help="torch and implicit threads (0 = library default)")
    p.add_argument("--seed", type=int, default=0, help="seed of implicit's models (onnxrec uses TrainConfig's)")
    p.add_argument(
        "--models",
        default=",".join(ROW_GROUPS),
        help="comma-separated rows to run, of: %(default)s (default: all)",
    )
    args = p.parse_args(argv)
    if not args.data.exists():
        p.error(f"--data {args.data} does not exist")
    groups = [g.strip() for g in args.models.split(",") if g.strip()]
    if not groups or set(groups) - set(ROW_GROUPS):
        p.error(f"--models: choose from {', '.join(ROW_GROUPS)}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    info = machine_info()
    default_threads = torch.get_num_threads()
    ds, _ = load_for_training(TrainConfig(data=str(args.data), progress=False))
    check_no_leakage(ds)
    log(f"{ds.name}: {ds.num_users} users, {ds.num_items} items, {ds.meta['counts']}")
    check = protocol_check(ds, args.data)
    if check.get("checked") and not check["ok"]:
        log(f"WARNING: onnxrec's split differs from the protocol recomputed from u.data: {check}")
    rows: list[Row] = []
    phase_seconds: dict[str, float] = {}
    ranks: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def phase(name: str, fn: Callable[[], list[Row]]) -> None:
        t0 = time.perf_counter()
        log(f"{name} ...")
        rows.extend(fn())
        phase_seconds[name] = round(time.perf_counter() - t0, 1)

    _reset_threads(args.threads, default_threads)
    if "baselines" in groups:
        phase("baselines", lambda: baselines(ds))
    with tempfile.TemporaryDirectory(prefix="onnxrec-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for model in (m for m in ONNXREC_GRIDS if m in groups):
            phase(
                model,
                partial(tune_onnxrec, model, ds, args.data, tmp, args.threads, default_threads, args.quick, log, ranks),
            )
    for kind in (k for k in ("als", "bpr") if f"implicit_{k}" in groups):
        phase(f"implicit_{kind}", partial(tune_implicit, kind, ds, args.threads, args.seed, args.quick, log))

    paired = paired_comparisons(ranks, log)
    total = time.perf_counter() - started
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    table = markdown_table(rows)
    report = {
        "benchmark": "quality_ml100k",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python " + " ".join([str(Path(sys.argv[0])), *sys.argv[1:]]),
        "quick": args.quick,
        "models": groups,
        "threads": args.threads,
        "machine": info,
        "dataset": {
            "path": str(args.data),
            "name": ds.name,
            "users": ds.num_users,
            "items": ds.num_items,
            "counts": ds.meta.get("counts", {}),
            "content_hash": ds.content_hash,
        },
        "protocol": (
            "leave_one_out: per user by (timestamp, item id) last = test, second-last = valid, rest = train; "
            "sampled = test item vs 99 sampled negatives; full = all items except the user's known ones "
            "(train, + valid at test); ties count half; every model selected on valid full NDCG@10; "
            "all models trained on the train split only"
        ),
        "protocol_check": check,
        "selection_metric": f"valid {SELECT_ON[0]}/{SELECT_ON[1]}",
        "train_seconds_meaning": (
            "onnxrec: sum of the epochs' training-step time (per-epoch validation excluded; wall_seconds has "
            "everything); implicit: model.fit; baselines: construction"
        ),
        "rows": [asdict(r) for r in rows],
        "paired": paired,
        "phase_seconds": phase_seconds,
        "total_seconds": round(total, 1),
        "table_markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    if check.get("checked") and not check["ok"]:
        print(f"\nWARNING: held-out items differ from the protocol recomputed from u.data: {check}")
    print(f"\ntotal {total:.0f}s; report written to {args.out}")
    return 1 if check.get("checked") and not check["ok"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
