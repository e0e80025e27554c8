"""Recall and build time of the exporter's nearest-neighbour index at its defaults, on synthetic catalogs.

The vectors are what ``synthetic_catalog.make_catalog_run`` exports: an untrained 64-dim MF's seeded
N(0, 0.05) factors and zero item biases, the bias appended as the index's 65th column (a 1 on the user
side). Random factors have no structure, the hardest case for an approximate index (trained factors
cluster). Each of the sampled users has seen ``--seen`` random items, excluded by over-fetching as at
export. Build and recall go through the exporter's own ``build_index`` and ``measure_recall``.

    python benchmarks/index_recall.py --items 100000                       # defaults (hnsw M 32, efC 100, ef 256)
    python benchmarks/index_recall.py --items 1000000 --ef-search 128,256  # one build, several ef_search
    python benchmarks/index_recall.py --items 100000 --kind ivf --nprobe 32,64
    python benchmarks/index_recall.py --items 1000000 --like RUN --graph lifted-l2  # trained-like factors

``--like RUN`` draws the catalog's items and users from Gaussians with the mean and covariance of a
trained run's item and user vectors (``trained_factors.py``: the spectrum of a trained model, not the
flat spectrum of random factors). ``--graph`` picks the HNSW graph as the export's ``--index-graph``
does: the one it builds first (``inner-product``) or the one it falls back to (``lifted-l2``,
MIPS-to-L2). ``--plot PNG`` draws recall@10 against batch-1 search p50 for the sweep.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trained_factors import draw_like, run_factors

from onnxrec.exporter.index import IndexOptions, build_index, hnsw_of
from onnxrec.exporter.recall import SeenItems, measure_recall


def catalog(num_items: int, num_users: int, dim: int, seen: int, seed: int) -> tuple[np.ndarray, np.ndarray, SeenItems]:
    """Item vectors [N, dim + 1] (zero bias column), user vectors [U, dim + 1] (ones column), seen items."""
    rng = np.random.default_rng(seed)
    items = np.zeros((num_items, dim + 1), dtype=np.float32)
    items[:, :dim] = rng.normal(0, 0.05, (num_items, dim))
    users = np.ones((num_users, dim + 1), dtype=np.float32)
    users[:, :dim] = rng.normal(0, 0.05, (num_users, dim))
    indices = np.concatenate([np.sort(rng.choice(num_items, seen, replace=False)) for _ in range(num_users)])
    return items, users, SeenItems(np.arange(num_users + 1) * seen, indices)


def catalog_like(
    run: Path, num_items: int, num_users: int, seen: int, seed: int
) -> tuple[np.ndarray, np.ndarray, SeenItems]:
    """As :func:`catalog`, with items and users drawn like ``run``'s trained vectors."""
    drawn = draw_like(run_factors(run), num_items, num_users, seed)
    rng = np.random.default_rng(seed + 1)
    indices = np.concatenate([np.sort(rng.choice(num_items, seen, replace=False)) for _ in range(num_users)])
    return drawn.items, drawn.users, SeenItems(np.arange(num_users + 1) * seen, indices)


def plot(rows: list[dict], path: Path) -> None:
    """Recall@10 against batch-1 search p50 (ms, log x), one point per search setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["search_batch1"]["p50_ms"] for r in rows]
    ys = [r["recall"]["at10"] for r in rows]
    ax.plot(xs, ys, "o-")
    for r, x, y in zip(rows, xs, ys, strict=True):
        ax.annotate(str(r["search_value"]), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.axhline(0.95, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 search p50 (ms, 1 thread)")
    ax.set_ylabel("recall@10")
    r0 = rows[0]
    ax.set_title(
        f"{r0['items']:,} items, {r0['kind']} {r0['built_params'].get('graph', '')} ({r0['factors']})", fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def search_latency_ms(index: object, users: np.ndarray, seen: SeenItems, k: int = 10) -> dict[str, float]:
    """Batch-1 search time per user (k + the user's seen items, as the server over-fetches): p50 and p99 ms."""
    times = []
    for u in range(len(users)):
        fetch = k + len(seen.of(u))
        t0 = time.perf_counter()
        index.search(users[u : u + 1], fetch)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}


def main() -> None:
    """Build once, then measure recall for each search setting; print one JSON line per setting."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seen", type=int, default=50)
    ap.add_argument("--kind", default="hnsw", choices=["hnsw", "ivf", "flat"])
    ap.add_argument("--m", type=int, default=IndexOptions.m)
    ap.add_argument("--ef-construction", type=int, default=IndexOptions.ef_construction)
    ap.add_argument("--ef-search", default=str(IndexOptions.ef_search), help="comma-separated")
    ap.add_argument("--nlist", type=int, default=0)
    ap.add_argument("--nprobe", default=str(IndexOptions.nprobe), help="comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--like", type=Path, help="draw the factors like this trained run's (default: random)")
    ap.add_argument("--graph", default="inner-product", choices=["inner-product", "lifted-l2"], help="hnsw graph")
    ap.add_argument("--threads", type=int, default=1, help="faiss threads (the server searches with 1 per call)")
    ap.add_argument("--plot", type=Path, help="write recall against latency here (PNG)")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    if args.like:
        items, users, seen = catalog_like(args.like, args.items, args.users, args.seen, args.seed)
        factors = f"drawn like {args.like.name}"
    else:
        items, users, seen = catalog(args.items, args.users, args.dim, args.seen, args.seed)
        factors = "random N(0, 0.05)"
    opts = IndexOptions(
        kind=args.kind, m=args.m, ef_construction=args.ef_construction, nlist=args.nlist, graph=args.graph
    )
    built = build_index(args.kind, items, opts)
    rows = []
    sweep = args.ef_search if args.kind == "hnsw" else args.nprobe if args.kind == "ivf" else "0"
    for value in (int(v) for v in sweep.split(",")):
        if args.kind == "hnsw":
            hnsw_of(built.index).efSearch = value
        elif args.kind == "ivf":
            import faiss

            faiss.extract_index_ivf(built.index).nprobe = value
        t0 = time.perf_counter()
        recall = measure_recall(built.index, items, users, seen, np.arange(args.users))
        row = {
            "items": args.items,
            "factors": factors,
            "kind": args.kind,
            "options": {k: v for k, v in dataclasses.asdict(opts).items() if k not in ("kind", "min_recall")},
            "built_params": built.params,
            "search_value": value,
            "build_seconds": built.build_seconds,
            "recall": recall,
            "recall_seconds": round(time.perf_counter() - t0, 1),
            "search_batch1": search_latency_ms(built.index, users, seen),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
