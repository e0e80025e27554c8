"""The asyncio client: the same calls as :class:`~onnxrec.clients.client.RecommenderClient`, awaited."""

from __future__ import annotations

from types import TracebackType

import grpc

from onnxrec.clients import requests as rq
from onnxrec.clients.channel import ChannelSettings, open_channel
from onnxrec.clients.facade import ClientBase, awaited


class AsyncRecommenderClient(ClientBase):
    """Calls an onnxrec server from asyncio code; its methods are the sync client's, awaited, and built
    from the same functions, so both send the same bytes and return the same results."""

    recommend = awaited(rq.recommend)
    recommend_batch = awaited(rq.recommend_batch)
    score = awaited(rq.score)
    similar = awaited(rq.similar)
    list_models = awaited(rq.list_models)
    model_metadata = awaited(rq.model_metadata)
    track = awaited(rq.track)
    health = awaited(rq.health)

    def _open_channel(self, settings: ChannelSettings) -> grpc.aio.Channel:
        return open_channel(grpc.aio, settings)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncRecommenderClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
