"""The server configuration: one frozen dataclass, from defaults, a TOML file (``[serve]``), the
environment (``ONNXREC_SERVE_<KEY>``) and CLI options; unknown keys and wrong types are errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxrec.errors import ConfigError
from onnxrec.settings import load_config

ENV_PREFIX = "ONNXREC_SERVE_"


@dataclass(frozen=True)
class ServerConfig:
    """Every option of ``onnxrec serve``."""

    repository: str = "repository"
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port (tests)
    device: str = "auto"  # auto | cuda | cpu
    precision: str = "fp32"  # fp32 | fp16 | int8 (the exported variant to load)
    intra_op_threads: int = 0  # 0 = auto: 1 on the CPU for catalogs under 100k items, else all cores
    ort_spinning: bool = False  # let onnxruntime's idle threads spin (burns the cores the event loop needs)
    io_binding: bool = False  # bind inputs/outputs on the device (CUDA; measured no faster, BENCHMARKS.md)
    max_batch_size: int = 64
    max_queue_delay_us: int = 0  # 0 = run as soon as the model is free (no added latency at low load)
    max_queue_size: int = 2048
    linger_us: int = 0  # > 0: hold a batch open while requests arrive closer together than this (adaptive)
    linger_max_us: int = 4000  # the longest a lingering batch waits, from its first request
    inline_max_us: int = 500  # run batches expected to take at most this on the event loop (no thread hop)
    max_request_items: int = 1024  # users per RecommendBatch, candidates per Score
    max_message_bytes: int = 4 * 1024 * 1024
    workers: int = 1
    metrics_port: int | None = None  # Prometheus /metrics over HTTP; None = off, 0 = a free port
    version_policy: str = "latest"  # latest | all | specific
    versions: tuple[int, ...] = ()  # with version_policy = specific
    reload_interval_s: float = 2.0  # 0 = no hot reload
    warmup: bool = True
    grace_s: float = 10.0  # SIGTERM: how long in-flight requests may take to finish
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set: clients must present a certificate signed by it (mutual TLS)
    auth_tokens_file: str | None = None  # one bearer token per line
    auth_tokens_env: str | None = None  # name of an environment variable holding comma-separated tokens

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
            (self.linger_us >= 0, "linger_us must be 0 or more"),
            (self.linger_max_us >= 0, "linger_max_us must be 0 or more"),
            (self.max_request_items >= 1, "max_request_items must be at least 1"),
            (self.workers >= 1, "workers must be at least 1"),
            (self.version_policy in ("latest", "all", "specific"), "version_policy must be latest, all or specific"),
            (self.version_policy != "specific" or bool(self.versions), "version_policy specific needs versions"),
            ((self.tls_cert is None) == (self.tls_key is None), "tls_cert and tls_key go together"),
            (self.tls_client_ca is None or self.tls_cert is not None, "tls_client_ca needs tls_cert and tls_key"),
            (self.reload_interval_s >= 0, "reload_interval_s must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
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
