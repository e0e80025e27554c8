"""Reliability under faults (issue #14): a real ``onnxrec serve`` on 127.0.0.1 per scenario, client threads
calling Recommend while a fault is injected; per scenario the calls sent, OK, failed by gRPC status code,
p50/p99 of the OK calls and the server's RSS (VmRSS of its process tree, every 0.5 s) before, at peak and
after. Nothing is asserted: the outcome of each fault is recorded.

Scenarios (``--only`` names): ``reload`` (a new version copied in atomically every few seconds, 64 clients),
``broken`` (a version with flipped graph bytes, one missing a file, one whose graph onnxruntime cannot read,
then a good one), ``deleted`` (the served version's directory deleted with an older one present) and
``deleted-only`` (the only version deleted), ``sigterm`` (calls in flight at SIGTERM and after it),
``sigkill`` (``--workers 2``, one worker SIGKILLed), ``queue`` (``--max-queue-size 4``, 64 clients),
``slow-readers`` (runs ``benchmarks/slow_readers.py`` when it exists), ``idle`` (1,000 idle HTTP/2
connections beside 16 clients, p99 against the same load without them), ``soak`` (16 clients for
``--soak-s``, RSS every 5 s).

    python benchmarks/reliability.py            # full run: about 7 minutes on 2 cores (3 of them the soak)
    python benchmarks/reliability.py --quick    # smoke run: 5 s a scenario, a 20 s soak; about 2-3 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from fault_common import (  # noqa: E402
    MODEL,
    Call,
    Load,
    RssSampler,
    add_version,
    answers,
    build_repository,
    codes,
    fresh_repo,
    git_state,
    health,
    open_idle,
    rejected_in_log,
    rss_mb,
    serve,
    sleep_until,
    still_open,
    summarize,
    under_load,
    versions,
)
from serving import free_port, latest_version, loadavg, process_tree  # noqa: E402

from onnxrec.clients.bench import load_user_ids  # noqa: E402

REPO = BENCH_DIR.parent
RELOAD = ("--reload-interval-s", "0.5")


@dataclass
class Ctx:
    """What every scenario needs: the exported model, user ids, a scratch folder and the durations."""

    base: Path
    users: tuple[str, ...]
    tmp: Path
    quick: bool
    soak_s: float

    def dur(self, full: float) -> float:
        """A scenario's load duration: ``full`` seconds, or 5 s with ``--quick``."""
        return 5.0 if self.quick else full

    def cmd(self, name: str) -> str:
        """The command that runs scenario ``name`` alone."""
        return f"python benchmarks/reliability.py --only {name}" + (" --quick" if self.quick else "")


def row(
    ctx: Ctx, name: str, args: list[str], calls: list[Call], rss: dict[str, Any], outcome: str, **extra: Any
) -> dict[str, Any]:
    """One scenario's record."""
    return {
        "fault": name,
        "command": ctx.cmd(name),
        "serve_args": args,
        **summarize(calls),
        "rss": rss,
        "outcome": outcome,
        **extra,
    }


def reload_under_load(ctx: Ctx) -> dict[str, Any]:
    """64 clients while a new good version is copied in (temp dir, then rename) every few seconds."""
    repo = fresh_repo(ctx.base, ctx.tmp / "reload")
    every = 1.5 if ctx.quick else 3.0
    added: list[str] = []
    with serve(repo, ctx.tmp / "reload.log", ctx.users[0], RELOAD) as srv:

        def inject(t0: float) -> None:
            while time.monotonic() + every < t0 + ctx.dur(30):
                time.sleep(every)
                added.append(add_version(repo, len(added) + 2, repo / MODEL / "1").name)

        calls, rss = under_load(srv, ctx.users, 64, ctx.dur(30), inject)
    answered = versions(summarize(calls))
    return row(ctx, "reload", [*RELOAD], calls, rss, f"{len(added)} versions copied in; answered by {answered}")


def broken_versions(ctx: Ctx) -> dict[str, Any]:
    """64 clients while v2 (flipped bytes in recommend.onnx), v3 (items.parquet missing), v4 (truncated graph
    whose hash was rewritten) and then a good v5 appear; the old version must keep serving."""
    repo = fresh_repo(ctx.base, ctx.tmp / "broken")
    duration = ctx.dur(20)
    with serve(repo, ctx.tmp / "broken.log", ctx.users[0], RELOAD) as srv:

        def inject(t0: float) -> None:
            for i, tamper in enumerate(("flip", "missing", "corrupt", ""), start=1):
                sleep_until(t0 + i * duration / 5)
                add_version(repo, i + 1, repo / MODEL / "1", tamper)

        calls, rss = under_load(srv, ctx.users, 64, duration, inject)
        rejected = rejected_in_log(srv.log)
    answered = summarize(calls)
    outcome = (
        f"{len(rejected)} rejections logged; answered by {versions(answered)}; "
        f"good v5 served: {'5' in answered['versions_answered']}"
    )
    return row(ctx, "broken", [*RELOAD], calls, rss, outcome, rejected=rejected)


