"""The nearest-neighbour index against the exact graph on one large catalog: in-process and served, side by side.

Builds one run directory over exactly ``--items`` items (``synthetic_catalog.make_catalog_run``: random
factors, or with ``--like RUN`` factors drawn like a trained run's, see ``trained_factors.py``), exports
it once per retrieval (``--kinds exact,hnsw``: the exact graph and the export's index, each proven by
the exporter's own parity and recall checks, in a child process so its memory is returned) and, with
``--ranker fm[,deepfm]``, once more per retrieval and ranker as a pipeline version (``onnxrec export RUN
--ranker RANKER --candidates N``; the ranker run is an untrained, seeded model over the same dataset,
``synthetic_catalog.make_ranker_run``: latency does not depend on trained values), then for each
version, one at a time:

* **in-process**: the server's ``LoadedModel.recommend`` at batch 1 (p50/p99 ms) and its best users/s
  at batch 64/256, each user excluding their seen items (``catalog_scaling.inprocess``; one-stage
  versions only: it runs no ranking stage);
* **stages at batch 1**: the model calls of the server's retrieve and rank stages for one known user,
  timed per stage (``rank_inprocess.stage_times``), and the server's request path without gRPC,
  ``RecommenderServicer.answer`` one request at a time (``rank_inprocess.servicer_times``);
* **served** (unless ``--skip-served``): ``onnxrec serve --device cpu`` on its own repository, closed
  loop at ``--concurrency`` (``catalog_scaling.served``): calls/s, p50/p99, server cores, mean batch.

Writes ``--out`` (JSON) and prints two markdown tables: each index's ratios to the exact graph, and
each pipeline's batch-1 cost against the one-stage version of its retrieval. ``--work DIR`` keeps the
run, ranker runs and versions, and a later run with the same ``--work`` measures them again.

    python benchmarks/index_serving.py --items 1000000 --like RUN --kinds exact,hnsw \\
        --out benchmarks/results/index_serving_1m.json
    python benchmarks/index_serving.py --items 1000000 --like RUN --kinds hnsw --index-graph lifted-l2 \\
        --ef-search 96 --ranker fm --candidates 200 --skip-served --work W --out OUT.json
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
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from catalog_scaling import K, inprocess, served

REPO = Path(__file__).resolve().parents[1]


def build_run(out: Path, items: int, seed: int, like: Path | None) -> dict[str, Any]:
    """The catalog's run directory (in a child process)."""
    from synthetic_catalog import make_catalog_run

    return make_catalog_run(out, items, seed=seed, like=like).to_dict()


def build_ranker(run: Path, out: Path, model: str, seed: int) -> str:
    """An untrained, seeded ranker run over ``run``'s dataset (in a child process)."""
    from synthetic_catalog import make_ranker_run

    return str(make_ranker_run(run, out, model, seed=seed))


@dataclass(frozen=True)
class Export:
    """What one version is exported with: the retrieval (``--index kind``) and, for a pipeline, the ranker."""

    kind: str
    ef_search: int
    graph: str
    min_recall: float
    seed: int
    ranker: Path | None = None
    candidates: int = 200
    nprobe: int = 32
    nlist: int = 0
    index_only: bool = False


def export_kind(run: Path, repo: Path, name: str, spec: Export) -> dict[str, Any]:
    """Export ``run`` as ``spec`` says into ``repo/name/1`` (in a child process); :func:`describe` of it."""
    import logging

    import onnxruntime as ort

    from onnxrec.exporter.export import ExportOptions, export

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ort.set_default_logger_severity(3)
    opts = ExportOptions(
        k_max=K,
        seed=spec.seed,
        index=spec.kind,
        index_ef_search=spec.ef_search,
        index_graph=spec.graph,
        min_recall=spec.min_recall,
        ranker=spec.ranker,
        candidates=spec.candidates,
        index_nprobe=spec.nprobe,
        index_nlist=spec.nlist,
        index_only=spec.index_only,
    )
    return describe(export(run, repo, name, options=opts))


