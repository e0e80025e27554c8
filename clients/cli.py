"""Client CLI commands: ``recommend``, ``score``, ``similar``, ``models``, ``health``.

A readable table by default, JSON with ``--json``. Exit codes: 0 answered; 1 the server answered
with an error or could not be reached (one line naming the address and the status code); 2 bad
arguments.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from onnxrec.clients.client import RecommenderClient
from onnxrec.clients.errors import RecommenderError
from onnxrec.clients.results import Event, Recommendation


def _connection(func: Any) -> Any:
    options = [
        click.option(
            "--server",
            default="127.0.0.1:50051",
            show_default=True,
            help="host:port, dns:///name:port, or several host:port separated by commas.",
        ),
        click.option("--timeout", type=float, default=5.0, show_default=True, help="Deadline per call (s)."),
        click.option("--token", envvar="ONNXREC_TOKEN", default=None, help="Bearer token (or $ONNXREC_TOKEN)."),
        click.option("--tls", is_flag=True, help="Use TLS (system roots unless --ca-cert)."),
        click.option(
            "--ca-cert",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="PEM CA that signed the server's certificate (implies --tls).",
        ),
        click.option(
            "--client-cert",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="PEM client certificate (mutual TLS; with --client-key).",
        ),
        click.option(
            "--client-key",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="PEM private key of --client-cert.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@contextmanager
def _client(kw: dict[str, Any]) -> Iterator[RecommenderClient]:
    client = RecommenderClient(
        kw["server"],
        timeout=kw["timeout"],
        token=kw["token"],
        tls=kw["tls"],
        ca_cert=kw["ca_cert"],
        client_cert=kw["client_cert"],
        client_key=kw["client_key"],
    )
    try:
        yield client
    except RecommenderError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    finally:
        client.close()


def _no_models(client: RecommenderClient, address: str) -> None:
    """Say that the server has no model loaded, with its health, and exit 1 (the server's state, not
    the caller's arguments)."""
    click.echo(
        f"error: the server at {address} has no model loaded (health: {client.health()}); "
        "it is still loading, or its --repository holds no loadable version",
        err=True,
    )
    sys.exit(1)


def _model(client: RecommenderClient, model: str | None, address: str) -> str:
    if model:
        return model
    names = [m.name for m in client.list_models()]
    if not names:
        _no_models(client, address)
    if len(names) > 1:
        raise click.UsageError(f"the server has {len(names)} models ({', '.join(names)}): pass --model")
    return names[0]


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _print(result: Recommendation, as_json: bool, title: Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result), indent=2))
        return
    click.echo(title())
    width = max([7, *(len(i.item_id) for i in result.items)])
    for rank, item in enumerate(result.items, 1):
        extra = item.metadata.get("title", "")
        click.echo(f"{rank:>3}  {item.item_id:<{width}}  {item.score:>10.4f}  {extra}".rstrip())
        if item.reasons:  # the history items' titles where the version has them (asked with metadata), else ids
            named = ", ".join(r.metadata.get("title") or r.item_id for r in item.reasons)
            click.echo(f"     because you watched {named}")


_request_time = click.option(
    "--request-time",
    type=click.IntRange(min=0),
    default=0,
    help="When the user asks, unix seconds, for a ranker that reads the context (default: the server's clock).",
)


