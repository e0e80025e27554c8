"""Explanations (issue #18): how much each item of a user's history supports each recommended item.

Two graphs, beside the ``recommend`` pair they explain: ``explain`` (user_idx [B], history [B, H],
recommended [B, K]) for users the model knows and ``explain_from_history`` (history [B, H],
recommended [B, K], user features...) for the others; both return ``contributions`` [B, K, H]: how much
history position h supports recommended item k. A position that repeats a newer one's item carries
-inf (its support is counted at the newer position) and so does padding (-1); the server keeps the
three strongest positive ones per item. How the support is computed depends on how the history
enters the model's score (:func:`explain_methods`):

* ``tower`` (a factorized model with a history tower, the two-tower): the history enters the user
  vector u as the recency-weighted mean h = sum_j w_j v_j of its items' vectors, and u = MLP([user id,
  features, h]). The contribution of position j to item i is ``w_j * v_i^T J (v_j - h)``: its learned
  recency weight times the item-item dot product through J = du/dh, the user tower's Jacobian at this
  user, measured against the history's weighted mean. That is the first-order change of i's score when
  j's weight is spread over the other items (removing j), so the contributions of a history sum to 0
  and a positive one pulls i up more than the average history item. The ReLU's derivative is taken as
  ``clamp(z / 1e-3 + 1/2, 0, 1)`` (exact outside |z| < 5e-4), so the result is continuous in the
  inputs and onnxruntime agrees with PyTorch where a pre-activation sits at 0.
* ``fold_in`` (a factorized model that folds unknown users in, MF and FM, for history requests): the
  user's rows are the mean of the history items' centroids, so with f the score from user rows, the
  contribution of j to i is ``(f(c_j) - f(mean c)) / n``: exactly what j adds to i's score beyond the
  history's mean (f is affine for MF and FM).
* ``similarity`` (the same models' known users, whose vector is learned and does not read the
  history): the cosine similarity of the item representations of j and i.

Other models get no graphs, and the manifest says why: MLP, NeuMF, DeepFM (no item vector a history item
could be compared with through the score), linear (a user part that is the same for every item), and
models that read their history through another network (e.g. self-attention), which this module does not
linearize.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from onnxrec.exporter.graphs import FoldIn, ServingTables, _Base
from onnxrec.trainer.models.base import Recommender

RELU_EPS = 1e-3  # width of the smoothed ReLU derivative of the tower method
SIMILARITY_HISTORY = 256  # known users of the similarity method: their newest items explained from


@dataclass(frozen=True)
class ExplainMethods:
    """How a model's recommendations are explained: for known users, for history requests, and the
    history length the ``explain`` graph is given (None methods: not at all, ``why`` says why)."""

    known: str | None
    history: str | None
    known_history_len: int = 0
    why: str = ""

    def entry(self) -> dict[str, Any]:
        """The manifest's ``explain``."""
        if self.known is None:
            return {"methods": None, "why": self.why}
        return {
            "methods": {"explain": self.known, "explain_from_history": self.history},
            "history_len": self.known_history_len,
            "reasons": 3,
        }


def explain_methods(model: Recommender, model_type: str) -> ExplainMethods:
    """Which method explains ``model`` (module docstring), read from its contract."""
    if not model.factorized:
        return ExplainMethods(
            None,
            None,
            why=f"model type {model_type} does not factor into user and item vectors, so no history item's "
            "part in a score can be told apart (explanations need mf, fm or twotower)",
        )
    with torch.no_grad():
        dim = int(model.item_vectors(torch.zeros(1, dtype=torch.long)).shape[-1])
    if dim < 2:
        return ExplainMethods(
            None,
            None,
            why=f"model type {model_type} adds the same user part to every item's score, so no history item "
            "supports one item more than another (explanations need mf, fm or twotower)",
        )
    if model.history_len and model.encodes_unknown_users:
        if tower_layers(model) is None:
            return ExplainMethods(
                None,
                None,
                why=f"model type {model_type} reads its history through a network explanations do not linearize "
                "(they linearize the two-tower's recency-weighted history mean and ReLU tower)",
            )
        return ExplainMethods("tower", "tower", model.history_len)
    history = "similarity" if model.encodes_unknown_users else "fold_in"
    return ExplainMethods("similarity", history, SIMILARITY_HISTORY)


