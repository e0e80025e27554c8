"""Catalog scaling: Recommend latency and throughput at 10k, 100k and 1M items (64-dim MF), in-process and served.

For each catalog size this builds an untrained 64-dim MF run directory over exactly that many items
(``synthetic_catalog.make_catalog_run``: the project's synthetic log, dataset artifact and checkpoint
format, seeded random factors, no training), exports it with the project's ``export()``
(``ExportOptions(k_max=10, index="exact")``: the exact graph, whatever the size; build and export
run in a child process so their memory is returned)
and measures, on the CPU execution provider:

* **in-process**: ``LoadedModel.recommend`` (the server's own model class, its default session
  options) at batch 1 (p50/p99 ms per call over a timed window of calls) and at batch 64 and 256
  (users/s; the best of the two is "saturation"). Each user's exclusion list is their seen items, as
  the server sends it;
* **served**: ``onnxrec serve --device cpu`` on the repository, driven by ``onnxrec.clients.bench.run_bench``
  (its own processes) closed loop at concurrency 1 (1 load process) and 64 (2 load processes): QPS,
  p50/p99, server CPU (from /proc, as ``serving.py`` measures it) and mean batch size.

Writes ``benchmarks/results/catalog_scaling.json`` and ``catalog_scaling.png`` (latency and throughput
against catalog size, log x) and prints a markdown table. ``--quick`` writes ``catalog_scaling_quick.*``.

    python benchmarks/catalog_scaling.py                        # 10k, 100k, 1M: about 7-8 minutes on 2 cores
    python benchmarks/catalog_scaling.py --quick                # 10k and 100k, short points: about 1.5 minutes
    python benchmarks/catalog_scaling.py --sizes 10000,50000
    python benchmarks/catalog_scaling.py --sizes 100000 --unbatched --out benchmarks/results/catalog_batching_100k.json
                                                                # batched vs --max-batch-size 1 at c1/16/64

The 1M catalog dominates: building its run directory takes 30-50 s and exporting it 3.5-5.5 minutes (four
graphs of 250-500 MB each, with the exporter's parity checks), with a peak of about 11 GB of memory, on a
2-core machine.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import time_point
from serving import answers_k, free_port, loadavg, measure, start_server

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
K = 10
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)


def build_and_export(size: int, work: Path, seed: int) -> dict[str, Any]:
    """Build the run directory for ``size`` items and export it to ``work/repo/cat<size>/1`` (run in a child)."""
    import logging

    import onnxruntime as ort
    from synthetic_catalog import make_catalog_run

    from onnxrec.exporter.export import ExportOptions, export

    logging.getLogger("onnxrec").setLevel(logging.WARNING)
    ort.set_default_logger_severity(3)  # the offline optimiser's notes about unused initializers
    info = make_catalog_run(work / f"run{size}", size, seed=seed)
    t0 = time.perf_counter()
    options = ExportOptions(k_max=K, seed=seed, index="exact")
    version = export(info.run, work / "repo", model_name(size), options=options)
    export_s = time.perf_counter() - t0
    files = {p.name: p.stat().st_size for p in sorted(version.iterdir())}
    return {
        "catalog": info.to_dict(),
        "build_s": info.seconds,
        "export_s": round(export_s, 1),
        "version": str(version),
        "file_mb": {k: round(v / 2**20, 1) for k, v in files.items()},
    }


def model_name(size: int) -> str:
    """The repository model name for a catalog size."""
    return f"cat{size}"


def inprocess(version: Path, seconds: float, min_calls: int, seed: int) -> dict[str, Any]:
    """``LoadedModel.recommend`` on the CPU: batch 1 latency, batch 64 / 256 users per second."""
    from onnxrec.server.loaded_model import LoadedModel

    t0 = time.perf_counter()
    model = LoadedModel(version, device="cpu")
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {
        "load_s": round(load_s, 2),
        "provider": model.provider,
        "intra_op_threads": next(iter(model.sessions.values())).get_session_options().intra_op_num_threads,
        "rss_after_load_mb": round(_rss_kb(os.getpid()) / 1024),
    }

    def call(feed: tuple[np.ndarray, list[np.ndarray]]) -> None:
        model.recommend(feed[0], feed[1])

    for batch in (1, 64, 256):
        feeds = []
        for _ in range(16):
            users = rng.integers(0, model.num_users, size=batch)
            feeds.append((users, [model.seen(int(u)) for u in users]))
        out[f"b{batch}"] = time_point(call, feeds, batch, seconds, min_calls if batch == 1 else 5)
    best = max((out["b64"], out["b256"]), key=lambda p: p["users_per_s"])
    out["saturation_users_per_s"] = best["users_per_s"]
    out["saturation_batch"] = best["batch"]
    return out


def served(
    repo: Path,
    version: Path,
    model: str,
    log: Path,
    concurrency: list[int],
    duration: float,
    warmup: float,
    extra: tuple[str, ...] = (),
    workers: int = 1,
    server_cpus: set[int] | None = None,
    load_cpus: set[int] | None = None,
) -> dict[str, Any]:
    """Start ``onnxrec serve --device cpu [extra]`` on ``repo`` and measure each concurrency (closed loop,
    2 load processes; ``run_bench`` runs no more than the concurrency), with ``workers`` server
    processes sharing a fixed port. With ``server_cpus`` and
    ``load_cpus`` (Linux) the server runs on those cores only (under ``taskset``, one onnxruntime thread
    per core) and the load processes on the others, so neither takes the other's cores."""
    from onnxrec.clients.bench import load_user_ids

    users = load_user_ids(version)
    metrics_port = free_port()
    cmd = [sys.executable, "-m", "onnxrec", "serve", "--repository", str(repo), "--device", "cpu"]
    cmd += ["--port", str(free_port() if workers > 1 else 0), "--metrics-port", str(metrics_port)]
    cmd += ["--workers", str(workers), *extra]
    if server_cpus:
        cmd = ["taskset", "-c", ",".join(map(str, sorted(server_cpus))), *cmd]
        cmd += ["--intra-op-threads", str(len(server_cpus))]
    t0 = time.perf_counter()
    out: dict[str, Any] = {"points": {}}
    with start_server(
        "onnxrec",
        cmd,
        log,
        answers_k(model, users[0]),
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        timeout=900,
    ) as srv:
        out["start_s"] = round(time.perf_counter() - t0, 1)
        mine = os.sched_getaffinity(0)
        try:
            if load_cpus:  # the load processes are started by measure() and inherit this
                os.sched_setaffinity(0, load_cpus)
            for c in concurrency:
                out["points"][f"c{c}"] = measure(srv, users, c, duration, warmup, processes=2, model=model)
        finally:
            os.sched_setaffinity(0, mine)
        if server_cpus:
            out["pinned"] = {"server_cpus": sorted(server_cpus), "load_cpus": sorted(load_cpus or ())}
        out["server_peak_rss_mb"] = round(_rss_kb(srv.proc.pid, "VmHWM") / 1024)
    return out


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    """``field`` (VmRSS: resident now, VmHWM: its peak) of process ``pid`` and its children, in kB (Linux)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _rss_kb(int(child), field)
    except (FileNotFoundError, ProcessLookupError):
        return total
    return total


def main() -> None:
    """Parse options, build/export/measure every catalog size, write JSON + PNG, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", help="comma-separated catalog sizes (default 10000,100000,1000000; quick: 10k, 100k)")
    ap.add_argument("--quick", action="store_true", help="short measurement windows (smoke run)")
    ap.add_argument("--out", type=Path, help="JSON path (the PNG goes beside it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-served", action="store_true", help="in-process figures only")
    ap.add_argument(
        "--unbatched",
        action="store_true",
        help="also serve each catalog with --max-batch-size 1 and compare, at concurrency 1, 16 and 64",
    )
    args = ap.parse_args()
    default_sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(default_sizes)
    out = args.out or RESULTS / ("catalog_scaling_quick.json" if args.quick else "catalog_scaling.json")
    seconds, min_calls = (1.0, 20) if args.quick else (4.0, 100)
    duration, warmup = (2.0, 1.0) if args.quick else (8.0, 2.0)
    concurrency = [1, 16, 64] if args.unbatched else [1, 64]
    t_begin = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_begin:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import onnxruntime as ort
    from bench_common import machine_info

    command = "python benchmarks/catalog_scaling.py" + " ".join(["", *sys.argv[1:]]).rstrip()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "machine": machine_info(onnxruntime=ort.__version__),
        "settings": {
            "model": "mf, 64-dim, untrained (seeded N(0, 0.05) factors)",
            "k": K,
            "in_process_seconds_per_point": seconds,
            "served_concurrency": concurrency,
            "served_duration_s": duration,
            "served_warmup_s": warmup,
            "device": "cpu",
        },
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="onnxrec-catalog-") as tmp_s:
        tmp = Path(tmp_s)
        for size in sizes:
            log(f"{size:,} items: building the run directory and exporting (child process)")
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                row = pool.submit(build_and_export, size, tmp, args.seed).result()
            version = Path(row.pop("version"))
            c = row["catalog"]
            log(
                f"{size:,} items: {c['num_users']:,} users, {c['interactions']:,} interactions, build "
                f"{row['build_s']:.1f} s, export {row['export_s']:.1f} s"
            )
            row["inprocess"] = inprocess(version, seconds, min_calls, args.seed)
            gc.collect()  # the LoadedModel's sessions, before the server loads the same graphs
            ip = row["inprocess"]
            log(
                f"{size:,} items in-process: b1 p50 {ip['b1']['p50_ms']:.2f} p99 {ip['b1']['p99_ms']:.2f} ms, "
                f"saturation {ip['saturation_users_per_s']:,.0f} users/s (batch {ip['saturation_batch']})"
            )
            if not args.skip_served:
                row["served"] = served(
                    tmp / "repo", version, model_name(size), tmp / f"serve{size}.log", concurrency, duration, warmup
                )
                if args.unbatched:
                    row["served_unbatched"] = served(
                        tmp / "repo",
                        version,
                        model_name(size),
                        tmp / f"serve{size}-unbatched.log",
                        concurrency,
                        duration,
                        warmup,
                        ("--max-batch-size", "1"),
                    )
                    row["batched_over_unbatched"] = {
                        name: {
                            "qps": p["qps"] / row["served_unbatched"]["points"][name]["qps"],
                            "p99": p["p99_ms"] / row["served_unbatched"]["points"][name]["p99_ms"],
                        }
                        for name, p in row["served"]["points"].items()
                    }
                for key in ("served", "served_unbatched"):
                    for name, p in row.get(key, {}).get("points", {}).items():
                        log(
                            f"{size:,} items {key} {name}: {p['qps']:,.0f} QPS p50 {p['p50_ms']:.2f} p99 "
                            f"{p['p99_ms']:.2f} ms, server {p['server_cores']:.2f} cores, "
                            f"batch {p['server_mean_batch']}, errors {p['errors']}"
                        )
            report["sizes"][str(size)] = row
            for path in (version.parent, tmp / f"run{size}"):  # free the disk before the next size
                _rmtree(path)
    report["loadavg_end"] = loadavg()
    report["wall_s"] = round(time.perf_counter() - t_begin, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    png = out.with_suffix(".png")
    plot(report, png)
    print(format_table(report))
    if args.unbatched:
        print(format_batching(report))
    log(f"wrote {out} and {png}")


def format_batching(report: dict[str, Any]) -> str:
    """Markdown: batched against --max-batch-size 1, per catalog size and concurrency."""
    lines = [
        "| items | concurrency | batched QPS | p99 ms | mean batch | unbatched QPS | p99 ms | QPS ratio | p99 ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, r in report["sizes"].items():
        for name, p in r["served"]["points"].items():
            u = r["served_unbatched"]["points"][name]
            ratio = r["batched_over_unbatched"][name]
            lines.append(
                f"| {int(size):,} | {name[1:]} | {p['qps']:,.0f} | {p['p99_ms']:.1f} "
                f"| {_fmt(p['server_mean_batch'], '.1f')} "
                f"| {u['qps']:,.0f} | {u['p99_ms']:.1f} | {ratio['qps']:.2f} | {ratio['p99']:.2f} |"
            )
    return "\n".join(lines)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(report: dict[str, Any]) -> str:
    """Markdown: one row per catalog size."""
    lines = [
        "| items | users | seen/user (mean) | export s | in-proc b1 p50 ms | in-proc b1 p99 ms "
        "| in-proc users/s (batch) | served c1 QPS | c1 p50 ms | c1 p99 ms | served c64 QPS | c64 p50 ms "
        "| c64 p99 ms | c64 mean batch | c64 server cores |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, r in report["sizes"].items():
        ip, c = r["inprocess"], r["catalog"]
        cells = [
            f"{int(size):,}",
            f"{c['num_users']:,}",
            f"{c['seen_mean']:.0f}",
            f"{r['export_s']:.0f}",
            f"{ip['b1']['p50_ms']:.2f}",
            f"{ip['b1']['p99_ms']:.2f}",
            f"{ip['saturation_users_per_s']:,.0f} ({ip['saturation_batch']})",
        ]
        pts = r.get("served", {}).get("points", {})
        for name in ("c1", "c64"):
            p = pts.get(name)
            if p is None:
                cells += ["-"] * (3 if name == "c1" else 5)
                continue
            cells += [f"{p['qps']:,.0f}", f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}"]
            if name == "c64":
                cells += [_fmt(p.get("server_mean_batch"), ".1f"), _fmt(p.get("server_cores"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """PNG: latency (left) and throughput (right) against catalog size, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(s) for s in report["sizes"]]
    rows = list(report["sizes"].values())

    def series(get: Any) -> list[float]:
        vals = []
        for r in rows:
            try:
                vals.append(float(get(r)))
            except (KeyError, TypeError):
                vals.append(float("nan"))
        return vals

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for label, get, style in (
        ("in-process batch 1 p50", lambda r: r["inprocess"]["b1"]["p50_ms"], "o-"),
        ("in-process batch 1 p99", lambda r: r["inprocess"]["b1"]["p99_ms"], "o--"),
        ("served c1 p50", lambda r: r["served"]["points"]["c1"]["p50_ms"], "s-"),
        ("served c1 p99", lambda r: r["served"]["points"]["c1"]["p99_ms"], "s--"),
        ("served c64 p50", lambda r: r["served"]["points"]["c64"]["p50_ms"], "^-"),
        ("served c64 p99", lambda r: r["served"]["points"]["c64"]["p99_ms"], "^--"),
    ):
        ax1.plot(sizes, series(get), style, label=label)
    ax1.set_ylabel("latency (ms)")
    ax1.set_title("Recommend latency (K=10, 64-dim MF, CPU)")
    for label, get, style in (
        ("in-process users/s (best of batch 64/256)", lambda r: r["inprocess"]["saturation_users_per_s"], "o-"),
        ("served c64 QPS", lambda r: r["served"]["points"]["c64"]["qps"], "^-"),
        ("served c1 QPS", lambda r: r["served"]["points"]["c1"]["qps"], "s-"),
    ):
        ax2.plot(sizes, series(get), style, label=label)
    ax2.set_ylabel("users/s or requests/s")
    ax2.set_title("throughput")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalog size (items)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(f"{report['date']}, {m.get('cpu')} ({m.get('nproc')} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
