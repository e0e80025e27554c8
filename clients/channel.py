"""The channel of the sync and the asyncio client: its target, TLS, token, retries and round robin."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class ChannelSettings:
    """Where and how to connect."""

    target: str
    options: list[tuple[str, object]]
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]


def settings_for(
    servers: str | Sequence[str],
    *,
    token: str | None = None,
    tls: bool = False,
    ca_cert: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    retries: int = 3,
    max_message_bytes: int = 16 * 1024 * 1024,
) -> ChannelSettings:
    """Channel settings for ``servers`` (``host:port``, ``dns:///name:port`` or a list)."""
    target, round_robin = channel_target(servers)
    options: list[tuple[str, object]] = [
        ("grpc.service_config", service_config(retries, round_robin)),
        ("grpc.enable_retries", 1 if retries > 0 else 0),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    credentials = None
    if tls or ca_cert or client_cert:
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        credentials = grpc.ssl_channel_credentials(read(ca_cert), read(client_key), read(client_cert))
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return ChannelSettings(target, options, credentials, metadata)


def open_channel(api: Any, s: ChannelSettings) -> Any:
    """A channel with the settings ``s`` from ``api``: the module ``grpc`` (sync) or ``grpc.aio``."""
    if s.credentials:
        return api.secure_channel(s.target, s.credentials, options=s.options)
    return api.insecure_channel(s.target, options=s.options)


def channel_target(servers: str | Sequence[str]) -> tuple[str, bool]:
    """The gRPC target for one address, a ``dns:///`` name, or several addresses (client-side
    round robin over a static list); and whether to balance round-robin."""
    if isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    servers = list(servers)
    if not servers:
        raise ValueError("no server address given")
    if len(servers) == 1:
        target = servers[0]
        return target, target.startswith("dns:")
    return "ipv4:" + ",".join(servers), True


def service_config(retries: int, round_robin: bool) -> str:
    """gRPC service config: retry UNAVAILABLE with exponential backoff; optional round robin."""
    config: dict[str, object] = {
        "methodConfig": [
            {
                "name": [{"service": "onnxrec.v1.RecommenderService"}],
                "retryPolicy": {
                    "maxAttempts": max(2, min(retries + 1, 5)),
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
        if retries > 0
        else [],
    }
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)
