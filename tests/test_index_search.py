"""The server's index search (server/index_search.py) over a real faiss index, property-tested: whatever
the batch's mix of exclusion lists (rows are searched in groups of their own over-fetch), every row gets
exactly what scoring every item finds (a flat index is exhaustive), and a batch answers as its rows do
alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxrec.server.index_search import IndexSearch

faiss = pytest.importorskip("faiss")

N_ITEMS, DIM = 120, 8


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[IndexSearch, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    root = tmp_path_factory.mktemp("flat")
    faiss.write_index(index, str(root / "items.faiss"))
    return IndexSearch(root, {"type": "flat", "file": "items.faiss"}, N_ITEMS), vectors


rows = st.lists(
    st.tuples(
        st.integers(0, 2**31 - 1),  # the user vector's seed
        st.lists(st.integers(-1, N_ITEMS - 1), max_size=N_ITEMS + 5),  # exclusions, -1 pads, repeats allowed
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(batch=rows, k=st.integers(1, 30))
def test_every_row_gets_the_exhaustive_top_k_batch_or_alone(
    search: tuple[IndexSearch, np.ndarray], batch: list[tuple[int, list[int]]], k: int
) -> None:
    index, vectors = search
    users = np.stack([np.random.default_rng(seed).normal(size=DIM) for seed, _ in batch]).astype(np.float32)
    exclude = [np.array(e, dtype=np.int64) for _, e in batch]
    together = index.search(users, exclude, k)
    for j, (items, scores) in enumerate(together):
        dropped = set(exclude[j].tolist()) - {-1}
        exact = vectors @ users[j]
        allowed = [i for i in np.argsort(-exact, kind="stable").tolist() if i not in dropped]
        assert len(items) == min(k, len(allowed))
        assert not set(items.tolist()) & dropped
        np.testing.assert_allclose(scores, exact[allowed[: len(items)]], rtol=1e-5, atol=1e-5)
        alone_items, alone_scores = index.search(users[j : j + 1], [exclude[j]], k)[0]
        np.testing.assert_array_equal(alone_items, items)
        np.testing.assert_array_equal(alone_scores, scores)
