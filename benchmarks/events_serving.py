"""What a store lookup and ``explain`` cost a served Recommend (issue #18), side by side in one run.

Three ``onnxrec serve`` processes on one repository, up at once: ``--state off``, ``--state memory`` and
``--state redis://127.0.0.1:PORT/0`` (a ``redis-server --save '' --appendonly no`` this script starts on
a free port; left out when there is none). On the memory and Redis servers, the first user of the
version is given 3 tracked items (the version's 3 most popular items they have not seen), so their
Recommend runs the history graph; the second user has none (the lookup finds nothing, the model graph
answers). Each (server, user) pair is measured without and with ``explain`` at each concurrency, one
after the other on the same server, ``--rounds`` times in rotation, with onnxrec's own load generator
(closed loop, every call for that one user); medians over the rounds. Per point: calls/s, p50/p99 ms,
server CPU ms per call.

    python benchmarks/events_serving.py --repository REPO [--model NAME] [--rounds 3] [--duration 6]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from serving import answers_k, free_port, latest_version, loadavg, measure, start_server  # noqa: E402

from onnxrec.clients import Event, RecommenderClient  # noqa: E402
from onnxrec.server.loaded_model import LoadedModel  # noqa: E402

KEYS = ("qps", "p50_ms", "p99_ms", "server_cpu_s_per_1k_req")


@contextmanager
def redis_server(tmp: Path) -> Iterator[str | None]:
    """A throwaway redis-server on a free loopback port: its URL, or None when there is no redis-server."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    """Start the servers, track the first user's items, measure every pair in rotation, report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, required=True)
    ap.add_argument("--model", default="tt")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "events_serving.json")
    args = ap.parse_args()
    conc = [int(c) for c in args.concurrency.split(",")]
    version = latest_version(args.repository, args.model)
    model = LoadedModel(version)
    with_events, without = str(model.user_ids[0]), str(model.user_ids[1])
    seen = set(model.seen(0).tolist())
    tracked = [model.item_id_text[int(i)] for i in model.popular if int(i) not in seen][:3]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/events_serving.py", *sys.argv[1:]]),
        "version": str(version),
        "users": {"with_events": with_events, "tracked": tracked, "without_events": without},
        "loadavg_before": loadavg(),
    }
    cmd = [sys.executable, "-m", "onnxrec", "serve", "--repository", str(args.repository), "--device", "cpu"]
    samples: dict[str, dict[int, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="onnxrec-events-serving-") as tmp, ExitStack() as stack:
        redis_url = stack.enter_context(redis_server(Path(tmp)))
        stores = {"off": "off", "memory": "memory", **({"redis": redis_url} if redis_url else {})}
        report["redis"] = redis_url or "not run: no redis-server"
        servers = {}
        for name, state in stores.items():
            log = Path(tmp) / f"{name}.log"
            servers[name] = stack.enter_context(
                start_server(name, [*cmd, "--port", "0", "--state", state], log, answers_k(args.model, without))
            )
            if name != "off":
                with RecommenderClient(servers[name].address) as client:
                    events = [Event(with_events, item, "view", 1000 + j) for j, item in enumerate(tracked)]
                    client.track(args.model, events)
        pairs = [("off", with_events, "the model graph (no lookup)")]
        for name in stores:
            if name != "off":
                pairs.append((name, with_events, "3 events: the history graph"))
                pairs.append((name, without, "lookup finds nothing"))
        report["stages"] = {}  # what each measured pair's answer went through, checked once before measuring
        for server, user, _what in pairs:
            with RecommenderClient(servers[server].address) as client:
                r = client.recommend(args.model, user, 10, explain=True)
            if r.stages[-1] != "explain" or not any(i.reasons for i in r.items):
                raise SystemExit(f"{server} user {user}: no reasons in an explained answer ({r.stages})")
            report["stages"][f"{server}|{user}"] = r.stages
        labels = {}
        for server, user, what in pairs:
            for explain in (False, True):
                labels[f"{server}|{user}|{explain}"] = (server, user, what, explain)
        samples = {key: {c: [] for c in conc} for key in labels}
        for _ in range(args.rounds):
            for c in conc:
                for key, (server, user, _what, explain) in labels.items():
                    p = measure(
                        servers[server],
                        (user,),
                        c,
                        args.duration,
                        args.warmup,
                        min(2, c),
                        model=args.model,
                        explain=explain,
                    )
                    if p["errors"]:
                        raise SystemExit(f"{key} c{c}: errors {p['errors']}")
                    samples[key][c].append({k: float("nan") if p[k] is None else float(p[k]) for k in KEYS})
                    print(
                        f"{key} c{c}: {p['qps']:,.0f} calls/s, p50 {p['p50_ms']:.2f} p99 {p['p99_ms']:.2f} ms",
                        file=sys.stderr,
                    )
    report["loadavg_after"] = loadavg()
    report["points"] = {
        key: {
            "server": labels[key][0],
            "user": labels[key][1],
            "what": labels[key][2],
            "explain": labels[key][3],
            **{str(c): {k: statistics.median(s[k] for s in pts) for k in KEYS} for c, pts in by.items()},
        }
        for key, by in samples.items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    head = " | ".join(f"c{c} p50 / p99 ms" for c in conc)
    print(f"| server | user | explain | {head} | calls/s {' / '.join(f'c{c}' for c in conc)} | server CPU ms / call |")
    print("|---|---|---|" + "---|" * len(conc) + "---:|---:|")
    for point in report["points"].values():
        lat = " | ".join(f"{point[str(c)]['p50_ms']:.2f} / {point[str(c)]['p99_ms']:.2f}" for c in conc)
        qps = " / ".join(f"{point[str(c)]['qps']:,.0f}" for c in conc)
        cpu = " / ".join(f"{point[str(c)]['server_cpu_s_per_1k_req']:.2f}" for c in conc)
        user = f"{point['user']}, {point['what']}"
        print(f"| {point['server']} | {user} | {'yes' if point['explain'] else 'no'} | {lat} | {qps} | {cpu} |")


if __name__ == "__main__":
    main()