@click.command("recommend")
@click.option("--user", required=True, help="Raw user id.")
@click.option("--model", default=None, help="Model name (default: the server's only model).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="How many items to return.")
@click.option("--history", default=None, help="Recent item ids, oldest first, comma-separated (unknown users).")
@click.option("--exclude", default=None, help="Item ids never to return, comma-separated.")
@click.option("--include-seen", is_flag=True, help="Do not leave out items the user already has.")
@click.option("--metadata/--no-metadata", default=True, show_default=True, help="Ask for item metadata.")
@click.option("--explain", is_flag=True, help="Show the history items that most support each item.")
@click.option(
    "--candidates",
    type=click.IntRange(min=0),
    default=0,
    help="Pipeline versions: items retrieved for the ranker (default: the version's).",
)
@_request_time
@_connection
def recommend_command(
    user: str,
    model: str | None,
    k: int,
    history: str | None,
    exclude: str | None,
    include_seen: bool,
    metadata: bool,
    explain: bool,
    candidates: int,
    request_time: int,
    **kw: Any,
) -> None:
    """Top-k recommendations for one user."""
    with _client(kw) as client:
        name = _model(client, model, kw["server"])
        r = client.recommend(
            name,
            user,
            k,
            history=_split(history),
            exclude=_split(exclude),
            exclude_seen=False if include_seen else None,
            include_metadata=metadata,
            candidates=candidates,
            explain=explain,
            request_time=request_time,
        )
        how = f"{r.source}: {' -> '.join(r.stages)}" if len(r.stages) > 1 else r.source
        _print(r, kw["as_json"], lambda: f"user {user}: {name} version {r.model_version} ({how})")


@click.command("similar")
@click.option("--item", required=True, help="Raw item id.")
@click.option("--model", default=None, help="Model name (default: the server's only model).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="How many items to return.")
@_connection
def similar_command(item: str, model: str | None, k: int, **kw: Any) -> None:
    """Items most similar to one item."""
    with _client(kw) as client:
        name = _model(client, model, kw["server"])
        r = client.similar(name, item, k, include_metadata=True)
        _print(r, kw["as_json"], lambda: f"similar to {item}: {name} version {r.model_version}")


@click.command("score")
@click.option("--user", required=True, help="Raw user id.")
@click.option("--items", "items", required=True, help="Candidate item ids, comma-separated.")
@click.option("--model", default=None, help="Model name (default: the server's only model).")
@_request_time
@_connection
def score_command(user: str, items: str, model: str | None, request_time: int, **kw: Any) -> None:
    """Scores of candidate items for one user, in the order given."""
    ids = _split(items)
    if not ids:
        raise click.UsageError("--items needs at least one item id")
    with _client(kw) as client:
        name = _model(client, model, kw["server"])
        s = client.score(name, user, ids, request_time=request_time)
        if kw["as_json"]:
            click.echo(json.dumps(dataclasses.asdict(s), indent=2))
            return
        click.echo(f"user {user}: {name} version {s.model_version} ({s.source})")
        for item in s.items:
            click.echo(f"{item.item_id}\t{item.score:.6f}")


@click.command("track")
@click.option("--user", required=True, help="Raw user id.")
@click.option("--items", "items", required=True, help="Item ids the user just had, oldest first, comma-separated.")
@click.option("--type", "event_type", default="interaction", show_default=True, help="Event type (view, click, ...).")
@click.option("--model", default=None, help="Model name (default: the server's only model).")
@_connection
def track_command(user: str, items: str, event_type: str, model: str | None, **kw: Any) -> None:
    """Record what a user just did; their next recommendations start from it."""
    ids = _split(items)
    if not ids:
        raise click.UsageError("--items needs at least one item id")
    with _client(kw) as client:
        name = _model(client, model, kw["server"])
        base = int(time.time() * 1000)  # oldest first: one millisecond apart, in the order given
        n = client.track(name, [Event(user, item, event_type, base + j) for j, item in enumerate(ids)])
        if kw["as_json"]:
            click.echo(json.dumps({"accepted": n, "user": user, "model": name}))
        else:
            click.echo(f"tracked {n} event(s) of user {user} ({name})")


@click.command("models")
@_connection
def models_command(**kw: Any) -> None:
    """The models the server has loaded."""
    with _client(kw) as client:
        models = client.list_models()
        if not models and not kw["as_json"]:
            _no_models(client, kw["server"])
        if kw["as_json"]:
            click.echo(json.dumps([dataclasses.asdict(m) for m in models], indent=2))
            return
        for m in models:
            meta = client.model_metadata(m.name)
            click.echo(
                f"{m.name}\t{m.model_type}\tversions {','.join(map(str, m.versions))}\t"
                f"{meta.num_items:,} items\tk_max {meta.k_max}\t{meta.execution_provider}"
            )


@click.command("health")
@_connection
def health_command(**kw: Any) -> None:
    """SERVING or NOT_SERVING (exit status 0 only when SERVING)."""
    with _client(kw) as client:
        status = client.health()
        click.echo(json.dumps({"status": status}) if kw["as_json"] else status)
        if status != "SERVING":
            sys.exit(1)


@click.command("bench")
@click.option("--server", default="127.0.0.1:50051", show_default=True, help="host:port of the server.")
@click.option("--model", default=None, help="Model name (default: the server's only model).")
@click.option(
    "--users-from",
    "users_from",
    required=True,
    type=click.Path(path_type=Path),
    help="User ids to ask for: a model version directory, users.parquet, or a text file.",
)
@click.option(
    "--concurrency",
    default="16",
    show_default=True,
    help="Closed loop: outstanding requests; a comma-separated list runs a sweep.",
)
@click.option("--rate", default=None, help="Open loop: Poisson arrivals per second (list = sweep).")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds measured per level.")
@click.option("--warmup", type=float, default=2.0, show_default=True, help="Seconds of load not measured.")
@click.option(
    "--processes", type=click.IntRange(min=1), default=1, show_default=True, help="Load-generating processes."
)
@click.option(
    "--batch-users",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="> 0: RecommendBatch with this many users per call.",
)
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="How many items to return.")
@click.option("--explain", is_flag=True, help="Ask for each item's reasons (explain on every Recommend).")
@click.option("--metrics-url", default=None, help="The server's /metrics URL, for batch size and queue time.")
@click.option("--token", envvar="ONNXREC_TOKEN", default=None, help="Bearer token (or $ONNXREC_TOKEN).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="PNG of latency against load.")
def bench_command(
    server: str,
    model: str | None,
    users_from: Path,
    concurrency: str,
    rate: str | None,
    duration: float,
    warmup: float,
    processes: int,
    batch_users: int,
    k: int,
    explain: bool,
    metrics_url: str | None,
    token: str | None,
    as_json: bool,
    plot: Path | None,
) -> None:
    """Load-test a server: QPS, latency percentiles, errors, server batch size and queue time."""
    from onnxrec.clients.bench import BenchConfig, load_user_ids, plot_sweep, run_bench

    try:
        levels = [float(v) for v in (rate or concurrency).split(",") if v.strip()]
    except ValueError as exc:
        raise click.UsageError(f"--concurrency/--rate take numbers, not {rate or concurrency!r}") from exc
    if not levels or min(levels) <= 0:
        raise click.UsageError("--concurrency/--rate need positive values")
    users = load_user_ids(users_from)
    if model is None:
        with _client(
            {
                "server": server,
                "timeout": 5.0,
                "token": token,
                "tls": False,
                "ca_cert": None,
                "client_cert": None,
                "client_key": None,
            }
        ) as client:
            model = _model(client, None, server)
    results = []
    for level in levels:
        cfg = BenchConfig(
            server=server,
            model=model,
            users=users,
            k=k,
            concurrency=None if rate else int(level),
            rate=level if rate else None,
            duration_s=duration,
            warmup_s=warmup,
            processes=processes,
            batch_users=batch_users,
            explain=explain,
            token=token,
        )
        r = run_bench(cfg, metrics_url)
        results.append(r)
        if not as_json:
            batch = (
                f"  server batch {r.server_mean_batch:.1f}, queue {r.server_mean_queue_ms:.2f} ms"
                if (r.server_mean_batch is not None and r.server_mean_queue_ms is not None)
                else ""
            )
            click.echo(
                f"{r.mode} {r.offered:g}: {r.qps:,.0f} req/s ({r.users_per_s:,.0f} users/s), p50 "
                f"{r.p50_ms:.2f} ms, p90 {r.p90_ms:.2f}, p99 {r.p99_ms:.2f}, p99.9 {r.p999_ms:.2f}; "
                f"errors {r.errors or 'none'}{batch}"
            )
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    if plot is not None:
        plot_sweep(results, plot, f"onnxrec serve, model {model}")
