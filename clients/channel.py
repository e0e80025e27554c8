"""Channel options shared by the sync and asyncio clients: TLS, token, retries, round robin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from onnxrec.clients.requests import channel_target, service_config


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
