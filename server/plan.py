"""The first stage of a recommendation: a validated :class:`RecommendQuery` from a request message.

Planning checks every length a caller controls (:mod:`onnxrec.server.limits`), picks the model version
(a query keeps it to the end, so a reload never changes an answer in flight), maps raw ids to indices,
and decides where the answer comes from: the ``recommend`` graph for a known user, the
``recommend_from_history`` graph for an unknown user with a history, popularity otherwise. Nothing
from a request reaches the filesystem: model names are only looked up in the registry's table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

from onnxrec.server.limits import MAX_NAME_CHARS, RequestError, RequestLimits, invalid, request_time, shown
from onnxrec.server.loaded_model import LoadedModel, Reasons, TopK
from onnxrec.server.registry import ModelNotFound, ModelRegistry
from onnxrec.server.served import ServedModel
from onnxrec.v1 import recommender_pb2 as pb

__all__ = ["NO_ITEMS", "Planner", "RecommendQuery", "items_to_indices"]

NO_ITEMS = np.empty(0, dtype=np.int64)
NO_ITEMS.flags.writeable = False


class RecommendQuery:
    """One user's recommendation on its way through the pipeline: the model version, where the answer
    comes from (``source``) and that graph's row, then the answer (``top``) once a stage has it."""

    __slots__ = (
        "events",
        "exclude",
        "exclude_seen",
        "explain",
        "features",
        "fetch",
        "history",
        "include_metadata",
        "k",
        "last_time",
        "rank_features",
        "reasons",
        "request_time",
        "served",
        "source",
        "top",
        "user",
        "user_id",
    )

    def __init__(self, served: ServedModel, k: int, include_metadata: bool) -> None:
        self.served = served
        self.k = k
        self.user_id = ""  # the raw user id (what the event store is keyed by)
        self.exclude_seen = True
        self.events = 0  # tracked items the answer starts from (events.py)
        self.fetch = k  # items retrieval returns: k, or a pipeline's candidates for its ranker
        self.include_metadata = include_metadata
        self.source: pb.Source = pb.SOURCE_POPULARITY
        self.user = -1  # the user's index (SOURCE_MODEL)
        self.history: np.ndarray = NO_ITEMS  # item indices, newest first (SOURCE_HISTORY)
        self.exclude: np.ndarray = NO_ITEMS  # item indices never to recommend
        self.features: Sequence[int] = ()  # encoded user features (SOURCE_HISTORY)
        self.rank_features: Sequence[int] = ()  # the same, in the ranker's order (pipelines, SOURCE_HISTORY)
        self.top: TopK | None = None
        self.request_time = 0  # when the user asks (unix seconds), for a ranker that reads the context
        self.last_time = -1  # the user's latest tracked event (unix seconds; -1: none tracked)
        self.explain = False  # fill each item's reasons (server/explain.py)
        self.reasons: Reasons | None = None  # the reasons of top's first k items, once explained

    @property
    def model(self) -> LoadedModel:
        """The loaded model version answering this query."""
        return self.served.model


