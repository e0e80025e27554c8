"""The export spec as data: every graph's tensor names, dtypes and shapes (symbolic axes named).

The server and the parity check read these; changing a name here changes the contract with the
server (and the manifest records it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Parity tolerance (exporter/parity.py): |onnxruntime - PyTorch| <= atol + rtol * (the graph's largest |score|).
# One float32 step (eps) is 1.19e-7 of a value. onnxruntime (MLAS) and PyTorch sum in different orders and
# fuse differently, so a correct graph's scores differ by a few steps of its largest score: at most 4.7e-7
# of it (4 steps) over 4 model types x 5 seeds on ML-100K (1 epoch), the same models with every score
# x1000 (differences up to 2e-3 there) and the default two-tower (tests/test_parity.py). rtol 1e-4 (840
# steps) leaves 200x headroom for deeper and wider models, and stays 100x below what a defect does (a
# wrong weight, bias or operator moves scores by 1e-2 of their magnitude and more); the top-k check
# catches whatever moves the ranking.
DEFAULT_RTOL = 1e-4
# The floor for graphs whose scores are all about 0, where rtol allows nothing.
DEFAULT_ATOL = 1e-5

# A pipeline version's retrieval passes this many items per user to its ranker by default (exporter/pipeline.py).
DEFAULT_CANDIDATES = 200

BATCH = "batch"
K = "k"  # the input, and the output axis, of a graph's runtime top-k
EXCLUDE_DOC = (
    "item indices in [0, num_items) never to return; -1 pads, and every row holds at least one -1 (it masks the "
    "graph's padding column)"
)


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
    k_max: int = 0  # graphs ending in a top-k: the largest k their input ``k`` may be (the server checks); 0 = none

    @property
    def module_inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs of the PyTorch module the graph is exported from: all but the runtime ``k``, which
        the exporter adds to the ONNX graph after export (PyTorch's top-k takes a fixed k)."""
        return tuple(t for t in self.inputs if not (self.k_max and t.name == K))

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


def _topk_outputs() -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("scores", "float32", (BATCH, K), "scores of the top-k items, best first"),
        TensorSpec("items", "int64", (BATCH, K), "item indices of the top-k items"),
    )


def _k_input(k_max: int) -> TensorSpec:
    return TensorSpec(K, "int64", (1,), f"how many items to return, 1 to {k_max} (k_max; the graph does not clamp it)")


def recommend_spec(k: int) -> GraphSpec:
    """Known users: user indices and an exclusion list -> top-k."""
    return GraphSpec(
        "recommend",
        (
            TensorSpec("user_idx", "int64", (BATCH,), "user indices"),
            TensorSpec("exclude", "int64", (BATCH, "num_exclude"), EXCLUDE_DOC),
            _k_input(k),
        ),
        _topk_outputs(),
        "top-k items for known users",
        k_max=k,
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
            _k_input(k),
        ),
        _topk_outputs(),
        "top-k items from a history (fold-in) for users unknown to the model",
        k_max=k,
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
        (TensorSpec("item_idx", "int64", (BATCH,), "item indices"), _k_input(k)),
        (
            TensorSpec("scores", "float32", (BATCH, K), "cosine similarity, best first"),
            TensorSpec("items", "int64", (BATCH, K), "item indices of the most similar items"),
        ),
        "items most similar to each given item",
        k_max=k,
    )


USER_VECTOR_DOC = (
    "the user's query vector: its dot product with an item's vector in the version's index (items.faiss) is the "
    "item's score"
)


def user_vector_spec(dim: int) -> GraphSpec:
    """Known users: user indices -> the vectors the nearest-neighbour index is searched with."""
    return GraphSpec(
        "user_vector",
        (TensorSpec("user_idx", "int64", (BATCH,), "user indices"),),
        (TensorSpec("user_vector", "float32", (BATCH, dim), USER_VECTOR_DOC),),
        "query vectors of known users for the version's nearest-neighbour index",
    )


