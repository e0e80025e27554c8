"""The nearest-neighbour index against the exact graph on one large catalog: in-process and served, side by side.

Builds one run directory over exactly ``--items`` items (``synthetic_catalog.make_catalog_run``: random
factors, or with ``--like RUN`` factors drawn like a trained run's, see ``trained_factors.py``), exports
it once per retrieval (``--kinds exact,hnsw``: the exact graph and the export's index, each proven by
the exporter's own parity and recall checks, in a child process so its memory is returned), then for
each version, one at a time:

* **in-process**: the server's ``LoadedModel.recommend`` at batch 1 (p50/p99 ms) and its best users/s
  at batch 64/256, each user excluding their seen items (``catalog_scaling.inprocess``);
* **served**: ``onnxrec serve --device cpu`` on its own repository, closed loop at ``--concurrency``
  (``catalog_scaling.served``): calls/s, p50/p99, server cores, mean batch.

Writes ``--out`` (JSON) and prints a markdown table with each index's ratios to the exact graph.

    python benchmarks/index_serving.py --items 1000000 --like RUN --kinds exact,hnsw \\
        --out benchmarks/results/index_serving_1m.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from catalog_scaling import K, _rmtree, inprocess, served

REPO = Path(__file__).resolve().parents[1]


def build_run(out: Path, items: int, seed: int, like: Path | None) -> dict[str, Any]:
    """The catalog's run directory (in a child process)."""
    from synthetic_catalog import make_catalog_run

    return make_catalog_run(out, items, seed=seed, like=like).to_dict()


def export_kind(
    run: Path, repo: Path, name: str, kind: str, ef_search: int, graph: str, min_recall: float, seed: int
) -> dict[str, Any]:
    """Export ``run`` with ``--index kind`` into ``repo/name/1`` (in a child process); the manifest's index."""
    import logging

    import onnxruntime as ort

    from onnxrec.exporter.export import ExportOptions, export

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ort.set_default_logger_severity(3)
    opts = ExportOptions(
        k_max=K, seed=seed, index=kind, index_ef_search=ef_search, index_graph=graph, min_recall=min_recall
    )
    return describe(export(run, repo, name, options=opts))


def describe(version: Path) -> dict[str, Any]:
    """An exported version: its path, export time (the manifest's), index entry and file sizes."""
    manifest = json.loads((version / "manifest.json").read_text())
    return {
        "version": str(version),
        "export_s": manifest["export_seconds"],
        "index": manifest.get("index"),
        "file_mb": {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(version.iterdir())},
    }


