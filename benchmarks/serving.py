"""Serving throughput and latency on this machine, side by side, for an ML-100K two-tower model (K=10).

Trains the default two-tower for 3 epochs on MovieLens-100K, exports it to a temporary repository and
measures, closed loop at concurrency 1, 16 and 64 with ``onnxrec.clients.bench.run_bench``
(``processes=2``, never more than the concurrency; 1.5 s warm-up, 5 s measured per point). The echo
floor, the batched, the fixed-delay and the unbatched server are up at once and measured in turn at each
concurrency, ``--rounds`` times (default 3), each figure being the median over the rounds, so the
machine's drift hits all of them alike:

1. ``echo``: ``benchmarks/echo_server.py``, an empty grpc.aio server with the same Recommend method and
   messages answering a canned 10-item response (the floor: gRPC + client cost only);
2. ``inprocess``: onnxruntime ``recommend`` in this process (CPU EP), batch 1..1024, users/s;
3. ``onnxrec``: ``onnxrec serve`` with its defaults (dynamic batching);
4. ``onnxrec-unbatched``: ``onnxrec serve --max-batch-size 1``;
   (and ``onnxrec-delay``: ``onnxrec serve --max-queue-delay-us 1000``, Triton's fixed queue delay,
   measured in the same rotation);
5. ``onnxrec-workers2``: ``onnxrec serve --workers 2`` on a fixed free port;
6. ``onnxrec-batch64``: RecommendBatch with 64 users a call against the default server (users/s);
7. ``pytriton``: the same recommend.onnx behind Triton through PyTriton (``benchmarks/pytriton_server.py``),
   driven by a tritonclient gRPC load generator, when an interpreter with nvidia-pytriton is found
   (``--pytriton-python``; skipped otherwise, with the reason in the JSON).

Per point: QPS, p50/p90/p99 ms, server CPU seconds per 1,000 requests (utime+stime of the server's
process tree from /proc, before and after the point) and the load generator's CPU (its processes'
rusage), plus the server's mean batch size from /metrics where available.

    python benchmarks/serving.py            # full run, about 5-8 minutes on 2 cores
    python benchmarks/serving.py --quick    # smoke run, about 1-2 minutes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import grpc
import numpy as np

from onnxrec.clients.bench import BenchConfig, BenchResult, load_user_ids, run_bench
from onnxrec.clients.requests import recommend_request
from onnxrec.exporter.repository import list_versions
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
MODEL = "ml100k"
K = 10
TICKS = os.sysconf("SC_CLK_TCK")
P99_SLO_MS = 10.0
DELAY_US = 1000  # the onnxrec-delay row: onnxrec serve --max-queue-delay-us DELAY_US


# --------------------------------------------------------------------------- process CPU


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):
            out += [int(c) for c in task.read_text().split()]
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def stat_cpu_seconds(stat: Path) -> float | None:
    """utime + stime from a /proc ``stat`` file (a process's or a thread's); None when it vanished."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (processes that vanished count 0)."""
    return sum(stat_cpu_seconds(Path(f"/proc/{pid}/stat")) or 0.0 for pid in pids)


def latest_version(repository: Path, model: str) -> Path:
    """The newest complete version directory of ``model`` in ``repository``."""
    versions = list_versions(repository / model)
    if not versions:
        raise RuntimeError(f"{repository / model}: no complete model version")
    return repository / model / str(versions[-1])


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the load generator's processes)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- server processes


