"""``ForgetUser``: the admin call that erases a user (right to erasure) from a running server.

Only a server started with bearer tokens accepts it (the token interceptor has checked the caller
before this runs); others refuse with PERMISSION_DENIED. The model name must be one the server has
loaded, so nothing from the request picks a path: the repository is the server's own. The new version
is written by :func:`onnxrec.exporter.forget.forget` in a thread, the user's events leave the store,
and the registry loads the new version before the call returns, so the next Recommend for that user
answers as for an unknown user. One erasure runs at a time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from onnxrec.exporter.forget import forget
from onnxrec.server.config import ServerConfig
from onnxrec.server.events import EventStore
from onnxrec.server.limits import RequestError, RequestLimits
from onnxrec.server.plan import not_found
from onnxrec.server.registry import ModelRegistry
from onnxrec.v1 import recommender_pb2 as pb

__all__ = ["Eraser"]


class Eraser:
    """Answers ForgetUser (module docstring)."""

    def __init__(
        self, registry: ModelRegistry, config: ServerConfig, limits: RequestLimits, events: EventStore | None
    ) -> None:
        self.registry, self.config, self.limits, self.events = registry, config, limits, events
        self._lock = asyncio.Lock()

    async def __call__(self, request: pb.ForgetUserRequest, deadline: float | None) -> pb.ForgetUserResponse:
        if not (self.config.auth_tokens_file or self.config.auth_tokens_env):
            raise RequestError(
                grpc.StatusCode.PERMISSION_DENIED,
                "ForgetUser is an admin call: start the server with --auth-tokens-file or --auth-tokens-env, "
                "or run onnxrec forget on the repository",
            )
        self.limits.check_name(request.model)
        self.limits.check_id(request.user_id, "user_id")
        if request.model not in self.registry.snapshot.names():
            raise not_found(f"no model {request.model!r} is loaded")
        async with self._lock:
            repository = Path(self.config.repository)
            done = await asyncio.get_running_loop().run_in_executor(
                None, forget, repository, request.model, request.user_id
            )
            removed = False
            if self.events is not None:
                removed = bool(await self.events.recent(request.user_id))
                await self.events.forget(request.user_id)
            if done.version_dir is not None:
                await self.registry.refresh()
        version = int(done.version_dir.name) if done.version_dir is not None else 0
        return pb.ForgetUserResponse(version=version, events_removed=removed)
