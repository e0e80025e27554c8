"""Cold-start items on MovieLens-100K: does the item text feature place items nobody has rated?

Protocol (issue 19), per seed:

1. 10 % of the items (drawn with the seed) are *cold*: every interaction with them is removed
   before anything is prepared or trained; the rest of the log is prepared as usual (every rating a
   positive, leave-one-out split, its validation used for early stopping).
2. Two two-tower models train on the warm log with the default settings (``onnxrec train`` defaults:
   ``TrainConfig(data, out)``, one torch thread, ``--epochs`` below): one with ``--item-text`` (the
   item's title and genres embedded by the packaged all-MiniLM-L6-v2), one without.
3. Each cold item gets a vector the way a brand-new item would (``export --new-items``): the item
   tower with the id unknown. With text: from its text vector alone (side features unknown, as
   served). Without text: from its side features (genres and year: what the plain model can know).
4. For every (user, cold item) pair of the removed interactions, the cold item is ranked among all
   cold items (the user's other cold items left out) by ``user vector . item vector``; the user vector
   is the model's, from the user's whole warm history. HR@10 and NDCG@10 over the pairs.

Rows: ``text`` (with the text feature); ``features`` (the plain model, genres and year);
``random`` (random item vectors: the expected HR@10 of a random ranking, computed exactly);
``popularity_train`` (popularity in the training data: every cold item has none, so it is the random
ranking); ``popularity_oracle`` (the cold items ranked by how many *other* users rated them in the
held-out interactions: future knowledge no real system has, an upper reference, not a baseline).

With ``--model sasrec`` the models are SASRec's (``--item-text``: an item's row is its id embedding
plus its text's projection; a cold item gets the projection alone, as ``export --new-items`` serves
it). SASRec reads no side features, so there is no ``features`` row: the plain model has no row at all
for an item it never saw.

Run from the repository root (about 3 minutes a seed on a 2-core CPU)::

    python benchmarks/cold_start.py --seeds 0,1,2 --out benchmarks/results/cold_start_ml100k.json
    python benchmarks/cold_start.py --model sasrec --out benchmarks/results/cold_start_ml100k_sasrec.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_common
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from onnxrec.exporter.export import serving_tables
from onnxrec.trainer.checkpoint import load_checkpoint, model_from_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import build_dataset, save_dataset, vectors_sha256
from onnxrec.trainer.data.log import InteractionLog
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.readers import read_movielens_100k
from onnxrec.trainer.data.split import SplitSpec
from onnxrec.trainer.data.text import MODEL_ID, MOVIELENS_TEXT_COLUMNS, TEXT_DIM, embed_texts, item_texts
from onnxrec.trainer.train import train

K = 10


def _cold_items(log: InteractionLog, share: float, rng: np.random.Generator) -> set[str]:
    items = sorted(set(log.interactions["item_id"].to_pylist()))
    return set(rng.choice(items, round(share * len(items)), replace=False).tolist())


def _warm_log(log: InteractionLog, cold: set[str]) -> tuple[InteractionLog, pa.Table]:
    is_cold = pc.is_in(log.interactions["item_id"], pa.array(sorted(cold)))
    warm = log.interactions.filter(pc.invert(is_cold))
    return dataclasses.replace(log, interactions=warm), log.interactions.filter(is_cold)


def _encode_item_features(model: Any, ds: Any, rows: list[dict[str, Any]]) -> list[torch.Tensor]:
    """The cold items' side features, encoded with the warm dataset's vocabularies."""
    return [torch.from_numpy(f.encode([r.get(f.name) for r in rows])) for f in ds.feature_spec.item]


def _unknown_id_vectors(model: Any, feats: list[torch.Tensor], text: torch.Tensor | None) -> torch.Tensor:
    """The item tower with the id unknown (index 0), given side features and (if the model reads it) text."""
    n = feats[0].shape[0] if feats else text.shape[0]  # type: ignore[union-attr]
    x = [model.item_id(torch.zeros(n, dtype=torch.long)), *model.item_feats(feats)]
    if model.cfg.text_dim:
        x.append(model.item_text_proj(text))
    return model.item_mlp(torch.cat(x, dim=-1))


def _user_vectors(model: Any, ds: Any) -> torch.Tensor:
    tables = serving_tables(model, ds)
    inputs: dict[str, Any] = {"history": torch.from_numpy(tables.history.astype(np.int64))}
    inputs |= {f"user_{k}": torch.from_numpy(v) for k, v in ds.user_features.items()}
    return model.user_vectors(torch.arange(ds.num_users), inputs)


def _rank_metrics(scores: np.ndarray, pairs: list[tuple[int, int]], others: dict[int, set[int]]) -> dict[str, float]:
    """HR@K and NDCG@K of each (user row, cold item) pair among the cold items, the user's other
    cold items left out; ties count half."""
    hits, ndcg = [], []
    for u, c in pairs:
        s = scores[u].copy()
        mask = np.ones(len(s), dtype=bool)
        mask[list(others[u] - {c})] = False
        better = float((s[mask] > s[c]).sum()) + 0.5 * float((s[mask] == s[c]).sum() - 1)
        hits.append(better < K)
        ndcg.append(1.0 / np.log2(better + 2) if better < K else 0.0)
    return {"hr@10": float(np.mean(hits)), "ndcg@10": float(np.mean(ndcg))}


def _random_expectation(pairs: list[tuple[int, int]], others: dict[int, set[int]], n_cold: int) -> dict[str, float]:
    """A random ranking's expected HR@10 and NDCG@10 (each position equally likely)."""
    hr, nd = [], []
    for u, c in pairs:
        n = n_cold - len(others[u] - {c})
        hr.append(min(K, n) / n)
        nd.append(sum(1.0 / np.log2(r + 2) for r in range(min(K, n))) / n)
    return {"hr@10": float(np.mean(hr)), "ndcg@10": float(np.mean(nd))}


