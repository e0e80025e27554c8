"""The export spec as data: every graph's tensor names, dtypes and shapes (symbolic axes named).

The server and the parity check read these; changing a name here changes the contract with the
server (and the manifest records it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

BATCH = "batch"
EXCLUDE_DOC = "item indices in [0, num_items) never to return; -1 pads"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type, and shape (ints, or names of dynamic axes)."""

    name: str
    dtype: str  # "int64" | "float32" | "float16"
    shape: tuple[int | str, ...]
    doc: str = ""


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of a model version."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str = ""

    @property
    def file(self) -> str:
        """The graph's file name in the version directory."""
        return f"{self.name}.onnx"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the manifest)."""
        return asdict(self)

    def dynamic_dims(self) -> dict[str, dict[int, str]]:
        """Input name -> {axis: axis name} for every symbolic axis."""
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in self.inputs}


def _topk_outputs(k: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("scores", "float32", (BATCH, k), "scores of the top-k items, best first"),
        TensorSpec("items", "int64", (BATCH, k), "item indices of the top-k items"),
    )


def recommend_spec(k: int, extra_inputs: tuple[TensorSpec, ...] = ()) -> GraphSpec:
    """Known users: user indices and an exclusion list -> top-k."""
    return GraphSpec(
        "recommend",
        (
            TensorSpec("user_idx", "int64", (BATCH,), "user indices"),
            TensorSpec("exclude", "int64", (BATCH, "num_exclude"), EXCLUDE_DOC),
            *extra_inputs,
        ),
        _topk_outputs(k),
        "top-k items for known users",
    )


def history_spec(k: int, user_features: tuple[str, ...] = ()) -> GraphSpec:
    """Users the model does not know: their recent items (newest first) -> top-k."""
    return GraphSpec(
        "recommend_from_history",
        (
            TensorSpec("history", "int64", (BATCH, "history_len"), "recent item indices, newest first; -1 pads"),
            TensorSpec("exclude", "int64", (BATCH, "num_exclude"), EXCLUDE_DOC),
            *(
                TensorSpec(f"user_{f}", "int64", (BATCH,), f"encoded user feature {f}; 0 = unknown")
                for f in user_features
            ),
        ),
        _topk_outputs(k),
        "top-k items from a history (fold-in) for users unknown to the model",
    )


def score_spec() -> GraphSpec:
    """Re-ranking: user indices x candidate items -> scores."""
    return GraphSpec(
        "score",
        (
            TensorSpec("user_idx", "int64", (BATCH,), "user indices"),
            TensorSpec("items", "int64", (BATCH, "num_candidates"), "candidate item indices"),
        ),
        (TensorSpec("scores", "float32", (BATCH, "num_candidates"), "one score per candidate"),),
        "scores of a caller's candidates",
    )


def similar_spec(k: int) -> GraphSpec:
    """Item indices -> the k most similar other items (cosine)."""
    return GraphSpec(
        "similar_items",
        (TensorSpec("item_idx", "int64", (BATCH,), "item indices"),),
        (
            TensorSpec("scores", "float32", (BATCH, k), "cosine similarity, best first"),
            TensorSpec("items", "int64", (BATCH, k), "item indices of the most similar items"),
        ),
        "items most similar to each given item",
    )