def _child(fn: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def format_table(report: dict[str, Any]) -> str:
    """Markdown: one row per retrieval, with its ratio to the exact graph where there is one."""
    rows = report["kinds"]
    exact = rows.get("exact")
    conc = report["settings"]["concurrency"]
    head = ["retrieval", "export s", "index build s", "index MB", "recall@10", "b1 p50 ms", "b1 p99 ms", "users/s"]
    for c in conc:
        head += [f"c{c} calls/s", f"c{c} p99 ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, r in rows.items():
        if "inprocess" not in r:  # --export-only
            continue
        ix = r.get("index") or {}
        ip = r["inprocess"]
        cells = [
            kind if not ix else f"{kind} ({', '.join(f'{k} {v}' for k, v in ix['params'].items() if k != 'max_norm')})",
            f"{r['export_s']:.0f}",
            f"{ix['build_seconds']:.0f}" if ix else "-",
            f"{ix['memory_bytes'] / 2**20:.0f}" if ix else "-",
            f"{ix['recall']['at10']:.4f}" if ix else "1",
            f"{ip['b1']['p50_ms']:.3f}",
            f"{ip['b1']['p99_ms']:.3f}",
            f"{ip['saturation_users_per_s']:,.0f}",
        ]
        for c in conc:
            p = r.get("served", {}).get("points", {}).get(f"c{c}")
            cells += [f"{p['qps']:,.0f}", f"{p['p99_ms']:.2f}"] if p else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
        if exact is not None and kind != "exact":
            e = exact
            ratio = [
                f"{kind} / exact",
                "",
                "",
                "",
                "",
                f"{ip['b1']['p50_ms'] / e['inprocess']['b1']['p50_ms']:.3f}x",
                f"{ip['b1']['p99_ms'] / e['inprocess']['b1']['p99_ms']:.3f}x",
                f"{ip['saturation_users_per_s'] / e['inprocess']['saturation_users_per_s']:.2f}x",
            ]
            for c in conc:
                p = r.get("served", {}).get("points", {}).get(f"c{c}")
                q = e.get("served", {}).get("points", {}).get(f"c{c}")
                ratio += [f"{p['qps'] / q['qps']:.2f}x", f"{p['p99_ms'] / q['p99_ms']:.2f}x"] if p and q else ["-", "-"]
            lines.append("| " + " | ".join(ratio) + " |")
    return "\n".join(lines)


def main() -> None:
    """Build the catalog, export each retrieval, measure each one at a time, write JSON, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--like", type=Path, help="draw the factors like this trained run's (default: random)")
    ap.add_argument("--kinds", default="exact,hnsw", help="comma-separated --index values to export and compare")
    ap.add_argument("--ef-search", type=int, default=256, help="--index-ef-search")
    ap.add_argument("--index-graph", default="auto", help="--index-graph (hnsw)")
    ap.add_argument("--min-recall", type=float, default=0.95)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per served point")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per in-process point")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep the run and repositories here (default: a temporary directory)")
    ap.add_argument("--export-only", action="store_true", help="build and export into --work, measure nothing")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    conc = [int(c) for c in args.concurrency.split(",")]
    t_begin = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_begin:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import onnxruntime as ort
    from bench_common import machine_info
    from serving import loadavg

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/index_serving.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(onnxruntime=ort.__version__),
        "settings": {
            "items": args.items,
            "factors": f"drawn like {args.like}" if args.like else "random N(0, 0.05)",
            "k": K,
            "ef_search": args.ef_search,
            "index_graph": args.index_graph,
            "min_recall": args.min_recall,
            "concurrency": conc,
            "served_duration_s": args.duration,
            "device": "cpu",
        },
        "kinds": {},
    }
    with tempfile.TemporaryDirectory(prefix="onnxrec-index-") as tmp_s:
        work = args.work or Path(tmp_s)
        run = work / f"run{args.items}"
        if not run.exists():
            log(f"{args.items:,} items: building the run directory")
            report["catalog"] = _child(build_run, run, args.items, args.seed, args.like)
            (work / "catalog.json").write_text(json.dumps(report["catalog"]) + "\n")
        else:
            report["catalog"] = json.loads((work / "catalog.json").read_text())
        for kind in args.kinds.split(","):
            repo = work / f"repo-{kind}"
            name = f"cat{args.items}"
            if (repo / name / "1" / "manifest.json").exists():  # --work from an earlier run: measure it again
                row = describe(repo / name / "1") | {"reused": True}
            else:
                log(f"exporting --index {kind}")
                row = _child(
                    export_kind, run, repo, name, kind, args.ef_search, args.index_graph, args.min_recall, args.seed
                )
            version = Path(row.pop("version"))
            if args.export_only:
                report["kinds"][kind] = row
                continue
            log(f"{kind}: export {row['export_s']} s, index {json.dumps(row['index'] and row['index']['recall'])}")
            row["inprocess"] = inprocess(version, args.seconds, 100, args.seed)
            gc.collect()
            ip = row["inprocess"]
            log(f"{kind} in-process: b1 p50 {ip['b1']['p50_ms']:.3f} ms, {ip['saturation_users_per_s']:,.0f} users/s")
            row["served"] = served(repo, version, name, work / f"serve-{kind}.log", conc, args.duration, 2.0)
            for c, p in row["served"]["points"].items():
                log(f"{kind} served {c}: {p['qps']:,.0f} calls/s p50 {p['p50_ms']:.2f} p99 {p['p99_ms']:.2f} ms")
            report["kinds"][kind] = row
            if args.work is None:
                _rmtree(repo)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive a later failure
    report["loadavg_end"] = loadavg()
    report["wall_s"] = round(time.perf_counter() - t_begin, 1)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
