"""Server interceptors: bearer-token authentication (refusals are counted in the metrics), and the
extended key usage of mutual-TLS client certificates."""

from __future__ import annotations

import functools
import hmac
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from onnxrec.server.metrics import ServerMetrics

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # health stays reachable without a token


def _abort_handler(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` with one of ``tokens`` on every RPC but health."""

    def __init__(self, tokens: frozenset[str], metrics: ServerMetrics | None = None) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        self._metrics = metrics

    def _ok(self, metadata: tuple[tuple[str, Any], ...] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else str(value)
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer":
                    given = token.strip().encode()
                    return any(hmac.compare_digest(given, t) for t in self._tokens)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES) or self._ok(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        return _abort_handler(
            grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (send 'authorization: Bearer <token>')"
        )


# -- client certificates: extended key usage (RFC 5280 4.2.1.12), read with the cryptography package --


@functools.lru_cache(maxsize=256)
def client_cert_refusal(pem: bytes) -> str | None:
    """Why a client certificate (PEM) may not authenticate a client, or None if it may: its extended key
    usage must list clientAuth (or anyExtendedKeyUsage). gRPC's TLS already refuses a certificate whose
    extension excludes clients; this also refuses one without the extension (RFC 5280 reads that as
    "any use"), such as a server certificate from the same CA."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = None
    except ValueError:
        return "the client certificate could not be read"
    if usages is None:
        return (
            "the client certificate has no extended key usage; it must list clientAuth "
            "(or start the server with --no-tls-client-eku)"
        )
    if ExtendedKeyUsageOID.CLIENT_AUTH in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
        return None
    return "the client certificate is not for client authentication (its extended key usage lacks clientAuth)"


class ClientCertInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call (UNAUTHENTICATED) whose mutual-TLS client certificate fails
    :func:`client_cert_refusal`: without it the CA's signature alone would make any of its certificates,
    a server's included, a client certificate."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        codec = {"request_deserializer": handler.request_deserializer}
        codec["response_serializer"] = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_checked_unary(handler.unary_unary), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_checked_unary(handler.stream_unary), **codec)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_checked_stream(handler.unary_stream), **codec)
        return grpc.stream_stream_rpc_method_handler(_checked_stream(handler.stream_stream), **codec)


async def _check_peer(context: grpc.aio.ServicerContext) -> None:
    certs = context.auth_context().get("x509_pem_cert") or [b""]
    why = client_cert_refusal(certs[0])
    if why is not None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)


def _checked_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _check_peer(context)
        return await behavior(request, context)

    return checked


def _checked_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """A streaming handler, an async generator or a coroutine that writes, checked first; its answers
    go out through ``context.write`` either way."""

    async def checked(request: Any, context: grpc.aio.ServicerContext) -> None:
        await _check_peer(context)
        result = behavior(request, context)
        if inspect.isasyncgen(result):
            async for message in result:
                await context.write(message)
        else:
            await result

    return checked
