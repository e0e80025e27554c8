"""Prometheus metrics of one server process, in its own registry (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """Requests and errors by method and status code, latency, queue time, batch size, loaded versions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "onnxrec_requests", "gRPC requests by method and status code", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "onnxrec_request_seconds",
            "gRPC request latency",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "onnxrec_queue_seconds",
            "time the oldest request of a batch waited",
            ["model", "graph"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch = Histogram(
            "onnxrec_batch_size",
            "rows per model run",
            ["model", "graph"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._batch_children: dict[tuple[str, str], tuple[Histogram, Histogram]] = {}
        self._evictions_seen = 0
        self.events = Counter("onnxrec_events", "user events received by TrackEvents", registry=self.registry)
        self.store_users = Gauge("onnxrec_event_store_users", "users the event store holds", registry=self.registry)
        self.store_evictions = Counter(
            "onnxrec_event_store_evictions",
            "users evicted from the event store (its user limit)",
            registry=self.registry,
        )
        self.store_errors = Counter(
            "onnxrec_event_store_errors", "event store calls that failed (Recommend fell back)", registry=self.registry
        )
        self.store_seconds = Histogram(
            "onnxrec_event_store_seconds",
            "event store lookup latency",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loaded = Gauge(
            "onnxrec_model_loaded", "1 for each loaded model version", ["model", "version"], registry=self.registry
        )

    def on_batch(self, model: str, graph: str, size: int, queued_s: float) -> None:
        """Record one model run."""
        children = self._batch_children.get((model, graph))
        if children is None:  # labels() takes a lock and builds a key: once per model and graph
            children = self._batch_children[(model, graph)] = (
                self.batch.labels(model, graph),
                self.queue.labels(model, graph),
            )
        children[0].observe(size)
        children[1].observe(queued_s)

    def store_changed(self, users: int, evictions: int) -> None:
        """The event store now holds ``users`` and has evicted ``evictions`` users since it started."""
        self.store_users.set(users)
        if evictions > self._evictions_seen:
            self.store_evictions.inc(evictions - self._evictions_seen)
            self._evictions_seen = evictions

    def set_loaded(self, versions: dict[str, list[int]]) -> None:
        """Replace the loaded-versions gauge."""
        self.loaded.clear()
        for name, vs in versions.items():
            for v in vs:
                self.loaded.labels(name, str(v)).set(1)

    def serve_http(self, host: str, port: int) -> int:
        """Expose /metrics on ``host:port`` (0 = a free port); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
