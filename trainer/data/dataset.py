"""The dataset artifact (``onnxrec data prepare``): split interactions, id maps, side features.

Layout of a dataset directory::

    dataset.json          counts, preprocessing and split spec, feature spec, content hash
    train.parquet         user_idx, item_idx, timestamp, rating
    valid.parquet         (same columns)
    test.parquet
    valid_negatives.npy   int32 [valid users, negatives], rows in ascending user order
    test_negatives.npy
    users.parquet         user_idx, user_id (raw), side-feature columns
    items.parquet         item_idx, item_id (raw), metadata and side-feature columns
    item_text.parquet     item_idx, vector (float32 [384]): the item's text embedded (only when asked:
                          ``data prepare --item-text``; dataset.json ``item_text`` says the model,
                          the columns and the vectors' sha256)

The directory is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onnxrec.atomic import atomic_dir
from onnxrec.errors import DataError
from onnxrec.trainer.data.features import FeatureSpec, build_features, encode_table
from onnxrec.trainer.data.log import InteractionLog
from onnxrec.trainer.data.preprocess import PreprocessSpec, preprocess
from onnxrec.trainer.data.split import Part, Splits, SplitSpec, split

FORMAT = "onnxrec.dataset/1"
_PART_FILES = ("train", "valid", "test")


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset in memory."""

    name: str
    num_users: int
    num_items: int
    splits: Splits
    user_ids: np.ndarray  # raw id per user index (str objects)
    item_ids: np.ndarray
    feature_spec: FeatureSpec
    user_features: dict[str, np.ndarray]  # encoded, row = user index
    item_features: dict[str, np.ndarray]
    item_table: pa.Table  # item_idx, item_id, metadata and raw features
    user_table: pa.Table
    meta: dict[str, Any] = field(default_factory=dict)
    item_text: np.ndarray | None = None  # float32 [num_items, text dim], row = item index

    @property
    def content_hash(self) -> str:
        """The hash recorded in dataset.json (over interactions, splits and id maps)."""
        return str(self.meta.get("content_hash", ""))

    def train_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Training items per user as CSR (indptr [num_users + 1], indices), items in time order."""
        return user_item_csr(self.splits.train, self.num_users)


def user_item_csr(part: Part, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of a part's items per user, each user's items ordered by (timestamp, item index)."""
    order = np.lexsort((part.item_idx, part.timestamp, part.user_idx))
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(part.user_idx, minlength=num_users), out=indptr[1:])
    return indptr, part.item_idx[order].astype(np.int64)


def _part_table(p: Part) -> pa.Table:
    return pa.table(
        {
            "user_idx": pa.array(p.user_idx.astype(np.int32)),
            "item_idx": pa.array(p.item_idx.astype(np.int32)),
            "timestamp": pa.array(p.timestamp.astype(np.int64)),
            "rating": pa.array(p.rating.astype(np.float32)),
        }
    )


def _read_part(path: Path) -> Part:
    t = pq.read_table(path)
    return Part(
        t["user_idx"].to_numpy().astype(np.int32),
        t["item_idx"].to_numpy().astype(np.int32),
        t["timestamp"].to_numpy().astype(np.int64),
        t["rating"].to_numpy(zero_copy_only=False).astype(np.float32),
    )


def _hash(splits: Splits, user_ids: np.ndarray, item_ids: np.ndarray) -> str:
    h = hashlib.sha256()
    for p in (splits.train, splits.valid, splits.test):
        for arr in (p.user_idx, p.item_idx, p.timestamp):
            h.update(np.ascontiguousarray(arr).tobytes())
    h.update(splits.valid_negatives.tobytes())
    h.update(splits.test_negatives.tobytes())
    h.update("\x00".join(user_ids.astype(str)).encode())
    h.update("\x00".join(item_ids.astype(str)).encode())
    return h.hexdigest()