def tower_layers(model: Recommender) -> list[nn.Module] | None:
    """The user tower's layers in order, when the model is a two-tower whose history enters as a
    recency-weighted mean through Linear, ReLU and Dropout layers (None otherwise)."""
    mlp = getattr(model, "user_mlp", None)
    if not isinstance(mlp, nn.Module) or not isinstance(getattr(model, "recency", None), torch.Tensor):
        return None
    layers = [m for m in mlp.modules() if not isinstance(m, nn.Sequential)]
    return layers if all(isinstance(m, nn.Linear | nn.ReLU | nn.Dropout) for m in layers) else None


def repeats_merged(c: torch.Tensor, history: torch.Tensor, add: bool) -> torch.Tensor:
    """``c`` [B, K, H] with each item's support at its newest position (summed over its positions when
    ``add``), -inf at later repeats and at padding."""
    same = history.unsqueeze(2) == history.unsqueeze(1)  # [B, H, H]
    pos = torch.arange(history.shape[1], device=history.device)
    earlier = pos.unsqueeze(0) < pos.unsqueeze(1)  # [j, l]: l is newer than j
    repeat = (same & earlier.unsqueeze(0)).any(2)
    if add:
        c = c @ same.to(c.dtype)
    return c.masked_fill((repeat | (history < 0)).unsqueeze(1), float("-inf"))


