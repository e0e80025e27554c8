"""How a batch's rows become a graph's padded inputs (candidate lists, retrieval's scores of them, the
request's times), and a top-k graph's outputs the rows' answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

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


#: The request's times per row, unix seconds [B] each: when the user asks and their previous interaction (-1: none).
Times = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class RankInputs:
    """Which inputs a pipeline version's ranking graphs take after the candidates: retrieval's scores of
    them (a ranker that reads them, or a blend) and the request's times (a ranker that reads the
    interaction's context)."""

    retrieval: bool = False
    context: bool = False

    @classmethod
    def of(cls, graph_inputs: list[dict[str, Any]]) -> RankInputs:
        """The inputs the manifest lists for the ``rank`` graph."""
        names = {t["name"] for t in graph_inputs}
        return cls("retrieval_scores" in names, "request_time" in names)

    def feed(
        self, feed: dict[str, np.ndarray], retrieval: list[np.ndarray] | None, times: Times | None
    ) -> dict[str, np.ndarray]:
        """``feed`` with the inputs the graphs take: retrieval's scores of each candidate list (padded) and
        the request's times (unknown when not given: request time -1, no previous interaction)."""
        if self.retrieval:
            feed["retrieval_scores"] = pad_rows(required_scores(retrieval), np.float32)
        if self.context:
            rows = len(feed["items"])
            request, last = times if times is not None else (np.full(rows, -1), np.full(rows, -1))
            feed["request_time"] = np.asarray(request, dtype=np.int64)
            feed["last_time"] = np.asarray(last, dtype=np.int64)
        return feed


class TopK(NamedTuple):
    """A ranked answer: item indices and scores, best first (a named tuple: built per answered row, it
    costs a seventh of a frozen dataclass, 0.3 against 2.1 us)."""

    items: np.ndarray
    scores: np.ndarray


def split_topk(scores: np.ndarray, items: np.ndarray) -> list[TopK]:
    """One TopK per row, without the -inf entries (excluded items, or fewer items than k). A row is
    sorted best first, so its last score tells whether it has any."""
    if scores.shape[1] == 0:
        return [TopK(items=items[j], scores=scores[j]) for j in range(len(scores))]
    if len(scores) == 1:  # one row (a lone Recommend): no list of flags
        s, i = scores[0], items[0]
        if s[-1] == -np.inf:
            keep = s > -np.inf
            s, i = s[keep], i[keep]
        return [TopK(i, s)]
    complete = (scores[:, -1] > -np.inf).tolist()
    out = []
    for j, whole in enumerate(complete):
        s, i = scores[j], items[j]
        if not whole:
            keep = s > -np.inf
            s, i = s[keep], i[keep]
        out.append(TopK(items=i, scores=s))
    return out
