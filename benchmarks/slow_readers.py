"""Slow readers (issue #14.1): clients that send big calls and never read the answers, beside normal clients.

    python benchmarks/slow_readers.py                 # ~2 minutes on a 2-core CPU

Trains a small MF model on MovieLens-100K (1 epoch) and exports it to a temporary repository, starts
``onnxrec serve`` with its defaults, then runs, one after the other:

1. **no attack**: ``--clients`` threads, each on its own channel, call Recommend (k=10) in a loop for
   ``--seconds``: calls/s, p50 and p99;
2. **attack**: ``--connections`` raw HTTP/2 connections (the ``h2`` package) send ``--calls`` RecommendBatch
   calls each (``--users`` users, k=``--k``, metadata) with every stream's receive window at 0, and never
   read (they answer pings, so keepalive cannot drop them); the normal clients run again for two windows of
   ``--seconds``: the *onset* (the server computes the answers it admits) and the *steady* state;
3. the attackers close; the server's RSS is read once more after ``--settle`` seconds.

The server's RSS (VmRSS of its process) is sampled every 0.25 s throughout: baseline (median before the
attack), peak (during it), after. Targets: peak at most +100 MB over the baseline, normal p99 under the
attack within 2x of the run without it. Prints the JSON report and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import grpc  # noqa: E402
from bench_common import default_data, machine_info  # noqa: E402

from onnxrec.v1 import recommender_pb2 as pb  # noqa: E402
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc  # noqa: E402
from tests.serverproc import SlowReaders, read_rss_mb, start_server  # noqa: E402

MODEL = "ml100k"


def prepare(data: Path, tmp: Path) -> Path:
    """Train 1 epoch of MF on ``data`` and export it; returns the repository."""
    onnxrec = [sys.executable, "-m", "onnxrec"]
    train = f"train --data {data} --out {tmp / 'run'} --model mf --epochs 1 --dim 16"
    subprocess.run([*onnxrec, *train.split()], check=True, capture_output=True)
    export = f"export {tmp / 'run'} --repository {tmp / 'repo'} --name {MODEL}"
    subprocess.run([*onnxrec, *export.split()], check=True, capture_output=True)
    return tmp / "repo"


def normal_clients(address: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads calling Recommend (k=10) for ``seconds``: calls/s, p50/p99 ms, failures by code."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    lock = threading.Lock()

    def one(i: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            request = pb.RecommendRequest(model=pb.ModelRef(name=MODEL), user_id=str(i + 1), k=10)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    stub.Recommend(request, timeout=5)
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                except grpc.RpcError as exc:
                    with lock:
                        name = exc.code().name  # type: ignore[attr-defined]
                        failures[name] = failures.get(name, 0) + 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    pick = (
        (lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)) if latencies else None
    )
    return {
        "ok": len(latencies),
        "failed": failures,
        "calls_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": pick(0.50) if pick else None,
        "p99_ms": pick(0.99) if pick else None,
    }


class RssSampler(threading.Thread):
    """VmRSS of ``pid`` every 0.25 s, tagged with the current phase."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.phase, self.samples = pid, "baseline", []  # type: ignore[var-annotated]
        self.t0 = time.monotonic()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((round(time.monotonic() - self.t0, 2), self.phase, round(read_rss_mb(self.pid), 1)))
            except OSError:
                return
            time.sleep(0.25)

    def of(self, phase: str) -> list[float]:
        return [rss for _, p, rss in self.samples if p == phase]


def run(args: argparse.Namespace, repository: Path, log: Path) -> dict[str, Any]:
    """The three phases against one server; the report."""
    srv = start_server(repository, log, *args.serve_arg)
    sampler = RssSampler(srv.proc.pid)
    try:
        normal_clients(srv.address, args.clients, 2.0)  # warm-up
        sampler.start()
        no_attack = normal_clients(srv.address, args.clients, args.seconds)
        users = [pb.RecommendRequest(model=pb.ModelRef(name=MODEL), user_id=str(u), k=args.k, include_metadata=True)
                 for u in range(1, args.users + 1)]  # fmt: skip
        request = pb.RecommendBatchRequest(requests=users).SerializeToString()
        sampler.phase = "attack"
        attack = SlowReaders(srv.address, "/onnxrec.v1.RecommenderService/RecommendBatch", request,
                             args.connections, args.calls)  # fmt: skip
        onset = normal_clients(srv.address, args.clients, args.seconds)
        steady = normal_clients(srv.address, args.clients, args.seconds)
        outcomes = attack.outcomes()
        attack.close()
        sampler.phase = "after"
        time.sleep(args.settle)
        after = read_rss_mb(srv.proc.pid)
    finally:
        sampler.stop.set()
        srv.stop()
    baseline = statistics.median(sampler.of("baseline"))
    peak = max(sampler.of("attack"))
    worst_p99 = max(onset["p99_ms"] or 1e9, steady["p99_ms"] or 1e9)
    return {
        "rss_mb": {"baseline": baseline, "peak": peak, "after": round(after, 1),
                   "peak_over_baseline": round(peak - baseline, 1)},
        "normal_clients": {"no_attack": no_attack, "attack_onset": onset, "attack_steady": steady},
        "attack": {"connections": args.connections, "calls": args.calls, "users": args.users, "k": args.k,
                   "outcomes": {"pending (held, unread)": outcomes.get("pending", 0),
                                "RESOURCE_EXHAUSTED": outcomes.get("status 8", 0),
                                **{k: v for k, v in outcomes.items() if k not in ("pending", "status 8")}}},
        "targets": {"rss_within_100mb": peak - baseline <= 100,
                    "p99_within_2x_steady": (steady["p99_ms"] or 1e9) <= 2 * (no_attack["p99_ms"] or 0),
                    "p99_within_2x_onset_and_steady": worst_p99 <= 2 * (no_attack["p99_ms"] or 0)},
        "rss_timeline": sampler.samples[::4],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "slow_readers.json")
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--calls", type=int, default=20, help="RecommendBatch calls per connection")
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--clients", type=int, default=16, help="normal client threads")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each normal-client window")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after the close before reading RSS")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra onnxrec serve option (repeatable)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repository = prepare(args.data, Path(tmp))
        report = {"machine": machine_info(), **run(args, repository, Path(tmp) / "server.log")}
    report["command"] = " ".join(["python", "benchmarks/slow_readers.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rss_timeline"}, indent=2))


if __name__ == "__main__":
    main()
