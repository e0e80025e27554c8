"""``create_server`` and ``serve``: the serving stage's entry points.

``create_server(config)`` builds and starts a grpc.aio server bound to ``config.host:config.port``
(port 0 picks a free one, for tests) and returns it with the port; the models load in the
background and the standard health service says NOT_SERVING until they are loaded and warmed up.
``serve(config)`` runs one until SIGTERM or SIGINT: health goes NOT_SERVING, in-flight requests get
``grace_s`` to finish, then the process exits. With ``workers > 1`` a supervisor (supervisor.py) forks
that many processes before any gRPC server or onnxruntime session exists and restarts the ones that die;
they share the port with SO_REUSEPORT, which a single worker never sets, so a second server cannot join
a port in use ("address in use", exit 2). What the server holds for clients that do not read their
answers is bounded (transport.py, flow.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from onnxrec.errors import ConfigError
from onnxrec.server.config import ServerConfig
from onnxrec.server.flow import AnswerBudget
from onnxrec.server.interceptors import ClientCertInterceptor, TokenAuthInterceptor
from onnxrec.server.loaded_model import resolve_device
from onnxrec.server.metrics import ServerMetrics
from onnxrec.server.registry import ModelRegistry, Snapshot
from onnxrec.server.servicer import RecommenderServicer
from onnxrec.server.shutdown import SHUTTING_DOWN, ShutdownGate
from onnxrec.server.status import status_for
from onnxrec.server.transport import bind_error, budgeted, serializer, transport_options
from onnxrec.v1 import recommender_pb2 as pb

log = logging.getLogger("onnxrec.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name


def load_tokens(config: ServerConfig) -> frozenset[str]:
    """Bearer tokens from the tokens file and/or the named environment variable."""
    tokens: set[str] = set()
    if config.auth_tokens_file:
        tokens |= {ln.strip() for ln in Path(config.auth_tokens_file).read_text().splitlines() if ln.strip()}
    if config.auth_tokens_env:
        raw = os.environ.get(config.auth_tokens_env)
        if raw is None:
            raise ConfigError(f"auth_tokens_env: environment variable {config.auth_tokens_env} is not set")
        tokens |= {t.strip() for t in raw.split(",") if t.strip()}
    if (config.auth_tokens_file or config.auth_tokens_env) and not tokens:
        raise ConfigError("token authentication is on but no token was given")
    return frozenset(tokens)


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS (and mutual TLS with ``tls_client_ca``) credentials, or None for plaintext."""
    if not config.tls_cert or not config.tls_key:
        return None
    ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


class _Undecodable:
    """Stands in for a request whose bytes are not the expected protobuf message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def add_servicer(
    servicer: RecommenderServicer,
    server: grpc.aio.Server,
    metrics: ServerMetrics,
    budget: AnswerBudget | None = None,
    gate: ShutdownGate | None = None,
) -> None:
    """Register every RPC of the service, like the generated ``add_..._to_server``, except that each
    call is counted and timed (in the handler itself: a server interceptor costs more per call), a
    request whose bytes do not decode is answered with INVALID_ARGUMENT (grpc would say UNKNOWN), and
    with ``budget`` each call is admitted by it and its answer held on it until read (flow.py); ``gate``
    counts the calls running and refuses new ones while the server shuts down (shutdown.py)."""
    gate = gate or ShutdownGate()
    service = pb.DESCRIPTOR.services_by_name["RecommenderService"]
    handlers = {}
    for method in service.methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        behavior = servicer.rpc()
        if budget is not None:
            behavior = budgeted(behavior, method.name, budget)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _handler(behavior, method.name, metrics, gate),
            request_deserializer=_lenient(request_cls.FromString),
            response_serializer=serializer(response_cls.SerializeToString),
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _lenient(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:  # protobuf's DecodeError and friends
            return _Undecodable(exc)

    return deserialize


def _handler(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    name: str,
    metrics: ServerMetrics,
    gate: ShutdownGate,
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    requests = {code: metrics.requests.labels(name, code.name) for code in grpc.StatusCode}
    latency = metrics.latency.labels(name)

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Run the method; count the status its caller sees. A call whose deadline passes or whose
        caller leaves ends quietly (gRPC cannot answer it any more and would log a traceback trying):
        counted as DEADLINE_EXCEEDED or CANCELLED, never as OK, and never logged."""
        t0 = time.perf_counter()
        if not gate.enter(t0):
            requests[grpc.StatusCode.UNAVAILABLE].inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        seen: grpc.StatusCode | None = None
        try:
            if isinstance(request, _Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {name} request message ({request.error})",
                )
            try:
                response = await behavior(request, context)
            except (grpc.aio.AbortError, grpc.aio.InternalError):  # (CancelledError is no Exception)
                raise
            except Exception as exc:  # the one place where what a handler raised becomes a status
                await context.abort(*status_for(exc))
            if _expired(context):  # the answer came too late to be sent
                seen = grpc.StatusCode.DEADLINE_EXCEEDED
                raise asyncio.CancelledError
            return response
        except asyncio.CancelledError:  # the caller left, or its deadline passed, while this ran
            seen = seen or (grpc.StatusCode.DEADLINE_EXCEEDED if _expired(context) else grpc.StatusCode.CANCELLED)
            raise
        except grpc.aio.InternalError:  # sending the status failed: the call had already ended
            if not (_expired(context) or context.cancelled()):
                raise  # not an expected end: gRPC logs it, loudly
            seen = grpc.StatusCode.DEADLINE_EXCEEDED if _expired(context) else grpc.StatusCode.CANCELLED
            raise asyncio.CancelledError from None
        finally:
            if seen is None:
                code = context.code()
                seen = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK
            requests[seen].inc()
            latency.observe(time.perf_counter() - t0)
            gate.leave()

    return handle


