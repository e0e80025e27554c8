"""``export``: the export stage's one entry point (run directory -> repository version).

Steps: rebuild the model from the checkpoint; build each graph's module; export it to ONNX; keep
onnxruntime's offline optimisation of it; prove parity with PyTorch on real and random inputs; add
the id maps, item metadata, seen-items CSR and popularity list; write the manifest with file
hashes; rename the finished version directory into place. Any failure leaves the repository as it
was.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from onnxrec import __version__
from onnxrec.atomic import atomic_dir
from onnxrec.errors import ExportError
from onnxrec.exporter.graphs import (
    HistoryGraph,
    RecommendGraph,
    ScoreGraph,
    ServingTables,
    SimilarItemsGraph,
    fold_in_centroids,
)
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
from onnxrec.exporter.repository import (
    MANIFEST,
    MODEL_FORMAT,
    check_model_name,
    check_writable,
    file_hashes,
    next_version,
)
from onnxrec.exporter.spec import GraphSpec, history_spec, recommend_spec, score_spec, similar_spec
from onnxrec.exporter.variants import PRECISIONS, make_variant, quality_change
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.history import known_sequences
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.runs import open_run

log = logging.getLogger("onnxrec.export")

FOLD_IN_HISTORY = 50  # history length the fold-in graph is checked with for models without their own


def fold_in_history_len(model: Recommender) -> int:
    """The history length of the fold-in graph's parity batches and the manifest's ``history_len``:
    the model's own, or :data:`FOLD_IN_HISTORY` for a model that reads none."""
    return model.history_len or FOLD_IN_HISTORY


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


@dataclass
class _Graph:
    spec: GraphSpec
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    batches: Sequence[tuple[np.ndarray, ...]]


def _chunks(n: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(n, start + size))


