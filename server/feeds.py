"""How a batch's rows become a graph's padded inputs (candidate lists and retrieval's scores of them)."""

from __future__ import annotations

import numpy as np


def pad_items(candidates: list[np.ndarray]) -> np.ndarray:
    """Candidate lists as one [B, width] array (short rows padded with item 0; their scores are cut off)."""
    width = max(len(c) for c in candidates)
    padded = np.zeros((len(candidates), width), dtype=np.int64)
    for j, c in enumerate(candidates):
        padded[j, : len(c)] = c
    return padded


def pad_scores(scores: list[np.ndarray], candidates: list[np.ndarray]) -> np.ndarray:
    """Retrieval's scores as one [B, width] float32 array matching :func:`pad_items` (padding 0: those
    slots' ranker scores are cut off)."""
    width = max(len(c) for c in candidates)
    padded = np.zeros((len(candidates), width), dtype=np.float32)
    for j, s in enumerate(scores):
        padded[j, : len(s)] = s
    return padded


def required_scores(retrieval: list[np.ndarray] | None) -> list[np.ndarray]:
    if retrieval is None:
        raise ValueError("this version's ranker reads retrieval's scores of its candidates: pass them")
    return retrieval
