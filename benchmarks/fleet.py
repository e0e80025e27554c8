"""A fleet of replicas under load: failover and a rolling model update, with and without shared Redis.

Three ``onnxrec serve`` processes on 127.0.0.1 (each with its own copy of the model repository, as pods
with their own volume would have), and ``--clients`` callers of Recommend through the Python client over
all three addresses (client-side round robin; retries on UNAVAILABLE from the client's service config)
for ``--duration`` seconds. During the load, on a timeline of fractions of the duration:

* 0.20: replica B is SIGKILLed; 0.40: B is started again on the same port;
* 0.55 on: version 2 is rolled out one replica at a time (copied into A's repository; once A answers
  from it, into B's; then C's);
* with ``--redis``: every replica keeps users' events in one shared ``redis-server``, and a checker
  tracks events of new users on one replica and asks another for their recommendations, which must
  start from those events (stages ``events, retrieve``).

Reported: calls, failed calls by code, p50/p99 overall and p99 in the fault window (kill to restart + 2 s),
the versions that answered, and the events checks. ``run_fleet`` is what ``tests/test_fleet.py`` runs
(shorter); ``main`` writes ``benchmarks/results/fleet.json``.

    python benchmarks/fleet.py --repository REPO --model ml100k [--duration 60] [--clients 64] [--redis]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxrec.clients import RecommenderClient
from onnxrec.clients.errors import RecommenderError
from onnxrec.exporter.repository import list_versions
from onnxrec.server.process import launch_server

CALL_TIMEOUT_S = 10.0


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def add_version(repo: Path, model: str, version: int, source: Path) -> None:
    """Copy the version directory ``source`` into ``repo/model/version`` (written aside, renamed in)."""
    staging = repo / model / f".incoming-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    staging.rename(repo / model / str(version))


@dataclass
class Replica:
    """One ``onnxrec serve`` on a fixed port, with its own repository."""

    name: str
    repo: Path
    port: int
    log: Path
    extra: Sequence[str]
    proc: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["--port", str(self.port), "--reload-interval-s", "0.5", "--grace-s", "5", *self.extra]
        self.proc, _ = launch_server(self.repo, self.log, args, env={"OMP_WAIT_POLICY": "PASSIVE"})

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def answers(self, model: str, user: str, version: int = 0) -> bool:
        """Whether this replica alone answers ``user`` now (from ``version`` when given)."""
        with RecommenderClient(self.address, timeout=5.0, retries=0) as client:
            try:
                return client.recommend(model, user, 5).model_version >= version
            except RecommenderError:
                return False


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A ``redis-server`` on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make redis)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
    with (workdir / "redis.log").open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 30, "redis-server listening")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


class Callers:
    """``n`` threads calling Recommend through one client over every replica until ``stop``."""

    def __init__(self, addresses: Sequence[str], model: str, users: Sequence[str], n: int) -> None:
        self.addresses, self.model, self.users = list(addresses), model, list(users)
        self.calls: list[list[tuple[float, float, str, int]]] = [[] for _ in range(n)]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        rng = np.random.default_rng(i)
        out = self.calls[i]
        with RecommenderClient(self.addresses, timeout=CALL_TIMEOUT_S, retries=4) as client:
            while not self.stop.is_set():
                user = self.users[int(rng.integers(len(self.users)))]
                t0 = time.monotonic()
                try:
                    version = client.recommend(self.model, user, 10).model_version
                    out.append((t0, time.monotonic(), "OK", version))
                except RecommenderError as err:
                    out.append((t0, time.monotonic(), err.code.name, 0))
                    time.sleep(0.05)

    def finish(self) -> list[tuple[float, float, str, int]]:
        self.stop.set()
        for t in self.threads:
            t.join(CALL_TIMEOUT_S + 30)
        return sorted(c for calls in self.calls for c in calls)


def check_events(
    replicas: Sequence[Replica], model: str, items: Sequence[str], stop: threading.Event
) -> dict[str, int]:
    """Until ``stop``: track 2 items of a new user on one replica, then ask the next replica; count the
    answers that start from the events (stages events, ...) and those that do not or fail."""
    from onnxrec.clients import Event

    seen: Counter[str] = Counter()
    j = 0
    while not stop.is_set():
        a, b = replicas[j % len(replicas)], replicas[(j + 1) % len(replicas)]
        user = f"fleet-new-{j}"
        try:
            with (
                RecommenderClient(a.address, timeout=5.0, retries=0) as ca,
                RecommenderClient(b.address, timeout=5.0, retries=0) as cb,
            ):
                ca.track(model, [Event(user, items[j % len(items)]), Event(user, items[(j + 7) % len(items)])])
                answer = cb.recommend(model, user, 5)
            seen["from_events" if answer.stages[:1] == ("events",) else "not_from_events"] += 1
        except RecommenderError as err:  # a replica down (killed, restarting): tried again later
            seen[f"skipped_{err.code.name}"] += 1
        j += 1
        time.sleep(0.1)
    return dict(seen)


def run_fleet(repo: Path, model: str, work: Path, duration: float, clients: int, redis: bool = False) -> dict[str, Any]:
    """The scenario of the module docstring on copies of ``repo``'s latest ``model`` version; the report."""
    source = repo / model / str(list_versions(repo / model)[-1])
    from onnxrec.server.loaded_model import LoadedModel

    loaded = LoadedModel(source)
    users = [str(u) for u in loaded.user_ids if u is not None][:500]
    items = loaded.item_id_text[:50]
    with ExitStack() as stack:
        extra: list[str] = []
        if redis:
            extra = ["--state", stack.enter_context(redis_server(work))]
        replicas = []
        for name in "ABC":
            (work / name / model).mkdir(parents=True)
            add_version(work / name, model, 1, source)
            replicas.append(Replica(name, work / name, free_port(), work / f"{name}.log", extra))
            replicas[-1].start()
            stack.callback(replicas[-1].stop)
        for r in replicas:
            wait_for(lambda r=r: r.answers(model, users[0]), 120, f"replica {r.name} answering")
        report: dict[str, Any] = {"model": model, "duration_s": duration, "clients": clients, "redis": redis}
        stop_checker = threading.Event()
        checker: dict[str, dict[str, int]] = {}
        if redis:
            t = threading.Thread(
                target=lambda: checker.update(events=check_events(replicas, model, items, stop_checker))
            )
            t.start()
        load = Callers([r.address for r in replicas], model, users, clients)
        t0 = load_start = time.monotonic()
        marks = _timeline(replicas, model, users[0], source, duration, t0)
        while time.monotonic() < load_start + duration:
            time.sleep(0.1)
        calls = load.finish()
        stop_checker.set()
        if redis:
            t.join(30)
        report |= _summary(calls, marks, t0) | checker
        report["marks_s"] = {k: round(v - t0, 2) for k, v in marks.items()}
        report["versions_on_disk"] = {r.name: list_versions(r.repo / model) for r in replicas}
    return report


