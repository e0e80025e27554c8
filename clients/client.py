"""The synchronous client: a facade over the generated stub with typed results and one error type."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from onnxrec.clients import requests as rq
from onnxrec.clients.channel import settings_for
from onnxrec.clients.errors import RecommenderError
from onnxrec.clients.results import ModelInfo, ModelMetadata, Recommendation, Scores
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc

T = TypeVar("T")


class RecommenderClient:
    """Calls an onnxrec server.

    ``servers`` is ``host:port``, ``dns:///name:port`` or several addresses (balanced round robin).
    ``timeout`` is each call's deadline in seconds; UNAVAILABLE is retried with backoff (``retries``)
    through gRPC's service config; every failure raises :class:`RecommenderError`.

    >>> with RecommenderClient("127.0.0.1:50051") as client:  # doctest: +SKIP
    ...     client.recommend("ml100k", user_id="196", k=10).item_ids
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
        self._channel = (
            grpc.secure_channel(s.target, s.credentials, options=s.options)
            if s.credentials
            else grpc.insecure_channel(s.target, options=s.options)
        )
        self._stub = pb_grpc.RecommenderServiceStub(self._channel)
        self._health = self._channel.unary_unary(
            rq.HEALTH_CHECK,
            request_serializer=rq.HealthCheckRequest.SerializeToString,
            response_deserializer=rq.HealthCheckResponse.FromString,
        )

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise RecommenderError.from_rpc(err, self.target) from None

    def recommend(
        self,
        model: str,
        user_id: str,
        k: int = 10,
        *,
        version: int = 0,
        history: Sequence[str] = (),
        exclude: Sequence[str] = (),
        exclude_seen: bool | None = None,
        include_metadata: bool = False,
        user_features: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Recommendation:
        """Top-k items for one user (``history``: recent item ids, newest last, for unknown users)."""
        request = rq.recommend_request(
            model,
            user_id,
            k,
            version=version,
            history=history,
            exclude=exclude,
            exclude_seen=exclude_seen,
            include_metadata=include_metadata,
            user_features=user_features,
        )
        return rq.to_recommendation(self._call(self._stub.Recommend, request, timeout))

    def recommend_batch(
        self,
        model: str,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        version: int = 0,
        include_metadata: bool = False,
        timeout: float | None = None,
    ) -> list[Recommendation]:
        """Top-k items for many users in one call; each answered as :meth:`recommend` would."""
        request = pb.RecommendBatchRequest(
            requests=[
                rq.recommend_request(model, u, k, version=version, include_metadata=include_metadata) for u in user_ids
            ]
        )
        return [rq.to_recommendation(r) for r in self._call(self._stub.RecommendBatch, request, timeout).responses]

    def score(
        self, model: str, user_id: str, item_ids: Sequence[str], *, version: int = 0, timeout: float | None = None
    ) -> Scores:
        """Scores of candidate items for one user, in the order given."""
        return rq.to_scores(
            self._call(self._stub.Score, rq.score_request(model, user_id, item_ids, version=version), timeout)
        )

    def similar(
        self,
        model: str,
        item_id: str,
        k: int = 10,
        *,
        version: int = 0,
        include_metadata: bool = False,
        timeout: float | None = None,
    ) -> Recommendation:
        """The k items most similar to ``item_id``."""
        request = rq.similar_request(model, item_id, k, version=version, include_metadata=include_metadata)
        return rq.to_similar(self._call(self._stub.SimilarItems, request, timeout))

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models the server has loaded."""
        return rq.to_models(self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    def model_metadata(self, model: str, *, version: int = 0, timeout: float | None = None) -> ModelMetadata:
        """What a model version is."""
        request = pb.GetModelMetadataRequest(model=rq.model_ref(model, version))
        return rq.to_metadata(self._call(self._stub.GetModelMetadata, request, timeout))

    def health(self, *, service: str = "", timeout: float | None = None) -> str:
        """The server's health status name (SERVING, NOT_SERVING, ...)."""
        reply = self._call(self._health, rq.health_request(service), timeout)
        return rq.health_status(reply)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
