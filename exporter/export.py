"""``export``: the export stage's one entry point (run directory -> repository version).

Steps: rebuild the model from the checkpoint; for a model with a nearest-neighbour index, build the
index over its item vectors and prove its recall (first, so a failing index costs no graph export);
build each graph's module; export it to ONNX; keep onnxruntime's offline optimisation of it; prove
parity with PyTorch on real and random inputs; add the id maps, item metadata, seen-items CSR,
popularity list and the index; write the manifest with file hashes; rename the finished version
directory into place. Any failure leaves the repository as it was.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from onnxrec import __version__
from onnxrec.atomic import atomic_dir
from onnxrec.errors import ExportError
from onnxrec.exporter.catalog import check_catalog, index_only_explain, vector_scorer
from onnxrec.exporter.explain_jobs import explain_jobs
from onnxrec.exporter.graph_jobs import (
    GraphJob,
    JobSizes,
    fold_in_history_len,
    graph_jobs,
    parity_batches,
    vector_jobs,
)
from onnxrec.exporter.graphs import ServingTables, fold_in_centroids
from onnxrec.exporter.index import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    DEFAULT_M,
    DEFAULT_MIN_RECALL,
    DEFAULT_NPROBE,
    RECALL_USERS,
    IndexOptions,
    choose_kind,
    manifest_entry,
)
from onnxrec.exporter.index_proof import ProvenIndex, prove_index
from onnxrec.exporter.new_items import add_new_items, read_new_items
from onnxrec.exporter.onnx_io import IR_VERSION, OPSET, cpu_session, export_module, optimize_offline
from onnxrec.exporter.parity import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    GraphParity,
    RawIds,
    Tolerance,
    check_signature,
    check_values,
)
from onnxrec.exporter.pipeline import check_candidates, open_ranker, rank_jobs, stages_entry
from onnxrec.exporter.recall import SeenItems
from onnxrec.exporter.repository import (
    MANIFEST,
    MODEL_FORMAT,
    check_model_name,
    check_writable,
    file_hashes,
    next_version,
)
from onnxrec.exporter.spec import DEFAULT_CANDIDATES
from onnxrec.exporter.variants import PRECISIONS, make_variant, quality_change
from onnxrec.exporter.vector_graphs import UserVectorGraph, check_vector_scores, item_index_vectors
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.history import known_sequences
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.runs import open_run

log = logging.getLogger("onnxrec.export")

__all__ = ["ExportOptions", "export", "fold_in_history_len", "serving_tables"]


@dataclass(frozen=True)
class ExportOptions:
    """What ``onnxrec export`` was asked to do."""

    k_max: int = 100
    max_batch: int = 256
    atol: float = DEFAULT_ATOL  # parity: |onnxruntime - PyTorch| <= atol + rtol * (the graph's largest |score|)
    rtol: float = DEFAULT_RTOL
    min_topk_agreement: float = 0.999
    parity_users: int = 2048
    seed: int = 0
    precisions: tuple[str, ...] = field(default=())
    # the nearest-neighbour index (exporter/index.py): auto | exact | hnsw | ivf | flat, and its parameters
    index: str = "auto"
    index_m: int = DEFAULT_M
    index_ef_construction: int = DEFAULT_EF_CONSTRUCTION
    index_ef_search: int = DEFAULT_EF_SEARCH
    index_nlist: int = 0  # 0: about 4 x sqrt(num_items)
    index_nprobe: int = DEFAULT_NPROBE
    min_recall: float = DEFAULT_MIN_RECALL  # the index's recall@10 below which the export fails
    recall_users: int = RECALL_USERS
    index_graph: str = "auto"  # HNSW: auto (inner product, then lifted L2 if short of min_recall) or one of them
    index_only: bool = False  # with an index: no catalog-sized exact graphs (exporter/catalog.py)
    # a pipeline version (exporter/pipeline.py): the ranker run and how many candidates retrieval passes it
    ranker: Path | None = None
    candidates: int = DEFAULT_CANDIDATES
    # items added after training, known by their text alone (exporter/new_items.py)
    new_items: Path | None = None

    def index_options(self) -> IndexOptions:
        """The index's part of these options."""
        return IndexOptions(
            kind=self.index,
            m=self.index_m,
            ef_construction=self.index_ef_construction,
            ef_search=self.index_ef_search,
            nlist=self.index_nlist,
            nprobe=self.index_nprobe,
            min_recall=self.min_recall,
            recall_users=self.recall_users,
            seed=self.seed,
            graph=self.index_graph,
        )