@dataclass
class Server:
    """A started server process and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    address: str
    log: Path
    metrics_url: str | None = None

    def pids(self) -> list[int]:
        """The server's process tree now."""
        return process_tree(self.proc.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def start_server(
    name: str,
    cmd: list[str],
    log: Path,
    ready: Callable[[str], bool],
    pattern: str = r"serving on 127\.0\.0\.1:(\d+)",
    metrics_url: str | None = None,
    timeout: float = 180.0,
) -> Iterator[Server]:
    """Run ``cmd``, wait for its "serving on" line and for ``ready(address)``; stop it on exit."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    server: Server | None = None
    try:
        deadline = time.monotonic() + timeout
        while server is None:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text()[-3000:]}")
            m = re.search(pattern, log.read_text(errors="replace"))
            if m:
                server = Server(name, proc, f"127.0.0.1:{m.group(1)}", log, metrics_url)
            else:
                time.sleep(0.2)
        while not ready(server.address):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} never answered: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        if server is not None:
            server.stop()
        elif proc.poll() is None:
            proc.kill()
            proc.wait(5)


def recommend_once(address: str, user: str, model: str = MODEL, timeout: float = 10.0) -> pb.RecommendResponse | None:
    """One Recommend call, or None when it fails."""
    try:
        with grpc.insecure_channel(address) as channel:
            request = recommend_request(model, user, K)
            return pb_grpc.RecommenderServiceStub(channel).Recommend(request, timeout=timeout)
    except grpc.RpcError:
        return None


def answers_k(model: str, user: str, timeout: float = 30.0) -> Callable[[str], bool]:
    """A readiness check for ``start_server``: the server answers ``user`` with K items of ``model``."""

    def ready(address: str) -> bool:
        reply = recommend_once(address, user, model, timeout)
        return reply is not None and len(reply.items) == K

    return ready


# --------------------------------------------------------------------------- measurements


def measure(
    server: Server,
    users: tuple[str, ...],
    concurrency: int,
    duration: float,
    warmup: float,
    processes: int,
    batch_users: int = 0,
    model: str = MODEL,
    explain: bool = False,
) -> dict[str, Any]:
    """One closed-loop point with onnxrec's load generator, plus server and client CPU (``explain``: every
    Recommend asks for its items' reasons)."""
    cfg = BenchConfig(
        server=server.address,
        model=model,
        users=users,
        k=K,
        concurrency=concurrency,
        duration_s=duration,
        warmup_s=warmup,
        processes=processes,
        batch_users=batch_users,
        explain=explain,
    )
    result_box: list[BenchResult] = []
    cpu = _cpu_during(server, lambda: result_box.append(run_bench(cfg, server.metrics_url)), warmup)
    r = result_box[0].to_dict()
    r.update(cpu)
    r["loadavg"] = loadavg()
    return _finish_point(r, duration, batch_users)


def _cpu_during(server: Server, body: Callable[[], None], warmup: float) -> dict[str, float]:
    """Run ``body``; server CPU of the measured window and the load generator's CPU over the whole call.

    The server's CPU is read right after the warm-up (run_bench starts its clock 1 s after it is called)
    and right after the load ends, so it covers the measured window plus the few ms to collect results.
    """
    import threading

    client0 = children_cpu()
    t_call = time.monotonic()
    marks: dict[str, float] = {}

    def sample_start() -> None:
        time.sleep(max(0.0, 1.0 + warmup - (time.monotonic() - t_call)))
        marks["server0"] = cpu_seconds(server.pids())
        marks["t0"] = time.monotonic()

    sampler = threading.Thread(target=sample_start, daemon=True)
    sampler.start()
    body()
    sampler.join()
    server1, t1 = cpu_seconds(server.pids()), time.monotonic()
    return {
        "server_cpu_s": server1 - marks["server0"],
        "server_window_s": t1 - marks["t0"],
        "client_cpu_s": children_cpu() - client0,
        "client_wall_s": t1 - t_call,
    }


def _finish_point(r: dict[str, Any], duration: float, batch_users: int) -> dict[str, Any]:
    """Derived figures: server CPU s per 1,000 requests (and users), client cores used."""
    calls = r["qps"] * r.get("server_window_s", duration)
    r["server_cpu_s_per_1k_req"] = 1000 * r["server_cpu_s"] / calls if calls else None
    if batch_users:
        r["server_cpu_s_per_1k_users"] = r["server_cpu_s_per_1k_req"] / batch_users if calls else None
    r["server_cores"] = r["server_cpu_s"] / r["server_window_s"] if r.get("server_window_s") else None
    r["client_cores"] = r["client_cpu_s"] / r["client_wall_s"] if r.get("client_wall_s") else None
    return r


def inprocess_sweep(version: Path, batches: list[int], per_batch_s: float) -> dict[str, Any]:
    """onnxruntime ``recommend`` (CPU EP, default threads) in this process: users/s per batch size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(version / "recommend.onnx"), providers=["CPUExecutionProvider"])
    runtime_k = "k" in {i.name for i in session.get_inputs()}
    k_feed = {"k": np.array([K], dtype=np.int64)} if runtime_k else {}
    with np.load(version / "seen.npz", allow_pickle=False) as seen:
        indptr, indices = seen["indptr"], seen["indices"].astype(np.int64)
    rng = np.random.default_rng(0)
    points: dict[str, Any] = {}
    for b in batches:
        feeds = []
        for _ in range(4):
            users = rng.integers(0, len(indptr) - 1, size=b)
            rows = [indices[indptr[u] : indptr[u + 1]] for u in users]
            width = 1 + max([0, *(len(r) for r in rows)])  # at least one -1 in every row (model format 3)
            exclude = np.full((b, width), -1, dtype=np.int64)
            for j, r in enumerate(rows):
                exclude[j, : len(r)] = r
            feeds.append({"user_idx": users.astype(np.int64), "exclude": exclude, **k_feed})
        for f in feeds[:2]:
            session.run(None, f)
        times: list[float] = []
        cpu0, t_end = time.process_time(), time.perf_counter() + per_batch_s
        while time.perf_counter() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            session.run(None, feeds[len(times) % len(feeds)])
            times.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
        arr = np.array(times)
        points[str(b)] = {
            "batch": b,
            "calls": len(times),
            "users_per_s": b * len(times) / arr.sum(),
            "p50_ms": float(np.percentile(arr, 50) * 1000),
            "p99_ms": float(np.percentile(arr, 99) * 1000),
            "cpu_s_per_1k_users": 1000 * cpu / (b * len(times)),
        }
    best = max(points.values(), key=lambda p: p["users_per_s"])
    under = [p for p in points.values() if p["p99_ms"] <= P99_SLO_MS]
    return {
        "points": points,
        "best_batch": best["batch"],
        "best_users_per_s": best["users_per_s"],
        "max_users_per_s_p99_le_10ms": max((p["users_per_s"] for p in under), default=None),
    }


# --------------------------------------------------------------------------- PyTriton


def find_pytriton_python(explicit: str | None) -> tuple[str | None, str]:
    """An interpreter that imports pytriton, tritonclient and onnxruntime, and why not when none does."""
    candidates = [explicit] if explicit else [sys.executable, "/tmp/pytriton-venv/bin/python"]
    reasons = []
    for py in candidates:
        if not py or not Path(py).exists():
            reasons.append(f"{py}: not found")
            continue
        check = subprocess.run(
            [py, "-c", "import pytriton.triton, tritonclient.grpc.aio, onnxruntime"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check.returncode == 0:
            return py, ""
        reasons.append(f"{py}: {check.stderr.strip().splitlines()[-1] if check.stderr.strip() else 'import failed'}")
    return None, "no interpreter with nvidia-pytriton (" + "; ".join(reasons) + ")"


def measure_pytriton(
    py: str, server: Server, n_users: int, concurrency: int, duration: float, warmup: float, processes: int
) -> dict[str, Any]:
    """One closed-loop point with the tritonclient load generator in ``pytriton_server.py bench``."""
    out: list[str] = []
    cmd = [
        py,
        str(REPO / "benchmarks" / "pytriton_server.py"),
        "bench",
        "--url",
        server.address,
        "--users",
        str(n_users),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--processes",
        str(processes),
    ]

    def body() -> None:
        done = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=duration + warmup + 120, cwd=REPO
        )
        if done.returncode != 0:
            raise RuntimeError(f"pytriton bench failed: {done.stderr[-2000:]}")
        out.append(done.stdout.strip().splitlines()[-1])

    cpu = _cpu_during(server, body, warmup + 1.0)  # + interpreter start-up of the bench command
    r = json.loads(out[0])
    r.update({"mode": "closed", "offered": float(concurrency), "server_mean_batch": None})
    r.update(cpu)
    r["loadavg"] = loadavg()
    return _finish_point(r, duration, 0)


def triton_ready(address: str) -> bool:
    """True when Triton's gRPC health says the server is live (checked with a raw gRPC channel)."""
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=2)
        return True
    except grpc.FutureTimeoutError:
        return False


