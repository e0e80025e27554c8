"""What the ranking stage costs a served Recommend: a pipeline version against its retrieval alone.

One ``onnxrec serve`` process serves a repository holding both versions of the same retrieval run: a
one-stage model (``--one``) and a pipeline (``--pipe``: that run retrieving ``candidates`` items, a
ranker ranking them). The two are measured in turn, alternating, ``--rounds`` times at each
concurrency with onnxrec's own load generator (closed loop, the same user ids), so both see the
same server and the same machine noise. Per point: calls/s, p50/p99, server CPU per call; medians
over the rounds and the pipeline / one-stage ratios.

    python benchmarks/pipeline_serving.py --repository REPO --one one --pipe pipe [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from serving import answers_k, latest_version, loadavg, measure, start_server  # noqa: E402

from onnxrec.clients.bench import load_user_ids  # noqa: E402

KEYS = ("qps", "p50_ms", "p99_ms", "server_cpu_s_per_1k_req")


def main() -> None:
    """Start the server, measure both models in turn, print and write the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, required=True)
    ap.add_argument("--one", default="one", help="the one-stage model's name")
    ap.add_argument("--pipe", default="pipe", help="the pipeline model's name")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "pipeline_serving.json")
    args = ap.parse_args()
    conc = [int(c) for c in args.concurrency.split(",")]
    users = load_user_ids(latest_version(args.repository, args.one))
    models = (args.one, args.pipe)
    cmd = [sys.executable, "-m", "onnxrec", "serve", "--repository", str(args.repository), "--device", "cpu"]
    samples: dict[str, dict[int, list[dict[str, float]]]] = {m: {c: [] for c in conc} for m in models}
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/pipeline_serving.py", *sys.argv[1:]]),
        "loadavg_before": loadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="onnxrec-pipeline-serving-") as tmp:
        ready = answers_k(args.pipe, users[0])
        with start_server("onnxrec", [*cmd, "--port", "0"], Path(tmp) / "server.log", ready) as server:
            for _ in range(args.rounds):
                for c in conc:
                    for model in models:
                        p = measure(server, users, c, args.duration, 1.0, min(2, c), model=model)
                        samples[model][c].append({k: float(p[k]) for k in KEYS})
                        print(f"{model} c{c}: {p['qps']:,.0f} calls/s, p99 {p['p99_ms']:.2f} ms", file=sys.stderr)
    points = {
        m: {str(c): {k: statistics.median(s[k] for s in pts) for k in KEYS} for c, pts in by.items()}
        for m, by in samples.items()
    }
    report["points"] = points
    report["ratios"] = {
        str(c): {k: points[args.pipe][str(c)][k] / points[args.one][str(c)][k] for k in KEYS} for c in conc
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| model | conc. | calls/s | p50 ms | p99 ms | server CPU ms / call |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in conc:
        rows = [(m, points[m][str(c)], "") for m in models] + [("pipeline / one stage", report["ratios"][str(c)], "x")]
        for name, q, x in rows:
            cells = [f"{q['qps']:,.2f}{x}" if x else f"{q['qps']:,.0f}"]
            cells += [f"{q[k]:.2f}{x}" for k in ("p50_ms", "p99_ms")]
            cells.append(f"{q['server_cpu_s_per_1k_req']:.{2 if x else 3}f}{x}")
            print(f"| {name} | {c} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
