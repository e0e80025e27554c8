"""Server interceptors: bearer-token authentication (refusals are counted in the metrics), and the
extended key usage of mutual-TLS client certificates."""

from __future__ import annotations

import base64
import functools
import hmac
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

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


# -- client certificates: extended key usage (RFC 5280 4.2.1.12) ------------------------------------
_EKU_OID = bytes.fromhex("551d25")  # 2.5.29.37 extKeyUsage
CLIENT_AUTH = bytes.fromhex("2b06010505070302")  # 1.3.6.1.5.5.7.3.2 id-kp-clientAuth
ANY_EKU = bytes.fromhex("551d2500")  # 2.5.29.37.0 anyExtendedKeyUsage


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """The DER element at ``pos``: (tag, start of its content, end of its content)."""
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        return tag, pos, pos + first
    n = first & 0x7F
    length = int.from_bytes(data[pos : pos + n], "big")
    return tag, pos + n, pos + n + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        element = _der(data, start)
        out.append(element)
        start = element[2]
    return out


def extended_key_usages(der: bytes) -> list[bytes] | None:
    """The extended key usage OIDs (DER content bytes) of an X.509 certificate, or None when it has no
    extendedKeyUsage extension. Raises ValueError (or IndexError) for bytes that are not a certificate."""
    _, start, _end = _der(der, 0)  # Certificate
    _, tbs_start, tbs_end = _der(der, start)  # TBSCertificate
    for tag, s, _e in _children(der, tbs_start, tbs_end):
        if tag != 0xA3:  # [3] extensions
            continue
        _, ext_start, ext_end = _der(der, s)
        for _, xs, xe in _children(der, ext_start, ext_end):
            parts = _children(der, xs, xe)  # extnID, critical?, extnValue
            if parts[0][0] == 0x06 and der[parts[0][1] : parts[0][2]] == _EKU_OID:
                _, vs, _ve = parts[-1]  # OCTET STRING holding SEQUENCE OF OID
                _, ss, se = _der(der, vs)
                return [der[a:b] for t, a, b in _children(der, ss, se) if t == 0x06]
        return None
    return None


@functools.lru_cache(maxsize=256)
def client_cert_refusal(pem: bytes) -> str | None:
    """Why a client certificate (PEM) may not authenticate a client, or None if it may: its extended key
    usage must list clientAuth (or anyExtendedKeyUsage). gRPC's TLS already refuses a certificate whose
    extension excludes clients; this also refuses one without the extension (RFC 5280 reads that as
    "any use"), such as a server certificate from the same CA."""
    body = b"".join(ln.strip() for ln in pem.splitlines() if ln.strip() and not ln.startswith(b"-----"))
    try:
        usages = extended_key_usages(base64.b64decode(body))
    except (ValueError, IndexError):
        return "the client certificate could not be read"
    if usages is None:
        return (
            "the client certificate has no extended key usage; it must list clientAuth "
            "(or start the server with --no-tls-client-eku)"
        )
    if CLIENT_AUTH in usages or ANY_EKU in usages:
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