def deleted_version(ctx: Ctx, only: bool) -> dict[str, Any]:
    """The served version's directory deleted under load: with v1 still there (``only`` False) or alone."""
    name = "deleted-only" if only else "deleted"
    repo = fresh_repo(ctx.base, ctx.tmp / name, (1,) if only else (1, 2))
    served_dir, t_del = latest_version(repo, MODEL), [0.0]
    with serve(repo, ctx.tmp / f"{name}.log", ctx.users[0], RELOAD) as srv:

        def inject(t0: float) -> None:
            sleep_until(t0 + ctx.dur(15) / 3)
            t_del[0] = time.monotonic()
            shutil.rmtree(served_dir)

        calls, rss = under_load(srv, ctx.users, 64, ctx.dur(15), inject)
        status = health(srv.address)
    after = summarize([c for c in calls if c.t0 >= t_del[0] + 1.0])  # a reload interval and then some
    outcome = (
        f"deleted v{served_dir.name}; calls from 1 s after: {after['ok']} OK, failed {codes(after)}, "
        f"answered by {versions(after)}; health after: {status}"
    )
    return row(ctx, name, [*RELOAD], calls, rss, outcome, after_deletion=after, health_after=status)


def sigterm(ctx: Ctx) -> dict[str, Any]:
    """SIGTERM to the server under 64 clients: calls in flight at the signal vs calls started after it."""
    t_sig = [0.0]
    exited: list[float | None] = [None, None]
    with serve(ctx.base, ctx.tmp / "sigterm.log", ctx.users[0]) as srv:

        def inject(t0: float) -> None:
            sleep_until(t0 + ctx.dur(10) * 0.4)
            t_sig[0] = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            while srv.proc.poll() is None and time.monotonic() < t0 + ctx.dur(10) + 30:
                time.sleep(0.05)
            exited[:] = [srv.proc.poll(), round(time.monotonic() - t_sig[0], 2)]

        calls, rss = under_load(srv, ctx.users, 64, ctx.dur(10), inject)
    in_flight = summarize([c for c in calls if c.t0 < t_sig[0] <= c.t1])
    after = summarize([c for c in calls if c.t0 >= t_sig[0]])
    failed_at = [c.t1 - t_sig[0] for c in calls if c.t0 < t_sig[0] <= c.t1 and c.code != "OK"]
    in_flight["failed_within_ms"] = round(max(failed_at) * 1000, 1) if failed_at else None
    within = f" (within {in_flight['failed_within_ms']} ms of it)" if failed_at else ""
    outcome = (
        f"in flight at SIGTERM: {in_flight['calls']} calls, failed {codes(in_flight)}{within}; after: "
        f"{after['calls']} calls, {after['ok']} OK, failed {codes(after)}; exit status {exited[0]} "
        f"{exited[1]} s after the signal"
    )
    return row(ctx, "sigterm", [], calls, rss, outcome, in_flight=in_flight, after_signal=after, exit=exited)


def worker_sigkill(ctx: Ctx) -> dict[str, Any]:
    """``--workers 2`` on a fixed port: SIGKILL one worker under 64 clients (each on its own connection)."""
    args = ["--workers", "2", "--port", str(free_port())]
    with serve(ctx.base, ctx.tmp / "sigkill.log", ctx.users[0], args) as srv:
        deadline = time.monotonic() + 90  # both workers up: 8 fresh connections in a row answered
        while not all(answers(srv.address, u) for u in ctx.users[:8]) and time.monotonic() < deadline:
            time.sleep(0.5)
        workers_before = [p for p in srv.tree() if p != srv.proc.pid]
        victim = min(workers_before)

        def inject(t0: float) -> None:
            sleep_until(t0 + ctx.dur(20) * 0.3)
            os.kill(victim, signal.SIGKILL)

        calls, rss = under_load(srv, ctx.users, 64, ctx.dur(20), inject)
        fresh_ok = sum(answers(srv.address, u) for u in ctx.users[:16])
        workers_after = [p for p in srv.tree() if p != srv.proc.pid]
        parent_alive = srv.proc.poll() is None
    outcome = (
        f"killed worker {victim} of {workers_before}; after: port answered {fresh_ok}/16 fresh connections, "
        f"workers {workers_after} (restarted: {bool(set(workers_after) - set(workers_before))}), "
        f"parent alive: {parent_alive}"
    )
    extra = {"workers_before": workers_before, "workers_after": workers_after, "fresh_ok_of_16": fresh_ok}
    return row(ctx, "sigkill", args, calls, rss, outcome, **extra)


