"""The server's transport: gRPC channel arguments that bound what one connection can hold, binding its
port (or refusing one in use), and the per-call wrapper that enforces :class:`AnswerBudget`.

Flow-control bounds (issue #14.1), from grpc core's channel arguments:

* ``grpc.max_concurrent_streams`` (:data:`MAX_CONCURRENT_STREAMS`): calls open at once on one
  connection; a gRPC client queues further calls itself, a raw HTTP/2 client gets REFUSED_STREAM;
* keepalive (:data:`KEEPALIVE_TIME_MS`, :data:`KEEPALIVE_TIMEOUT_MS`): the server pings every
  connection that has been quiet for 30 s, and closes it if the ping is not answered in 10 s, so a
  client that stops reading its socket is dropped, with what the server held for it;
* ``max_connection_age_s`` (config) with ``grace_s``: every connection is told to go away (GOAWAY) at
  that age, and closed ``grace_s`` later whatever it still has in flight, so even a client that
  answers pings but never opens its flow-control window holds its answers for a bounded time;
* ``grpc.max_connection_idle_ms`` (:data:`MAX_CONNECTION_IDLE_MS`): connections without calls close.

gRPC offers no cap on the bytes of answers waiting in its send buffers, so the server keeps its own
(:mod:`onnxrec.server.flow`): ``max_unread_bytes_per_connection`` and ``max_unread_bytes``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from onnxrec.errors import ConfigError
from onnxrec.server.config import ServerConfig
from onnxrec.server.flow import AnswerBudget, Refused, Ticket
from onnxrec.server.limits import RequestError

# Calls open at once on one connection. Not 100 (HTTP/2's recommended minimum): grpc counts calls it has
# received and not yet handed to a handler against it and refuses more (RST_STREAM REFUSED_STREAM, which
# the client sees as UNAVAILABLE), so a busy event loop refused 64 clients that share one connection
# (test_many_concurrent_clients_all_answered, under load). Memory per connection is bounded by the
# answer budget (flow.py), not by this.
MAX_CONCURRENT_STREAMS = 1024
KEEPALIVE_TIME_MS = 30_000  # ping a connection after 30 s without reads from it ...
KEEPALIVE_TIMEOUT_MS = 10_000  # ... and close it when the ping is not answered within 10 s
MAX_CONNECTION_IDLE_MS = 15 * 60_000  # close a connection with no call for 15 minutes (clients reconnect)


def transport_options(config: ServerConfig, *, reuseport: bool) -> list[tuple[str, int]]:
    """grpc.aio server options for ``config``; ``reuseport`` only among one server's own workers."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuseport else 0),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging a connection that sends nothing
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
    ]
    if config.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max(config.grace_s, 1.0) * 1000)),
        ]
    return options


def bind_error(host: str, port: int, *, reuseport: bool = False, option: str = "--port") -> ConfigError | None:
    """Try to bind ``host:port`` the way the server will (SO_REUSEADDR, and SO_REUSEPORT only with
    ``reuseport``); None if it can be bound, else the one-line error to show."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return ConfigError(_why(host, port, exc, option))
        except (socket.gaierror, UnicodeError) as exc:
            return ConfigError(f"cannot serve on {host}:{port}: {exc}")
    return None


def _why(host: str, port: int, exc: OSError, option: str = "--port") -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"address in use: {host}:{port} (another server is listening there; pick another {option})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot serve on {host}:{port}: not an address of this machine"
    if exc.errno == errno.EACCES:
        return f"cannot serve on {host}:{port}: permission denied (ports below 1024 need privileges)"
    return f"cannot serve on {host}:{port}: {exc.strerror or exc}"


class PortHold:
    """The port of a multi-worker server, checked free (no other server listens there, with or without
    SO_REUSEPORT) and then held by the supervisor with SO_REUSEPORT (bound, never listening, so it gets
    no connections), so that no other server can take it while workers start or restart: a bind
    without SO_REUSEPORT fails against it, and the workers' SO_REUSEPORT binds succeed."""

    def __init__(self, host: str, port: int) -> None:
        error = bind_error(host, port)
        if error is not None:
            raise error
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise ConfigError(_why(host, port, exc)) from None

    def close(self) -> None:
        """Let the port go."""
        self._sock.close()


class _Outgoing:
    """An answer on its way out: the serializer records its size on the call's budget ticket and drops
    the message, so that only the encoded bytes stay in memory while the client has not read them."""

    __slots__ = ("message", "ticket")

    def __init__(self, message: Any, ticket: Ticket) -> None:
        self.message = message
        self.ticket = ticket


def budgeted(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], method: str, budget: AnswerBudget
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """``behavior`` admitted by ``budget`` (RESOURCE_EXHAUSTED when refused); its answer is held on the
    budget from serialisation until the call ends."""

    async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            ticket = await budget.admit(context.peer(), method, request)
        except Refused as exc:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
        context.add_done_callback(ticket.done)
        return _Outgoing(await behavior(request, context), ticket)

    return run


def serializer(encode: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``encode`` for plain messages and for :class:`_Outgoing` answers (see there)."""

    def serialize(response: Any) -> bytes:
        if not isinstance(response, _Outgoing):
            return encode(response)
        data = encode(response.message)
        response.message = None
        response.ticket.sent(len(data))
        return data

    return serialize
