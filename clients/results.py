"""Typed results of client calls (plain dataclasses; no protobuf types leak to callers)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reason:
    """An item of the user's history that supports a recommended item, and how much (its contribution
    to the item's score; higher: more); ``metadata``: the history item's (title, ...) when the request
    asked for metadata."""

    item_id: str
    contribution: float
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    """One recommended or scored item (``reasons``: when the request asked to explain, up to 3 history
    items that most support it, the strongest first)."""

    item_id: str
    score: float
    metadata: dict[str, str] = field(default_factory=dict)
    reasons: list[Reason] = field(default_factory=list)


@dataclass(frozen=True)
class Recommendation:
    """The answer to a Recommend call: items best first, and who answered how."""

    items: list[Item]
    model_name: str
    model_version: int
    source: str  # "model", "history" or "popularity"
    retrieval: str = ""  # "exact" or the index type (hnsw, ivf, flat) for model and history answers
    stages: tuple[str, ...] = ()  # ("retrieve",), ("retrieve", "rank") for a pipeline version, ("popularity",)

    @property
    def item_ids(self) -> list[str]:
        """The item ids, best first."""
        return [i.item_id for i in self.items]


@dataclass(frozen=True)
class Scores:
    """The answer to a Score call: one item per requested id, in request order."""

    items: list[Item]
    model_name: str
    model_version: int
    source: str


@dataclass(frozen=True)
class ModelInfo:
    """One loaded model."""

    name: str
    versions: list[int]
    latest_version: int
    model_type: str


@dataclass(frozen=True)
class ModelMetadata:
    """What one model version is."""

    name: str
    version: int
    model_type: str
    num_users: int
    num_items: int
    k_max: int
    history_len: int
    user_features: list[str]
    graphs: list[str]
    metrics: dict[str, float]
    execution_provider: str
    stages: tuple[str, ...] = ()  # what answers a Recommend: ("retrieve",) or ("retrieve", "rank")
    candidates: int = 0  # pipeline versions: items retrieval passes to the ranker (0: one stage)
    context_fields: bool = False  # pipeline versions whose ranker reads the request's time (request_time)


@dataclass(frozen=True)
class Event:
    """Something a user did with an item, for :meth:`track` (``timestamp_ms`` 0: when the server gets it)."""

    user_id: str
    item_id: str
    event_type: str = "interaction"
    timestamp_ms: int = 0
