"""Top-k from a version's nearest-neighbour index: the user vector from an ONNX graph, then one batched
faiss search over the item vectors, with the exclusions honoured by over-fetching.

A version whose manifest has an ``index`` entry (``onnxrec export --index ...``) holds ``items.faiss``
(faiss's own format, hash-checked at load like every file) and the ``user_vector`` and
``user_vector_from_history`` graphs; ``score(user, item) = user_vector . item_vector`` with the item
bias folded into the vectors, so an index answer's scores are the exact graph's scores of the items it
finds (an HNSW graph or IVF lists built by L2 over lifted vectors, ``params.graph == "lifted_l2"``, answer
distances, turned back into those scores with ``params.max_norm``). A search asks for ``k`` plus the
row's exclusions (rows of a batch grouped by that count's power of two), drops each row's excluded
items, and searches a row again with twice as many while it has fewer than ``k`` items left and the
catalog holds more (then scores every stored vector), so a user always gets ``k`` items when ``k``
unexcluded items exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxrec.server.sessions import ModelLoadError

__all__ = ["IndexSearch"]

_CHUNK = 65_536  # stored vectors scored at once by the exhaustive fallback


def _faiss() -> Any:
    import faiss  # imported on first use: exact versions never load it

    return faiss


class IndexSearch:
    """A loaded index and how to search it (``index`` is the manifest's ``index`` entry)."""

    def __init__(self, version_dir: Path, index: dict[str, Any], num_items: int) -> None:
        faiss = _faiss()
        path = version_dir / str(index.get("file", "items.faiss"))
        try:
            self.index = faiss.read_index(str(path))
        except RuntimeError as exc:  # faiss reports a bad file as RuntimeError
            raise ModelLoadError(f"{path}: faiss cannot read it ({str(exc).splitlines()[0]})") from exc
        if self.index.ntotal != num_items:
            raise ModelLoadError(f"{path}: the index holds {self.index.ntotal} items, the manifest {num_items}")
        self.kind: str = str(index.get("type", "index"))
        params = index.get("params", {})
        inner = faiss.downcast_index(self.index)
        if isinstance(inner, faiss.IndexPreTransform):  # a lifted L2 index behind its query padding
            inner = faiss.downcast_index(inner.index)
        if self.kind == "hnsw" and "ef_search" in params:
            inner.hnsw.efSearch = int(params["ef_search"])
        # a lifted L2 graph answers |u|^2 + max|v|^2 - 2 u.v; scores are u.v
        self._lifted_norm2 = float(params["max_norm"]) ** 2 if params.get("graph") == "lifted_l2" else None
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = int(params.get("nprobe", ivf.nprobe))
            ivf.make_direct_map()  # reconstruct_n / reconstruct_batch: the exhaustive fallback, Score
        # one OpenMP thread: faiss 1.15.1 answered a 2- or 3-query batch wrongly with 2 threads (one id
        # repeated) on a 10M-item IVF index, right with 1 (BENCHMARKS.md, #16)
        faiss.omp_set_num_threads(1)
        self.num_items = num_items

    def search(self, vectors: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row: (item indices, scores), best first, at most ``k``, none of the row's excluded items
        (-1 entries in an exclusion row are padding)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        k = min(k, self.num_items)
        fetched = self._fetch(vectors, [min(self.num_items, k + len(e)) for e in exclude])
        out = []
        for j, row in enumerate(exclude):
            drop = set(row.tolist()) if len(row) else ()
            wider, (found_s, found_i) = fetched[j]
            s, i = _keep(found_s, found_i, drop, k)
            while len(i) < k and wider < self.num_items:  # exclusions ate the over-fetch: search wider
                wider = min(self.num_items, 2 * wider)
                more_s, more_i = self._search(vectors[j : j + 1], wider)
                s, i = _keep(more_s[0], more_i[0], drop, k)
            if len(i) < k and len(i) < self.num_items - sum(1 for d in drop if d >= 0):
                s, i = self._exhaustive(vectors[j], drop, k)  # a graph index need not reach every item
            out.append((i, s))
        return out

    def _fetch(self, vectors: np.ndarray, need: list[int]) -> list[tuple[int, tuple[np.ndarray, np.ndarray]]]:
        """Per row: how many items were fetched and the index's top that many (scores, items). Rows are
        searched together in groups of the same power of two of ``need`` (k plus the row's exclusions),
        each group fetching its own largest need: a row with few exclusions does not pay for a batch
        neighbour's long history (an HNSW search keeps at least the fetched count as candidates), and a
        batch costs at most one search call per group (a lone row: one call, fetching exactly its need)."""
        groups: dict[int, list[int]] = {}
        for j, n in enumerate(need):
            groups.setdefault(max(n - 1, 0).bit_length(), []).append(j)
        out: list[Any] = [None] * len(need)
        for rows in groups.values():
            fetch = max(need[j] for j in rows)
            scores, items = self._search(vectors[rows] if len(rows) < len(need) else vectors, fetch)
            for at, j in enumerate(rows):
                out[j] = (fetch, (scores[at], items[at]))
        return out

    def score(self, vectors: np.ndarray, candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per row: ``vectors[j]`` (a user's ``[u, 1]``) dotted with each of ``candidates[j]``'s stored
        vectors (``[v, b]``), the score graph's scores of those items (an index-only version's Score)."""
        flat = np.ascontiguousarray(np.concatenate(candidates), dtype=np.int64)
        stored = self.index.reconstruct_batch(flat) if len(flat) else np.zeros((0, vectors.shape[1]), np.float32)
        out, at = [], 0
        for j, c in enumerate(candidates):
            out.append((stored[at : at + len(c)] @ np.asarray(vectors[j], dtype=np.float32)).astype(np.float32))
            at += len(c)
        return out

    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's top ``k`` per row: scores (u.v) and item indices, best first."""
        found, items = self.index.search(vectors, k)
        if self._lifted_norm2 is None:
            return found, items
        norms2 = np.einsum("ij,ij->i", vectors, vectors)[:, None]
        return ((norms2 + self._lifted_norm2 - found) / 2).astype(np.float32), items

    def _exhaustive(self, vector: np.ndarray, drop: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every item scored, a chunk of the stored vectors at a time: for a user who has excluded so much
        of the catalog that even a search over all of it (which an approximate index need not answer
        completely) leaves fewer than ``k`` items."""
        best_s, best_i = np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
        for start in range(0, self.num_items, _CHUNK):
            count = min(_CHUNK, self.num_items - start)
            scores = self.index.reconstruct_n(start, count) @ vector
            items = np.arange(start, start + count, dtype=np.int64)
            scores, items = _keep(scores, items, drop, count)
            best_s, best_i = np.concatenate([best_s, scores]), np.concatenate([best_i, items])
            top = np.argsort(-best_s, kind="stable")[:k]
            best_s, best_i = best_s[top], best_i[top]
        return best_s.astype(np.float32), best_i


def _keep(scores: np.ndarray, items: np.ndarray, drop: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of ``items`` (index -1: nothing found) that are not in ``drop``, with their scores."""
    keep = items >= 0
    if drop:
        keep &= np.fromiter((i not in drop for i in items.tolist()), dtype=bool, count=len(items))
    return scores[keep][:k], items[keep][:k]
