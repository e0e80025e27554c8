"""One model version loaded for serving: onnxruntime sessions, id maps, seen items, popularity.

Everything here is read from the version directory the exporter wrote (never from a request), and
checked against the manifest's hashes before any session is created.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onnxrec.errors import OnnxrecError
from onnxrec.exporter.repository import read_manifest, verify_files
from onnxrec.server.feeds import RankInputs, Times, TopK, pad_rows, split_topk
from onnxrec.server.index_search import IndexSearch
from onnxrec.server.limits import scored_item_bytes
from onnxrec.server.sessions import (
    ModelLoadError,
    cuda_status,
    explain_refusal,
    feature_inputs,
    index_only,
    is_pipeline,
    open_sessions,
    resolve_device,
)

__all__ = ["LoadedModel", "ModelLoadError", "Reasons", "TopK", "cuda_status", "resolve_device"]
from onnxrec.v1 import recommender_pb2 as pb

log = logging.getLogger("onnxrec.server")


class Reasons(NamedTuple):
    """Why each answered item (server/explain.py): per item, up to R history items (item indices [K, R],
    -1 where there are fewer) and their contributions [K, R], the strongest first."""

    items: np.ndarray
    contributions: np.ndarray


class LoadedModel:
    """A model version ready to answer: sessions plus everything needed to map ids."""

    def __init__(
        self,
        version_dir: Path,
        *,
        device: str = "cpu",
        intra_op_threads: int = 0,
        precision: str = "fp32",
    ) -> None:
        self.path = Path(version_dir)
        try:
            self.manifest = read_manifest(self.path)
            verify_files(self.path, self.manifest)
        except OnnxrecError as exc:
            raise ModelLoadError(str(exc)) from exc
        m = self.manifest
        self.name: str = m["name"]
        self.version: int = int(m["version"])
        self.model_type: str = m["model_type"]
        self.k_max: int = int(m["k_max"])  # what a request may ask for
        # what retrieval returns at most (an index-only version has no recommend graph: k_max)
        self.graph_k_max: int = int(m["graphs"].get("recommend", {}).get("k_max", self.k_max))
        self.pipeline = is_pipeline(m)
        self.stages: tuple[str, ...] = ("retrieve", "rank") if self.pipeline else ("retrieve",)
        self.candidates: int = int(m["stages"][-1]["candidates"]) if self.pipeline else 0
        self.num_users: int = int(m["num_users"])
        self.num_items: int = int(m["num_items"])
        self.history_len: int = int(m["history_len"])
        self.sessions = open_sessions(self.path, m, device, intra_op_threads, precision)
        self.provider: str = next(iter(self.sessions.values())).get_providers()[0]
        index = m.get("index")
        self.index = IndexSearch(self.path, index, self.num_items) if index else None
        self.retrieval: str = self.index.kind if self.index else "exact"  # what answers carry
        # the ``k`` input of every k a request may ask for, built once (index k; 0 stands for k_max)
        self._k_inputs = [np.array([k or self.graph_k_max], dtype=np.int64) for k in range(self.graph_k_max + 1)]
        items = pq.read_table(self.path / "items.parquet")
        self._users_table = pq.read_table(self.path / "users.parquet")
        self._load_ids(items, self._users_table)
        self._load_metadata(items)
        self._load_seen()
        self.popular = np.load(self.path / "popular.npy", allow_pickle=False).astype(np.int64)
        self.popularity = np.asarray(items["popularity"].to_numpy(), dtype=np.float64)
        spec = m.get("feature_spec", {})
        # the user features the history graphs read, in order
        self.user_features = feature_inputs(
            m, "user_vector_from_history" if index_only(m) else "recommend_from_history"
        )
        self.rank_features = feature_inputs(m, "rank_from_history") if self.pipeline else []
        # what the ranking graphs take after the candidates: retrieval's scores, the request's times
        self.rank_inputs = RankInputs.of(m["graphs"]["rank"]["inputs"]) if self.pipeline else RankInputs()
        self._vocab = {f["name"]: {v: i + 1 for i, v in enumerate(f["vocabulary"])} for f in spec.get("user", [])}
        self._feature_codes: dict[str, np.ndarray] = {}  # feature -> encoded value per user index (lazily)
        self.explain_refusal = explain_refusal(m)  # None: explain requests are answered
        self.explain_history_len = int((m.get("explain") or {}).get("history_len", 0))
        self.similar_refusal = (  # None: similar-items requests are answered
            f"model {self.name} version {self.version} was exported with --index-only: it has no similar_items "
            "graph (export it without --index-only to answer SimilarItems)"
            if index_only(m)
            else None
        )
        log.info(
            "loaded %s version %d (%s, %d users, %d items) on %s",
            self.name,
            self.version,
            self.model_type,
            self.num_users,
            self.num_items,
            self.provider,
        )

    def _load_ids(self, items: pa.Table, users: pa.Table) -> None:
        """Raw ids and the maps from their text (what requests carry) to indices."""
        self.item_ids = np.asarray(items["item_id"].to_pylist(), dtype=object)
        self.user_ids = np.asarray(users["user_id"].to_pylist(), dtype=object)
        self.item_id_text: list[str] = [str(v) for v in self.item_ids]  # what responses carry
        self.item_index = {text: i for i, text in enumerate(self.item_id_text)}
        self.user_index = {str(v): i for i, v in enumerate(self.user_ids) if v is not None}  # (None: forgotten)

    def _load_metadata(self, items: pa.Table) -> None:
        """Item metadata as strings, and the mean encoded size of an answered item without and with it
        (for answer-size estimates)."""
        meta_cols = [c for c in items.column_names if c not in ("item_idx", "item_id", "popularity")]
        columns = {c: items[c].to_pylist() for c in meta_cols}
        self._metadata = [
            {c: _as_text(columns[c][i]) for c in meta_cols if columns[c][i] is not None} for i in range(len(items))
        ]
        self._metadata_wire: list[bytes | None] = [None] * len(self._metadata)  # metadata_wire's cache
        sizes = np.array([scored_item_bytes(t, d) for t, d in zip(self.item_id_text, self._metadata, strict=True)])
        self.item_bytes: tuple[float, float] = (
            (float(sizes[:, 0].mean()), float(sizes[:, 1].mean())) if len(sizes) else (0.0, 0.0)
        )

    def _load_seen(self) -> None:
        """Each user's known items (CSR), and the same lists with a -1 after each user's, so a lone
        request's exclusion row is a view that already holds the -1 the graphs need (no copy)."""
        with np.load(self.path / "seen.npz", allow_pickle=False) as seen:
            self.seen_indptr = seen["indptr"]
            self.seen_indices = seen["indices"].astype(np.int64)
        counts = np.diff(self.seen_indptr)
        self._seen_padded_ptr = self.seen_indptr + np.arange(len(self.seen_indptr))
        self._seen_padded = np.full(len(self.seen_indices) + len(counts), -1, dtype=np.int64)
        self._seen_padded[np.arange(len(self.seen_indices)) + np.repeat(np.arange(len(counts)), counts)] = (
            self.seen_indices
        )
        self._seen_padded.flags.writeable = False

    # -- metadata -----------------------------------------------------------------------------------
    def metadata(self, item: int) -> dict[str, str]:
        """Item metadata as strings (lists joined with '|')."""
        return self._metadata[item]

    def metadata_wire(self, item: int) -> bytes:
        """The item's metadata as the wire bytes of a ``ScoredItem`` holding only it, built once per item:
        merged into an answer's item (``MergeFromString``) it costs under half of setting the map field
        (43 against 96 us for 20 items with 3 metadata fields, upb protobuf). Called on the event loop."""
        wire = self._metadata_wire[item]
        if wire is None:
            wire = self._metadata_wire[item] = pb.ScoredItem(metadata=self._metadata[item]).SerializeToString()
        return wire

    def seen(self, user: int) -> np.ndarray:
        """Items the user is known to have, oldest first."""
        return self.seen_indices[self.seen_indptr[user] : self.seen_indptr[user + 1]]

    def seen_row(self, user: int) -> np.ndarray:
        """:meth:`seen` followed by one -1: a ready exclusion row (read-only view)."""
        return self._seen_padded[self._seen_padded_ptr[user] : self._seen_padded_ptr[user + 1]]

    def encode_user_features(self, features: dict[str, str], names: Sequence[str] | None = None) -> list[int]:
        """Encoded user features in the order of ``names`` (default: the retrieval graphs'
        :attr:`user_features`); unknown names or values encode as 0."""
        order = self.user_features if names is None else names
        return [self._vocab.get(name, {}).get(features.get(name, ""), 0) for name in order]

    def user_feature_codes(self, user: int, names: Sequence[str] | None = None) -> list[int]:
        """A known user's encoded side features (from the version's users table) in the order of
        ``names`` (default :attr:`user_features`): what the history graphs take for them."""
        out = []
        for name in self.user_features if names is None else names:
            codes = self._feature_codes.get(name)
            if codes is None:
                vocab = self._vocab.get(name, {})
                column = self._users_table[name].to_pylist() if name in self._users_table.column_names else []
                codes = np.array([vocab.get(_as_text(v), 0) if v is not None else 0 for v in column], dtype=np.int64)
                if len(codes) != self.num_users:
                    codes = np.zeros(self.num_users, dtype=np.int64)
                self._feature_codes[name] = codes
            out.append(int(codes[user]))
        return out

    # -- batched graph runs (blocking; called from the batcher's thread) ----------------------------
    @staticmethod
    def _pad(rows: list[np.ndarray], spare: int = 0) -> np.ndarray:
        """``rows`` as one [B, width] int64 array padded with -1, with at least ``spare`` -1s in every row."""
        width = max([1, *(len(r) for r in rows)]) + spare
        if len(rows) == 1 and len(rows[0]) == width:  # a lone full row: no copy
            return np.asarray(rows[0], dtype=np.int64).reshape(1, -1)
        out = np.full((len(rows), width), -1, dtype=np.int64)
        for j, r in enumerate(rows):
            out[j, : len(r)] = r
        return out

    @classmethod
    def _pad_exclude(cls, rows: list[np.ndarray]) -> np.ndarray:
        """Exclusion rows with at least one -1 each: the graphs need it (the -1 masks their padding
        column). A lone row that already ends in -1 (:meth:`seen_row`) goes as it is."""
        if len(rows) == 1:
            row = rows[0]
            if len(row) and row[-1] == -1 and row.dtype == np.int64:
                return row.reshape(1, -1)
        return cls._pad(rows, spare=1)

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One run of ``graph``."""
        return self.sessions[graph].run(None, feed)

    def _k(self, k: int | None, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feed`` with the ``k`` input of a top-k graph (default k_max)."""
        feed["k"] = self._k_inputs[min(k or 0, self.graph_k_max)]
        return feed

    def recommend(self, users: np.ndarray, exclude: list[np.ndarray], k: int | None = None) -> list[TopK]:
        """Top-k (default k_max) for known users, each with its own exclusion list (through the index
        when the version has one)."""
        if self.index is not None:
            (vectors,) = self._run("user_vector", {"user_idx": np.asarray(users, dtype=np.int64)})
            return self._search(vectors, exclude, k)
        feed = {"user_idx": np.asarray(users, dtype=np.int64), "exclude": self._pad_exclude(exclude)}
        scores, items = self._run("recommend", self._k(k, feed))
        return split_topk(scores, items)

    def recommend_from_history(
        self,
        history: list[np.ndarray],
        exclude: list[np.ndarray],
        features: Sequence[Sequence[int]],
        k: int | None = None,
    ) -> list[TopK]:
        """Top-k (default k_max) for users the model does not know, from their recent items (newest first)."""
        feed = {"history": self._pad(history)}
        for j, name in enumerate(self.user_features):
            feed[f"user_{name}"] = np.array([f[j] for f in features], dtype=np.int64)
        if self.index is not None:
            (vectors,) = self._run("user_vector_from_history", feed)
            return self._search(vectors, exclude, k)
        feed["exclude"] = self._pad_exclude(exclude)
        scores, items = self._run("recommend_from_history", self._k(k, feed))
        return split_topk(scores, items)

    def _search(self, vectors: np.ndarray, exclude: list[np.ndarray], k: int | None) -> list[TopK]:
        assert self.index is not None
        found = self.index.search(vectors, exclude, min(k or self.graph_k_max, self.graph_k_max))
        return [TopK(items=items.astype(np.int64), scores=scores) for items, scores in found]

    def score(self, users: np.ndarray, candidates: list[np.ndarray], times: Times | None = None) -> list[np.ndarray]:
        """Scores of each user's candidates (rows padded to one width inside, cut back after): the
        ranker's in a pipeline version (:meth:`rank_any`, at the request's ``times``), else the ``score``
        graph's."""
        if self.pipeline:
            return self.rank_any(users, candidates, times)
        if "score" not in self.sessions:  # index-only: user_vector . each item's vector from the index
            assert self.index is not None
            (vectors,) = self._run("user_vector", {"user_idx": users.astype(np.int64)})
            return self.index.score(vectors, candidates)
        feed = {"user_idx": users.astype(np.int64), "items": pad_rows(candidates)}
        (scores,) = self._run("score", feed)
        return [scores[j, : len(c)] for j, c in enumerate(candidates)]

    def rank(
        self,
        users: np.ndarray,
        candidates: list[np.ndarray],
        retrieval: list[np.ndarray] | None = None,
        times: Times | None = None,
    ) -> list[np.ndarray]:
        """The ranker's scores (``rank``) of known users' candidate lists, each in retrieval's order with
        retrieval's scores ``retrieval``, at the request's ``times`` (each read when the ranker reads it)."""
        feed = {"user_idx": users.astype(np.int64), "items": pad_rows(candidates)}
        (scores,) = self._run("rank", self.rank_inputs.feed(feed, retrieval, times))
        return [scores[j, : len(c)] for j, c in enumerate(candidates)]

    def rank_any(self, users: np.ndarray, candidates: list[np.ndarray], times: Times | None = None) -> list[np.ndarray]:
        """The ranker's scores of candidate lists in any order (Score on a pipeline version): a ranker that
        reads retrieval's score and rank gets each list in retrieval's order, scored by the ``score``
        graph, then its scores put back in the caller's order."""
        if not self.rank_inputs.retrieval:
            return self.rank(users, candidates, None, times)
        (found,) = self._run("score", {"user_idx": users.astype(np.int64), "items": pad_rows(candidates)})
        orders = [np.argsort(-found[j, : len(c)], kind="stable") for j, c in enumerate(candidates)]
        ranked = self.rank(
            users,
            [c[o] for c, o in zip(candidates, orders, strict=True)],
            [found[j, o] for j, o in enumerate(orders)],
            times,
        )
        out = []
        for o, s in zip(orders, ranked, strict=True):
            back = np.empty_like(s)
            back[o] = s
            out.append(back)
        return out

    def rank_from_history(
        self,
        history: list[np.ndarray],
        candidates: list[np.ndarray],
        features: Sequence[Sequence[int]],
        retrieval: list[np.ndarray] | None = None,
        times: Times | None = None,
    ) -> list[np.ndarray]:
        """The ranker's scores of each candidate list for users it does not know (pipeline versions);
        ``features`` encoded in :attr:`rank_features` order, ``retrieval`` and ``times`` as in :meth:`rank`."""
        feed = {"history": self._pad(history), "items": pad_rows(candidates)}
        self.rank_inputs.feed(feed, retrieval, times)
        for j, name in enumerate(self.rank_features):
            feed[f"user_{name}"] = np.array([f[j] for f in features], dtype=np.int64)
        (scores,) = self._run("rank_from_history", feed)
        return [scores[j, : len(c)] for j, c in enumerate(candidates)]

    def explain(self, users: np.ndarray, history: list[np.ndarray], recommended: list[np.ndarray]) -> list[np.ndarray]:
        """Known users: each history position's support of each recommended item ([K, H] per row, -inf
        at repeats), from the ``explain`` graph."""
        feed = {"user_idx": users.astype(np.int64), "history": self._pad(history)}
        (c,) = self._run("explain", feed | {"recommended": pad_rows(recommended)})
        return [c[j, : len(r), : len(h)] for j, (h, r) in enumerate(zip(history, recommended, strict=True))]

    def explain_from_history(
        self, history: list[np.ndarray], recommended: list[np.ndarray], features: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """:meth:`explain` for users the model does not know (their history and features)."""
        feed = {"history": self._pad(history), "recommended": pad_rows(recommended)}
        for j, name in enumerate(self.user_features):
            feed[f"user_{name}"] = np.array([f[j] for f in features], dtype=np.int64)
        (c,) = self._run("explain_from_history", feed)
        return [c[j, : len(r), : len(h)] for j, (h, r) in enumerate(zip(history, recommended, strict=True))]

    def explain_history(self, user: int) -> np.ndarray:
        """A known user's items the ``explain`` graph is given: the newest ``explain_history_len``."""
        return self.seen(user)[::-1][: self.explain_history_len]

    def similar(self, items: np.ndarray, k: int | None = None) -> list[TopK]:
        """The k (default k_max) most similar items of each item."""
        feed = {"item_idx": np.asarray(items, dtype=np.int64)}
        scores, out = self._run("similar_items", self._k(k, feed))
        return split_topk(scores, out)

    def warm_up(self, max_batch_size: int = 8) -> None:
        """Run every graph at the batch sizes the batcher will form, so no first request pays for
        initialisation: on CUDA every power of two up to ``max_batch_size`` (kernels are chosen per
        shape), on the CPU 1, 8 and ``max_batch_size``."""
        if self.provider == "CUDAExecutionProvider":
            sizes = sorted({1 << j for j in range(max_batch_size.bit_length())} | {max_batch_size})
        else:
            sizes = sorted({1, min(8, max_batch_size), max_batch_size})
        for b in sizes:
            users = np.arange(b) % max(self.num_users, 1)
            rows = [np.array([], dtype=np.int64)] * b
            self.recommend(users, rows)
            self.recommend_from_history([np.array([0])] * b, rows, [[0] * len(self.user_features)] * b)
            self.score(users, [np.array([0])] * b)
            if self.similar_refusal is None:
                self.similar(np.arange(b) % self.num_items)
            if self.pipeline:
                one = [np.array([0])] * b
                self.rank(users, one, [np.zeros(1, dtype=np.float32)] * b)
                self.rank_from_history(
                    one, one, [[0] * len(self.rank_features)] * b, [np.zeros(1, dtype=np.float32)] * b
                )
            if self.explain_refusal is None:
                self.explain(users, [np.array([0])] * b, [np.array([0])] * b)
                self.explain_from_history([np.array([0])] * b, [np.array([0])] * b, [[0] * len(self.user_features)] * b)


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    return str(value)
