"""Building a version's index and proving its recall (exporter/recall.py) before anything is written.

``--index auto`` (a factorized model of 50,000 items or more) tries the cheap index first: IVF lists
over the MIPS-lifted item vectors, their nprobe doubled from ``--index-nprobe`` while recall@10 is
short of ``--min-recall``, up to an eighth of the lists. Only when that falls short does it build HNSW
(the inner-product graph, then the lifted one, then ef_search doubled). Measured on 1M items drawn like
a trained two-tower's factors (BENCHMARKS.md): the IVF lists build in 53 s and find recall@10 0.992 at
nprobe 32 (batch-1 search 0.29 ms), where the lifted HNSW graph took 534-870 s to build for 0.98 at
0.33 ms; on random factors IVF falls short (100k items: 0.82 at nprobe 256) and HNSW is built as before.
An index named by the caller is built as named and searched with the caller's settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxrec.exporter.index import (
    AUTO_MAX_EF_SEARCH,
    BuiltIndex,
    IndexOptions,
    build_index,
    build_lifted_hnsw,
)
from onnxrec.exporter.recall import SeenItems, check_recall, measure_recall, sample_users

log = logging.getLogger("onnxrec.export")
AUTO_IVF_PROBED_SHARE = 8  # auto: IVF's nprobe doubles up to nlist / this before HNSW is tried


@dataclass
class ProvenIndex:
    """An index built over the item vectors whose recall passed (written into the version later)."""

    built: BuiltIndex
    vectors: np.ndarray  # [num_items, D + 1]: what the index holds
    recall: dict[str, Any]


def prove_index(
    kind: str, vectors: np.ndarray, user_vectors: np.ndarray, seen: SeenItems, io: IndexOptions
) -> ProvenIndex:
    """Build the ``kind`` index (with ``io.kind == "auto"``: the cheapest that passes, module docstring)
    over ``vectors`` and measure its recall for sampled known users (rows of ``user_vectors``); raise
    :class:`~onnxrec.errors.RecallError` below ``io.min_recall``."""
    users = sample_users(len(user_vectors), io.recall_users, io.seed)

    def measure(built: BuiltIndex) -> dict[str, Any]:
        found = measure_recall(built.index, vectors, user_vectors, seen, users)
        return found | {"users": len(users), "min_recall_at10": io.min_recall}

    built, recall = _auto_ivf(vectors, io, measure) if io.kind == "auto" else (None, None)
    if built is None or recall is None or recall["at10"] < io.min_recall:
        built, recall = _hnsw_or_named(kind, vectors, io, measure)
    described = f"{built.kind} index ({', '.join(f'{k} {v}' for k, v in built.params.items()) or 'exact search'})"
    log.info(
        "%s: built in %.1f s, recall@10 %.4f, recall@100 %.4f",
        described,
        built.build_seconds,
        recall["at10"],
        recall["at100"],
    )
    check_recall(recall, io.min_recall, described)
    return ProvenIndex(built, vectors, recall)


Measure = Callable[[BuiltIndex], dict[str, Any]]


def _auto_ivf(vectors: np.ndarray, io: IndexOptions, measure: Measure) -> tuple[BuiltIndex, dict[str, Any]]:
    """IVF (over the lifted vectors unless ``--index-graph inner-product``), nprobe doubled while
    recall@10 falls short, up to an eighth of the lists."""
    built = build_index("ivf", vectors, io)
    recall = measure(built)
    nlist = int(built.params["nlist"])
    cap = max(io.nprobe, nlist // AUTO_IVF_PROBED_SHARE)
    while recall["at10"] < io.min_recall and built.params["nprobe"] < min(cap, nlist):
        nprobe = min(2 * int(built.params["nprobe"]), cap, nlist)
        log.info("ivf recall@10 %.4f at nprobe %d; trying %d", recall["at10"], built.params["nprobe"], nprobe)
        built.set_nprobe(nprobe)
        recall = measure(built)
    if recall["at10"] < io.min_recall:
        log.info("ivf recall@10 %.4f at nprobe %d is short; building HNSW", recall["at10"], built.params["nprobe"])
    return built, recall


def _hnsw_or_named(
    kind: str, vectors: np.ndarray, io: IndexOptions, measure: Measure
) -> tuple[BuiltIndex, dict[str, Any]]:
    """The ``kind`` index; for HNSW under auto graphs, the better of the two graphs, and under ``--index
    auto`` its ef_search doubled until recall@10 passes."""
    built = build_index(kind, vectors, io)
    recall = measure(built)
    # auto graph: the inner-product graph fell short; on trained factors the lifted one may find more
    if kind == "hnsw" and io.graph == "auto" and recall["at10"] < io.min_recall:
        first, first_recall = built, recall
        built = build_lifted_hnsw(vectors, io)
        recall = measure(built)
        log.info("hnsw recall@10: inner-product graph %.4f, lifted L2 graph %.4f", first_recall["at10"], recall["at10"])
        if first_recall["at10"] >= recall["at10"]:
            built, recall = first, first_recall
    # auto chose the index, so it also chooses how hard to search it: ef_search doubles until recall@10 passes
    while (
        io.kind == "auto"
        and kind == "hnsw"
        and recall["at10"] < io.min_recall
        and built.params["ef_search"] < AUTO_MAX_EF_SEARCH
    ):
        ef = min(2 * built.params["ef_search"], AUTO_MAX_EF_SEARCH)
        log.info("hnsw recall@10 %.4f at ef_search %d; trying %d", recall["at10"], built.params["ef_search"], ef)
        built.set_ef_search(ef)
        recall = measure(built)
    return built, recall