def run_seed(
    log: InteractionLog, text_of: dict[str, np.ndarray], seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    cold = _cold_items(log, args.cold_share, rng)
    warm_log, held = _warm_log(log, cold)
    ds = build_dataset(warm_log, PreprocessSpec(), SplitSpec(seed=seed), "ml-100k-warm")
    vectors = np.stack([text_of[str(i)] for i in ds.item_ids])
    meta = {**ds.meta, "item_text": {"model": MODEL_ID, "columns": list(MOVIELENS_TEXT_COLUMNS), "dim": TEXT_DIM,
                                     "sha256": vectors_sha256(vectors)}}  # fmt: skip
    ds = dataclasses.replace(ds, item_text=vectors, meta=meta)
    users = {str(u): i for i, u in enumerate(ds.user_ids)}
    cold_ids = sorted(cold)
    cold_pos = {c: j for j, c in enumerate(cold_ids)}
    pairs = [
        (users[u], cold_pos[i])
        for u, i in zip(held["user_id"].to_pylist(), held["item_id"].to_pylist(), strict=True)
        if u in users
    ]
    pairs = sorted(set(pairs))
    others: dict[int, set[int]] = {}
    for u, c in pairs:
        others.setdefault(u, set()).add(c)
    assert log.item_table is not None
    by_id = {r["item_id"]: r for r in log.item_table.to_pylist()}
    cold_rows = [by_id[c] for c in cold_ids]
    cold_text = torch.from_numpy(np.stack([text_of[c] for c in cold_ids]))
    out: dict[str, Any] = {
        "seed": seed,
        "cold_items": len(cold_ids),
        "warm_items": ds.num_items,
        "pairs": len(pairs),
        "users_with_pairs": len(others),
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = save_dataset(ds, Path(tmp) / "data")
        # sasrec reads no side features: the plain model has no row for a cold item, so no "features" run
        kinds = (("text", True),) if args.model == "sasrec" else (("text", True), ("features", False))
        for name, with_text in kinds:
            t0 = time.perf_counter()
            cfg = TrainConfig(data=str(data), out=str(Path(tmp) / name), model=args.model, item_text=with_text,
                              epochs=args.epochs, seed=seed, threads=args.threads, progress=False,
                              id_dropout=args.id_dropout)  # fmt: skip
            run = train(cfg)
            ckpt = load_checkpoint(run)
            model = model_from_checkpoint(ckpt)
            with torch.no_grad():
                u = _user_vectors(model, ds)
                feats = [] if with_text else _encode_item_features(model, ds, cold_rows)
                v = model.text_item_vectors(cold_text) if with_text else _unknown_id_vectors(model, feats, None)
                scores = (u @ v.T).numpy()
            valid = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
            out[name] = {
                **_rank_metrics(scores, pairs, others),
                "train_seconds": round(time.perf_counter() - t0, 1),
                "warm_test": _warm_metrics(valid),
            }
            print(f"seed {seed} {name}: {out[name]}", file=sys.stderr)
    out["random"] = _random_expectation(pairs, others, len(cold_ids))
    out["popularity_train"] = out["random"]  # every cold item has no training interaction: all tie
    counts = np.zeros(len(cold_ids))
    for _, c in pairs:
        counts[c] += 1
    oracle = np.repeat(counts[None, :], max(users.values()) + 1, axis=0)
    for u, c in pairs:  # leave the user's own interaction out of the count
        oracle[u, c] -= 1
    out["popularity_oracle"] = _rank_metrics(oracle, pairs, others)
    return out


def _warm_metrics(eval_json: dict[str, Any]) -> dict[str, Any]:
    """The warm items' test figures of the run's own evaluation (eval.json), as far as present."""
    flat: dict[str, Any] = {}
    for view in ("sampled", "full"):
        part = eval_json.get("test", {}).get(view, {}) if isinstance(eval_json.get("test"), dict) else {}
        for k in ("hr@10", "ndcg@10"):
            if k in part:
                flat[f"{view}/{k}"] = part[k]
    return flat


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in ("text", "features", "random", "popularity_oracle") if r in runs[0]]
    summary: dict[str, Any] = {}
    for r in rows:
        hr = np.array([run[r]["hr@10"] for run in runs])
        summary[r] = {"hr@10_mean": float(hr.mean()), "hr@10_std": float(hr.std(ddof=1)) if len(hr) > 1 else 0.0}
    if "features" in rows:
        diff = np.array([run["text"]["hr@10"] - run["features"]["hr@10"] for run in runs])
        summary["text_minus_features"] = {
            "mean": float(diff.mean()),
            "min": float(diff.min()),
            "per_seed": diff.tolist(),
        }
    diff_r = np.array([run["text"]["hr@10"] - run["random"]["hr@10"] for run in runs])
    summary["text_minus_random"] = {"mean": float(diff_r.mean()), "min": float(diff_r.min())}
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=bench_common.default_data())
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--model", choices=("twotower", "sasrec"), default="twotower")
    p.add_argument("--cold-share", type=float, default=0.10)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--id-dropout", type=float, default=TrainConfig.__dataclass_fields__["id_dropout"].default)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_start_ml100k.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    log = read_movielens_100k(args.data)
    assert log.item_table is not None
    rows = log.item_table.to_pylist()
    vectors = embed_texts(item_texts(rows, MOVIELENS_TEXT_COLUMNS))
    text_of = {r["item_id"]: vectors[i] for i, r in enumerate(rows)}
    embed_s = time.perf_counter() - t0
    runs = [run_seed(log, text_of, int(s), args) for s in args.seeds.split(",")]
    result = {
        "benchmark": "cold_start_ml100k",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": bench_common.machine_info(threads=args.threads, note="2-core shared machine"),
        "protocol": __doc__.split("\n\n")[1:5],
        "settings": {
            "model": args.model,
            "cold_share": args.cold_share,
            "epochs": args.epochs,
            "id_dropout": args.id_dropout,
            "k": K,
            "text_model": MODEL_ID,
        },
        "embed_seconds_all_items": round(embed_s, 1),
        "runs": runs,
        "summary": _summary(runs),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
