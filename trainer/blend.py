"""A pipeline's final ranking as a blend of retrieval's score and the ranker's (fit on validation).

A ranker trained on a retrieval run's candidates learns from the training split, where retrieval's
scores are in-sample; the validation split's held-out items are not. So, after training, the weight of
the two in the final ranking is chosen on validation (:func:`fit_blend`): each candidate scores

    weight * (r - r_shift) / r_scale + (1 - weight) * (k - k_shift) / k_scale

with ``r`` retrieval's score, ``k`` the ranker's logit, each standardised with its mean and standard
deviation over the validation candidates, and ``weight`` the value of a grid (0, 0.1, ..., 1) whose
pipeline has the best validation full NDCG@10 (weight 0: the ranker alone; 1: retrieval's own order).
The run keeps it (``checkpoint["blend"]``); evaluation, export (the ``rank`` graphs take retrieval's
scores and return the blend) and serving apply it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T", np.ndarray, torch.Tensor)

#: The weights of retrieval's score tried on validation.
GRID = tuple(round(0.1 * j, 1) for j in range(11))


@dataclass(frozen=True)
class Blend:
    """The weight of retrieval's standardised score against the ranker's standardised logit."""

    weight: float
    retrieval_shift: float
    retrieval_scale: float
    ranker_shift: float
    ranker_scale: float

    def apply(self, retrieval: T, ranker: T) -> T:
        """The blended scores of candidates with retrieval's scores ``retrieval`` and the ranker's logits
        ``ranker`` (same shape)."""
        r = (retrieval - self.retrieval_shift) / self.retrieval_scale
        k = (ranker - self.ranker_shift) / self.ranker_scale
        return self.weight * r + (1.0 - self.weight) * k

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Blend | None:
        """The blend a checkpoint holds (None: none)."""
        return None if d is None else cls(**d)


def standardisation(values: np.ndarray) -> tuple[float, float]:
    """The mean and standard deviation (1 when there is no spread) of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    scale = float(values.std()) if len(values) > 1 else 1.0
    return round(float(values.mean()), 6), round(scale, 6) if scale > 1e-9 else 1.0


def fit_blend(
    candidates: tuple[np.ndarray, np.ndarray], score: Callable[[Blend], float], grid: tuple[float, ...] = GRID
) -> tuple[Blend, dict[str, float]]:
    """The weight of ``grid`` whose blend ``score`` (validation full NDCG@10) rates best, retrieval's own
    order (the largest weight) on a tie, with the shifts and scales of the validation candidates'
    retrieval scores and ranker logits ``candidates``; and every weight's score."""
    r_shift, r_scale = standardisation(candidates[0])
    k_shift, k_scale = standardisation(candidates[1])
    scores = {w: score(Blend(w, r_shift, r_scale, k_shift, k_scale)) for w in grid}
    best = max(grid, key=lambda w: (scores[w], w))
    return Blend(best, r_shift, r_scale, k_shift, k_scale), {f"{w:.1f}": round(s, 6) for w, s in scores.items()}
