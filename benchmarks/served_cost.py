"""Where a served Recommend's CPU goes: ``onnxrec serve`` with parts of its request path replaced,
beside the echo floor, all up at once and measured in turn, per thread of the server process.

Variants (each a real server process on 127.0.0.1 driven by ``onnxrec bench``'s load generator):

* ``echo``: ``benchmarks/echo_server.py``, the grpc.aio floor (same method and messages);
* ``canned``: ``onnxrec serve`` whose servicer answers every Recommend with a fixed response: gRPC,
  the handler wrapper and the metrics, no model and no request planning;
* ``canned+NAME``: ``canned`` plus one onnxruntime run per call of the graph ``--graph NAME=PATH``
  (a recommend graph: user 0, its seen items and a -1, k=10; intra-op threads 1, no spinning, like
  the server's sessions). Two graphs side by side show what a graph's shape costs once served;
* ``full``: ``onnxrec serve`` unchanged.

The patched variants run this file as the server (``--as-server VARIANT``): it replaces the public
seam ``RecommenderServicer.answer`` for Recommend requests, then runs onnxrec's own CLI, so everything
else is the real server. Per point: calls/s, p99, server CPU per call (all threads, from /proc), the main
thread's (the event loop) and gRPC's own threads'. Medians over ``--rounds``.

    python benchmarks/served_cost.py --repository REPO --model ml100k \\
        [--graph old=OLD/recommend.onnx --graph new=REPO/ml100k/1/recommend.onnx] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from serving import (  # noqa: E402
    MODEL,
    Server,
    answers_k,
    latest_version,
    loadavg,
    measure,
    start_server,
    stat_cpu_seconds,
)

from onnxrec.clients.bench import load_user_ids  # noqa: E402


def _canned_response(model: str) -> Any:
    from onnxrec.v1 import recommender_pb2 as pb

    items = [pb.ScoredItem(item_id=str(1000 + i), score=10.0 - i) for i in range(10)]
    return pb.RecommendResponse(items=items, model_name=model, model_version=1, source=pb.SOURCE_MODEL)


def run_as_server(variant: str, graph: str | None, repository: str, model: str, serve_args: list[str]) -> None:
    """Patch the servicer for ``variant``, then run ``onnxrec serve`` in this process."""
    import numpy as np

    from onnxrec.cli import main
    from onnxrec.server import servicer
    from onnxrec.v1 import recommender_pb2 as pb

    response = _canned_response(model)
    run_graph = None
    if graph:
        import onnxruntime as ort

        from onnxrec.server.loaded_model import LoadedModel

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        loaded = LoadedModel(latest_version(Path(repository), model), device="cpu")
        feed = {"user_idx": np.array([0], dtype=np.int64), "exclude": loaded.seen_row(0).reshape(1, -1)}
        if "k" in {i.name for i in session.get_inputs()}:
            feed["k"] = np.array([10], dtype=np.int64)

        def run_graph() -> None:
            session.run(None, feed)

    real_answer = servicer.RecommenderServicer.answer

    async def canned(self: Any, request: Any, deadline: float | None = None) -> Any:
        if not isinstance(request, pb.RecommendRequest):
            return await real_answer(self, request, deadline)
        if run_graph is not None:
            run_graph()
        return response

    servicer.RecommenderServicer.answer = canned  # type: ignore[method-assign]
    sys.argv = ["onnxrec", "serve", "--repository", repository, *serve_args]
    main()


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` by thread id, "main" for the process's first thread."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        seconds = stat_cpu_seconds(task / "stat")
        if seconds is not None:  # the thread did not end meanwhile
            out["main" if task.name == str(pid) else task.name] = seconds
    return out


def main() -> None:
    """Parse the options, start every variant, measure them in turn and write the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, required=True)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--graph", action="append", default=[], help="NAME=PATH of a recommend graph to run per call")
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "served_cost.json")
    ap.add_argument("--as-server", help=argparse.SUPPRESS)
    ap.add_argument("--graph-path", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.as_server:
        run_as_server(args.as_server, args.graph_path, str(args.repository), args.model, rest)
        return
    graphs = dict(g.split("=", 1) for g in args.graph)
    conc = [int(c) for c in args.concurrency.split(",")]
    users = load_user_ids(latest_version(args.repository, args.model))
    ready = answers_k(args.model, users[0])
    serve_args = ["--device", "cpu", "--port", "0"]
    me = [sys.executable, str(Path(__file__).resolve()), "--repository", str(args.repository), "--model", args.model]
    variants: dict[str, list[str]] = {"echo": [sys.executable, str(BENCH_DIR / "echo_server.py"), "--port", "0"]}
    variants["canned"] = [*me, "--as-server", "canned", *serve_args]
    for name, path in graphs.items():
        variants[f"canned+{name}"] = [*me, "--as-server", "graph", "--graph-path", path, *serve_args]
    variants["full"] = [sys.executable, "-m", "onnxrec", "serve", "--repository", str(args.repository), *serve_args]
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/served_cost.py", *sys.argv[1:]]),
        "loadavg_before": loadavg(),
        "graphs": graphs,
        "points": {},
    }
    samples: dict[str, dict[int, list[dict[str, float]]]] = {v: {c: [] for c in conc} for v in variants}
    with tempfile.TemporaryDirectory(prefix="onnxrec-served-cost-") as tmp, ExitStack() as stack:
        servers: dict[str, Server] = {}
        for name, cmd in variants.items():
            pattern = r"echo serving on 127\.0\.0\.1:(\d+)" if name == "echo" else r"serving on 127\.0\.0\.1:(\d+)"
            servers[name] = stack.enter_context(
                start_server(name, cmd, Path(tmp) / f"{len(servers)}.log", ready, pattern=pattern)
            )
        for _ in range(args.rounds):
            for c in conc:
                for name, srv in servers.items():
                    before = thread_cpu(srv.proc.pid)
                    p = measure(srv, users, c, args.duration, 1.0, min(2, c))
                    after = thread_cpu(srv.proc.pid)
                    # the threads' shares of the server's CPU over the whole call (warm-up included),
                    # applied to its CPU per call over the measured window
                    main_s = after.get("main", 0.0) - before.get("main", 0.0)
                    all_s = sum(v - before.get(t, 0.0) for t, v in after.items()) or 1.0
                    per_call = 1000 * p["server_cpu_s_per_1k_req"]
                    samples[name][c].append(
                        {
                            "qps": p["qps"],
                            "p99_ms": p["p99_ms"],
                            "server_us_per_call": per_call,
                            "main_thread_us_per_call": per_call * main_s / all_s,
                            "other_threads_us_per_call": per_call * (1 - main_s / all_s),
                        }
                    )
                    print(f"[{time.perf_counter() - t0:6.1f}s] {name} c{c}: {p['qps']:,.0f} calls/s", file=sys.stderr)
    for name, by_c in samples.items():
        report["points"][name] = {
            str(c): {key: statistics.median(s[key] for s in pts) for key in pts[0]} for c, pts in by_c.items()
        }
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| variant | conc. | calls/s | vs echo | p99 ms | server us/call | main thread | other threads |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in conc:
        echo_qps = report["points"]["echo"][str(c)]["qps"]
        for name in variants:
            q = report["points"][name][str(c)]
            print(
                f"| {name} | {c} | {q['qps']:,.0f} | {q['qps'] / echo_qps:.2f} | {q['p99_ms']:.2f} "
                f"| {q['server_us_per_call']:.0f} | {q['main_thread_us_per_call']:.0f} "
                f"| {q['other_threads_us_per_call']:.0f} |"
            )


if __name__ == "__main__":
    main()
