"""What ``reliability.py``'s fault scenarios share: a model repository and its versions, an ``onnxrec serve``
child process, threads of client callers that record every call, and the server's RSS sampled from /proc.

Everything runs against 127.0.0.1; every loop here is bounded in time and in count and stops by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from serving import MODEL, latest_version, process_tree  # noqa: E402

from onnxrec.clients import RecommenderClient  # noqa: E402
from onnxrec.clients import requests as rq  # noqa: E402
from onnxrec.clients.channel import settings_for  # noqa: E402
from onnxrec.clients.errors import RecommenderError  # noqa: E402
from onnxrec.server.process import launch_server  # noqa: E402
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc  # noqa: E402

K = 10
CALL_TIMEOUT_S = 5.0
MAX_CALLS_PER_SECOND_PER_CLIENT = 2000  # the count bound of every caller's loop (far above what one reaches)


# --------------------------------------------------------------------------- the model repository


def build_repository(data: Path, dest: Path, epochs: int = 1) -> Path:
    """Train a small MF model on ``data`` (MovieLens-100K) and export it as ``dest/ml100k/1``; return ``dest``."""
    from onnxrec.exporter.export import export
    from onnxrec.trainer.config import TrainConfig
    from onnxrec.trainer.train import train

    run = train(TrainConfig(data=str(data), out=str(dest.parent / "run"), model="mf", epochs=epochs, progress=False))
    export(run, dest, MODEL)
    return dest


def add_version(repo: Path, version: int, source: Path, tamper: str = "") -> Path:
    """Copy the version directory ``source`` in as ``repo/ml100k/VERSION`` atomically (written under a hidden
    name, manifest rewritten to VERSION, then renamed into place). ``tamper``: ``flip`` flips bytes in
    recommend.onnx (its hash no longer matches), ``missing`` leaves items.parquet out, ``corrupt`` truncates
    recommend.onnx and rewrites its hash (the manifest checks pass, onnxruntime's load fails)."""
    from onnxrec.exporter.repository import sha256_file

    model_dir = repo / MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".incoming-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    graph = staging / "recommend.onnx"
    if tamper == "flip":
        raw = bytearray(graph.read_bytes())
        for i in range(len(raw) // 2, len(raw) // 2 + 64):
            raw[i] ^= 0xFF
        graph.write_bytes(bytes(raw))
    elif tamper == "missing":
        (staging / "items.parquet").unlink()
    elif tamper == "corrupt":
        graph.write_bytes(graph.read_bytes()[:4096])
        manifest["files"]["recommend.onnx"] = sha256_file(graph)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    target = model_dir / str(version)
    os.rename(staging, target)
    return target


def fresh_repo(base: Path, dest: Path, versions: Sequence[int] = (1,)) -> Path:
    """A repository of its own for one scenario: ``base``'s newest version copied in as each of ``versions``."""
    source = latest_version(base, MODEL)
    for v in versions:
        add_version(dest, v, source)
    return dest


# --------------------------------------------------------------------------- the server


class OwnConnectionClient(RecommenderClient):
    """The Python client (retries off, so faults show as they happen) on a TCP connection of its own: gRPC
    shares one connection between channels with equal settings, and N callers must be N connections."""

    _channel: grpc.Channel

    def __init__(self, address: str, timeout: float = CALL_TIMEOUT_S) -> None:
        super().__init__(address, timeout=timeout, retries=0)
        self._channel.close()
        s = settings_for(address, retries=0)
        self._channel = grpc.insecure_channel(s.target, options=[*s.options, ("grpc.use_local_subchannel_pool", 1)])
        self._stub = pb_grpc.RecommenderServiceStub(self._channel)
        self._health = self._channel.unary_unary(
            rq.HEALTH_CHECK,
            request_serializer=rq.HealthCheckRequest.SerializeToString,
            response_deserializer=rq.HealthCheckResponse.FromString,
        )


def answers(address: str, user: str, timeout: float = 5.0) -> bool:
    """Whether one Recommend call to ``address`` succeeds now."""
    with OwnConnectionClient(address, timeout) as client:
        try:
            client.recommend(MODEL, user, K)
            return True
        except RecommenderError:
            return False


def health(address: str) -> str:
    """The server's overall grpc.health.v1 status now (SERVING, NOT_SERVING, ...), or the call's failure code."""
    with OwnConnectionClient(address, 5.0) as client:
        try:
            return client.health()
        except RecommenderError as err:
            return err.code.name


@dataclass
class Served:
    """A running ``onnxrec serve`` child: its process, address, log and every pid seen in its tree."""

    proc: Any
    address: str
    log: Path
    seen_pids: set[int] = field(default_factory=set)

    def tree(self) -> list[int]:
        """The server's process tree now (remembered, so workers left behind can be cleaned up)."""
        pids = process_tree(self.proc.pid) if self.proc.poll() is None else []
        self.seen_pids.update(pids)
        return pids


@contextmanager
def serve(repo: Path, log: Path, user: str, extra: Sequence[str] = (), ready_s: float = 120.0) -> Iterator[Served]:
    """``onnxrec serve --repository REPO --port 0 --device cpu EXTRA`` until it answers ``user``; on exit SIGTERM
    (SIGKILL after 20 s) and SIGKILL of any process of its tree still alive."""
    proc, address = launch_server(repo, log, extra, env={"OMP_WAIT_POLICY": "PASSIVE"})
    served = Served(proc, address, log)
    try:
        deadline = time.monotonic() + ready_s
        while not answers(address, user):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server never answered: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        served.tree()
        yield served
    finally:
        served.tree()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in served.seen_pids - {proc.pid}:
            with suppress(OSError):
                if b"onnxrec" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)


def rejected_in_log(log: Path) -> list[str]:
    """The server's "rejected ..." log lines (versions it refused to load)."""
    return [ln.strip()[-200:] for ln in log.read_text(errors="replace").splitlines() if "rejected" in ln]


# --------------------------------------------------------------------------- memory


def rss_mb(pids: Sequence[int]) -> float:
    """Sum of VmRSS of ``pids`` in MB (processes that vanished count 0)."""
    total_kb = 0
    for pid in pids:
        with suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    break
    return total_kb / 1024


class RssSampler:
    """Samples the server tree's RSS every ``interval`` s in a thread (bounded by ``max_s``) until stopped."""

    def __init__(self, served: Served, interval: float = 0.5, max_s: float = 900.0) -> None:
        self.served, self.interval, self.max_s = served, interval, max_s
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, float]] = [(0.0, rss_mb(served.tree()))]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and time.monotonic() - self.t0 < self.max_s:
            self.samples.append((round(time.monotonic() - self.t0, 2), rss_mb(self.served.tree())))

    def finish(self, settle_s: float = 1.0) -> dict[str, Any]:
        """Stop after ``settle_s`` more seconds; before (first sample), peak and after (last sample), MB."""
        time.sleep(settle_s)
        self._stop.set()
        self._thread.join()
        self.samples.append((round(time.monotonic() - self.t0, 2), rss_mb(self.served.tree())))
        values = [mb for _, mb in self.samples]
        return {"before_mb": round(values[0], 1), "peak_mb": round(max(values), 1), "after_mb": round(values[-1], 1)}


