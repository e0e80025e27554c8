"""The service's methods, behind one in-process seam: :meth:`RecommenderServicer.answer`.

``answer(request, deadline)`` takes any request message of ``onnxrec.v1.RecommenderService`` and
returns its response message, or raises; the gRPC layer (``app.add_servicer``) only adds the deadline
and turns what was raised into a status (:func:`onnxrec.server.status.status_for`). Benchmarks and
tests call ``answer`` directly. Recommend and RecommendBatch go through the recommendation pipeline
(:mod:`onnxrec.server.pipeline`); Score, SimilarItems, ListModels and GetModelMetadata are answered
here. Every length a caller controls is bounded first, and error messages quote at most 64 characters
of what was sent (:mod:`onnxrec.server.limits`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from onnxrec.server.config import ServerConfig
from onnxrec.server.events import EventStore, RecentEvents, make_store, track
from onnxrec.server.explain import Explanation
from onnxrec.server.forget import Eraser
from onnxrec.server.limits import RequestError, RequestLimits, invalid, request_time, shown
from onnxrec.server.metrics import ServerMetrics
from onnxrec.server.pipeline import ModelRetrieval, PopularityRetrieval, RecommendPipeline, Stage
from onnxrec.server.plan import Planner, items_to_indices, not_found
from onnxrec.server.ranking import Ranking
from onnxrec.server.registry import ModelRegistry
from onnxrec.server.respond import fill_items, respond, respond_batch
from onnxrec.server.served import ScoreRow, SimilarRow
from onnxrec.v1 import recommender_pb2 as pb

__all__ = ["RecommenderServicer"]

Handler = Callable[[Any, float | None], Awaitable[Any]]


class RecommenderServicer:
    """Implements ``onnxrec.v1.RecommenderService`` on a :class:`ModelRegistry`."""

    def __init__(
        self,
        registry: ModelRegistry,
        config: ServerConfig,
        metrics: ServerMetrics | None = None,
        events: EventStore | None = None,
    ) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.limits = RequestLimits(config.max_id_chars, config.max_list_items, config.max_message_bytes)
        self.planner = Planner(registry, self.limits)
        chunk = config.max_batch_size
        self.events = events or make_store(
            config.state, config.state_max_users, config.state_max_events, config.state_ttl_s
        )
        stages: list[Stage] = [] if self.events is None else [RecentEvents(self.events, metrics)]
        stages += [ModelRetrieval(chunk), Ranking(chunk), Explanation(chunk), PopularityRetrieval()]
        self.pipeline = RecommendPipeline(self.planner, self.limits, chunk, stages)
        self._handlers: dict[type, Handler] = {
            pb.RecommendRequest: self._recommend,
            pb.RecommendBatchRequest: self._recommend_batch,
            pb.ScoreRequest: self._score,
            pb.SimilarItemsRequest: self._similar,
            pb.ListModelsRequest: self._list_models,
            pb.GetModelMetadataRequest: self._metadata,
            pb.TrackEventsRequest: self._track,
            pb.ForgetUserRequest: Eraser(registry, config, self.limits, self.events),
        }

    async def answer(self, request: Any, deadline: float | None = None) -> Any:
        """The response message to ``request`` (any of the service's request messages); raises what
        :func:`~onnxrec.server.status.status_for` maps. ``deadline``: a ``time.monotonic()`` value."""
        handler = self._handlers.get(type(request))
        if handler is None:
            raise TypeError(f"not a RecommenderService request: {type(request).__name__}")
        return await handler(request, deadline)

    def rpc(self) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        """The gRPC behaviour of every method: :meth:`answer` with the call's deadline."""

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            remaining = context.time_remaining()
            return await self.answer(request, None if remaining is None else time.monotonic() + remaining)

        return call

    # -- recommend -------------------------------------------------------------------------------------
    async def _recommend(self, request: pb.RecommendRequest, deadline: float | None) -> pb.RecommendResponse:
        (query,) = await self.pipeline.run((request,), deadline, 1)
        return respond(query)

    async def _recommend_batch(
        self, request: pb.RecommendBatchRequest, deadline: float | None
    ) -> pb.RecommendBatchResponse:
        queries = await self.pipeline.run(request.requests, deadline, self.config.max_request_items)
        return await respond_batch(queries, self.config.max_batch_size, self.limits)

    # -- score, similar items ----------------------------------------------------------------------------
    async def _score(self, request: pb.ScoreRequest, deadline: float | None) -> pb.ScoreResponse:
        served = self.planner.served(request.model)
        model = served.model
        self.limits.check_id(request.user_id, "user_id")
        n, most = len(request.item_ids), self.config.max_request_items
        if n == 0 or n > most:
            raise invalid(f"item_ids must hold 1 to {most} ids, got {n}")
        self.limits.check_ids(request.item_ids, "item_ids")
        at = request_time(request.request_time)
        candidates = items_to_indices(model, request.item_ids, "item_ids")
        user = model.user_index.get(request.user_id)
        if user is None:
            scores, source = model.popularity[candidates].astype(np.float32), pb.SOURCE_POPULARITY
        else:
            scores = await served.score.submit(ScoreRow(user, candidates, at), deadline=deadline)
            source = pb.SOURCE_MODEL
        response = pb.ScoreResponse(model_name=model.name, model_version=model.version, source=source)
        add = response.items.add
        for raw, s in zip(request.item_ids, scores.tolist(), strict=True):
            add(item_id=raw, score=s)
        return response

    async def _similar(self, request: pb.SimilarItemsRequest, deadline: float | None) -> pb.SimilarItemsResponse:
        served = self.planner.served(request.model)
        model = served.model
        self.planner.check_k(request.k, model)
        if model.similar_refusal is not None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, model.similar_refusal)
        self.limits.check_id(request.item_id, "item_id")
        item = model.item_index.get(request.item_id)
        if item is None:
            raise not_found(f"unknown item id {shown(request.item_id)} (model {model.name} version {model.version})")
        top = await served.similar.submit(SimilarRow(item, request.k), deadline=deadline)
        response = pb.SimilarItemsResponse(model_name=model.name, model_version=model.version)
        fill_items(response.items, model, top, request.k, request.include_metadata)
        return response

    # -- events ------------------------------------------------------------------------------------------
    async def _track(self, request: pb.TrackEventsRequest, deadline: float | None) -> pb.TrackEventsResponse:
        model = self.planner.served(request.model).model

        def items_known(ids: Any) -> None:
            items_to_indices(model, ids, "events.item_id")

        return await track(
            self.events, request, items_known, self.limits.check_ids, self.metrics, self.config.max_request_items
        )

    # -- models ------------------------------------------------------------------------------------------
    async def _list_models(self, request: pb.ListModelsRequest, deadline: float | None) -> pb.ListModelsResponse:
        snap = self.registry.snapshot
        out = []
        for name in snap.names():
            versions = sorted(snap.models[name])
            latest = snap.models[name][versions[-1]].model
            out.append(
                pb.ModelSummary(name=name, versions=versions, latest_version=versions[-1], model_type=latest.model_type)
            )
        return pb.ListModelsResponse(models=out)

    async def _metadata(
        self, request: pb.GetModelMetadataRequest, deadline: float | None
    ) -> pb.GetModelMetadataResponse:
        model = self.planner.served(request.model).model
        metrics: dict[str, float] = {}
        for stage in ("valid", "test"):
            for view, values in model.manifest.get("metrics", {}).get(stage, {}).items():
                if isinstance(values, dict):
                    metrics.update({f"{stage}/{view}/{k}": float(v) for k, v in values.items()})
        return pb.GetModelMetadataResponse(
            name=model.name,
            version=model.version,
            model_type=model.model_type,
            num_users=model.num_users,
            num_items=model.num_items,
            k_max=model.k_max,
            history_len=model.history_len,
            user_features=model.user_features,
            graphs=sorted(model.sessions),
            metrics=metrics,
            execution_provider=model.provider,
            stages=model.stages,
            candidates=model.candidates,
            context_fields=model.rank_inputs.context,
        )
