"""The gRPC service: validate a request, map raw ids to indices, queue it on the model's batcher,
map the answer back. Nothing from a request reaches the filesystem: model names are only looked up
in the registry's in-memory table."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import numpy as np

from onnxrec.server.batcher import BatcherClosedError, DeadlineExpiredError, QueueFullError
from onnxrec.server.config import ServerConfig
from onnxrec.server.loaded_model import LoadedModel, TopK
from onnxrec.server.registry import ModelNotFound, ModelRegistry, ServedModel
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc

log = logging.getLogger("onnxrec.server")


class RequestError(Exception):
    """A request a caller must change: carries the gRPC status code and an actionable message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


_NO_ITEMS = np.empty(0, dtype=np.int64)
_NO_ITEMS.flags.writeable = False


def _items_to_indices(model: LoadedModel, ids: Any, what: str) -> np.ndarray:
    if not ids:
        return _NO_ITEMS
    out = np.empty(len(ids), dtype=np.int64)
    unknown = []
    for j, raw in enumerate(ids):
        idx = model.item_index.get(raw)
        if idx is None:
            unknown.append(raw)
        else:
            out[j] = idx
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise _invalid(f"unknown item id(s) in {what}: {shown} (model {model.name} version {model.version})")
    return out


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """Implements ``onnxrec.v1.RecommenderService`` on a :class:`ModelRegistry`."""

    def __init__(self, registry: ModelRegistry, config: ServerConfig) -> None:
        self.registry = registry
        self.config = config

    # -- helpers ------------------------------------------------------------------------------------
    def _model(self, ref: pb.ModelRef) -> ServedModel:
        if not ref.name:
            raise _invalid("model.name is empty")
        if ref.version < 0:
            raise _invalid(f"model.version must be 0 (latest) or positive, not {ref.version}")
        try:
            return self.registry.get(ref.name, int(ref.version))
        except ModelNotFound as exc:
            raise RequestError(grpc.StatusCode.NOT_FOUND, str(exc)) from exc

    def _check_k(self, k: int, model: LoadedModel) -> None:
        if k < 1 or k > model.k_max:
            raise _invalid(f"k must be between 1 and {model.k_max} for model {model.name}, got {k}")

    def _items(self, model: LoadedModel, top: TopK, k: int, metadata: bool) -> list[pb.ScoredItem]:
        ids = model.item_id_text
        pairs = zip(top.items[:k].tolist(), top.scores[:k].tolist(), strict=True)
        if metadata:
            return [pb.ScoredItem(item_id=ids[i], score=s, metadata=model.metadata(i)) for i, s in pairs]
        return [pb.ScoredItem(item_id=ids[i], score=s) for i, s in pairs]

    async def _abort(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, RequestError):
            await context.abort(exc.code, str(exc))
        if isinstance(exc, QueueFullError):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server overloaded: {exc}; retry with backoff")
        if isinstance(exc, DeadlineExpiredError):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the model ran")
        if isinstance(exc, BatcherClosedError):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the model is being unloaded; retry")
        if isinstance(exc, asyncio.CancelledError):
            raise exc
        log.exception("internal error")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log")

    # -- recommend ------------------------------------------------------------------------------------
    async def _recommend_one(
        self, request: pb.RecommendRequest, deadline: float | None, direct: bool = True
    ) -> pb.RecommendResponse:
        served = self._model(request.model)
        model = served.model
        if not request.user_id:
            raise _invalid("user_id is empty")
        self._check_k(request.k, model)
        exclude_seen = request.exclude_seen if request.HasField("exclude_seen") else True
        excluded = _items_to_indices(model, request.exclude_item_ids, "exclude_item_ids")
        history = _items_to_indices(model, request.history, "history")
        user = model.user_index.get(request.user_id)
        if user is not None:
            if exclude_seen:
                exclude = np.concatenate([model.seen(user), excluded]) if len(excluded) else model.seen(user)
            else:
                exclude = excluded
            top = await served.recommend.submit((user, exclude, request.k), deadline=deadline, direct=direct)
            source = pb.SOURCE_MODEL
        elif len(history):
            recent = history[::-1][: model.history_len]  # newest first
            exclude = np.concatenate([history, excluded]) if exclude_seen else excluded
            features = model.encode_user_features(dict(request.user_features))
            top = await served.history.submit((recent, exclude, features, request.k), deadline=deadline, direct=direct)
            source = pb.SOURCE_HISTORY
        else:
            drop = set(excluded.tolist())
            items = np.array([i for i in model.popular[: request.k + len(drop)] if i not in drop], dtype=np.int64)
            top = TopK(items=items, scores=model.popularity[items].astype(np.float32))
            source = pb.SOURCE_POPULARITY
        return pb.RecommendResponse(
            items=self._items(model, top, request.k, request.include_metadata),
            model_name=model.name,
            model_version=model.version,
            source=source,
        )

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        try:
            return await self._recommend_one(request, _deadline(context))
        except Exception as exc:
            await self._abort(context, exc)
            raise

    async def RecommendBatch(
        self, request: pb.RecommendBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchResponse:
        try:
            n = len(request.requests)
            if n == 0 or n > self.config.max_request_items:
                raise _invalid(f"requests must hold 1 to {self.config.max_request_items} entries, got {n}")
            deadline = _deadline(context)
            # direct=False: the entries queue together and run as batches, not one by one
            tasks = [self._recommend_one(r, deadline, direct=False) for r in request.requests]
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for j, res in enumerate(results):
                if isinstance(res, RequestError):
                    raise RequestError(res.code, f"requests[{j}]: {res}")
                if isinstance(res, BaseException):
                    raise res
            return pb.RecommendBatchResponse(responses=results)
        except Exception as exc:
            await self._abort(context, exc)
            raise

    # -- score ----------------------------------------------------------------------------------------
    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        try:
            served = self._model(request.model)
            model = served.model
            if not request.user_id:
                raise _invalid("user_id is empty")
            n = len(request.item_ids)
            if n == 0 or n > self.config.max_request_items:
                raise _invalid(f"item_ids must hold 1 to {self.config.max_request_items} ids, got {n}")
            candidates = _items_to_indices(model, request.item_ids, "item_ids")
            user = model.user_index.get(request.user_id)
            if user is None:
                scores = model.popularity[candidates].astype(np.float32)
                source = pb.SOURCE_POPULARITY
            else:
                scores = await served.score.submit((user, candidates), deadline=_deadline(context))
                source = pb.SOURCE_MODEL
            items = [
                pb.ScoredItem(item_id=raw, score=float(s))
                for raw, s in zip(request.item_ids, scores.tolist(), strict=True)
            ]
            return pb.ScoreResponse(items=items, model_name=model.name, model_version=model.version, source=source)
        except Exception as exc:
            await self._abort(context, exc)
            raise

    # -- similar items ----------------------------------------------------------------------------------
    async def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimilarItemsResponse:
        try:
            served = self._model(request.model)
            model = served.model
            self._check_k(request.k, model)
            if not request.item_id:
                raise _invalid("item_id is empty")
            item = model.item_index.get(request.item_id)
            if item is None:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"unknown item id {request.item_id!r} (model {model.name} version {model.version})",
                )
            top = await served.similar.submit((item, request.k), deadline=_deadline(context))
            return pb.SimilarItemsResponse(
                items=self._items(model, top, request.k, request.include_metadata),
                model_name=model.name,
                model_version=model.version,
            )
        except Exception as exc:
            await self._abort(context, exc)
            raise

    # -- models -----------------------------------------------------------------------------------------
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        snap = self.registry.snapshot
        out = []
        for name in snap.names():
            versions = sorted(snap.models[name])
            out.append(
                pb.ModelSummary(
                    name=name,
                    versions=versions,
                    latest_version=versions[-1],
                    model_type=snap.models[name][versions[-1]].model.model_type,
                )
            )
        return pb.ListModelsResponse(models=out)

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        try:
            model = self._model(request.model).model
        except Exception as exc:
            await self._abort(context, exc)
            raise
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
        )
