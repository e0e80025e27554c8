"""Request builders and response converters shared by the sync and the asyncio client.

The health check (``grpc.health.v1.Health/Check``) uses two messages built here from a descriptor in
a private pool, so the clients need only grpcio and protobuf (not grpcio-health-checking).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from onnxrec.clients.results import Item, ModelInfo, ModelMetadata, Recommendation, Scores
from onnxrec.v1 import recommender_pb2 as pb

_SOURCES = {pb.SOURCE_MODEL: "model", pb.SOURCE_HISTORY: "history", pb.SOURCE_POPULARITY: "popularity"}

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
"""The full method name of the standard gRPC health check."""


def _health_messages() -> tuple[Any, Any]:
    """HealthCheckRequest and HealthCheckResponse of grpc/health/v1/health.proto (same wire format)."""
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="grpc/health/v1/health.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=field.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=field.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()  # private: no clash with grpcio-health-checking's registration
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")),
    )


HealthCheckRequest, HealthCheckResponse = _health_messages()


def model_ref(model: str, version: int = 0) -> pb.ModelRef:
    """Which model answers (version 0 = the latest loaded)."""
    return pb.ModelRef(name=model, version=version)


def recommend_request(
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
) -> pb.RecommendRequest:
    """A RecommendRequest (``history`` oldest first, newest last)."""
    request = pb.RecommendRequest(
        model=model_ref(model, version),
        user_id=str(user_id),
        k=k,
        history=[str(h) for h in history],
        exclude_item_ids=[str(e) for e in exclude],
        include_metadata=include_metadata,
        user_features=dict(user_features or {}),
    )
    if exclude_seen is not None:
        request.exclude_seen = exclude_seen
    return request


def score_request(model: str, user_id: str, item_ids: Sequence[str], *, version: int = 0) -> pb.ScoreRequest:
    """A ScoreRequest."""
    return pb.ScoreRequest(model=model_ref(model, version), user_id=str(user_id), item_ids=[str(i) for i in item_ids])


def similar_request(
    model: str, item_id: str, k: int = 10, *, version: int = 0, include_metadata: bool = False
) -> pb.SimilarItemsRequest:
    """A SimilarItemsRequest."""
    return pb.SimilarItemsRequest(
        model=model_ref(model, version), item_id=str(item_id), k=k, include_metadata=include_metadata
    )


def _items(items: Sequence[pb.ScoredItem]) -> list[Item]:
    return [Item(i.item_id, float(i.score), dict(i.metadata)) for i in items]


def to_recommendation(r: pb.RecommendResponse) -> Recommendation:
    """Convert a RecommendResponse."""
    return Recommendation(_items(r.items), r.model_name, int(r.model_version), _SOURCES.get(r.source, "unknown"))


def to_scores(r: pb.ScoreResponse) -> Scores:
    """Convert a ScoreResponse."""
    return Scores(_items(r.items), r.model_name, int(r.model_version), _SOURCES.get(r.source, "unknown"))


def to_similar(r: pb.SimilarItemsResponse) -> Recommendation:
    """Convert a SimilarItemsResponse."""
    return Recommendation(_items(r.items), r.model_name, int(r.model_version), "model")


def to_models(r: pb.ListModelsResponse) -> list[ModelInfo]:
    """Convert a ListModelsResponse."""
    return [ModelInfo(m.name, list(m.versions), int(m.latest_version), m.model_type) for m in r.models]


def to_metadata(r: pb.GetModelMetadataResponse) -> ModelMetadata:
    """Convert a GetModelMetadataResponse."""
    return ModelMetadata(
        r.name,
        int(r.version),
        r.model_type,
        int(r.num_users),
        int(r.num_items),
        int(r.k_max),
        int(r.history_len),
        list(r.user_features),
        list(r.graphs),
        dict(r.metrics),
        r.execution_provider,
    )


def health_request(service: str = "") -> Any:
    """A HealthCheckRequest (``service`` empty: the whole server)."""
    return HealthCheckRequest(service=service)


def health_status(reply: Any) -> str:
    """The status name of a HealthCheckResponse (SERVING, NOT_SERVING, ...)."""
    value = HealthCheckResponse.DESCRIPTOR.enum_types_by_name["ServingStatus"].values_by_number.get(reply.status)
    return str(value.name) if value is not None else f"UNKNOWN_STATUS_{reply.status}"


def channel_target(servers: str | Sequence[str]) -> tuple[str, bool]:
    """The gRPC target for one address, a ``dns:///`` name, or several addresses (client-side
    round robin over a static list); and whether to balance round-robin."""
    if isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    servers = list(servers)
    if not servers:
        raise ValueError("no server address given")
    if len(servers) == 1:
        target = servers[0]
        return target, target.startswith("dns:")
    return "ipv4:" + ",".join(servers), True


def service_config(retries: int, round_robin: bool) -> str:
    """gRPC service config: retry UNAVAILABLE with exponential backoff; optional round robin."""
    config: dict[str, object] = {
        "methodConfig": [
            {
                "name": [{"service": "onnxrec.v1.RecommenderService"}],
                "retryPolicy": {
                    "maxAttempts": max(2, min(retries + 1, 5)),
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
        if retries > 0
        else [],
    }
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)
