"""The peer for serving benchmarks: an exported ``recommend.onnx`` behind NVIDIA Triton via PyTriton.

Runs in an interpreter that has ``nvidia-pytriton`` (it bundles Triton's server and ``tritonclient``),
``onnxruntime`` and ``numpy``; onnxrec itself is not imported, so it also runs from a separate
virtual environment (nvidia-pytriton 0.7.0 pins protobuf < 7, which onnxrec's own environment cannot
take). Two sub-commands:

``serve``: one model ``recommend`` whose PyTriton infer function (``@batch``, Triton's dynamic batcher)
runs an onnxruntime session (CPU EP) on the version directory's ``recommend.onnx``. A request is one
user index (``user_idx`` int64[1]); the function looks the user's seen items up in ``seen.npz`` (the
``exclude`` input, -1 padded) like ``onnxrec serve`` does, and answers ``items`` int64[K] and
``scores`` float32[K]. Prints ``pytriton serving on 127.0.0.1:GRPC_PORT (pid N)`` on stderr.

``bench``: a closed-loop load generator with ``tritonclient.grpc.aio`` in ``--processes`` processes
(warm-up dropped), printing one JSON object: qps, p50/p90/p99/p99.9 ms, requests, errors.

    python benchmarks/pytriton_server.py serve --version-dir REPO/ml100k/1 --grpc-port 8001 --http-port 8000
    python benchmarks/pytriton_server.py bench --url 127.0.0.1:8001 --concurrency 16 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "recommend"


# Triton's Python backend stub embeds its own libpython 3.11 but imports this interpreter's standard
# library; with a newer 3.11.x stdlib, multiprocessing's resource tracker calls
# ``RLock._recursion_count``, which the stub's C ``_thread.RLock`` lacks, and PyTriton's model fails to
# load ("'_thread.RLock' object has no attribute '_recursion_count'"). A sitecustomize that swaps in
# the pure-Python RLock fixes it; the stub ignores PYTHONPATH but reads the environment's
# site-packages, so it is written there (only inside a virtual environment, never a system one).
_STUB_FIX = """# written by onnxrec benchmarks/pytriton_server.py: see _STUB_FIX there
try:
    import threading
    import multiprocessing.resource_tracker as _rt
    if not hasattr(_rt._resource_tracker._lock, "_recursion_count"):
        _rt._resource_tracker._lock = threading._PyRLock()
except Exception:
    pass