def history_vector_spec(dim: int, user_features: tuple[str, ...] = ()) -> GraphSpec:
    """Users the model does not know: their recent items (and features) -> query vectors; the inputs of
    ``recommend_from_history`` without ``exclude`` and ``k``."""
    recommend = history_spec(1, user_features)
    return GraphSpec(
        "user_vector_from_history",
        tuple(t for t in recommend.inputs if t.name not in ("exclude", K)),
        (TensorSpec("user_vector", "float32", (BATCH, dim), USER_VECTOR_DOC),),
        "query vectors from a history (fold-in) for users unknown to the model",
    )


#: The ranking graphs' extra input when the ranker reads retrieval's score and rank of each candidate.
RETRIEVAL_SCORES = TensorSpec(
    "retrieval_scores",
    "float32",
    (BATCH, "num_candidates"),
    "retrieval's score of each candidate, the candidates in retrieval's order (a candidate's rank is its position)",
)


#: The ranking graphs' extra inputs when the ranker reads the interaction's context.
CONTEXT_TIMES = (
    TensorSpec(
        "request_time", "int64", (BATCH,), "when the user asks, unix seconds (the context's hour and weekday, UTC)"
    ),
    TensorSpec(
        "last_time",
        "int64",
        (BATCH,),
        "the user's previous interaction, unix seconds (-1: none known; known users': the later of this and the "
        "last one at export)",
    ),
)


def _request_inputs(retrieval: bool, context: bool) -> tuple[TensorSpec, ...]:
    return (*((RETRIEVAL_SCORES,) if retrieval else ()), *(CONTEXT_TIMES if context else ()))


def rank_spec(retrieval: bool = False, context: bool = False) -> GraphSpec:
    """The ranking stage of a pipeline version (the ranker's scores of the retrieved candidates of known
    users); the signature of ``score``, plus retrieval's scores and the request's times when the ranker
    reads them."""
    score = score_spec()
    return GraphSpec(
        "rank",
        (*score.inputs, *_request_inputs(retrieval, context)),
        score.outputs,
        "the ranker's scores of each known user's candidate items (the pipeline's second stage, and Score)",
    )


def rank_history_spec(user_features: tuple[str, ...] = (), retrieval: bool = False, context: bool = False) -> GraphSpec:
    """The ranking stage for users the ranker does not know: their recent items (and features) and the
    candidates (and retrieval's scores of them and the request's times, when the ranker reads them) ->
    the ranker's scores."""
    history = history_spec(1, user_features)
    return GraphSpec(
        "rank_from_history",
        (
            history.inputs[0],
            TensorSpec("items", "int64", (BATCH, "num_candidates"), "candidate item indices"),
            *_request_inputs(retrieval, context),
            *(t for t in history.inputs if t.name.startswith("user_")),
        ),
        (TensorSpec("scores", "float32", (BATCH, "num_candidates"), "one score per candidate"),),
        "the ranker's scores of candidate items for users unknown to it (folded in from their history)",
    )


def _explain_inputs() -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("history", "int64", (BATCH, "history_len"), "the user's item indices, newest first; -1 pads"),
        TensorSpec("recommended", "int64", (BATCH, "num_recommended"), "the recommended items' indices"),
    )


_CONTRIBUTIONS = TensorSpec(
    "contributions",
    "float32",
    (BATCH, "num_recommended", "history_len"),
    "how much each history position supports each recommended item (higher: more); -inf at padding and at "
    "positions repeating a newer position's item",
)


def explain_spec() -> GraphSpec:
    """Known users: why each recommended item, from the user's history (exporter/explain.py)."""
    return GraphSpec(
        "explain",
        (TensorSpec("user_idx", "int64", (BATCH,), "user indices"), *_explain_inputs()),
        (_CONTRIBUTIONS,),
        "each history item's support of each recommended item, for known users",
    )


def explain_history_spec(user_features: tuple[str, ...] = ()) -> GraphSpec:
    """Users the model does not know: why each recommended item, from their history (and features)."""
    history = history_spec(1, user_features)
    return GraphSpec(
        "explain_from_history",
        (*_explain_inputs(), *(t for t in history.inputs if t.name.startswith("user_"))),
        (_CONTRIBUTIONS,),
        "each history item's support of each recommended item, for users unknown to the model",
    )
