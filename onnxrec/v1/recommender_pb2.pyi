from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    SOURCE_MODEL: _ClassVar[Source]
    SOURCE_HISTORY: _ClassVar[Source]
    SOURCE_POPULARITY: _ClassVar[Source]
SOURCE_UNSPECIFIED: Source
SOURCE_MODEL: Source
SOURCE_HISTORY: Source
SOURCE_POPULARITY: Source

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "metadata", "reasons")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    metadata: _containers.ScalarMap[str, str]
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("item_id", "contribution", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    contribution: float
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, item_id: _Optional[str] = ..., contribution: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("model", "user_id", "k", "history", "exclude_item_ids", "exclude_seen", "include_metadata", "user_features", "candidates", "explain", "request_time")
    class UserFeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METADATA_FIELD_NUMBER: _ClassVar[int]
    USER_FEATURES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    user_id: str
    k: int
    history: _containers.RepeatedScalarFieldContainer[str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_seen: bool
    include_metadata: bool
    user_features: _containers.ScalarMap[str, str]
    candidates: int
    explain: bool
    request_time: int
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., user_id: _Optional[str] = ..., k: _Optional[int] = ..., history: _Optional[_Iterable[str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_seen: _Optional[bool] = ..., include_metadata: _Optional[bool] = ..., user_features: _Optional[_Mapping[str, str]] = ..., candidates: _Optional[int] = ..., explain: _Optional[bool] = ..., request_time: _Optional[int] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_name", "model_version", "source", "retrieval", "stages")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_name: str
    model_version: int
    source: Source
    retrieval: str
    stages: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., source: _Optional[_Union[Source, str]] = ..., retrieval: _Optional[str] = ..., stages: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecommendRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecommendRequest, _Mapping]]] = ...) -> None: ...

class RecommendBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RecommendResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[RecommendResponse, _Mapping]]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "user_id", "item_ids", "request_time")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    user_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    request_time: int
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., user_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ..., request_time: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("items", "model_name", "model_version", "source")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_name: str
    model_version: int
    source: Source
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., source: _Optional[_Union[Source, str]] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("model", "item_id", "k", "include_metadata")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METADATA_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    item_id: str
    k: int
    include_metadata: bool
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., item_id: _Optional[str] = ..., k: _Optional[int] = ..., include_metadata: _Optional[bool] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "model_name", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_name: str
    model_version: int
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "versions", "latest_version", "model_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[int]
    latest_version: int
    model_type: str
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[int]] = ..., latest_version: _Optional[int] = ..., model_type: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class GetModelMetadataResponse(_message.Message):
    __slots__ = ("name", "version", "model_type", "num_users", "num_items", "k_max", "history_len", "user_features", "graphs", "metrics", "execution_provider", "stages", "candidates", "context_fields")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_USERS_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    K_MAX_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LEN_FIELD_NUMBER: _ClassVar[int]
    USER_FEATURES_FIELD_NUMBER: _ClassVar[int]
    GRAPHS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    model_type: str
    num_users: int
    num_items: int
    k_max: int
    history_len: int
    user_features: _containers.RepeatedScalarFieldContainer[str]
    graphs: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    execution_provider: str
    stages: _containers.RepeatedScalarFieldContainer[str]
    candidates: int
    context_fields: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., model_type: _Optional[str] = ..., num_users: _Optional[int] = ..., num_items: _Optional[int] = ..., k_max: _Optional[int] = ..., history_len: _Optional[int] = ..., user_features: _Optional[_Iterable[str]] = ..., graphs: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., execution_provider: _Optional[str] = ..., stages: _Optional[_Iterable[str]] = ..., candidates: _Optional[int] = ..., context_fields: _Optional[bool] = ...) -> None: ...

class UserEvent(_message.Message):
    __slots__ = ("user_id", "item_id", "event_type", "timestamp_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    event_type: str
    timestamp_ms: int
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class TrackEventsRequest(_message.Message):
    __slots__ = ("model", "events")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    events: _containers.RepeatedCompositeFieldContainer[UserEvent]
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., events: _Optional[_Iterable[_Union[UserEvent, _Mapping]]] = ...) -> None: ...

class TrackEventsResponse(_message.Message):
    __slots__ = ("accepted", "users")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    users: int
    def __init__(self, accepted: _Optional[int] = ..., users: _Optional[int] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("model", "user_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    user_id: str
    def __init__(self, model: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ("version", "events_removed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    version: int
    events_removed: bool
    def __init__(self, version: _Optional[int] = ..., events_removed: _Optional[bool] = ...) -> None: ...