def _entity_table(log_table: pa.Table | None, key: str, ids: np.ndarray, idx_name: str) -> pa.Table:
    base = pa.table({idx_name: pa.array(np.arange(len(ids), dtype=np.int32)), key: pa.array(ids.astype(str))})
    if log_table is None:
        return base
    pos = {str(v): i for i, v in enumerate(log_table[key].to_pylist())}
    rows = pa.array([pos.get(str(i)) for i in ids], pa.int64())
    for name in log_table.column_names:
        if name != key:
            base = base.append_column(name, log_table[name].take(rows))
    return base


def build_dataset(log: InteractionLog, pre: PreprocessSpec, split_spec: SplitSpec, name: str) -> Dataset:
    """Preprocess and split ``log`` into an in-memory :class:`Dataset`."""
    enc = preprocess(log, pre)
    splits = split(enc, split_spec)
    spec = FeatureSpec(
        user=build_features(log.user_table, log.user_feature_columns),
        item=build_features(log.item_table, log.item_feature_columns),
    )
    user_table = _entity_table(log.user_table, "user_id", enc.user_ids, "user_idx")
    item_table = _entity_table(log.item_table, "item_id", enc.item_ids, "item_idx")
    meta = {
        "format": FORMAT,
        "name": name,
        "source": log.source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": {
            "raw_interactions": enc.raw_interactions,
            "interactions": len(enc.user_idx),
            "users": len(enc.user_ids),
            "items": len(enc.item_ids),
            "train": len(splits.train),
            "valid": len(splits.valid),
            "test": len(splits.test),
        },
        **({"columns": log.columns} if log.columns else {}),
        "preprocess": asdict(pre),
        "split": asdict(split_spec),
        "features": spec.to_dict(),
        "content_hash": _hash(splits, enc.user_ids, enc.item_ids),
    }
    return Dataset(
        name=name,
        num_users=len(enc.user_ids),
        num_items=len(enc.item_ids),
        splits=splits,
        user_ids=enc.user_ids,
        item_ids=enc.item_ids,
        feature_spec=spec,
        user_features=encode_table(spec.user, log.user_table, "user_id", enc.user_ids),
        item_features=encode_table(spec.item, log.item_table, "item_id", enc.item_ids),
        item_table=item_table,
        user_table=user_table,
        meta=meta,
    )


def save_dataset(ds: Dataset, out: Path, *, overwrite: bool = False) -> Path:
    """Write ``ds`` as a dataset directory at ``out`` (atomically)."""
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        for name, part in zip(_PART_FILES, (ds.splits.train, ds.splits.valid, ds.splits.test), strict=True):
            pq.write_table(_part_table(part), tmp / f"{name}.parquet")
        np.save(tmp / "valid_negatives.npy", ds.splits.valid_negatives, allow_pickle=False)
        np.save(tmp / "test_negatives.npy", ds.splits.test_negatives, allow_pickle=False)
        pq.write_table(ds.user_table, tmp / "users.parquet")
        pq.write_table(ds.item_table, tmp / "items.parquet")
        if ds.item_text is not None:
            pq.write_table(item_text_table(ds.item_text), tmp / "item_text.parquet")
        (tmp / "dataset.json").write_text(json.dumps(ds.meta, indent=2) + "\n")
    return Path(out)


def vectors_sha256(vectors: np.ndarray) -> str:
    """The hash dataset.json records for the item text vectors."""
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()