def _expired(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call's deadline has passed."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


class OnnxrecServer:
    """A running onnxrec server: the grpc.aio server, the model registry, health and metrics."""

    def __init__(self, config: ServerConfig) -> None:
        device = resolve_device(config.device)  # cuda fails here, before any port is bound
        threads = config.intra_op_threads
        if threads == 0 and config.workers > 1 and device == "cpu":
            threads = max(1, (os.cpu_count() or 1) // config.workers)  # share the cores between the workers
        config = dataclasses.replace(config, device=device, intra_op_threads=threads)
        self.config = config
        self.metrics = ServerMetrics()
        self.health = health.aio.HealthServicer()
        self.registry = ModelRegistry(config, on_batch=self.metrics.on_batch, on_change=self._changed)
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if config.tls_client_ca and config.tls_client_eku:
            interceptors.append(ClientCertInterceptor())
        tokens = load_tokens(config)
        if tokens:
            interceptors.append(TokenAuthInterceptor(tokens, self.metrics))
        self.server = grpc.aio.server(
            interceptors=interceptors, options=transport_options(config, reuseport=config.workers > 1)
        )
        self.budget = AnswerBudget(config.max_unread_bytes_per_connection, config.max_unread_bytes)
        self.gate = ShutdownGate()
        self.servicer = RecommenderServicer(self.registry, config, self.metrics)
        add_servicer(self.servicer, self.server, self.metrics, self.budget, self.gate)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = 0
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()

    def _changed(self, snapshot: Snapshot) -> None:
        """The registry swapped what is loaded: update the ``model_loaded`` gauge (health follows at
        the end of the refresh, :meth:`_set_health`)."""
        self.metrics.set_loaded({n: sorted(v) for n, v in snapshot.models.items()})

    _health_final = False  # set when stopping: no later report may say SERVING
    _health_sent: dict[str, int] | None = None  # the status last set per health service name

    async def _set_health(self, serving: bool) -> None:
        """Report health per service name (``grpc.health.v1``):

        * ``onnxrec.v1.RecommenderService/NAME``, one per model: SERVING while NAME has a loaded version;
        * ``""`` (the server) and ``onnxrec.v1.RecommenderService``: SERVING while every model the
          repository holds (and every model loaded since the start whose folder is still there) has a
          loaded version, and there is at least one;

        from :meth:`ModelRegistry.health`. ``serving=False`` (starting, stopping) makes every name
        NOT_SERVING; once the server has been ready that is final. Only changed statuses are sent."""
        if not serving and self.ready.is_set():
            self._health_final = True
        up = serving and not self._health_final
        models = self.registry.health()
        wanted = {f"{SERVICE_NAME}/{n}": up and loaded for n, loaded in models.items()}
        wanted[""] = wanted[SERVICE_NAME] = up and bool(models) and all(models.values())
        previous = self._health_sent or {}
        statuses = {name: health_pb2.HealthCheckResponse.NOT_SERVING for name in previous}  # models gone too
        statuses.update(
            (n, health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING)
            for n, ok in wanted.items()
        )
        self._health_sent = statuses
        for name, status in statuses.items():
            if previous.get(name) != status:
                await self.health.set(name, status)

    async def start(self) -> int:
        """Bind, start serving (health NOT_SERVING) and load the models in the background."""
        address = f"{self.config.host}:{self.config.port}"
        creds = server_credentials(self.config)
        reuseport = self.config.workers > 1
        if self.config.port and (error := bind_error(self.config.host, self.config.port, reuseport=reuseport)):
            raise error  # before grpc tries, which would log its own lines
        try:
            port = self.server.add_secure_port(address, creds) if creds else self.server.add_insecure_port(address)
        except RuntimeError:  # grpc: "Failed to bind to address"
            port = 0
        if port == 0:
            raise bind_error(self.config.host, self.config.port, reuseport=reuseport) or ConfigError(
                f"cannot serve on {address} (in use, or not an address of this machine)"
            )
        self.port = port
        await self._set_health(False)
        await self.server.start()
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(self.config.host, self.config.metrics_port)
        self._tasks.append(asyncio.create_task(self._load_then_watch()))
        return port

    async def _load_then_watch(self) -> None:
        await self.registry.refresh()
        if not self.registry.snapshot.models:
            log.error(
                "no model could be loaded from %s; health stays NOT_SERVING until one appears", self.config.repository
            )
        while not self.registry.snapshot.models and not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=max(self.config.reload_interval_s, 0.5))
            await self.registry.refresh()
        if self._stop.is_set():
            return
        await self._set_health(True)
        self.ready.set()
        log.info(
            "serving on %s:%d: %s",
            self.config.host,
            self.port,
            ", ".join(f"{n} v{sorted(v)}" for n, v in self.registry.snapshot.models.items()),
        )
        await self.registry.watch(self._stop, after=lambda: self._set_health(True))

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING; calls already sent are answered and later ones refused with UNAVAILABLE
        (:mod:`onnxrec.server.shutdown`); then the calls still running get what is left of ``grace``
        seconds (default ``grace_s``) to finish, and the server stops."""
        grace = self.config.grace_s if grace is None else grace
        await self._set_health(False)
        self._stop.set()
        left = await self.gate.drain(self.config.drain_s, grace)
        await self.server.stop(left)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.registry.close()
        close_store = getattr(self.servicer.events, "aclose", None)  # a store with connections (Redis)
        if close_store is not None:
            await close_store()

    async def wait_for_termination(self) -> None:
        """Until the server stops."""
        await self.server.wait_for_termination()


async def create_server(config: ServerConfig) -> tuple[OnnxrecServer, int]:
    """Build and start a server for ``config``; returns it and the bound port."""
    server = OnnxrecServer(config.validate())
    port = await server.start()
    return server, port


async def _serve_one(config: ServerConfig) -> None:
    server, port = await create_server(config)
    repository = Path(config.repository)
    if repository.is_dir() and not any(p.is_dir() and not p.name.startswith(".") for p in repository.iterdir()):
        log.warning("repository %s holds no model yet: waiting for one (health NOT_SERVING until then)", repository)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"onnxrec serving on {config.host}:{port} (pid {os.getpid()})", file=sys.stderr, flush=True)
    if server.metrics_port is not None:
        print(f"onnxrec metrics on http://{config.host}:{server.metrics_port}/metrics", file=sys.stderr, flush=True)
    await stopping.wait()
    log.info("shutting down: draining for up to %.1f s", config.grace_s)
    await server.stop()


def serve(config: ServerConfig) -> None:
    """Run the server until SIGTERM/SIGINT; with ``workers`` > 1, that many supervised processes
    sharing the port (:mod:`onnxrec.server.supervisor`)."""
    config = config.validate()
    check_repository(config.repository)
    load_tokens(config)  # fail before forking
    if config.workers == 1:
        asyncio.run(_serve_one(config))
        return
    from onnxrec.server.supervisor import supervise

    supervise(config, lambda worker: asyncio.run(_serve_one(worker)))


def check_repository(repository: str) -> None:
    """Refuse a repository path that is not a directory (an empty one may get models later)."""
    path = Path(repository)
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such directory"
        raise ConfigError(f"repository {path}: {what} (run onnxrec export first, or fix --repository)")