def describe(version: Path) -> dict[str, Any]:
    """An exported version: its path, export time (the manifest's), index entry and file sizes."""
    manifest = json.loads((version / "manifest.json").read_text())
    return {
        "version": str(version),
        "export_s": manifest["export_seconds"],
        "index": manifest.get("index"),
        "stages": [st["stage"] for st in manifest.get("stages", [{"stage": "retrieve"}])],
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


def format_rank_table(report: dict[str, Any]) -> str:
    """Markdown: batch-1 retrieve / rank / total (the stages' model calls) and the servicer's path, one row
    per version, and each pipeline's ratio to the one-stage version of its retrieval."""
    head = ["version", "stages", "candidates", "recall@10", "retrieve p50", "rank p50", "total p50", "total p99"]
    head += ["servicer p50", "servicer p99"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = report["kinds"]

    def ms(r: dict[str, Any], stage: str, stat: str) -> Any:
        return r.get(stage, {}).get(stat)

    for key, r in rows.items():
        if "stages_b1" not in r:
            continue
        st, sv, ix = r["stages_b1"], r.get("servicer_b1", {}), r.get("index") or {}
        cells = [key, " -> ".join(st["stages"]), str(st["candidates"] or "-")]
        cells.append(f"{ix['recall']['at10']:.4f}" if ix else "1")
        for path in (("retrieve", "p50_ms"), ("rank", "p50_ms"), ("total", "p50_ms"), ("total", "p99_ms")):
            v = ms(st, *path)
            cells.append("-" if v is None else f"{v:.3f}")
        cells += [f"{sv['p50_ms']:.3f}", f"{sv['p99_ms']:.3f}"] if sv else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
        base = rows.get(key.split("+")[0]) if "+" in key else None
        if base and "stages_b1" in base:
            ratio = [f"{key} / {key.split('+')[0]}", "", "", "", "", ""]
            for path in (("total", "p50_ms"), ("total", "p99_ms")):
                ratio.append(f"{ms(st, *path) / ms(base['stages_b1'], *path):.2f}x")
            b = base.get("servicer_b1")
            ratio += [f"{sv[p] / b[p]:.2f}x" for p in ("p50_ms", "p99_ms")] if sv and b else ["-", "-"]
            lines.append("| " + " | ".join(ratio) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--like", type=Path, help="draw the factors like this trained run's (default: random)")
    ap.add_argument("--kinds", default="exact,hnsw", help="comma-separated --index values to export and compare")
    ap.add_argument("--ef-search", type=int, default=256, help="--index-ef-search")
    ap.add_argument("--index-graph", default="auto", help="--index-graph (hnsw)")
    ap.add_argument("--min-recall", type=float, default=0.95)
    ap.add_argument("--nprobe", type=int, default=32, help="--index-nprobe (ivf)")
    ap.add_argument("--nlist", type=int, default=0, help="--index-nlist (ivf; 0: about 4 x sqrt(items))")
    ap.add_argument("--index-only", action="store_true", help="export the indexed versions --index-only (10M items)")
    ap.add_argument("--ranker", default="", help="comma-separated ranker models (fm, deepfm): a pipeline per kind")
    ap.add_argument("--candidates", type=int, default=200, help="--candidates of the pipeline versions")
    ap.add_argument("--timed-users", type=int, default=1000, help="random known users of the batch-1 stage timings")
    ap.add_argument(
        "--inline-max-us",
        default="500",
        help="comma-separated serve --inline-max-us values for the servicer timing (the first: the table's)",
    )
    ap.add_argument("--skip-served", action="store_true", help="in-process figures only")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument(
        "--server-cpus", default="", help="served: run the server on these cores only, e.g. 0 (taskset; Linux)"
    )
    ap.add_argument("--load-cpus", default="", help="served: run the load processes on these cores, e.g. 1")
    ap.add_argument(
        "--workers", type=int, default=1, help="served: onnxrec serve --workers (processes sharing the port)"
    )
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per served point")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per in-process point")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep the run and repositories here (default: a temporary directory)")
    ap.add_argument("--export-only", action="store_true", help="build and export into --work, measure nothing")
    ap.add_argument("--out", type=Path, required=True)
    return ap.parse_args()


def _cpus(spec: str) -> set[int] | None:
    """``"0,1"`` -> {0, 1}; empty -> None."""
    return {int(c) for c in spec.split(",") if c.strip()} or None


def _onnxrec_path() -> str:
    """Where the measured ``onnxrec`` package is imported from (a checkout, or a copy of a commit)."""
    import onnxrec.server.loaded_model as loaded

    return str(Path(loaded.__file__).resolve().parents[1])


def new_report(args: argparse.Namespace, conc: list[int]) -> dict[str, Any]:
    """The report's header: date, command, machine, settings."""
    import onnxruntime as ort
    from bench_common import machine_info
    from serving import loadavg

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/index_serving.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(onnxruntime=ort.__version__),
        "loadavg_start": loadavg(),
        "onnxrec_code": _onnxrec_path(),
        "settings": {
            "items": args.items,
            "factors": f"drawn like {args.like}" if args.like else "random N(0, 0.05)",
            "k": K,
            "ef_search": args.ef_search,
            "index_graph": args.index_graph,
            "nprobe": args.nprobe,
            "nlist": args.nlist,
            "index_only": args.index_only,
            "min_recall": args.min_recall,
            "rankers": [r for r in args.ranker.split(",") if r],
            "candidates": args.candidates,
            "concurrency": conc,
            "served_duration_s": args.duration,
            "server_cpus": args.server_cpus,
            "workers": args.workers,
            "load_cpus": args.load_cpus,
            "device": "cpu",
        },
        "kinds": {},
    }


def versions(args: argparse.Namespace, work: Path) -> list[tuple[str, Export, str | None]]:
    """(row key, export spec, ranker model) of every version: each kind alone, then with each ranker."""
    out: list[tuple[str, Export, str | None]] = []
    for kind in args.kinds.split(","):
        spec = Export(
            kind,
            args.ef_search,
            args.index_graph,
            args.min_recall,
            args.seed,
            None,
            args.candidates,
            args.nprobe,
            args.nlist,
            args.index_only and kind != "exact",
        )
        out.append((kind, spec, None))
        for ranker in (r for r in args.ranker.split(",") if r):
            out.append((f"{kind}+{ranker}", replace(spec, ranker=work / f"ranker-{ranker}"), ranker))
    return out


def export_version(run: Path, work: Path, key: str, spec: Export, ranker: str | None, seed: int) -> dict[str, Any]:
    """The version of ``key`` in ``work/repo-KEY``: exported now, or the one an earlier run left there."""
    repo, name = work / f"repo-{key}", run.name.replace("run", "cat")
    if (repo / name / "1" / "manifest.json").exists():  # --work from an earlier run: measure it again
        return describe(repo / name / "1") | {"reused": True}
    if ranker is not None and spec.ranker is not None and not spec.ranker.exists():
        _child(build_ranker, run, spec.ranker, ranker, seed)
    return _child(export_kind, run, repo, name, spec)


def measure_version(args: argparse.Namespace, work: Path, key: str, row: dict[str, Any], log: Any) -> None:
    """Batch-1 stages and servicer times (every version), ``LoadedModel.recommend`` at batch 1/64/256
    (one-stage versions), served (unless ``--skip-served``), into ``row``."""
    from rank_inprocess import servicer_times, stage_times

    version = Path(row["version"])
    repo, name = version.parents[1], version.parent.name
    if "+" not in key:
        row["inprocess"] = inprocess(version, args.seconds, 100, args.seed)
        gc.collect()
        ip = row["inprocess"]
        log(f"{key} in-process: b1 p50 {ip['b1']['p50_ms']:.3f} ms, {ip['saturation_users_per_s']:,.0f} users/s")
    row["stages_b1"] = st = _child(stage_times, version, args.seconds, args.timed_users, args.seed)
    log(
        f"{key} stages b1: "
        + ", ".join(f"{s} p50 {st[s]['p50_ms']:.3f} ms" for s in ("retrieve", "rank", "total") if s in st)
    )
    for us in (int(u) for u in args.inline_max_us.split(",")):
        sv = _child(servicer_times, repo, name, args.seconds, args.timed_users, args.seed, K, us)
        row.setdefault("servicer_b1", sv)  # the first --inline-max-us: the table's
        row.setdefault("servicer_b1_by_inline_max_us", {})[str(us)] = sv
        log(f"{key} servicer b1, inline_max_us {us}: p50 {sv['p50_ms']:.3f} p99 {sv['p99_ms']:.3f} ms, {sv['answer']}")
    if not args.skip_served:
        conc = [int(c) for c in args.concurrency.split(",")]
        row["served"] = served(
            repo, version, name, work / f"serve-{key}.log", conc, args.duration, 2.0,
            workers=args.workers,
            server_cpus=_cpus(args.server_cpus), load_cpus=_cpus(args.load_cpus),
        )  # fmt: skip
        for c, p in row["served"]["points"].items():
            log(f"{key} served {c}: {p['qps']:,.0f} calls/s p50 {p['p50_ms']:.2f} p99 {p['p99_ms']:.2f} ms")


def main() -> None:
    """Build the catalog, export each version, measure each one at a time, write JSON, print the tables."""
    args = parse_args()
    conc = [int(c) for c in args.concurrency.split(",")]
    t_begin = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_begin:6.1f}s] {msg}", file=sys.stderr, flush=True)

    from serving import loadavg

    report = new_report(args, conc)
    with tempfile.TemporaryDirectory(prefix="onnxrec-index-") as tmp_s:
        work = args.work or Path(tmp_s)
        run = work / f"run{args.items}"
        if not run.exists():
            log(f"{args.items:,} items: building the run directory")
            report["catalog"] = _child(build_run, run, args.items, args.seed, args.like)
            (work / "catalog.json").write_text(json.dumps(report["catalog"]) + "\n")
        else:
            report["catalog"] = json.loads((work / "catalog.json").read_text())
        for key, spec, ranker in versions(args, work):
            log(f"{key}: exporting (or reusing) the version")
            row = report["kinds"][key] = export_version(run, work, key, spec, ranker, args.seed)
            log(f"{key}: export {row['export_s']} s, index {json.dumps(row['index'] and row['index']['recall'])}")
            if not args.export_only:
                measure_version(args, work, key, row, log)
            row.pop("version")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive a later failure
            gc.collect()
    report["loadavg_end"] = loadavg()
    report["wall_s"] = round(time.perf_counter() - t_begin, 1)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print()
    print(format_rank_table(report))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
