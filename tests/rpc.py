"""The gRPC calls the server tests share: track a user's events, ask for their recommendations, read
an answer's item ids. ``target`` is a stub, or an address for which a channel is opened for the one call."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc

from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc

Target = pb_grpc.RecommenderServiceStub | str


@contextmanager
def _stub(target: Target) -> Iterator[pb_grpc.RecommenderServiceStub]:
    if not isinstance(target, str):
        yield target
        return
    with grpc.insecure_channel(target) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


def track(
    target: Target, user: str, items: Sequence[str], *, model: str = "demo", event_type: str = "view"
) -> pb.TrackEventsResponse:
    """TrackEvents: ``items`` oldest first, one millisecond apart."""
    events = [
        pb.UserEvent(user_id=user, item_id=i, event_type=event_type, timestamp_ms=1000 + j) for j, i in enumerate(items)
    ]
    with _stub(target) as stub:
        return stub.TrackEvents(pb.TrackEventsRequest(model=pb.ModelRef(name=model), events=events), timeout=30)


def recommend(target: Target, user: str, k: int = 10, *, model: str = "demo", **fields: Any) -> pb.RecommendResponse:
    """Recommend for ``user`` (``fields``: more RecommendRequest fields, e.g. ``explain=True``)."""
    request = pb.RecommendRequest(model=pb.ModelRef(name=model), user_id=user, k=k, **fields)
    with _stub(target) as stub:
        return stub.Recommend(request, timeout=30)


def ids(reply: pb.RecommendResponse) -> list[str]:
    """The answer's item ids, best first."""
    return [i.item_id for i in reply.items]