def similarity(normed: torch.Tensor, history: torch.Tensor, recommended: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [B, K, H] of the recommended items and the history (rows of ``normed``)."""
    c = normed[recommended] @ normed[history.clamp_min(0)].transpose(1, 2)
    return repeats_merged(c, history, add=False)


class _Explain:
    """The tower method's computation, shared by both graphs (they differ in who the user is)."""

    model: Recommender
    item_matrix: torch.Tensor
    normed: torch.Tensor  # the similarity method's normalised item representations
    id_rows: torch.Tensor  # the tower method's known users' id embeddings [num_users, d]
    unknown_id: torch.Tensor  # the tower method's unknown user's id embedding [1, d]
    layers: list[nn.Module]

    def tower_input(
        self, ids: torch.Tensor, features: list[torch.Tensor], history: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The user tower's input x (``ids``: the users' id embeddings [B, d]), the recency weights w [B, H]
        and the history's item vectors [B, H, D], as the two-tower's ``user_vectors`` builds them (checked
        against it at export)."""
        m: Any = self.model
        mask = history >= 0
        vecs = self.item_matrix[history.clamp_min(0)]
        w = m.recency[: history.shape[1]].unsqueeze(0).expand(history.shape[0], -1)
        w = torch.nan_to_num(torch.softmax(w.masked_fill(~mask, float("-inf")), dim=1), nan=0.0)
        mean = (w.unsqueeze(-1) * vecs).sum(1)
        x = torch.cat([ids, *m.user_feats(features), mean], dim=-1)
        return x, w, vecs

    def tower(
        self, ids: torch.Tensor, features: list[torch.Tensor], history: torch.Tensor, recommended: torch.Tensor
    ) -> torch.Tensor:
        history = history[:, : self.model.history_len]
        x, w, vecs = self.tower_input(ids, features, history)
        slopes = []
        a = x
        for layer in self.layers:
            if isinstance(layer, nn.ReLU):
                slopes.append(torch.clamp(a / RELU_EPS + 0.5, 0.0, 1.0))
            a = layer(a)
        g = self.item_matrix[recommended]  # [B, K, D]: d score / d u
        for j in reversed(range(len(self.layers))):
            layer = self.layers[j]
            if isinstance(layer, nn.Linear):
                g = g @ getattr(self, f"back_{j}")
            elif isinstance(layer, nn.ReLU):
                g = g * slopes.pop().unsqueeze(1)
        g = g[..., -vecs.shape[-1] :]  # d score / d h: the history mean is the input's last block
        mean = (w.unsqueeze(-1) * vecs).sum(1)
        centred = g @ vecs.transpose(1, 2) - (g * mean.unsqueeze(1)).sum(-1, keepdim=True)
        return repeats_merged(w.unsqueeze(1) * centred, history, add=True)

    def tower_user_vectors(self, ids: torch.Tensor, features: list[torch.Tensor], history: torch.Tensor) -> Any:
        """The user vectors of :meth:`tower_input` through the tower (what the export check compares)."""
        a = self.tower_input(ids, features, history[:, : self.model.history_len])[0]
        for layer in self.layers:
            a = layer(a)
        return a


def id_embeddings(model: Recommender, users: torch.Tensor) -> torch.Tensor:
    """The two-tower's user-id embeddings of ``users`` (-1: the unknown user's), computed at export: a
    graph holds the rows it needs, indexed by ``user_idx`` itself (so ``onnxrec forget`` finds a user's
    row), not the whole table."""
    m: Any = model
    with torch.no_grad():
        return m.user_id(m._ids(users, m.num_users)).detach().clone()


def keep_back_weights(graph: nn.Module, layers: list[nn.Module]) -> None:
    """Each Linear's weight once more as the graph's own buffer (``back_<j>``) for the backward pass: int8
    quantization rewrites a weight that a forward Gemm and a backward MatMul share into one transposed
    quantized weight, which the MatMul then cannot take."""
    for j, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            graph.register_buffer(f"back_{j}", layer.weight.detach().clone())


class ExplainGraph(_Base, _Explain):
    """(user_idx [B], history [B, H], recommended [B, K]) -> contributions [B, K, H], for known users."""

    def __init__(self, model: Recommender, tables: ServingTables, methods: ExplainMethods) -> None:
        super().__init__(model, tables)
        self.method = methods.known
        self.layers = (tower_layers(model) or []) if self.method == "tower" else []
        keep_back_weights(self, self.layers)
        if "history_table" in self._buffers:  # the history comes as an input
            del self._buffers["history_table"]
        if self.method == "tower":
            self.register_buffer("id_rows", id_embeddings(model, torch.arange(model.num_users)))
        if self.method == "similarity":
            with torch.no_grad():
                self.register_buffer("normed", F.normalize(model.item_representation().detach().float(), dim=-1))
            self.drop_user_tables()

    def forward(self, user_idx: torch.Tensor, history: torch.Tensor, recommended: torch.Tensor) -> torch.Tensor:
        if self.method == "tower":
            features = [torch.index_select(getattr(self, f"uf_{name}"), 0, user_idx) for name in self.feature_names]
            return self.tower(torch.index_select(self.id_rows, 0, user_idx), features, history, recommended)
        return similarity(self.normed, history, recommended)


class ExplainHistoryGraph(FoldIn, _Explain):
    """(history [B, H], recommended [B, K], user features...) -> contributions [B, K, H], for users the
    model does not know."""

    def __init__(self, model: Recommender, tables: ServingTables, methods: ExplainMethods) -> None:
        super().__init__(model, tables)
        self.method = methods.history
        self.layers = (tower_layers(model) or []) if self.method == "tower" else []
        keep_back_weights(self, self.layers)
        self.drop_user_tables()
        if self.method == "tower":
            self.register_buffer("unknown_id", id_embeddings(model, torch.tensor([-1])))
        if self.method == "similarity":
            with torch.no_grad():
                self.register_buffer("normed", F.normalize(model.item_representation().detach().float(), dim=-1))

    def forward(self, history: torch.Tensor, recommended: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        if self.method == "tower":
            ids = self.unknown_id.expand(history.shape[0], -1)
            return self.tower(ids, list(features), history, recommended)
        if self.method == "similarity":
            return similarity(self.normed, history, recommended)
        return self.fold_in(history, recommended)

    def fold_in(self, history: torch.Tensor, recommended: torch.Tensor) -> torch.Tensor:
        """``(f(c_j) - f(mean c)) / n`` (module docstring) [B, K, H]."""
        b, h, k = history.shape[0], history.shape[1], recommended.shape[1]
        safe = history.clamp_min(0)
        rows = [getattr(self, f"centroid_{j}")[safe].reshape(b * h, -1) for j in range(self.num_centroids)]
        items = recommended.unsqueeze(1).expand(b, h, k).reshape(b * h, k)
        each = self.model.score_with_user(rows, items).reshape(b, h, k).transpose(1, 2)  # [B, K, H]
        whole = self.model.score_with_user(self.fold_in_rows(history), recommended)  # [B, K]
        n = (history >= 0).sum(1).clamp_min(1).to(each.dtype)
        return repeats_merged((each - whole.unsqueeze(-1)) / n.view(-1, 1, 1), history, add=True)
