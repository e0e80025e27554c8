"""What each call of the clients sends and how its reply reads, for the sync and the asyncio client alike.

One function per RPC (:func:`recommend`, :func:`score`, ...) takes the client method's arguments and
returns a :class:`Call`: the stub method, the request, the deadline and the converter of the reply into
a plain result. The clients make their methods from these functions and only send the call (and, in
asyncio, await it), so both send the same bytes and return the same results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from onnxrec.clients.facade import Call
from onnxrec.clients.health import HEALTH_CHECK, HealthCheckRequest, HealthCheckResponse
from onnxrec.clients.results import Event, Item, ModelInfo, ModelMetadata, Reason, Recommendation, Scores
from onnxrec.v1 import recommender_pb2 as pb

_SOURCES = {pb.SOURCE_MODEL: "model", pb.SOURCE_HISTORY: "history", pb.SOURCE_POPULARITY: "popularity"}


def model_ref(model: str, version: int = 0) -> pb.ModelRef:
    """Which model answers (version 0 = the latest loaded)."""
    return pb.ModelRef(name=model, version=version)


def recommend(
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
    candidates: int = 0,
    explain: bool = False,
    request_time: int = 0,
    timeout: float | None = None,
) -> Call[pb.RecommendRequest, Recommendation]:
    """Top-k items for one user (``history``: recent item ids, newest last, for unknown users;
    ``candidates``: items a pipeline version retrieves for its ranker, 0 = the version's; ``explain``: fill
    each item's ``reasons``, the history items that most support it; ``request_time``: when the user asks,
    unix seconds, for a ranker that reads the interaction's context, 0 = the server's clock)."""
    request = pb.RecommendRequest(
        model=model_ref(model, version),
        user_id=str(user_id),
        k=k,
        history=[str(h) for h in history],
        exclude_item_ids=[str(e) for e in exclude],
        include_metadata=include_metadata,
        user_features=dict(user_features or {}),
        candidates=candidates,
        explain=explain,
        request_time=request_time,
    )
    if exclude_seen is not None:
        request.exclude_seen = exclude_seen
    return Call("Recommend", request, to_recommendation, timeout)


def recommend_request(model: str, user_id: str, k: int = 10, **options: Any) -> pb.RecommendRequest:
    """The RecommendRequest :func:`recommend` sends (the same arguments, ``history`` oldest first)."""
    return recommend(model, user_id, k, **options).request


def recommend_batch(
    model: str,
    user_ids: Sequence[str],
    k: int = 10,
    *,
    version: int = 0,
    include_metadata: bool = False,
    explain: bool = False,
    timeout: float | None = None,
) -> Call[pb.RecommendBatchRequest, list[Recommendation]]:
    """Top-k items for many users in one call; each answered as :meth:`recommend` would."""
    options = {"version": version, "include_metadata": include_metadata, "explain": explain}
    requests = [recommend_request(model, u, k, **options) for u in user_ids]
    return Call("RecommendBatch", pb.RecommendBatchRequest(requests=requests), to_recommendations, timeout)


def score(
    model: str,
    user_id: str,
    item_ids: Sequence[str],
    *,
    version: int = 0,
    request_time: int = 0,
    timeout: float | None = None,
) -> Call[pb.ScoreRequest, Scores]:
    """Scores of candidate items for one user, in the order given (``request_time`` as in :func:`recommend`)."""
    request = pb.ScoreRequest(
        model=model_ref(model, version),
        user_id=str(user_id),
        item_ids=[str(i) for i in item_ids],
        request_time=request_time,
    )
    return Call("Score", request, to_scores, timeout)


def similar(
    model: str,
    item_id: str,
    k: int = 10,
    *,
    version: int = 0,
    include_metadata: bool = False,
    timeout: float | None = None,
) -> Call[pb.SimilarItemsRequest, Recommendation]:
    """The k items most similar to ``item_id``."""
    request = pb.SimilarItemsRequest(
        model=model_ref(model, version), item_id=str(item_id), k=k, include_metadata=include_metadata
    )
    return Call("SimilarItems", request, to_similar, timeout)


def list_models(*, timeout: float | None = None) -> Call[pb.ListModelsRequest, list[ModelInfo]]:
    """The models the server has loaded."""
    return Call("ListModels", pb.ListModelsRequest(), to_models, timeout)


def model_metadata(
    model: str, *, version: int = 0, timeout: float | None = None
) -> Call[pb.GetModelMetadataRequest, ModelMetadata]:
    """What a model version is."""
    return Call("GetModelMetadata", pb.GetModelMetadataRequest(model=model_ref(model, version)), to_metadata, timeout)


def track(
    model: str,
    events: Sequence[Event | tuple[str, str]],
    *,
    version: int = 0,
    timeout: float | None = None,
) -> Call[pb.TrackEventsRequest, int]:
    """Record users' events (:class:`Event`, or ``(user_id, item_id)`` pairs); their next Recommend starts
    from these items. Returns how many were stored. Item ids are checked against ``model``'s catalog."""
    sent = []
    for e in events:
        ev = e if isinstance(e, Event) else Event(str(e[0]), str(e[1]))
        sent.append(
            pb.UserEvent(user_id=ev.user_id, item_id=ev.item_id, event_type=ev.event_type, timestamp_ms=ev.timestamp_ms)
        )
    request = pb.TrackEventsRequest(model=model_ref(model, version), events=sent)
    return Call("TrackEvents", request, lambda r: int(r.accepted), timeout)


def health(*, service: str = "", timeout: float | None = None) -> Call[Any, str]:
    """The server's health status name (SERVING, NOT_SERVING, ...; ``service`` empty: the whole server)."""
    return Call(HEALTH_CHECK, HealthCheckRequest(service=service), health_status, timeout)


def _items(items: Sequence[pb.ScoredItem]) -> list[Item]:
    return [
        Item(
            i.item_id,
            float(i.score),
            dict(i.metadata),
            [Reason(r.item_id, float(r.contribution), dict(r.metadata)) for r in i.reasons],
        )
        for i in items
    ]


def to_recommendation(r: pb.RecommendResponse) -> Recommendation:
    """Convert a RecommendResponse."""
    source = _SOURCES.get(r.source, "unknown")
    return Recommendation(_items(r.items), r.model_name, int(r.model_version), source, r.retrieval, tuple(r.stages))


def to_recommendations(r: pb.RecommendBatchResponse) -> list[Recommendation]:
    """Convert a RecommendBatchResponse."""
    return [to_recommendation(one) for one in r.responses]


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
        tuple(r.stages),
        int(r.candidates),
        bool(r.context_fields),
    )


def health_status(reply: Any) -> str:
    """The status name of a HealthCheckResponse (SERVING, NOT_SERVING, ...)."""
    value = HealthCheckResponse.DESCRIPTOR.enum_types_by_name["ServingStatus"].values_by_number.get(reply.status)
    return str(value.name) if value is not None else f"UNKNOWN_STATUS_{reply.status}"