def items_to_indices(model: LoadedModel, ids: Any, what: str) -> np.ndarray:
    """Item indices of raw item ids (``what`` names the field); unknown ids are INVALID_ARGUMENT."""
    if not ids:
        return NO_ITEMS
    out = np.empty(len(ids), dtype=np.int64)
    unknown = []
    for j, raw in enumerate(ids):
        idx = model.item_index.get(raw)
        if idx is None:
            unknown.append(raw)
        else:
            out[j] = idx
    if unknown:
        listed = ", ".join(shown(u) for u in unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise invalid(f"unknown item id(s) in {what}: {listed} (model {model.name} version {model.version})")
    return out


class Planner:
    """Turns request messages into queries (see the module docstring)."""

    def __init__(self, registry: ModelRegistry, limits: RequestLimits) -> None:
        self.registry = registry
        self.limits = limits

    def served(self, ref: pb.ModelRef) -> ServedModel:
        """The model version a request names (version 0: the latest); NOT_FOUND when not loaded."""
        name = ref.name
        if not name or len(name) > MAX_NAME_CHARS:  # (the check inline: this is every request's path)
            self.limits.check_name(name)
        if ref.version < 0:
            raise invalid(f"model.version must be 0 (latest) or positive, not {ref.version}")
        try:
            return self.registry.get(name, int(ref.version))
        except ModelNotFound as exc:
            if not self.registry.scanned:  # a replica just started: retryable, not a wrong name
                raise RequestError(
                    grpc.StatusCode.UNAVAILABLE, "the server is still loading its models; retry"
                ) from exc
            raise not_found(str(exc)) from exc

    @staticmethod
    def check_k(k: int, model: LoadedModel) -> None:
        """``k`` within 1 and the model's ``k_max``."""
        if k < 1 or k > model.k_max:
            raise invalid(f"k must be between 1 and {model.k_max} for model {model.name}, got {k}")

    def plan(self, request: pb.RecommendRequest) -> RecommendQuery:
        """Validate one Recommend request and decide how it is answered (no model runs yet)."""
        served = self.served(request.model)
        model = served.model
        limits = self.limits
        user_id, exclude_ids, history_ids = request.user_id, request.exclude_item_ids, request.history
        if not user_id or len(user_id) > limits.max_id_chars:  # (the checks inline, as in served())
            limits.check_id(user_id, "user_id")
        self.check_k(request.k, model)
        if exclude_ids:
            limits.check_ids(exclude_ids, "exclude_item_ids")
        if history_ids:
            limits.check_ids(history_ids, "history")
        if request.user_features:
            limits.check_features(dict(request.user_features))
        exclude_seen = request.exclude_seen if request.HasField("exclude_seen") else True
        excluded = items_to_indices(model, exclude_ids, "exclude_item_ids")
        history = items_to_indices(model, history_ids, "history")
        user = model.user_index.get(user_id)
        query = RecommendQuery(served, request.k, request.include_metadata)
        query.user_id, query.exclude_seen = user_id, exclude_seen
        query.request_time = request_time(request.request_time)
        if request.explain:
            if model.explain_refusal is not None:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, model.explain_refusal)
            query.explain = True
        if user is not None:
            query.source, query.user = pb.SOURCE_MODEL, user
            if not exclude_seen:
                query.exclude = excluded
            else:
                query.exclude = np.concatenate([model.seen(user), excluded]) if len(excluded) else model.seen_row(user)
        elif len(history):
            query.source = pb.SOURCE_HISTORY
            query.history = history[::-1][: model.history_len]  # newest first
            query.exclude = np.concatenate([history, excluded]) if exclude_seen else excluded
            features = dict(request.user_features)
            query.features = model.encode_user_features(features)
            if model.pipeline:
                query.rank_features = model.encode_user_features(features, model.rank_features)
        else:
            query.exclude = excluded
            if request.user_features:  # (for the event store: tracked items make this a history query)
                query.features = model.encode_user_features(dict(request.user_features))
                if model.pipeline:
                    query.rank_features = model.encode_user_features(dict(request.user_features), model.rank_features)
        if model.pipeline:
            query.fetch = self.candidates(request.candidates, request.k, model)
        return query

    @staticmethod
    def candidates(asked: int, k: int, model: LoadedModel) -> int:
        """How many items a pipeline version retrieves for its ranker: ``asked`` (0: the version's
        candidates), between ``k`` and the version's candidates."""
        if asked == 0:
            return model.candidates
        if asked < k or asked > model.candidates:
            raise invalid(
                f"candidates must be 0 (the version's {model.candidates}) or between k ({k}) and "
                f"{model.candidates} for model {model.name}, got {asked}"
            )
        return asked


def not_found(message: str) -> RequestError:
    """A NOT_FOUND :class:`RequestError`."""
    return RequestError(grpc.StatusCode.NOT_FOUND, message)