def queue_full(ctx: Ctx) -> dict[str, Any]:
    """``--max-queue-size 4`` under 64 clients, first as is, then with ``--inline-max-us 0`` (small batches
    otherwise run on the event loop, where no request can queue behind them): RESOURCE_EXHAUSTED counted,
    the server alive afterwards."""
    args = ["--max-queue-size", "4"]
    with serve(ctx.base, ctx.tmp / "queue-inline.log", ctx.users[0], args) as srv:
        inline = summarize(Load(srv.address, ctx.users, 64, ctx.dur(10)).join())
    args = [*args, "--inline-max-us", "0"]
    with serve(ctx.base, ctx.tmp / "queue.log", ctx.users[0], args) as srv:
        calls, rss = under_load(srv, ctx.users, 64, ctx.dur(15), lambda t0: None)
        alive = srv.proc.poll() is None and answers(srv.address, ctx.users[0])
    exhausted = summarize(calls)["failed"].get("RESOURCE_EXHAUSTED", 0)
    outcome = (
        f"{exhausted} RESOURCE_EXHAUSTED; answers afterwards: {alive}; without --inline-max-us 0: "
        f"{inline['failed'].get('RESOURCE_EXHAUSTED', 0)} of {inline['calls']} calls"
    )
    return row(ctx, "queue", args, calls, rss, outcome, inline_batches=inline)


def slow_readers(ctx: Ctx) -> dict[str, Any]:
    """``benchmarks/slow_readers.py`` (another script) when it exists, its JSON included."""
    script, out = BENCH_DIR / "slow_readers.py", ctx.tmp / "slow_readers.json"
    base = {"fault": "slow-readers", "command": f"python benchmarks/slow_readers.py{' --quick' * ctx.quick}"}
    if not script.exists():
        return {**base, "outcome": "see benchmarks/slow_readers.py (not there at this run)"}
    cmd = [sys.executable, str(script), *(["--quick"] if ctx.quick else []), "--out", str(out)]
    try:
        done = subprocess.run(
            cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=300 if ctx.quick else 900
        )
    except subprocess.TimeoutExpired:
        return {**base, "outcome": "slow_readers.py ran past its time limit"}
    result = json.loads(out.read_text()) if out.is_file() else None
    if result is None and done.stdout.strip().startswith("{"):  # a script that prints its JSON instead
        result = json.loads(done.stdout)
    outcome = f"slow_readers.py exit status {done.returncode}; its JSON under 'slow_readers'"
    return {**base, "outcome": outcome, "slow_readers": result, "stderr_tail": done.stderr[-1500:]}


def idle_connections(ctx: Ctx, n: int = 1000) -> dict[str, Any]:
    """16 clients without, then with ``n`` idle HTTP/2 connections open: failures, p99 both ways, RSS."""
    duration = ctx.dur(15)
    with serve(ctx.base, ctx.tmp / "idle.log", ctx.users[0]) as srv:
        Load(srv.address, ctx.users, 16, min(3.0, duration / 2)).join()  # warm-up, not counted
        sampler = RssSampler(srv)
        without = summarize(Load(srv.address, ctx.users, 16, duration).join())
        rss_no_idle = sampler.samples[-1][1]
        socks = open_idle(srv.address, n)
        try:
            calls = Load(srv.address, ctx.users, 16, duration).join()
            open_at_end, rss_idle = still_open(socks), rss_mb(srv.tree())
        finally:
            for s in socks:
                s.close()
        rss = {**sampler.finish(), "with_idle_open_mb": round(rss_idle, 1)}
        alive = srv.proc.poll() is None and answers(srv.address, ctx.users[0])
    with_idle = summarize(calls)
    outcome = (
        f"{len(socks)} opened, {open_at_end} still open at the end; p99 {with_idle['p99_ms']} ms vs "
        f"{without['p99_ms']} ms without; RSS {rss_no_idle:.0f} MB before opening, {rss_idle:.0f} MB with them "
        f"open; answers afterwards: {alive}"
    )
    return row(ctx, "idle", [], calls, rss, outcome, without_idle=without, opened=len(socks))


