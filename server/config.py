"""The server configuration: one frozen dataclass, from defaults, a TOML file (``[serve]``), the
environment (``ONNXREC_SERVE_<KEY>``) and CLI options; unknown keys and wrong types are errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxrec.errors import ConfigError
from onnxrec.settings import load_config, setting

ENV_PREFIX = "ONNXREC_SERVE_"


@dataclass(frozen=True)
class ServerConfig:
    """Every option of ``onnxrec serve``."""

    repository: str = setting(
        "repository", "the model repository directory (NAME/VERSION/ folders written by onnxrec export)"
    )
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(50051, "port to listen on (0: a free port, printed at start)")
    device: str = setting("auto", "auto | cuda | cpu (auto: cuda when onnxruntime has it, else cpu)")
    precision: str = setting("fp32", "fp32 | fp16 | int8: the exported variant to load")
    intra_op_threads: int = setting(
        0, "onnxruntime threads per session (0: 1 on the CPU for catalogs under 100k items, else all cores)"
    )
    max_batch_size: int = setting(64, "most rows in one onnxruntime run")
    max_queue_delay_us: int = setting(
        0,
        "wait up to this long for a full batch, from the oldest request (0: adaptive, batches only while "
        "the server is saturated and never waits while it is idle)",
    )
    max_queue_size: int = setting(2048, "most queued requests per model; beyond it RESOURCE_EXHAUSTED at once")
    inline_max_us: int = setting(500, "run batches expected to take at most this on the event loop (no thread hop)")
    max_request_items: int = setting(1024, "most users per RecommendBatch and candidates per Score")
    max_message_bytes: int = setting(4 * 1024 * 1024, "largest request or response message")
    max_unread_bytes: int = setting(
        32 * 1024 * 1024,
        "most bytes of answers the server holds for clients that have not read them yet, all connections "
        "together; beyond it larger calls are RESOURCE_EXHAUSTED (0: no bound)",
    )
    max_unread_bytes_per_connection: int = setting(
        8 * 1024 * 1024,
        "the same per connection: further calls on it wait, and are RESOURCE_EXHAUSTED once one of its "
        "answers has gone unread for 5 s (0: no bound)",
    )
    max_connection_age_s: float = setting(
        600.0,
        "close each connection after this long (clients reconnect; calls in flight get grace_s), which "
        "bounds how long a client that never reads can hold answers (0: never)",
    )
    workers: int = setting(1, "server processes sharing the port")
    metrics_port: int | None = setting(None, "Prometheus /metrics over HTTP (none: off; 0: a free port)")
    version_policy: str = setting("latest", "latest | all | specific: which versions of each model to serve")
    versions: tuple[int, ...] = setting((), "with version_policy specific: the versions to serve, e.g. 1,3")
    reload_interval_s: float = setting(2.0, "seconds between repository scans for new versions (0: no hot reload)")
    warmup: bool = setting(True, "run every graph at every batch size before reporting SERVING")
    grace_s: float = setting(10.0, "on SIGTERM, how long in-flight requests may take to finish")
    drain_s: float = setting(
        1.0,
        "on SIGTERM, answer new calls as usual this long first (health NOT_SERVING), then refuse them with "
        "UNAVAILABLE; at most grace_s",
    )
    tls_cert: str | None = setting(None, "PEM certificate chain of the server (TLS)")
    tls_key: str | None = setting(None, "PEM private key of the server (TLS)")
    tls_client_ca: str | None = setting(None, "PEM CA that client certificates must be signed by (mutual TLS)")
    tls_client_eku: bool = setting(
        True,
        "mutual TLS: a client certificate must list clientAuth in its extended key usage (off: one without "
        "that extension passes too, e.g. a server's; TLS refuses one whose usage excludes clients either way)",
    )
    auth_tokens_file: str | None = setting(None, "file of accepted bearer tokens, one per line")
    auth_tokens_env: str | None = setting(None, "name of an environment variable holding comma-separated bearer tokens")
    state: str = setting(
        "memory",
        "where users' tracked events live: memory (in this process, bounded) | off | redis://HOST:PORT/DB "
        "(shared by replicas; Redis bounds its memory, the TTL applies)",
    )
    state_max_users: int = setting(
        100_000, "most users the in-memory event store holds (least recently used evicted; not Redis)"
    )
    state_max_events: int = setting(50, "most recent items the event store keeps per user")
    state_ttl_s: float = setting(86_400.0, "a user's tracked items expire this long after their last event")
    max_id_chars: int = setting(256, "longest user id, item id or user feature a request may carry (characters)")
    max_list_items: int = setting(10_000, "most entries in a request's history, exclude_item_ids or user_features")

    def validate(self) -> ServerConfig:
        """Raise :class:`ConfigError` for values no server can run with; returns self."""
        checks = [
            (self.device in ("auto", "cuda", "cpu"), f"device must be auto, cuda or cpu, not {self.device!r}"),
            (
                self.precision in ("fp32", "fp16", "int8"),
                f"precision must be fp32, fp16 or int8, not {self.precision!r}",
            ),
            (0 <= self.port <= 65535, f"port must be in 0..65535, not {self.port}"),
            (self.max_batch_size >= 1, "max_batch_size must be at least 1"),
            (self.max_queue_delay_us >= 0, "max_queue_delay_us must be 0 or more"),
            (self.max_queue_size >= 1, "max_queue_size must be at least 1"),
            (self.inline_max_us >= 0, "inline_max_us must be 0 or more"),
            (self.max_request_items >= 1, "max_request_items must be at least 1"),
            (self.workers >= 1, "workers must be at least 1"),
            (self.version_policy in ("latest", "all", "specific"), "version_policy must be latest, all or specific"),
            (self.version_policy != "specific" or bool(self.versions), "version_policy specific needs versions"),
            ((self.tls_cert is None) == (self.tls_key is None), "tls_cert and tls_key go together"),
            (self.tls_client_ca is None or self.tls_cert is not None, "tls_client_ca needs tls_cert and tls_key"),
            (self.reload_interval_s >= 0, "reload_interval_s must be 0 or more"),
            (self.drain_s >= 0, "drain_s must be 0 or more"),
            (self.max_unread_bytes >= 0, "max_unread_bytes must be 0 or more"),
            (self.max_unread_bytes_per_connection >= 0, "max_unread_bytes_per_connection must be 0 or more"),
            (self.max_connection_age_s >= 0, "max_connection_age_s must be 0 or more"),
            (
                self.state in ("memory", "off") or self.state.startswith("redis://"),
                f"state must be memory, off or redis://HOST:PORT/DB, not {self.state!r}",
            ),
            (
                self.state_max_users >= 1 and self.state_max_events >= 1,
                "state_max_users and state_max_events must be at least 1",
            ),
            (self.state_ttl_s > 0, "state_ttl_s must be above 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.state.startswith("redis://"):
            from onnxrec.server.events_redis import parse_redis_url

            try:
                parse_redis_url(self.state)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca, self.auth_tokens_file):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{path}: no such file")
        return self


def load_server_config(
    toml_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Defaults <- TOML file (``[serve]``) <- environment (``ONNXREC_SERVE_*``) <- ``overrides``."""
    return load_config(ServerConfig, "serve", ENV_PREFIX, toml_path, overrides, environ).validate()
