"""The synchronous client: a facade over the generated stub with typed results and one error type."""

from __future__ import annotations

from types import TracebackType

import grpc

from onnxrec.clients import requests as rq
from onnxrec.clients.channel import ChannelSettings, open_channel
from onnxrec.clients.facade import ClientBase, blocking


class RecommenderClient(ClientBase):
    """Calls an onnxrec server.

    ``servers`` is ``host:port``, ``dns:///name:port`` or several addresses (balanced round robin).
    ``timeout`` is each call's deadline in seconds; UNAVAILABLE is retried with backoff (``retries``)
    through gRPC's service config; every failure raises :class:`RecommenderError`.

    >>> with RecommenderClient("127.0.0.1:50051") as client:  # doctest: +SKIP
    ...     client.recommend("ml100k", user_id="196", k=10).item_ids
    """

    recommend = blocking(rq.recommend)
    recommend_batch = blocking(rq.recommend_batch)
    score = blocking(rq.score)
    similar = blocking(rq.similar)
    list_models = blocking(rq.list_models)
    model_metadata = blocking(rq.model_metadata)
    track = blocking(rq.track)
    health = blocking(rq.health)

    def _open_channel(self, settings: ChannelSettings) -> grpc.Channel:
        return open_channel(grpc, settings)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