def serving_tables(model: Recommender, ds: Dataset) -> ServingTables:
    """The per-user constants the graphs embed, from everything known about each user."""
    seqs = known_sequences(ds, "serve")
    users = np.repeat(np.arange(ds.num_users), np.diff(seqs.indptr))
    h = model.history_len
    history = seqs.recent(np.arange(ds.num_users), h) if h else np.zeros((ds.num_users, 0), np.int64)
    return ServingTables(
        history=history,
        user_features=ds.user_features,
        centroids=fold_in_centroids(model, users, seqs.items, ds.num_items),
        last_time=seqs.last_times(np.arange(ds.num_users)),
    )


def _write_side_files(ds: Dataset, out: Path) -> None:
    seqs = known_sequences(ds, "serve")
    popularity = np.bincount(ds.splits.train.item_idx, minlength=ds.num_items).astype(np.int64)
    items = ds.item_table.append_column("popularity", pa.array(popularity))
    pq.write_table(items, out / "items.parquet")
    pq.write_table(ds.user_table, out / "users.parquet")
    np.savez(out / "seen.npz", indptr=seqs.indptr.astype(np.int64), indices=seqs.items.astype(np.int32))
    np.save(out / "popular.npy", np.argsort(-popularity, kind="stable").astype(np.int32), allow_pickle=False)


def _check_options(opts: ExportOptions) -> None:
    """Refuse options no export can satisfy."""
    if opts.k_max < 1 or opts.max_batch < 1:
        raise ExportError("k_max and max_batch must be at least 1")
    for label, value in (("atol", opts.atol), ("rtol", opts.rtol)):
        if not (math.isfinite(value) and value >= 0):
            raise ExportError(f"{label} must be a number >= 0, not {value:g}")
    unknown = sorted(set(opts.precisions) - set(PRECISIONS))
    if unknown:
        raise ExportError(f"unknown precision {unknown[0]!r} (use {' or '.join(PRECISIONS)})")
    opts.index_options().check()


def _target(repository: Path, name: str, version: int | None) -> tuple[Path, int]:
    """The version directory to write (``repository/name/version``) and its number, checked."""
    check_model_name(name)
    check_writable(repository)
    model_dir = repository / name
    version = next_version(model_dir) if version is None else version
    if version < 1:
        raise ExportError(f"version must be a positive integer, not {version}")
    final = model_dir / str(version)
    if final.exists():
        raise ExportError(f"{final} already exists (versions are never modified; pick another --version)")
    return final, version


