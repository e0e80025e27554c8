"""What the sync and the asyncio client share, so that they differ only in calling or awaiting.

A :class:`Call` is one RPC ready to send; :mod:`onnxrec.clients.requests` has a function per RPC that
builds one from a client method's arguments. :class:`ClientBase` opens the channel and sends a Call.
:func:`blocking` and :func:`awaited` make a client's method from such a function: the same name, docs,
signature and error mapping, with the reply returned (sync) or awaited (asyncio).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from onnxrec.clients.channel import ChannelSettings, settings_for
from onnxrec.clients.errors import rpc_errors
from onnxrec.clients.health import HEALTH_CHECK, HealthCheckRequest, HealthCheckResponse
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc

Q = TypeVar("Q")
R = TypeVar("R")
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Call(Generic[Q, R]):
    """One unary call, ready to send: which method, the request, the deadline, how to read the reply."""

    rpc: str
    """The method's name on the service stub (``Recommend``), or :data:`~onnxrec.clients.health.HEALTH_CHECK`."""
    request: Q
    read: Callable[[Any], R]
    """The reply as a plain result (no protobuf types reach callers)."""
    timeout: float | None = None
    """The call's deadline in seconds; None: the client's default."""


class ClientBase:
    """The channel, stub and call options of :class:`~onnxrec.clients.RecommenderClient` and
    :class:`~onnxrec.clients.AsyncRecommenderClient`.

    ``servers`` is ``host:port``, ``dns:///name:port`` or several addresses (balanced round robin).
    ``timeout`` is each call's deadline in seconds; UNAVAILABLE is retried with backoff (``retries``)
    through gRPC's service config; every failure raises :class:`~onnxrec.clients.RecommenderError`.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        timeout: float = 5.0,
        token: str | None = None,
        tls: bool = False,
        ca_cert: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        retries: int = 3,
    ) -> None:
        s = settings_for(
            servers,
            token=token,
            tls=tls,
            ca_cert=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
            retries=retries,
        )
        self.target = s.target
        self.timeout = timeout
        self._metadata = s.metadata
        self._channel = self._open_channel(s)
        self._stub = pb_grpc.RecommenderServiceStub(self._channel)
        self._health = self._channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )

    def _open_channel(self, settings: ChannelSettings) -> Any:
        """The channel the client calls on: grpc's (sync) or grpc.aio's."""
        raise NotImplementedError

    def _send(self, call: Call[Any, Any]) -> Any:
        """Start ``call``: its reply on a sync channel, an awaitable of it on an asyncio channel."""
        method = self._health if call.rpc == HEALTH_CHECK else getattr(self._stub, call.rpc)
        timeout = self.timeout if call.timeout is None else call.timeout
        return method(call.request, timeout=timeout, metadata=self._metadata)


def blocking(build: Callable[P, Call[Any, R]]) -> Callable[Concatenate[ClientBase, P], R]:
    """The sync client's method for ``build``: it sends the call and returns its result."""

    def method(self: ClientBase, /, *args: P.args, **kwargs: P.kwargs) -> R:
        call = build(*args, **kwargs)
        with rpc_errors(self.target):
            reply = self._send(call)
        return call.read(reply)

    return _named_as(method, build)


def awaited(build: Callable[P, Call[Any, R]]) -> Callable[Concatenate[ClientBase, P], Coroutine[Any, Any, R]]:
    """The asyncio client's method for ``build``: a coroutine that sends the call and returns its result."""

    async def method(self: ClientBase, /, *args: P.args, **kwargs: P.kwargs) -> R:
        call = build(*args, **kwargs)
        with rpc_errors(self.target):
            reply = await self._send(call)
        return call.read(reply)

    return _named_as(method, build)


def _named_as(method: F, build: Callable[..., Call[Any, Any]]) -> F:
    """``method`` with the name, docstring and signature of ``build`` (plus ``self``, returning the
    call's result), so that help() and :func:`inspect.signature` show the call's own parameters."""
    signature = inspect.signature(build, eval_str=True)
    result = typing.get_args(signature.return_annotation)[1]
    own = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__name__ = method.__qualname__ = build.__name__
    method.__doc__ = build.__doc__
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[own, *signature.parameters.values()], return_annotation=result
    )
    return method