# --------------------------------------------------------------------------- idle connections

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
H2_SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def open_idle(address: str, n: int) -> list[socket.socket]:
    """``n`` TCP connections that send the HTTP/2 preface and an empty SETTINGS frame, then nothing."""
    host, port = address.rsplit(":", 1)
    socks: list[socket.socket] = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection((host, int(port)), timeout=2.0))
            socks[-1].sendall(H2_PREFACE)
        except OSError:
            break
    time.sleep(0.5)
    for s in socks:  # acknowledge the server's SETTINGS (sent at accept) so each is a healthy idle connection
        with suppress(OSError):
            s.sendall(H2_SETTINGS_ACK)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (unread bytes are drained)."""
    n = 0
    for s in socks:
        try:
            n += s.recv(65536, socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


# --------------------------------------------------------------------------- load


class Call(NamedTuple):
    """One Recommend call: start and end (monotonic s), status code name (OK or the failure), the version that
    answered, and a failure's details."""

    t0: float
    t1: float
    code: str
    version: int
    details: str = ""


class Load:
    """``clients`` threads, each an :class:`OwnConnectionClient` calling Recommend back to back for
    ``duration_s`` (and at most ``MAX_CALLS_PER_SECOND_PER_CLIENT`` x duration calls); a failed call is
    followed by ``pause_s`` so a dead server is not hammered."""

    def __init__(self, address: str, users: Sequence[str], clients: int, duration_s: float, pause_s: float = 0.02):
        self.address, self.users, self.duration_s, self.pause_s = address, users, duration_s, pause_s
        self.calls: list[list[Call]] = [[] for _ in range(clients)]
        self.t_start = time.monotonic()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        rng = np.random.default_rng(i)
        out, end = self.calls[i], self.t_start + self.duration_s
        limit = int(MAX_CALLS_PER_SECOND_PER_CLIENT * self.duration_s) + 1
        with OwnConnectionClient(self.address) as client:
            while time.monotonic() < end and len(out) < limit:
                user = self.users[int(rng.integers(len(self.users)))]
                t0 = time.monotonic()
                try:
                    version = client.recommend(MODEL, user, K).model_version
                    out.append(Call(t0, time.monotonic(), "OK", version))
                except RecommenderError as err:
                    out.append(Call(t0, time.monotonic(), err.code.name, 0, err.details[:200]))
                    time.sleep(self.pause_s)

    def join(self) -> list[Call]:
        """Wait for every caller (each stops by itself); all calls, by start time."""
        for t in self._threads:
            t.join(self.duration_s + CALL_TIMEOUT_S + 30)
        return sorted((c for calls in self.calls for c in calls), key=lambda c: c.t0)