# --------------------------------------------------------------------------- the run


def median_point(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One point from repeated rounds: every number is the median over the rounds (errors summed); the
    rounds themselves are kept under ``rounds``."""
    out: dict[str, Any] = {}
    for key, value in rounds[0].items():
        values = [r.get(key) for r in rounds]
        if isinstance(value, int | float) and not isinstance(value, bool) and all(v is not None for v in values):
            out[key] = float(np.median(values))
        elif key == "errors":
            merged: dict[str, int] = {}
            for r in rounds:
                for code, n in r["errors"].items():
                    merged[code] = merged.get(code, 0) + n
            out[key] = merged
        else:
            out[key] = value
    out["rounds"] = rounds
    return out


def summarize(points: list[dict[str, Any]], key: str = "qps") -> dict[str, Any]:
    """Max ``key`` over the points with p99 <= 10 ms."""
    ok = [p[key] for p in points if p["p99_ms"] <= P99_SLO_MS and not p.get("errors")]
    return {f"max_{key}_p99_le_10ms": max(ok, default=None)}


def main() -> None:
    """Parse the options, train and export, measure every system and write the JSON report."""
    # Imported here, not at the top: the load generator's processes are spawned and re-import this
    # module, and torch (through the trainer) would add seconds to their start-up.
    import onnxruntime as ort

    from onnxrec.exporter.export import export
    from onnxrec.trainer.config import TrainConfig
    from onnxrec.trainer.train import train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("ONNXREC_SHARED_DATA", REPO.parent / "shared" / "data")) / "ml-100k",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, c1 and c16, 2 s points")
    ap.add_argument("--repository", type=Path, help="an existing repository holding MODEL/VERSION (skips training)")
    ap.add_argument("--processes", type=int, default=2, help="load-generating processes")
    ap.add_argument("--pytriton-python", help="interpreter with nvidia-pytriton (default: this one, then a venv)")
    ap.add_argument("--skip", default="", help="comma-separated systems to skip (e.g. pytriton,workers2)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the echo/batched/unbatched rotation")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    conc = [1, 16] if args.quick else [1, 16, 64]
    duration, warmup = (2.0, 1.0) if args.quick else (5.0, 1.5)
    if args.quick:
        args.rounds = 1
    epochs = 1 if args.quick else 3
    batches = [1, 16, 64, 256, 1024] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    t_begin = time.perf_counter()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/serving.py" + (" --quick" if args.quick else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "grpcio": grpc.__version__,
        },
        "loadavg_before": loadavg(),
        "settings": {
            "model": "twotower (defaults)",
            "epochs": epochs,
            "k": K,
            "concurrency": conc,
            "duration_s": duration,
            "warmup_s": warmup,
            "processes": args.processes,
        },
        "systems": {},
    }
    systems: dict[str, Any] = report["systems"]

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_begin:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def sweep(name: str, server: Server, batch_users: int = 0) -> None:
        pts = []
        for c in conc:
            p = measure(server, users, c, duration, warmup, args.processes, batch_users)
            log(
                f"{name} c{c}: {p['qps']:,.0f} calls/s {p['users_per_s']:,.0f} users/s p50 {p['p50_ms']:.2f} "
                f"p99 {p['p99_ms']:.2f} ms, server {p['server_cores']:.2f} cores, client {p['client_cores']:.2f} "
                f"cores, batch {p['server_mean_batch']}, errors {p['errors']}"
            )
            pts.append(p)
        systems[name] = {"points": pts, **summarize(pts), **summarize(pts, "users_per_s")}

    with tempfile.TemporaryDirectory(prefix="onnxrec-serving-") as tmp_s:
        tmp = Path(tmp_s)
        if args.repository:
            repo = args.repository
        else:
            log(f"training twotower for {epochs} epochs on {args.data}")
            run = train(
                TrainConfig(data=str(args.data), out=str(tmp / "run"), model="twotower", epochs=epochs, progress=False)
            )
            repo = tmp / "repo"
            export(run, repo, MODEL)
        version = latest_version(repo, MODEL)
        users = load_user_ids(version)
        manifest = json.loads((version / "manifest.json").read_text())
        report["model"] = {"num_users": manifest.get("num_users"), "num_items": manifest.get("num_items")}
        log(f"model at {version}: {len(users)} users")
        serve = [sys.executable, "-m", "onnxrec", "serve", "--repository", str(repo), "--device", "cpu"]

        def onnxrec_ready(address: str) -> bool:
            return recommend_once(address, users[0]) is not None

        # 1, 3, 4 and 6: the echo floor, onnxrec serve with its defaults (dynamic batching) and with
        # batching off run side by side, all three up at once and measured in turn at each concurrency,
        # ``--rounds`` times, so that the machine's drift hits all three alike; each figure is the median
        # over the rounds. Then RecommendBatch of 64 users against the default server.
        with ExitStack() as stack:
            metrics_port = free_port()
            srv = stack.enter_context(
                start_server(
                    "onnxrec",
                    [*serve, "--port", "0", "--metrics-port", str(metrics_port)],
                    tmp / "onnxrec.log",
                    onnxrec_ready,
                    metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                )
            )
            real = recommend_once(srv.address, users[0])
            assert real is not None
            (tmp / "response.bin").write_bytes(real.SerializeToString())
            report["response_bytes"] = real.ByteSize()
            echo = [
                sys.executable,
                str(REPO / "benchmarks" / "echo_server.py"),
                "--response",
                str(tmp / "response.bin"),
            ]
            trio = [("echo", stack.enter_context(start_server("echo", echo, tmp / "echo.log", onnxrec_ready)))]
            trio.append(("onnxrec", srv))
            if "unbatched" not in skip:
                metrics_port = free_port()
                unbatched = [*serve, "--port", "0", "--max-batch-size", "1", "--metrics-port", str(metrics_port)]
                trio.append(
                    (
                        "onnxrec-unbatched",
                        stack.enter_context(
                            start_server(
                                "onnxrec-unbatched",
                                unbatched,
                                tmp / "unbatched.log",
                                onnxrec_ready,
                                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                            )
                        ),
                    )
                )
            if "delay" not in skip:
                metrics_port = free_port()
                delayed = [
                    *serve,
                    "--port",
                    "0",
                    "--max-queue-delay-us",
                    str(DELAY_US),
                    "--metrics-port",
                    str(metrics_port),
                ]
                trio.append(
                    (
                        "onnxrec-delay",
                        stack.enter_context(
                            start_server(
                                "onnxrec-delay",
                                delayed,
                                tmp / "delay.log",
                                onnxrec_ready,
                                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                            )
                        ),
                    )
                )
            points: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trio}
            for c in conc:
                rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trio}
                for _ in range(args.rounds):
                    for name, server in trio:
                        rounds[name].append(measure(server, users, c, duration, warmup, args.processes, 0))
                for name, _ in trio:
                    p = median_point(rounds[name])
                    log(
                        f"{name} c{c}: {p['qps']:,.0f} calls/s p50 {p['p50_ms']:.2f} p99 {p['p99_ms']:.2f} ms "
                        f"(medians of {args.rounds}), server {p['server_cores']:.2f} cores, client "
                        f"{p['client_cores']:.2f} cores, batch {p['server_mean_batch']}, errors {p['errors']}"
                    )
                    points[name].append(p)
            for name, pts in points.items():
                systems[name] = {"points": pts, **summarize(pts), **summarize(pts, "users_per_s")}
            if "batch64" not in skip:
                sweep("onnxrec-batch64", srv, batch_users=64)

        # 5: two worker processes on a fixed port.
        if "workers2" not in skip:
            with start_server(
                "onnxrec-workers2",
                [*serve, "--port", str(free_port()), "--workers", "2"],
                tmp / "workers2.log",
                onnxrec_ready,
            ) as srv:
                report["workers2_pids"] = srv.pids()
                sweep("onnxrec-workers2", srv)

        # 7: the peer, Triton through PyTriton (best effort).
        if "pytriton" not in skip:
            py, why = find_pytriton_python(args.pytriton_python)
            if py is None:
                systems["pytriton"] = {"skipped": why}
                log(f"pytriton skipped: {why}")
            else:
                try:
                    grpc_port, http_port, m_port = free_port(), free_port(), free_port()
                    with start_server(
                        "pytriton",
                        [
                            py,
                            str(REPO / "benchmarks" / "pytriton_server.py"),
                            "serve",
                            "--version-dir",
                            str(version),
                            "--k",
                            str(K),
                            "--grpc-port",
                            str(grpc_port),
                            "--http-port",
                            str(http_port),
                            "--metrics-port",
                            str(m_port),
                        ],
                        tmp / "pytriton.log",
                        triton_ready,
                    ) as srv:
                        pts = []
                        for c in conc:
                            p = measure_pytriton(py, srv, len(users), c, duration, warmup, args.processes)
                            log(
                                f"pytriton c{c}: {p['qps']:,.0f} calls/s p50 {p['p50_ms']:.2f} p99 {p['p99_ms']:.2f} "
                                f"ms, server {p['server_cores']:.2f} cores, client {p['client_cores']:.2f} cores"
                            )
                            pts.append(p)
                        systems["pytriton"] = {
                            "points": pts,
                            **summarize(pts),
                            **summarize(pts, "users_per_s"),
                            "interpreter": py,
                            "setup": "Triton's dynamic batcher (max batch 64, no queue delay), @batch infer function "
                            "running onnxruntime (CPU EP, default threads); seen items looked up server-side",
                        }
                except Exception as exc:  # best effort: record why and go on
                    systems["pytriton"] = {"skipped": f"failed: {exc}"[:2000]}
                    log(f"pytriton failed: {exc}"[:2000])

        # 2: in-process onnxruntime, last so no server competes for the cores.
        log("in-process onnxruntime sweep")
        systems["inprocess"] = inprocess_sweep(version, batches, 0.3 if args.quick else 0.8)
        log(
            f"inprocess best: batch {systems['inprocess']['best_batch']}, "
            f"{systems['inprocess']['best_users_per_s']:,.0f} users/s"
        )

    report["ratios"] = ratios(systems, conc)
    report["loadavg_after"] = loadavg()
    report["wall_s"] = round(time.perf_counter() - t_begin, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    log(f"wrote {args.out}")


def _at(systems: dict[str, Any], name: str, c: int) -> dict[str, Any] | None:
    for p in systems.get(name, {}).get("points", []):
        if int(p["offered"]) == c:
            return p
    return None


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else None


def ratios(systems: dict[str, Any], conc: list[int]) -> dict[str, Any]:
    """The ratios the project tracks, with targets and pass/fail (None when a point is missing or empty)."""
    out: dict[str, Any] = {}

    def put(name: str, v: float | None, target: str | None = None, ok: Callable[[float], bool] | None = None) -> None:
        out[name] = {"value": v}
        if target and ok:
            out[name].update({"target": target, "pass": None if v is None else ok(v)})

    for c in conc[1:]:
        a, b = _at(systems, "onnxrec", c), _at(systems, "echo", c)
        if a and b:
            put(f"batched_qps_over_echo_c{c}", _ratio(a["qps"], b["qps"]), ">= 0.9", lambda v: v >= 0.9)
        a = _at(systems, "onnxrec-delay", c)
        if a and b:
            put(f"delay_qps_over_echo_c{c}", _ratio(a["qps"], b["qps"]), ">= 0.9", lambda v: v >= 0.9)
    for name in ("onnxrec", "onnxrec-delay"):
        a, b = _at(systems, name, conc[-1]), _at(systems, "pytriton", conc[-1])
        if a and b:
            put(f"{name}_qps_over_pytriton_c{conc[-1]}", _ratio(a["qps"], b["qps"]), ">= 2", lambda v: v >= 2)
            put(f"{name}_p99_over_pytriton_p99_c{conc[-1]}", _ratio(a["p99_ms"], b["p99_ms"]), "< 1", lambda v: v < 1)
    a, b = _at(systems, "onnxrec", 1), _at(systems, "onnxrec-unbatched", 1)
    if a and b:
        put("batched_p99_over_unbatched_p99_c1", _ratio(a["p99_ms"], b["p99_ms"]), "<= 1.2", lambda v: v <= 1.2)
    if "onnxrec-batch64" in systems and "onnxrec" in systems:
        best_b = max(p["users_per_s"] for p in systems["onnxrec-batch64"]["points"])
        best_r = max(p["qps"] for p in systems["onnxrec"]["points"])
        put("batch64_users_over_recommend_calls_best", _ratio(best_b, best_r), ">= 5", lambda v: v >= 5)
        for c in conc:
            a, b = _at(systems, "onnxrec-batch64", c), _at(systems, "onnxrec", c)
            if a and b:
                put(f"batch64_users_over_recommend_calls_c{c}", _ratio(a["users_per_s"], b["qps"]))
    return out


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(report: dict[str, Any]) -> str:
    """Markdown: one row per system and concurrency, then the ratios."""
    lines = [
        "| system | concurrency | calls/s | users/s | p50 ms | p99 ms | server CPU s / 1k calls | server cores "
        "| client cores | mean batch | max calls/s at p99 <= 10 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["systems"].items():
        if name == "inprocess":
            continue
        if "skipped" in s:
            lines.append(f"| {name} | skipped: {s['skipped'][:200]} |" + " |" * 9)
            continue
        for p in s["points"]:
            lines.append(
                f"| {name} | {int(p['offered'])} | {_fmt(p['qps'])} | {_fmt(p['users_per_s'])} | {p['p50_ms']:.2f} "
                f"| {p['p99_ms']:.2f} | {_fmt(p['server_cpu_s_per_1k_req'], '.3f')} | {_fmt(p['server_cores'], '.2f')} "
                f"| {_fmt(p['client_cores'], '.2f')} | {_fmt(p.get('server_mean_batch'), '.1f')} "
                f"| {_fmt(s['max_qps_p99_le_10ms'])} |"
            )
    ip = report["systems"].get("inprocess")
    if ip:
        lines += [
            "",
            "| in-process batch | users/s | p50 ms/call | p99 ms/call | CPU s / 1k users |",
            "|---:|---:|---:|---:|---:|",
        ]
        for p in ip["points"].values():
            lines.append(
                f"| {p['batch']} | {_fmt(p['users_per_s'])} | {p['p50_ms']:.3f} | {p['p99_ms']:.3f} "
                f"| {p['cpu_s_per_1k_users']:.3f} |"
            )
    lines += ["", "| ratio | value | target | pass |", "|---|---:|---|---|"]
    for name, r in report["ratios"].items():
        lines.append(f"| {name} | {_fmt(r['value'], '.2f')} | {r.get('target', '')} | {r.get('pass', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