def _write_graphs(
    jobs: list[GraphJob], out: Path, opts: ExportOptions, ids: RawIds
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Export, optimise and check every graph (and its precision variants) into ``out``; return the
    parity report and the variants' files per precision."""
    raw = out / ".raw"
    raw.mkdir()
    tol = Tolerance(atol=opts.atol, rtol=opts.rtol)
    parity: dict[str, Any] = {}
    variants: dict[str, Any] = {p: {"files": [], "split": "valid"} for p in opts.precisions}
    for g in jobs:
        log.info("exporting %s", g.spec.name)
        external = export_module(g.module, g.spec, g.example, raw / g.spec.file)
        optimize_offline(raw / g.spec.file, out / g.spec.file, external)
        session = cpu_session(out / g.spec.file)
        check_signature(session, g.spec)
        with np.errstate(invalid="ignore"):  # -inf in both outputs (explain's padding) subtracts to NaN, masked
            report: GraphParity = check_values(
                session, g.module, g.spec, g.batches, tolerance=tol, min_topk_agreement=opts.min_topk_agreement, ids=ids
            )
        parity[g.spec.name] = report.to_dict()
        for precision in opts.precisions:
            dst = out / f"{g.spec.name}.{precision}.onnx"
            make_variant(g.module, g.spec, g.example, raw / g.spec.file, dst, precision)
            check_signature(cpu_session(dst), g.spec)
            variants[precision]["files"].append(dst.name)
    shutil.rmtree(raw)
    return parity, variants


def _write_index(
    proven: ProvenIndex, score_batches: list[Any], out: Path, opts: ExportOptions, scorer: Any
) -> dict[str, Any]:
    """Check the index's contract in onnxruntime (user_vector . item vector = the score graph's score, or
    without one the PyTorch model's, ``scorer``, on the score graph's parity batches), write the index
    into ``out`` and return the manifest's ``index``."""
    tolerance = Tolerance(atol=opts.atol, rtol=opts.rtol)
    scores = check_vector_scores(out, proven.vectors, score_batches, tolerance, scorer)
    entry = manifest_entry(proven.built, proven.vectors, proven.built.write(out), proven.recall)
    return entry | {"score_check": scores, "index_only": opts.index_only}


def _manifest(
    name: str, version: int, ckpt: dict[str, Any], ds: Dataset, model: Recommender, jobs: list[GraphJob], k_max: int
) -> dict[str, Any]:
    """The manifest's fields that describe the model and its graphs (the caller adds the rest)."""
    return {
        "format": MODEL_FORMAT,
        "name": name,
        "version": version,
        "model_type": ckpt["model_type"],
        "model_config": ckpt["model_config"],
        "onnxrec_version": __version__,
        "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__,
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "k_max": min(k_max, ds.num_items),
        "num_users": ds.num_users,
        "num_items": ds.num_items,
        "history_len": fold_in_history_len(model),
        "feature_spec": ckpt["feature_spec"],
        "graphs": {g.spec.name: {"file": g.spec.file, **g.spec.to_dict()} for g in jobs},
        "metrics": ckpt.get("metrics", {}),
    }


def export(
    run: Path,
    repository: Path,
    name: str,
    version: int | None = None,
    options: ExportOptions | None = None,
) -> Path:
    """Export the run at ``run`` into ``repository/name/version`` and return that directory; with
    ``options.ranker``, a pipeline version: the run retrieves ``options.candidates`` items and the ranker
    run ranks them (exporter/pipeline.py)."""
    opts = options or ExportOptions()
    _check_options(opts)
    final, version = _target(Path(repository), name, version)
    ckpt, ds = open_run(Path(run))
    model = model_from_checkpoint(ckpt)
    if model.reads_retrieval:
        raise ExportError(
            f"{run}: this ranker reads the retrieval stage's score and rank of each candidate; export it behind "
            f"the retrieval run it was trained on: onnxrec export RETRIEVAL_RUN --ranker {run}"
        )
    added = None
    if opts.new_items is not None:
        if opts.ranker is not None:
            raise ExportError("--new-items and --ranker together are not supported (the ranker knows no new item)")
        model, ds, added = add_new_items(model, ds, read_new_items(opts.new_items))
        log.info("added %d new items from their text (%s)", len(added.item_ids), opts.new_items)
    ranker = open_ranker(opts.ranker, ds, Path(run)) if opts.ranker is not None else None
    if ranker is not None:
        check_candidates(opts.candidates, opts.k_max, ds.num_items)
    kind = choose_kind(opts.index, model.factorized, ckpt["model_type"], ds.num_items)
    check_catalog(model, kind, opts)
    tables = serving_tables(model, ds)
    t0 = time.perf_counter()
    graph_k = max(opts.k_max, opts.candidates) if ranker is not None else opts.k_max  # retrieval returns C
    sizes = JobSizes(graph_k, opts.max_batch, opts.parity_users, opts.seed)
    batches = parity_batches(model, ds, tables, sizes)
    if opts.index_only:
        jobs, explained = [], index_only_explain()
    else:
        jobs = graph_jobs(model, ds, tables, sizes, batches)
        explain, explained = explain_jobs(model, ckpt["model_type"], ds, tables, sizes)
        jobs += explain
    proven = None
    if kind != "exact":
        jobs += vector_jobs(model, tables, batches)
        known = cast(UserVectorGraph, next(j.module for j in jobs if j.spec.name == "user_vector"))
        seqs = known_sequences(ds, "serve")
        seen = SeenItems(seqs.indptr, seqs.items)
        proven = prove_index(kind, item_index_vectors(model), known.user_matrix.numpy(), seen, opts.index_options())
        kind = proven.built.kind  # auto may have found IVF enough
    if ranker is not None:
        jobs += rank_jobs(ranker, ds, serving_tables(ranker.model, ds), sizes, opts.candidates)
    with atomic_dir(final) as tmp:
        parity, variants = _write_graphs(jobs, tmp, opts, RawIds(users=ds.user_ids, items=ds.item_ids))
        for precision in opts.precisions:
            quality = quality_change(tmp / "score.onnx", tmp / f"score.{precision}.onnx", ds)
            variants[precision]["quality"] = quality
            log.info("%s variant: validation HR@10 change %+.4f", precision, quality["hr@10_change"])
        _write_side_files(ds, tmp)
        index = None
        if proven:
            scorer = vector_scorer(tmp, model, tables, opts.index_only)
            index = _write_index(proven, batches["score"], tmp, opts, scorer)
        manifest = {
            **_manifest(name, version, ckpt, ds, model, jobs, opts.k_max),
            "stages": stages_entry(run, ckpt, kind, ranker, opts.candidates),
            "export_seconds": round(time.perf_counter() - t0, 2),
            "parity": _parity_entry(opts, parity),
            "variants": variants,
            "index": index,
            "explain": explained.entry(),
            **({"new_items": added.entry()} if added is not None else {}),
            "dataset": ckpt["dataset"] | {"path": None},
            "source_run": str(Path(run).resolve()),
            "files": file_hashes(tmp),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return final


def _parity_entry(opts: ExportOptions, graphs: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``parity``: the tolerances and each graph's report."""
    return {
        "atol": opts.atol,
        "rtol": opts.rtol,
        "rule": "|onnxruntime - pytorch| <= atol + rtol * (the graph's largest |score|)",
        "min_topk_agreement": opts.min_topk_agreement,
        "graphs": graphs,
    }