def item_text_table(vectors: np.ndarray) -> pa.Table:
    """``item_text.parquet``'s table: item_idx and a fixed-size float32 list per item."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return pa.table(
        {
            "item_idx": pa.array(np.arange(len(vectors), dtype=np.int32)),
            "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        }
    )


def _read_item_text(path: Path, meta: dict[str, Any], num_items: int) -> np.ndarray | None:
    info = meta.get("item_text")
    if not info:
        return None
    t = pq.read_table(path / "item_text.parquet")
    dim = int(info["dim"])
    vectors = t["vector"].combine_chunks().flatten().to_numpy().astype(np.float32).reshape(-1, dim)
    if len(vectors) != num_items or not np.array_equal(t["item_idx"].to_numpy(), np.arange(num_items)):
        raise DataError(f"{path}/item_text.parquet: not one vector per item in index order")
    if vectors_sha256(vectors) != info.get("sha256"):
        raise DataError(f"{path}/item_text.parquet: sha256 does not match dataset.json (changed or damaged)")
    return vectors


def is_dataset_dir(path: Path) -> bool:
    """Whether ``path`` is a prepared dataset directory."""
    return (Path(path) / "dataset.json").is_file()


def load_dataset(path: Path) -> Dataset:
    """Read a dataset directory written by :func:`save_dataset`."""
    path = Path(path)
    try:
        meta = json.loads((path / "dataset.json").read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{path}: not a prepared dataset (no dataset.json)") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}/dataset.json: not valid JSON ({exc.msg})") from exc
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: unsupported dataset format {meta.get('format')!r} (expected {FORMAT})")
    try:
        train, valid, test = (_read_part(path / f"{n}.parquet") for n in _PART_FILES)
        splits = Splits(
            train,
            valid,
            test,
            valid_negatives=np.load(path / "valid_negatives.npy", allow_pickle=False),
            test_negatives=np.load(path / "test_negatives.npy", allow_pickle=False),
        )
        users = pq.read_table(path / "users.parquet")
        items = pq.read_table(path / "items.parquet")
        item_text = _read_item_text(path, meta, items.num_rows)
    except (OSError, pa.ArrowInvalid, ValueError, KeyError) as exc:
        raise DataError(f"{path}: incomplete or damaged dataset ({str(exc).splitlines()[0]})") from exc
    user_ids = np.asarray(users["user_id"].to_pylist(), dtype=object)
    item_ids = np.asarray(items["item_id"].to_pylist(), dtype=object)
    if _hash(splits, user_ids, item_ids) != meta.get("content_hash"):
        raise DataError(f"{path}: content hash does not match dataset.json (files changed or damaged)")
    spec = FeatureSpec.from_dict(meta.get("features", {}))
    return Dataset(
        name=str(meta.get("name", path.name)),
        num_users=len(user_ids),
        num_items=len(item_ids),
        splits=splits,
        user_ids=user_ids,
        item_ids=item_ids,
        feature_spec=spec,
        user_features=encode_table(spec.user, users, "user_id", user_ids),
        item_features=encode_table(spec.item, items, "item_id", item_ids),
        item_table=items,
        user_table=users,
        meta=meta,
        item_text=item_text,
    )


def check_no_leakage(ds: Dataset) -> None:
    """Raise :class:`DataError` if a test or validation interaction also appears in training, or
    (leave-one-out) a held-out interaction is older than the same user's training interactions."""
    s = ds.splits
    n_items = ds.num_items

    def keys(p: Part) -> np.ndarray:
        return p.user_idx.astype(np.int64) * n_items + p.item_idx

    train_keys = keys(s.train)
    for name, part in (("valid", s.valid), ("test", s.test)):
        if np.isin(keys(part), train_keys).any():
            raise DataError(f"leakage: a {name} interaction also appears in training")
        for negs, p in ((s.valid_negatives, s.valid), (s.test_negatives, s.test)):
            if len(negs) != len(np.unique(p.user_idx)):
                raise DataError("negatives do not line up with the evaluated users")
    if np.isin(keys(s.test), keys(s.valid)).any():
        raise DataError("leakage: a test interaction also appears in validation")
    if ds.meta.get("split", {}).get("kind") == "leave_one_out" and len(s.train):
        last_train = np.full(ds.num_users, np.iinfo(np.int64).min)
        np.maximum.at(last_train, s.train.user_idx, s.train.timestamp)
        if (s.test.timestamp < last_train[s.test.user_idx]).any():
            raise DataError("leakage: a test interaction is older than the user's training interactions")