def _pad_rows(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.full((len(rows), max(width, 1)), -1, dtype=np.int64)
    for j, r in enumerate(rows):
        out[j, : min(len(r), width)] = r[:width]
    return out


def _graphs(model: Recommender, ds: Dataset, tables: ServingTables, opts: ExportOptions) -> list[_Graph]:
    rng = np.random.default_rng(opts.seed)
    k = min(opts.k_max, ds.num_items)
    n_users, n_items = ds.num_users, ds.num_items
    seqs = known_sequences(ds, "serve")
    real_users = np.arange(min(n_users, opts.parity_users))
    odd = 7 if opts.max_batch > 7 else 1
    sizes = sorted({1, odd, opts.max_batch})
    feature_names = model.user_feature_names
    h = fold_in_history_len(model)

    def rand_exclude(b: int) -> np.ndarray:
        ex = rng.integers(-1, n_items, size=(b, 5))
        ex[:, -1] = -1  # format 3: every row holds at least one -1
        return ex

    def user_feats(users: np.ndarray) -> list[np.ndarray]:
        return [tables.user_features[f][users] for f in feature_names]

    rec_batches = [
        (u, _pad_rows([seqs.of(int(x)) for x in u], 1 + max(len(seqs.of(int(x))) for x in u)))
        for u in _chunks(len(real_users), opts.max_batch)
    ]
    rec_batches += [(rng.integers(0, n_users, size=b), rand_exclude(b)) for b in sizes]

    hist_batches = []
    for u in _chunks(len(real_users), opts.max_batch):
        hist = np.stack([seqs.recent(np.array([x]), h)[0] for x in u])
        hist_batches.append((hist, _pad_rows(list(hist), h + 1), *user_feats(u)))
    for b in sizes:
        hist = rng.integers(0, n_items, size=(b, h))
        hist[:, rng.integers(1, h + 1) :] = -1
        hist_batches.append((hist, rand_exclude(b), *user_feats(rng.integers(0, n_users, size=b))))

    n_cand = min(50, n_items)
    score_batches = [
        (u, rng.integers(0, n_items, size=(len(u), n_cand))) for u in _chunks(len(real_users), opts.max_batch)
    ]
    score_batches += [(rng.integers(0, n_users, size=b), rng.integers(0, n_items, size=(b, n_cand))) for b in sizes]

    sim_batches = [(i,) for i in _chunks(min(n_items, opts.parity_users), opts.max_batch)]
    sim_batches += [(rng.integers(0, n_items, size=b),) for b in sizes]

    def ex(*arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in arrays)

    b0 = 3
    return [
        _Graph(
            recommend_spec(k),
            RecommendGraph(model, tables, k),
            ex(np.arange(b0) % n_users, np.full((b0, 4), -1)),
            rec_batches,
        ),
        _Graph(
            history_spec(k, feature_names),
            HistoryGraph(model, tables, k),
            ex(np.zeros((b0, 5)), np.full((b0, 4), -1), *[np.ones(b0)] * len(feature_names)),
            hist_batches,
        ),
        _Graph(score_spec(), ScoreGraph(model, tables), ex(np.arange(b0) % n_users, np.zeros((b0, 6))), score_batches),
        _Graph(
            similar_spec(min(k, max(n_items - 1, 1))),
            SimilarItemsGraph(model, min(k, max(n_items - 1, 1))),
            ex(np.arange(b0) % n_items),
            sim_batches,
        ),
    ]


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
    graphs: list[_Graph], out: Path, opts: ExportOptions, ids: RawIds
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Export, optimise and check every graph (and its precision variants) into ``out``; return the
    parity report and the variants' files per precision."""
    raw = out / ".raw"
    raw.mkdir()
    tol = Tolerance(atol=opts.atol, rtol=opts.rtol)
    parity: dict[str, Any] = {}
    variants: dict[str, Any] = {p: {"files": [], "split": "valid"} for p in opts.precisions}
    for g in graphs:
        log.info("exporting %s", g.spec.name)
        export_module(g.module, g.spec, g.example, raw / g.spec.file)
        optimize_offline(raw / g.spec.file, out / g.spec.file)
        session = cpu_session(out / g.spec.file)
        check_signature(session, g.spec)
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


def export(
    run: Path,
    repository: Path,
    name: str,
    version: int | None = None,
    options: ExportOptions | None = None,
) -> Path:
    """Export the run at ``run`` into ``repository/name/version`` and return that directory."""
    opts = options or ExportOptions()
    _check_options(opts)
    final, version = _target(Path(repository), name, version)
    ckpt, ds = open_run(Path(run))
    model = model_from_checkpoint(ckpt)
    tables = serving_tables(model, ds)
    t0 = time.perf_counter()
    graphs = _graphs(model, ds, tables, opts)
    with atomic_dir(final) as tmp:
        parity, variants = _write_graphs(graphs, tmp, opts, RawIds(users=ds.user_ids, items=ds.item_ids))
        for precision in opts.precisions:
            quality = quality_change(tmp / "score.onnx", tmp / f"score.{precision}.onnx", ds)
            variants[precision]["quality"] = quality
            log.info("%s variant: validation HR@10 change %+.4f", precision, quality["hr@10_change"])
        _write_side_files(ds, tmp)
        manifest = {
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
            "export_seconds": round(time.perf_counter() - t0, 2),
            "k_max": graphs[0].spec.k_max,
            "num_users": ds.num_users,
            "num_items": ds.num_items,
            "history_len": fold_in_history_len(model),
            "feature_spec": ckpt["feature_spec"],
            "graphs": {g.spec.name: {"file": g.spec.file, **g.spec.to_dict()} for g in graphs},
            "metrics": ckpt.get("metrics", {}),
            "parity": {
                "atol": opts.atol,
                "rtol": opts.rtol,
                "rule": "|onnxruntime - pytorch| <= atol + rtol * (the graph's largest |score|)",
                "min_topk_agreement": opts.min_topk_agreement,
                "graphs": parity,
            },
            "variants": variants,
            "dataset": ckpt["dataset"] | {"path": None},
            "source_run": str(Path(run).resolve()),
            "files": file_hashes(tmp),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return final
