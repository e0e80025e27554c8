"""The nearest-neighbour index of a version: which kind a model gets, and building and writing it.

Models whose score is a dot product of a user vector and an item vector (the contract's
``factorized``) can answer Recommend by a maximum-inner-product search over the item vectors instead
of scoring the whole catalog. The index holds each item's vector with its bias appended
(:func:`~onnxrec.exporter.vector_graphs.item_index_vectors`); its ids are the item indices
0..num_items-1. It is written with faiss's own ``write_index`` (never pickle); the search parameters
are set on the index before it is written and recorded in the manifest's ``index.params`` too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxrec.errors import ExportError

if TYPE_CHECKING:
    import faiss

INDEX_FILE = "items.faiss"
INDEX_KINDS = ("auto", "exact", "hnsw", "ivf", "flat")
# HNSW: auto is inner product, then lifted L2 if recall falls short; IVF: auto is lifted L2
HNSW_GRAPHS = ("auto", "inner-product", "lifted-l2")
AUTO_MIN_ITEMS = 50_000  # auto: an index from this many items on; the exact graph below
AUTO_MAX_EF_SEARCH = 4096  # auto: ef_search is doubled from --index-ef-search up to this until recall@10 passes
# HNSW defaults, measured with benchmarks/index_recall.py on a hard case, untrained 64-dim MF factors
# (random, no structure), 1,000 users with 50 seen items each, on this project's 2-core machine (shared):
# 100k items: ef_construction 100 builds in 31 s (200: 84 s) and ef_search 256 finds recall@10 0.980
# (@100 0.912; ef_search 128: 0.912, 512: 0.998). 1M items: the build takes 410-694 s; recall@10 is
# 0.821 / 0.929 / 0.965 / 0.982 / 0.992 at ef_search 256 / 512 / 768 / 1024 / 1536, batch-1 search
# 3.3 / 5.3 / 6.4 / 9.6 ms p50 at 512 / 768 / 1024 / 1536. auto tries IVF first (exporter/index_proof.py;
# on random factors it falls short), then raises HNSW's ef_search until recall@10 passes
# (AUTO_MAX_EF_SEARCH), so the 1M random catalog would export at ef_search 1024; trained factors, which
# cluster, need less.
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 100
DEFAULT_EF_SEARCH = 256
DEFAULT_NPROBE = 32
DEFAULT_MIN_RECALL = 0.95
RECALL_USERS = 1000
IVF_TRAIN_PER_LIST = 64  # IVF's k-means trains on at most this many items per list (faiss's advice: 39-256)


@dataclass(frozen=True)
class IndexOptions:
    """What ``onnxrec export --index ...`` asked for. ``nlist`` 0 means about 4 x sqrt(num_items)."""

    kind: str = "auto"
    m: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    ef_search: int = DEFAULT_EF_SEARCH
    nlist: int = 0
    nprobe: int = DEFAULT_NPROBE
    min_recall: float = DEFAULT_MIN_RECALL
    recall_users: int = RECALL_USERS
    seed: int = 0
    graph: str = "auto"  # HNSW: which graph (HNSW_GRAPHS; one named is the only one built); IVF: lists by which

    def check(self) -> None:
        """Raise :class:`ExportError` for options no index can have."""
        if self.kind not in INDEX_KINDS:
            raise ExportError(f"unknown index {self.kind!r} (use {', '.join(INDEX_KINDS)})")
        if self.graph not in HNSW_GRAPHS:
            raise ExportError(f"unknown HNSW graph {self.graph!r} (use {', '.join(HNSW_GRAPHS)})")
        for label, value, least in (
            ("index-m", self.m, 2),
            ("index-ef-construction", self.ef_construction, 1),
            ("index-ef-search", self.ef_search, 1),
            ("index-nlist", self.nlist, 0),
            ("index-nprobe", self.nprobe, 1),
            ("recall users", self.recall_users, 1),
        ):
            if value < least:
                raise ExportError(f"{label} must be at least {least}, not {value}")
        if not (math.isfinite(self.min_recall) and self.min_recall >= 0):
            raise ExportError(f"min-recall must be a number >= 0, not {self.min_recall:g}")


def choose_kind(requested: str, factorized: bool, model_type: str, num_items: int) -> str:
    """The index a version gets: ``exact`` (none), ``hnsw``, ``ivf`` or ``flat``. ``auto`` is ``hnsw`` for a
    factorized model of at least :data:`AUTO_MIN_ITEMS` items and ``exact`` otherwise; an index asked for
    by name on a model that does not factor into vectors is an :class:`ExportError`."""
    if requested == "auto":
        return "hnsw" if factorized and num_items >= AUTO_MIN_ITEMS else "exact"
    if requested != "exact" and not factorized:
        raise ExportError(
            f"--index {requested}: a {model_type} model's score is not a dot product of a user and an item "
            "vector, so it has no index; export it with --index exact (or auto)"
        )
    return requested


def default_nlist(num_items: int) -> int:
    """IVF lists for ``num_items``: about 4 x sqrt(num_items), at least 1 and at most num_items / 39
    (faiss's k-means wants 39 training points per list)."""
    return max(1, min(round(4 * math.sqrt(num_items)), num_items // 39))


def _build_hnsw(vectors: np.ndarray, opts: IndexOptions) -> tuple[faiss.Index, dict[str, Any]]:
    """HNSW whose graph is built by inner product itself (ip-NSW, Morozov and Babenko 2018). Measured
    against a graph built by L2 on MIPS-to-L2 lifted vectors (one more column, sqrt(max|v|^2 - |v|^2),
    searched by inner product): on 100k random 64-dim factors the lifted graph found recall@10 0.35 / 0.49
    / 0.65 at efSearch 128 / 256 / 512 where this one finds 0.91 / 0.98 / 1.00. Its known weakness: items
    of small norm are linked from few others, so on a trained two-tower's 200 items recall@100 (half the
    catalog) stopped at 0.78 whatever efSearch (the lifted graph: 1.0); recall@10 was 0.998."""
    import faiss  # here, not at import: the CLI loads this module for its defaults

    index = faiss.IndexHNSWFlat(vectors.shape[1], opts.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = opts.ef_construction
    index.add(vectors)
    index.hnsw.efSearch = opts.ef_search
    params = {"M": opts.m, "ef_construction": opts.ef_construction, "ef_search": opts.ef_search}
    return index, params | {"graph": "inner_product"}


def _lifted(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """The MIPS-to-L2 lift of ``vectors`` (Bachrach et al. 2014): ``[v, sqrt(max|v|^2 - |v|^2)]``, whose
    L2 nearest neighbours of a query ``[u, 0]`` are ``u``'s largest inner products; and ``max|v|``."""
    norms = np.linalg.norm(vectors, axis=1)
    top = float(norms.max()) if len(norms) else 0.0
    lifted = np.hstack([vectors, np.sqrt(np.maximum(top**2 - norms**2, 0.0))[:, None]]).astype(np.float32)
    return lifted, top


def _behind_query_pad(inner: Any, dim: int) -> Any:
    """``inner`` (an L2 index over lifted vectors) behind a transform that pads each query with a 0, so it
    is searched with the same user vectors as any other index; its reconstructed vectors are the item
    vectors."""
    import faiss

    pad = faiss.RemapDimensionsTransform(dim, dim + 1, False)  # type: ignore[arg-type]  # (its bool overload)
    return faiss.IndexPreTransform(pad, inner)  # (faiss's wrapper keeps references to both)


def build_lifted_hnsw(vectors: np.ndarray, opts: IndexOptions) -> BuiltIndex:
    """HNSW built by L2 over the MIPS-to-L2 lifted vectors (:func:`_lifted`), behind a transform that
    pads each query with a 0, so it is searched with the same user vectors; its distances are ``|u|^2 +
    max|v|^2 - 2 u.v`` (the server turns them back into scores with ``params.max_norm``), and its
    reconstructed vectors are the item vectors. Where the inner-product graph links items of small norm
    poorly (trained factors: recall@10 0.85-0.89 on the ML-100K two-tower whatever ef_search) this graph
    finds them (0.999); on unstructured random factors it is the other way round (BENCHMARKS.md), so the
    export tries it only when the first one falls short."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    t0 = time.perf_counter()
    lifted, top = _lifted(vectors)
    dim = vectors.shape[1]
    inner = faiss.IndexHNSWFlat(dim + 1, opts.m)
    inner.hnsw.efConstruction = opts.ef_construction
    inner.add(lifted)
    inner.hnsw.efSearch = opts.ef_search
    index = _behind_query_pad(inner, dim)
    params: dict[str, Any] = {"M": opts.m, "ef_construction": opts.ef_construction, "ef_search": opts.ef_search}
    params |= {"graph": "lifted_l2", "max_norm": top}
    return BuiltIndex("hnsw", index, params, round(time.perf_counter() - t0, 2))


def hnsw_of(index: Any) -> Any:
    """The HNSW structure of an HNSW index, lifted (behind its query transform) or not."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index.hnsw


def _build_ivf(vectors: np.ndarray, opts: IndexOptions) -> tuple[faiss.Index, dict[str, Any]]:
    """IVF-Flat, by default over the MIPS-to-L2 lifted vectors with L2 lists (``opts.graph`` auto or
    lifted-l2; ``params.graph == "lifted_l2"``, searched through the query padding as the lifted HNSW):
    on 1M items drawn like a trained two-tower's factors, nlist 4,000, recall@10 0.963 / 0.992 at
    nprobe 16 / 32 where lists by inner product find 0.783 / 0.916; on random factors the two are level
    (100k items, nprobe 256: 0.822 against 0.814). BENCHMARKS.md."""
    import faiss  # here, not at import: the CLI loads this module for its defaults

    n, d = vectors.shape
    nlist = min(opts.nlist, n) if opts.nlist else default_nlist(n)
    rng = np.random.default_rng(opts.seed)
    sample = min(n, nlist * IVF_TRAIN_PER_LIST)
    rows = np.sort(rng.choice(n, size=sample, replace=False))
    params: dict[str, Any]
    if opts.graph == "inner-product":
        data, params = vectors, {"graph": "inner_product"}
        index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    else:
        data, top = _lifted(vectors)
        params = {"graph": "lifted_l2", "max_norm": top}
        index = faiss.index_factory(d + 1, f"IVF{nlist},Flat")
    index.train(data[rows])
    index.add(data)
    del data
    if params["graph"] == "lifted_l2":
        index = _behind_query_pad(index, d)
    nprobe = min(opts.nprobe, nlist)
    faiss.extract_index_ivf(index).nprobe = nprobe
    return index, {"nlist": nlist, "nprobe": nprobe, "train_items": sample} | params


def _build_flat(vectors: np.ndarray, opts: IndexOptions) -> tuple[faiss.Index, dict[str, Any]]:
    import faiss  # here, not at import: the CLI loads this module for its defaults

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index, {}


_BUILDERS = {"hnsw": _build_hnsw, "ivf": _build_ivf, "flat": _build_flat}


@dataclass
class BuiltIndex:
    """An index over the item vectors, with what the manifest records of it."""

    kind: str
    index: Any  # a faiss.Index (its Python wrapper is untyped; HNSW indexes have .hnsw)
    params: dict[str, Any]
    build_seconds: float

    def set_ef_search(self, ef_search: int) -> None:
        """Search an HNSW index with ``ef_search`` candidates from now on (set on the index, so written
        with it, and recorded in :attr:`params`)."""
        hnsw_of(self.index).efSearch = ef_search
        self.params["ef_search"] = ef_search

    def set_nprobe(self, nprobe: int) -> None:
        """Search an IVF index's ``nprobe`` closest lists from now on (set on the index, so written with
        it, and recorded in :attr:`params`)."""
        import faiss

        faiss.extract_index_ivf(self.index).nprobe = nprobe
        self.params["nprobe"] = nprobe

    def write(self, version_dir: Path) -> int:
        """Write the index into ``version_dir`` (:data:`INDEX_FILE`, faiss's own format) and return its
        size in bytes, which is what faiss holds of it in memory (vectors and graph or lists)."""
        import faiss

        path = version_dir / INDEX_FILE
        faiss.write_index(self.index, str(path))
        return path.stat().st_size


def build_index(kind: str, vectors: np.ndarray, opts: IndexOptions) -> BuiltIndex:
    """Build a ``kind`` index (``hnsw``, ``ivf`` or ``flat``) over ``vectors`` [N, D] for inner-product
    search; its ids are the rows 0..N-1. HNSW: the inner-product graph, or with ``opts.graph ==
    "lifted-l2"`` the lifted one (:func:`build_lifted_hnsw`)."""
    if kind == "hnsw" and opts.graph == "lifted-l2":
        return build_lifted_hnsw(vectors, opts)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    t0 = time.perf_counter()
    index, params = _BUILDERS[kind](vectors, opts)
    return BuiltIndex(kind, index, params, round(time.perf_counter() - t0, 2))


def manifest_entry(built: BuiltIndex, vectors: np.ndarray, memory_bytes: int, recall: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``index``: kind, file, metric, dimensions, parameters, build time, memory, recall."""
    return {
        "type": built.kind,
        "file": INDEX_FILE,
        "metric": "inner_product",
        "dim": int(vectors.shape[1]),
        "num_items": int(vectors.shape[0]),
        "params": built.params,
        "build_seconds": built.build_seconds,
        "memory_bytes": int(memory_bytes),
        "recall": recall,
    }
