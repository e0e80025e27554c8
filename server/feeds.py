"""How a batch's rows become a graph's padded inputs (candidate lists and retrieval's scores of them)."""

from __future__ import annotations

import numpy as np


def pad_rows(rows: list[np.ndarray], dtype: type[np.generic] = np.int64) -> np.ndarray:
    """Rows of different lengths as one [B, width] array of ``dtype``, short rows padded with 0: candidate
    lists (item 0) and retrieval's scores of them; the padded slots' outputs are cut off."""
    width = max(len(r) for r in rows)
    padded: np.ndarray = np.zeros((len(rows), width), dtype=dtype)
    for j, r in enumerate(rows):
        padded[j, : len(r)] = r
    return padded


def required_scores(retrieval: list[np.ndarray] | None) -> list[np.ndarray]:
    """Retrieval's scores of the candidate lists, which a ranker that reads them cannot do without."""
    if retrieval is None:
        raise ValueError("this version's ranker reads retrieval's scores of its candidates: pass them")
    return retrieval
