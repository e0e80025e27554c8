"""``forget``: erase a user from a model's repository (right to erasure).

A new version is derived from the latest one, without the user: their raw id and side features leave
``users.parquet`` (the row stays, empty, so every other user keeps their index), their items leave
``seen.npz``, and their row of every per-user table in every graph (what a ``Gather`` indexed by the
graph's ``user_idx`` input reads: user vectors, id embeddings, encoded side features) becomes zeros, and
so does their row of an id-embedding table that a graph for users the model does not know carries whole
but reads only at its "unknown" row 0 (the two-tower's ``recommend_from_history`` holds ``user_id.weight``,
[num_users + 1, d], user u at row u + 1: see :func:`_zero_user_rows`); parity reports that name the user
are scrubbed. The version is written beside the others and renamed
into place (running servers hot-reload it), and the user id is appended to the repository's deletion
ledger (:data:`LEDGER`), which ``onnxrec data prepare`` and ``onnxrec train`` honour: the user's
interactions are dropped from the next training. What only the next training erases: the item vectors,
biases, popularity and fold-in centroids the user's data helped fit (aggregates over many users).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import numpy_helper

from onnxrec.atomic import atomic_dir
from onnxrec.errors import ExportError
from onnxrec.exporter.repository import MANIFEST, data_file, file_hashes, list_versions, read_manifest, verify_files
from onnxrec.ledger import LEDGER, append_user, ledger_users

__all__ = ["LEDGER", "Forgotten", "forget", "forgotten_users"]

_PASS_THROUGH = ("Reshape", "Cast", "Unsqueeze", "Squeeze", "Identity", "Flatten")


@dataclass(frozen=True)
class Forgotten:
    """What :func:`forget` did: the new version (None when the latest version did not know the user)
    and how many graph rows it zeroed."""

    version_dir: Path | None
    rows_zeroed: int


def forgotten_users(ledger: Path) -> set[str]:
    """The raw user ids of a deletion ledger (empty when there is none)."""
    return set(ledger_users(ledger)) if Path(ledger).is_file() else set()


def forget(repository: Path, name: str, user_id: str) -> Forgotten:
    """Erase ``user_id`` from model ``name`` of ``repository`` (module docstring)."""
    if not user_id:
        raise ExportError("a user id is needed")
    model_dir = Path(repository) / name
    versions = list_versions(model_dir)
    if not versions:
        raise ExportError(f"{model_dir}: no model versions")
    latest = model_dir / str(versions[-1])
    manifest = read_manifest(latest)
    verify_files(latest, manifest)
    users = pq.read_table(latest / "users.parquet")
    ids = users["user_id"].to_pylist()
    append_user(Path(repository), name, user_id)
    if user_id not in ids:
        return Forgotten(None, 0)
    row = ids.index(user_id)
    final = model_dir / str(versions[-1] + 1)
    with atomic_dir(final) as tmp:
        for f in latest.iterdir():
            if f.is_file() and f.name != MANIFEST:
                shutil.copy2(f, tmp / f.name)
        pq.write_table(_without_row(users, row), tmp / "users.parquet")
        _drop_seen(tmp / "seen.npz", row)
        zeroed = sum(
            _zero_user_rows(tmp / g["file"], row, int(manifest["num_users"])) for g in manifest["graphs"].values()
        )
        zeroed += sum(_zero_variants(tmp, manifest, row))
        out = _scrubbed(manifest, user_id) | {
            "version": versions[-1] + 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "forgotten": {"derived_from": versions[-1], "users_forgotten": _count(manifest) + 1, "rows_zeroed": zeroed},
            "files": file_hashes(tmp),
        }
        (tmp / MANIFEST).write_text(json.dumps(out, indent=2) + "\n")
    return Forgotten(final, zeroed)


def _without_row(users: pa.Table, row: int) -> pa.Table:
    """``users`` with every column but ``user_idx`` null at ``row``."""
    columns = []
    for col in users.column_names:
        values = users[col].to_pylist()
        if col != "user_idx":
            values[row] = None
        columns.append(pa.array(values, type=users.schema.field(col).type))
    return pa.table(columns, schema=users.schema)


def _drop_seen(path: Path, row: int) -> None:
    with np.load(path, allow_pickle=False) as seen:
        indptr, indices = seen["indptr"].copy(), seen["indices"]
    start, end = int(indptr[row]), int(indptr[row + 1])
    indices = np.concatenate([indices[:start], indices[end:]])
    indptr[row + 1 :] -= end - start
    np.savez(path, indptr=indptr, indices=indices)


def _zero_user_rows(path: Path, row: int, num_users: int) -> int:
    """Zero the user's row of every per-user table of a graph; returns how many tables.

    Two kinds: a table of ``num_users`` rows a Gather indexes by the graph's ``user_idx`` input (row
    ``row``), and an id-embedding table of ``num_users + 1`` rows (row 0: the unknown user, user u at
    u + 1) a Gather reads at an index no request value reaches (computed from constants and tensor
    shapes only: the fixed "unknown" id of a graph for users the model does not know), row ``row + 1``.
    That graph never reads the user's row, so zeroing it changes no answer; it is still their trained
    embedding, so it goes. An item table of the same length is never read that way (items are indexed
    by request values), so it is never touched."""
    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    inputs = {i.name for i in graph.input}
    initializers = {t.name for t in graph.initializer}
    produced = {o: n for n in graph.node for o in n.output}

    def from_user_idx(tensor: str) -> bool:
        while tensor != "user_idx":
            node = produced.get(tensor)
            if node is None or node.op_type not in _PASS_THROUGH:
                return False
            tensor = node.input[0]
        return True

    fixed: dict[str, bool] = {}

    def request_independent(tensor: str) -> bool:
        """Whether ``tensor``'s value depends on no graph input's values (only constants and shapes)."""
        if tensor in fixed:
            return fixed[tensor]
        fixed[tensor] = False  # a cycle (none in a valid graph) counts as dependent
        node = produced.get(tensor)
        if tensor in initializers and tensor not in inputs:
            result = True
        elif node is None:
            result = False  # a graph input
        elif node.op_type in ("Shape", "Size"):
            result = True
        elif any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            result = False  # a subgraph (If, Loop, Scan): not followed
        else:
            result = all(request_independent(t) for t in node.input if t)
        fixed[tensor] = result
        return result

    def table(tensor: str) -> str:
        """The initializer ``tensor`` is (through pass-through ops such as a Cast), else ''."""
        while tensor not in initializers:
            node = produced.get(tensor)
            if node is None or node.op_type not in _PASS_THROUGH:
                return ""
            tensor = node.input[0]
        return tensor

    rows: dict[str, tuple[int, int]] = {}  # table -> (its length, the user's row)
    for n in graph.node:
        if n.op_type != "Gather" or not table(n.input[0]):
            continue
        if "user_idx" in inputs and from_user_idx(n.input[1]):
            rows[table(n.input[0])] = (num_users, row)
        elif request_independent(n.input[1]):
            rows.setdefault(table(n.input[0]), (num_users + 1, row + 1))
    zeroed = 0
    for init in graph.initializer:
        if init.name in rows and init.dims and init.dims[0] == rows[init.name][0]:
            values = numpy_helper.to_array(init).copy()
            values[rows[init.name][1]] = 0
            init.CopyFrom(numpy_helper.from_array(values, init.name))
            zeroed += 1
    if zeroed:
        _save(graph_model, path)
    return zeroed


def _save(graph_model: onnx.ModelProto, path: Path) -> None:
    """Write a graph back, its weights beside it again when they were (ONNX external data, rewritten)."""
    if not data_file(path).exists():
        onnx.save(graph_model, str(path))
        return
    data_file(path).unlink()  # onnx appends to an existing data file
    onnx.save(
        graph_model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_file(path).name,
        size_threshold=1024,
    )


def _zero_variants(tmp: Path, manifest: dict[str, Any], row: int) -> list[int]:
    files = [f for v in manifest.get("variants", {}).values() for f in v.get("files", [])]
    return [_zero_user_rows(tmp / f, row, int(manifest["num_users"])) for f in files]


def _scrubbed(manifest: dict[str, Any], user_id: str) -> dict[str, Any]:
    """The manifest without parity locations that name the user."""
    out = json.loads(json.dumps(manifest))
    for report in out.get("parity", {}).get("graphs", {}).values():
        if repr(user_id) in str(report.get("worst", "")):
            report["worst"] = "(a forgotten user)"
    return dict(out)


def _count(manifest: dict[str, Any]) -> int:
    return int(manifest.get("forgotten", {}).get("users_forgotten", 0))