"""


def _install_stub_fix() -> None:
    import site

    if sys.prefix == sys.base_prefix:
        print("not in a virtual environment: Triton's Python stub fix not installed", file=sys.stderr)
        return
    target = Path(site.getsitepackages()[0]) / "sitecustomize.py"
    if not target.exists():
        target.write_text(_STUB_FIX)
        print(f"wrote {target} (Triton Python stub RLock fix)", file=sys.stderr)
    elif "onnxrec benchmarks/pytriton_server.py" not in target.read_text():
        print(f"{target} exists and is not ours: Triton's Python stub fix not installed", file=sys.stderr)


def serve(args: argparse.Namespace) -> None:
    """Start Triton with the ``recommend`` model and block until SIGTERM or SIGINT."""
    _install_stub_fix()
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    version = Path(args.version_dir)
    opts = ort.SessionOptions()
    if args.intra_op_threads:
        opts.intra_op_num_threads = args.intra_op_threads
    session = ort.InferenceSession(str(version / "recommend.onnx"), opts, providers=["CPUExecutionProvider"])
    with np.load(version / "seen.npz", allow_pickle=False) as seen:
        indptr, indices = seen["indptr"], seen["indices"].astype(np.int64)
    k = args.k

    @batch
    def infer(user_idx: np.ndarray) -> dict[str, np.ndarray]:
        users = user_idx.reshape(-1).astype(np.int64)
        rows = [indices[indptr[u] : indptr[u + 1]] for u in users]
        width = 1 + max([0, *(len(r) for r in rows)])  # at least one -1 in every row (model format 3)
        exclude = np.full((len(users), width), -1, dtype=np.int64)
        for j, r in enumerate(rows):
            exclude[j, : len(r)] = r
        feed = {"user_idx": users, "exclude": exclude}
        if "k" in {i.name for i in session.get_inputs()}:  # graphs exported with a runtime k
            feed["k"] = np.array([k], dtype=np.int64)
        scores, items = session.run(["scores", "items"], feed)
        return {"scores": scores[:, :k].astype(np.float32), "items": items[:, :k].astype(np.int64)}

    config = TritonConfig(
        grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port, log_verbose=0
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=infer,
            inputs=[Tensor(name="user_idx", dtype=np.int64, shape=(1,))],
            outputs=[
                Tensor(name="scores", dtype=np.float32, shape=(-1,)),
                Tensor(name="items", dtype=np.int64, shape=(-1,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=False,
        )
        triton.run()
        print(f"pytriton serving on 127.0.0.1:{args.grpc_port} (pid {os.getpid()})", file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            pass


async def _worker(args: argparse.Namespace, index: int, t_start: float, t_end: float) -> dict[str, Any]:
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    rng = random.Random(index)
    per_process = max(1, args.concurrency // args.processes + (index < args.concurrency % args.processes))
    latencies: list[float] = []
    errors = 0
    client = grpcclient.InferenceServerClient(args.url)
    outputs = [grpcclient.InferRequestedOutput("scores"), grpcclient.InferRequestedOutput("items")]

    async def loop() -> None:
        nonlocal errors
        while time.monotonic() < t_end:
            inp = grpcclient.InferInput("user_idx", [1, 1], "INT64")
            inp.set_data_from_numpy(np.array([[rng.randrange(args.users)]], dtype=np.int64))
            t0 = time.monotonic()
            try:
                result = await client.infer(MODEL, [inp], outputs=outputs, client_timeout=5.0)
                result.as_numpy("items")
                ok = True
            except InferenceServerException:
                ok = False
            if t0 >= t_start:
                if ok:
                    latencies.append(time.monotonic() - t0)
                else:
                    errors += 1

    try:
        await asyncio.gather(*[loop() for _ in range(per_process)])
    finally:
        await client.close()
    return {"latencies": latencies, "errors": errors}


def _run_process(args: argparse.Namespace, index: int, t_start: float, t_end: float, out: Any) -> None:
    out.put(asyncio.run(_worker(args, index, t_start, t_end)))


def bench(args: argparse.Namespace) -> None:
    """Closed-loop load at ``--concurrency``; print one JSON object."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    t0 = time.monotonic() + 1.0
    t_start, t_end = t0 + args.warmup, t0 + args.warmup + args.duration
    procs = [ctx.Process(target=_run_process, args=(args, i, t_start, t_end, queue)) for i in range(args.processes)]
    for p in procs:
        p.start()
    parts = [queue.get(timeout=args.duration + args.warmup + 60) for _ in procs]
    for p in procs:
        p.join(30)
    lat = np.array([x for part in parts for x in part["latencies"]]) * 1000

    def pct(q: float) -> float:
        return float(np.percentile(lat, q)) if len(lat) else float("nan")

    print(
        json.dumps(
            {
                "qps": len(lat) / args.duration,
                "users_per_s": len(lat) / args.duration,
                "p50_ms": pct(50),
                "p90_ms": pct(90),
                "p99_ms": pct(99),
                "p999_ms": pct(99.9),
                "requests": len(lat) + sum(p["errors"] for p in parts),
                "errors": {"ERROR": sum(p["errors"] for p in parts)} if any(p["errors"] for p in parts) else {},
            }
        ),
        flush=True,
    )


def main() -> None:
    """Parse the sub-command and run it."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve recommend.onnx through PyTriton")
    s.add_argument("--version-dir", required=True, help="REPO/NAME/VERSION of an onnxrec export")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--max-batch-size", type=int, default=64)
    s.add_argument("--max-queue-delay-us", type=int, default=0)
    s.add_argument("--intra-op-threads", type=int, default=0, help="0 = onnxruntime's default")
    b = sub.add_parser("bench", help="closed-loop load with tritonclient (gRPC)")
    b.add_argument("--url", default="127.0.0.1:8001")
    b.add_argument("--users", type=int, required=True, help="user indices are drawn from [0, users)")
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--duration", type=float, default=8.0)
    b.add_argument("--warmup", type=float, default=2.0)
    b.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    serve(args) if args.cmd == "serve" else bench(args)


if __name__ == "__main__":
    main()
