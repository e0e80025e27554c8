"""Clients of the onnxrec gRPC API: :class:`RecommenderClient` and :class:`AsyncRecommenderClient`.

Callers never import the generated ``*_pb2`` modules: results come back as plain dataclasses and
every failure as one :class:`RecommenderError` carrying the gRPC status code and message.
"""

from onnxrec.clients.aio import AsyncRecommenderClient
from onnxrec.clients.client import RecommenderClient
from onnxrec.clients.errors import RecommenderError
from onnxrec.clients.results import Event, Item, ModelInfo, ModelMetadata, Reason, Recommendation, Scores

__all__ = [
    "AsyncRecommenderClient",
    "Event",
    "Item",
    "ModelInfo",
    "ModelMetadata",
    "Reason",
    "Recommendation",
    "RecommenderClient",
    "RecommenderError",
    "Scores",
]