def soak(ctx: Ctx) -> dict[str, Any]:
    """16 clients for ``--soak-s`` seconds; RSS every 5 s: the series (start, every 30 s, end) and its slope."""
    import numpy as np

    with serve(ctx.base, ctx.tmp / "soak.log", ctx.users[0]) as srv:
        sampler = RssSampler(srv, interval=5.0)
        calls = Load(srv.address, ctx.users, 16, ctx.soak_s).join()
        rss = sampler.finish(settle_s=0.0)
    t = np.array([s[0] for s in sampler.samples])
    mb = np.array([s[1] for s in sampler.samples])
    marks = [*np.arange(0.0, t[-1], 30.0), t[-1]]
    series = [
        (round(float(t[i]), 1), round(float(mb[i]), 1)) for i in sorted({int(np.abs(t - m).argmin()) for m in marks})
    ]
    slope = float(np.polyfit(t, mb, 1)[0]) * 60 if len(t) > 2 else None
    rss.update({"series_s_mb": series, "all_samples": sampler.samples, "slope_mb_per_min": slope})
    outcome = f"RSS over time {series}; slope {slope:+.2f} MB/min" if slope is not None else "too short for a slope"
    return {**row(ctx, "soak", [], calls, rss, outcome), "command": ctx.cmd("soak") + f" --soak-s {ctx.soak_s:g}"}


SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "reload": reload_under_load,
    "broken": broken_versions,
    "deleted": lambda ctx: deleted_version(ctx, only=False),
    "deleted-only": lambda ctx: deleted_version(ctx, only=True),
    "sigterm": sigterm,
    "sigkill": worker_sigkill,
    "queue": queue_full,
    "slow-readers": slow_readers,
    "idle": idle_connections,
    "soak": soak,
}


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per scenario."""
    lines = [
        "| fault | command | calls | OK | failed by code | p99 ms | RSS before/peak/after MB | outcome |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    num = lambda x: "-" if x is None else f"{x:,}"  # noqa: E731
    for r in rows:
        failed = codes(r) if "calls" in r else "-"
        rss = r.get("rss")
        mem = f"{rss['before_mb']:.0f} / {rss['peak_mb']:.0f} / {rss['after_mb']:.0f}" if rss else "-"
        p99 = r.get("p99_ms")
        lines.append(
            f"| {r['fault']} | `{r['command']}` | {num(r.get('calls'))} | {num(r.get('ok'))} | {failed} "
            f"| {'-' if p99 is None else f'{p99:.1f}'} | {mem} | {r['outcome'].replace('|', '/')} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse the options, build the model repository once, run the scenarios, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("ONNXREC_SHARED_DATA", REPO.parent / "shared" / "data")) / "ml-100k"
    ap.add_argument("--data", type=Path, default=data, help="MovieLens-100K (default: %(default)s)")
    ap.add_argument("--repository", type=Path, help="an existing repository holding ml100k/VERSION (skips training)")
    ap.add_argument("--quick", action="store_true", help="smoke run: about 5 s a scenario and a 20 s soak")
    ap.add_argument("--only", default="", help=f"comma-separated scenarios of: {', '.join(SCENARIOS)}")
    ap.add_argument("--soak-s", type=float, help="soak duration in seconds (default 180; 20 with --quick)")
    ap.add_argument("--out", type=Path, help="JSON report (default benchmarks/results/reliability[_quick].json)")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    soak_s = args.soak_s or (20.0 if args.quick else 180.0)
    out = args.out or REPO / "benchmarks" / "results" / f"reliability{'_quick' if args.quick else ''}.json"
    t_begin = time.monotonic()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python benchmarks/reliability.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "loadavg_before": loadavg()},
        "git": git_state(),
        "notes": "clients: the Python client (RecommenderClient, retries 0, 5 s deadline), one connection each; "
        "p50/p99 of the OK calls; RSS: VmRSS summed over the server's process tree, every 0.5 s",
        "scenarios": [],
    }

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_begin:6.1f}s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="onnxrec-reliability-") as tmp_s:
        tmp = Path(tmp_s)
        if args.repository:
            base = args.repository
        else:
            log(f"training a 1-epoch MF model on {args.data} and exporting it")
            base = build_repository(args.data, tmp / "base" / "repo")
        users = load_user_ids(latest_version(base, MODEL))
        ctx = Ctx(base, users, tmp, args.quick, soak_s)
        for name in names:
            log(f"{name} ...")
            try:
                result = SCENARIOS[name](ctx)
            except Exception as exc:  # one broken scenario must not stop the others: record it
                result = {"fault": name, "command": ctx.cmd(name), "outcome": f"scenario failed: {exc!r}"[:600]}
            log(f"{name}: {result['outcome']}")
            report["scenarios"].append(result)
            report["wall_s"] = round(time.monotonic() - t_begin, 1)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
        leftover = [p for p in process_tree(os.getpid()) if p != os.getpid()]
        if leftover:
            log(f"warning: child processes still running: {leftover}")
    report["machine"]["loadavg_after"] = loadavg()
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report["scenarios"]))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