def _timeline(
    replicas: list[Replica], model: str, user: str, source: Path, duration: float, t0: float
) -> dict[str, float]:
    """Kill B, restart it, then roll version 2 out replica by replica; the monotonic time of each step."""
    marks: dict[str, float] = {}

    def at(fraction: float) -> None:
        time.sleep(max(0.0, t0 + fraction * duration - time.monotonic()))

    at(0.20)
    replicas[1].kill()
    marks["kill_B"] = time.monotonic()
    at(0.40)
    replicas[1].start()
    wait_for(lambda: replicas[1].answers(model, user), 120, "replica B answering again")
    marks["B_back"] = time.monotonic()
    at(0.55)
    for r in replicas:
        add_version(r.repo, model, 2, source)
        wait_for(lambda r=r: r.answers(model, user, version=2), 120, f"replica {r.name} serving version 2")
        marks[f"{r.name}_on_v2"] = time.monotonic()
    return marks


def _summary(calls: list[tuple[float, float, str, int]], marks: dict[str, float], t0: float) -> dict[str, Any]:
    ok = [t1 - s for s, t1, code, _ in calls if code == "OK"]
    fault = [t1 - s for s, t1, code, _ in calls if code == "OK" and marks["kill_B"] <= s <= marks["B_back"] + 2.0]
    return {
        "calls": len(calls),
        "ok": len(ok),
        "failed": dict(Counter(code for _, _, code, _ in calls if code != "OK")),
        "p50_ms": round(float(np.percentile(ok, 50)) * 1000, 2) if ok else None,
        "p99_ms": round(float(np.percentile(ok, 99)) * 1000, 2) if ok else None,
        "p99_fault_window_ms": round(float(np.percentile(fault, 99)) * 1000, 2) if fault else None,
        "calls_per_s": round(len(calls) / max(1e-9, (calls[-1][1] - calls[0][0]) if calls else 1), 1),
        "versions_answered": {
            str(v): n for v, n in sorted(Counter(v for _, _, code, v in calls if code == "OK").items())
        },
    }


def main() -> None:
    """Run the scenario (with and/or without Redis) and write the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, required=True)
    ap.add_argument("--model", default="ml100k")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--redis", action="store_true", help="also run it with the replicas sharing one redis-server")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "fleet.json")
    args = ap.parse_args()
    runs = []
    for redis in (False, True) if args.redis else (False,):
        with tempfile.TemporaryDirectory(prefix="onnxrec-fleet-") as tmp:
            runs.append(run_fleet(args.repository, args.model, Path(tmp), args.duration, args.clients, redis))
            print(json.dumps(runs[-1]), file=sys.stderr)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
