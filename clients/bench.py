"""``onnxrec bench``: a load generator for an onnxrec server, in its own processes.

Closed loop (``concurrency`` requests outstanding) or open loop (Poisson arrivals at ``rate`` per
second, latency measured from each request's *scheduled* send time, so queueing in the client is
not hidden). A warm-up is run and dropped; the report has QPS, latency percentiles, errors by
status code and, when the server's /metrics URL is given, the server-side mean batch size and
queue time over the measured window.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import re
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from onnxrec.errors import ConfigError


@dataclass(frozen=True)
class BenchConfig:
    """One load level."""

    server: str
    model: str
    users: tuple[str, ...]
    k: int = 10
    concurrency: int | None = 16  # closed loop
    rate: float | None = None  # open loop (requests/s); set -> concurrency is ignored
    duration_s: float = 10.0
    warmup_s: float = 2.0
    processes: int = 1
    batch_users: int = 0  # > 0: RecommendBatch with this many users a call
    explain: bool = False  # ask for each item's reasons (Recommend.explain)
    timeout_s: float = 5.0
    token: str | None = None
    seed: int = 0


def load_user_ids(path: Path) -> tuple[str, ...]:
    """User ids from a model version directory, a users.parquet, or a text file (one id a line)."""
    path = Path(path)
    if path.is_dir():
        path = path / "users.parquet"
    if not path.is_file():
        raise ConfigError(f"--users-from {path}: no such file (a model version dir, users.parquet or a text file)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        ids = tuple(str(u) for u in pq.read_table(path, columns=["user_id"])["user_id"].to_pylist() if u is not None)
    else:
        ids = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not ids:
        raise ConfigError(f"--users-from {path}: no user ids")
    return ids


async def _worker(cfg: BenchConfig, index: int, t_start: float, t_end: float) -> dict[str, Any]:
    import grpc

    from onnxrec.clients.requests import recommend_request
    from onnxrec.v1 import recommender_pb2 as pb
    from onnxrec.v1 import recommender_pb2_grpc as pb_grpc

    rng = random.Random(cfg.seed * 1000 + index)
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    metadata = (("authorization", f"Bearer {cfg.token}"),) if cfg.token else ()
    async with grpc.aio.insecure_channel(cfg.server) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)

        async def one(scheduled: float) -> None:
            try:
                if cfg.batch_users > 0:
                    users = [rng.choice(cfg.users) for _ in range(cfg.batch_users)]
                    await stub.RecommendBatch(
                        pb.RecommendBatchRequest(
                            requests=[recommend_request(cfg.model, u, cfg.k, explain=cfg.explain) for u in users]
                        ),
                        timeout=cfg.timeout_s,
                        metadata=metadata,
                    )
                else:
                    await stub.Recommend(
                        recommend_request(cfg.model, rng.choice(cfg.users), cfg.k, explain=cfg.explain),
                        timeout=cfg.timeout_s,
                        metadata=metadata,
                    )
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
            done = time.monotonic()
            if scheduled >= t_start:
                codes[code] += 1
                if code == "OK":
                    latencies.append(done - scheduled)

        if cfg.rate:
            per_process = cfg.rate / cfg.processes
            pending: set[asyncio.Task[None]] = set()
            next_at = time.monotonic()
            while next_at < t_end:
                next_at += rng.expovariate(per_process)
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(next_at))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending)
        else:
            per_process = max(
                1, (cfg.concurrency or 1) // cfg.processes + (index < (cfg.concurrency or 1) % cfg.processes)
            )

            async def loop() -> None:
                while time.monotonic() < t_end:
                    await one(time.monotonic())

            await asyncio.gather(*[loop() for _ in range(per_process)])
    return {"latencies": latencies, "codes": dict(codes)}


def _run_process(cfg: BenchConfig, index: int, t_start: float, t_end: float, out: Any) -> None:
    out.put(asyncio.run(_worker(cfg, index, t_start, t_end)))


def _scrape(url: str | None) -> dict[str, float]:
    if not url:
        return {}
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for name in (
        "onnxrec_batch_size_sum",
        "onnxrec_batch_size_count",
        "onnxrec_queue_seconds_sum",
        "onnxrec_queue_seconds_count",
    ):
        out[name] = sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} ([0-9.eE+-]+)$", text, re.M))
    return out


@dataclass
class BenchResult:
    """One load level's report."""

    mode: str
    offered: float  # concurrency (closed) or requests/s (open)
    qps: float
    users_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    requests: int
    errors: dict[str, int] = field(default_factory=dict)
    server_mean_batch: float | None = None
    server_mean_queue_ms: float | None = None
    processes: int = 1  # load processes that ran (closed loop: never more than the concurrency)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def run_bench(cfg: BenchConfig, metrics_url: str | None = None) -> BenchResult:
    """Generate load as ``cfg`` says and report; the load runs in ``cfg.processes`` child processes."""
    if cfg.processes < 1 or cfg.duration_s <= 0 or cfg.warmup_s < 0:
        raise ConfigError("processes must be >= 1, duration > 0 and warm-up >= 0")
    if not cfg.rate and (cfg.concurrency or 0) < 1:
        raise ConfigError("give --concurrency >= 1 or --rate > 0")
    if not cfg.rate and cfg.processes > (cfg.concurrency or 1):
        # each process keeps at least one request in flight: more processes than requests would raise the load
        cfg = replace(cfg, processes=cfg.concurrency or 1)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    t0 = time.monotonic() + 1.0  # time for the processes to start
    t_start, t_end = t0 + cfg.warmup_s, t0 + cfg.warmup_s + cfg.duration_s
    procs = [ctx.Process(target=_run_process, args=(cfg, i, t_start, t_end, queue)) for i in range(cfg.processes)]
    for p in procs:
        p.start()
    before: dict[str, float] = {}
    while time.monotonic() < t_start:
        time.sleep(0.01)
    before = _scrape(metrics_url)
    parts = [queue.get(timeout=cfg.duration_s + cfg.warmup_s + 60 + cfg.timeout_s) for _ in procs]
    after = _scrape(metrics_url)
    for p in procs:
        p.join(30)
    lat = np.array([x for part in parts for x in part["latencies"]]) * 1000
    codes: Counter[str] = Counter()
    for part in parts:
        codes.update(part["codes"])
    ok = codes.get("OK", 0)

    def pct(q: float) -> float:
        return float(np.percentile(lat, q)) if len(lat) else float("nan")

    result = BenchResult(
        mode="open" if cfg.rate else "closed",
        offered=float(cfg.rate or cfg.concurrency or 0),
        qps=ok / cfg.duration_s,
        users_per_s=ok * max(cfg.batch_users, 1) / cfg.duration_s,
        p50_ms=pct(50),
        p90_ms=pct(90),
        p99_ms=pct(99),
        p999_ms=pct(99.9),
        requests=sum(codes.values()),
        errors={c: n for c, n in codes.items() if c != "OK"},
        processes=cfg.processes,
    )
    if before and after:
        batches = after["onnxrec_batch_size_count"] - before["onnxrec_batch_size_count"]
        rows = after["onnxrec_batch_size_sum"] - before["onnxrec_batch_size_sum"]
        queued = after["onnxrec_queue_seconds_sum"] - before["onnxrec_queue_seconds_sum"]
        if batches > 0:
            result.server_mean_batch = rows / batches
            result.server_mean_queue_ms = queued / batches * 1000
    return result


def plot_sweep(results: list[BenchResult], path: Path, title: str) -> None:
    """PNG: latency percentiles against offered load."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib (pip install 'onnxrec[bench]')") from exc
    xs = [r.offered for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        ax.plot(xs, [getattr(r, key) for r in results], marker="o", label=label)
    ax.set_xlabel("offered load (" + ("requests/s" if results[0].mode == "open" else "concurrency") + ")")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    for r in results:
        ax.annotate(
            f"{r.qps:,.0f}/s",
            (r.offered, r.p50_ms),
            textcoords="offset points",
            xytext=(0, -12),
            ha="center",
            fontsize=7,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
