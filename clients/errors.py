"""The one error type of the clients.

It derives from :class:`Exception` directly, not from ``onnxrec.errors.OnnxrecError``: this module is
also shipped by the client-only distribution ``onnxrec-client``, which has no ``onnxrec.errors``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc


class RecommenderError(Exception):
    """A call failed: ``code`` is the gRPC status code, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str = "") -> None:
        self.code = code
        self.details = details
        self.target = target
        where = f" from {target}" if target else ""
        super().__init__(f"{code.name}{where}: {details}")

    @classmethod
    def from_rpc(cls, err: grpc.RpcError, target: str) -> RecommenderError:
        """Wrap a grpc error (sync or asyncio)."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", target)


@contextmanager
def rpc_errors(target: str) -> Iterator[None]:
    """Raise a :class:`grpc.RpcError` of the block (a call to ``target``, sync or awaited) as
    :class:`RecommenderError`, the one error the clients raise."""
    try:
        yield
    except grpc.RpcError as err:
        raise RecommenderError.from_rpc(err, target) from None