def summarize(calls: Sequence[Call]) -> dict[str, Any]:
    """Calls, OK, failed by status code (and one failure's details per code), p50/p99 ms of the OK calls, and the
    versions that answered."""
    ok = [c.t1 - c.t0 for c in calls if c.code == "OK"]
    failed = Counter(c.code for c in calls if c.code != "OK")
    versions = Counter(c.version for c in calls if c.code == "OK")
    return {
        "calls": len(calls),
        "ok": len(ok),
        "failed": dict(sorted(failed.items())),
        "p50_ms": round(float(np.percentile(ok, 50)) * 1000, 2) if ok else None,
        "p99_ms": round(float(np.percentile(ok, 99)) * 1000, 2) if ok else None,
        "versions_answered": {str(v): n for v, n in sorted(versions.items())},
        "details": {c.code: c.details for c in reversed(calls) if c.code != "OK"},
    }


def under_load(
    srv: Served, users: tuple[str, ...], clients: int, duration: float, inject: Callable[[float], None]
) -> tuple[list[Call], dict[str, Any]]:
    """``clients`` callers for ``duration`` s while ``inject(load start)`` runs here; the calls and RSS."""
    sampler = RssSampler(srv)
    load = Load(srv.address, users, clients, duration)
    inject(load.t_start)
    calls = load.join()
    return calls, sampler.finish()


def sleep_until(t: float) -> None:
    """Sleep until monotonic time ``t`` (no-op if it passed)."""
    time.sleep(max(0.0, t - time.monotonic()))


def versions(summary: dict[str, Any]) -> str:
    """The versions that answered, e.g. ``v1, v2`` (``none``)."""
    return ", ".join(f"v{v}" for v in sorted(summary["versions_answered"], key=int)) or "none"


def codes(summary: dict[str, Any]) -> str:
    """Failures by code, e.g. ``CANCELLED 60, UNAVAILABLE 8,123`` (``0`` when none)."""
    return ", ".join(f"{code} {n:,}" for code, n in summary["failed"].items()) or "0"


def git_state() -> dict[str, Any]:
    """The commit the run was made on, and the uncommitted paths under server/ (the code being measured)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_server": git("status", "--porcelain", "server").splitlines(),
    }
