"""Recall of a version's index, proven at export like parity: for sampled known users, how many of the
exact top-k items (each user's seen items excluded) the index's search finds.

The index is searched the way the server searches it: for ``k`` items it asks for ``k`` plus the
number of the user's seen items, drops the seen ones and keeps the first ``k``. A returned item counts
as found when its exact score is at least the exact k-th best score, so items tied with the k-th are
not counted as misses. A user's recall@k is found / min(k, the user's unseen items); the figures are
the means over the users.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnxrec.errors import RecallError

if TYPE_CHECKING:
    import faiss

RECALL_KS = (10, 100)
CHUNK_USERS = 64  # users scored exactly at a time ([64, num_items] float32: 256 MB at 1M items)


@dataclass(frozen=True)
class SeenItems:
    """Each known user's seen items (CSR, as ``seen.npz`` holds them): ``indices[indptr[u]:indptr[u + 1]]``."""

    indptr: np.ndarray
    indices: np.ndarray

    def of(self, user: int) -> np.ndarray:
        """The items ``user`` has seen."""
        return self.indices[self.indptr[user] : self.indptr[user + 1]]


def sample_users(num_users: int, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` distinct known users, drawn with ``seed``, ascending."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_users, size=min(n, num_users), replace=False))


def _found(
    index: faiss.Index, queries: np.ndarray, scores: np.ndarray, seen: Sequence[np.ndarray], k: int
) -> np.ndarray:
    """Per row: how many of the index's top ``k`` unseen items score at least the exact k-th best
    (``scores``: exact, seen items -inf), and how many could have been found (min(k, unseen items))."""
    n_items = scores.shape[1]
    available = np.isfinite(scores).sum(axis=1)
    want = np.minimum(k, available)
    kth = np.array(
        [np.partition(row, n_items - w)[n_items - w] if w else np.inf for row, w in zip(scores, want, strict=True)]
    )
    fetch = np.minimum(k + np.array([len(s) for s in seen]), n_items)
    found = np.zeros(len(queries), dtype=np.int64)
    for f in np.unique(fetch):
        rows = np.flatnonzero(fetch == f)
        _, ids = index.search(np.ascontiguousarray(queries[rows]), int(f))
        for row, returned in zip(rows.tolist(), ids, strict=True):
            kept = returned[(returned >= 0) & ~np.isin(returned, seen[row])][:k]
            found[row] = int((scores[row, kept] >= kth[row]).sum())
    return np.stack([found, want], axis=1)


def measure_recall(
    index: faiss.Index,
    item_vectors: np.ndarray,
    user_vectors: np.ndarray,
    seen: SeenItems,
    users: np.ndarray,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """Mean recall@k of ``index`` for ``users`` (rows of ``user_vectors``) against the exact top-k over
    ``item_vectors`` (what the index holds), seen items excluded: ``{"at10": ..., "at100": ...}``."""
    per_user: dict[int, list[float]] = {k: [] for k in ks}
    items = np.ascontiguousarray(item_vectors, dtype=np.float32)
    with _one_thread():
        for start in range(0, len(users), CHUNK_USERS):
            chunk = users[start : start + CHUNK_USERS]
            queries = np.ascontiguousarray(user_vectors[chunk], dtype=np.float32)
            scores = queries @ items.T
            seen_rows = [seen.of(int(u)) for u in chunk]
            for row, s in enumerate(seen_rows):
                scores[row, s] = -np.inf
            for k in ks:
                counts = _found(index, queries, scores, seen_rows, k)
                per_user[k] += [f / w for f, w in counts if w]
    return {f"at{k}": round(float(np.mean(per_user[k])) if per_user[k] else 1.0, 4) for k in ks}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """faiss on one OpenMP thread for the block, as the server searches: faiss 1.15.1 answered 2- and
    3-query batches wrongly with 2 threads on a 10M-item IVF index (BENCHMARKS.md, #16)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def check_recall(recall: dict[str, float], min_recall: float, described: str) -> None:
    """Raise :class:`RecallError` when recall@10 is below ``min_recall``; ``described`` names the index."""
    if recall["at10"] < min_recall:
        raise RecallError(
            f"the {described} finds recall@10 {recall['at10']:.4f} of the exact top-10, below --min-recall "
            f"{min_recall:g}; raise --index-ef-search (hnsw) or --index-nprobe (ivf), or lower --min-recall"
        )
