"""The one place where an exception raised while answering becomes a gRPC status.

Handlers and pipeline stages just raise; the servicer boundary (``app._handler``) calls
:func:`status_for` and aborts the call with its answer. Expected outcomes (a bad request, a full queue,
a passed deadline, a model being unloaded) are mapped quietly; anything else is INTERNAL and logged
with its traceback.
"""

from __future__ import annotations

import logging

import grpc

from onnxrec.server.batcher import BatcherClosedError, DeadlineExpiredError, QueueFullError
from onnxrec.server.limits import RequestError

__all__ = ["status_for"]

log = logging.getLogger("onnxrec.server")


def status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message a caller gets for ``exc`` (INTERNAL ones are logged here)."""
    if isinstance(exc, RequestError):
        return exc.code, str(exc)
    if isinstance(exc, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {exc}; retry with backoff"
    if isinstance(exc, DeadlineExpiredError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the model ran"
    if isinstance(exc, BatcherClosedError):
        return grpc.StatusCode.UNAVAILABLE, "the model is being unloaded; retry"
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"
