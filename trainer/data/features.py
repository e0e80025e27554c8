"""Side features: vocabularies built from a dataset and the integer encoding the models consume.

A categorical feature (one string per user or item) becomes one index; a multi-categorical feature
(a list of strings) becomes a fixed-width row of indices padded with 0. Index 0 means "unknown or
padding" in every vocabulary, so a value never seen in training still encodes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

FeatureKind = Literal["categorical", "multi_categorical"]


@dataclass(frozen=True)
class FeatureDef:
    """One feature: its name, kind, vocabulary (index = position + 1) and width (multi only)."""

    name: str
    kind: FeatureKind
    vocabulary: tuple[str, ...]
    width: int = 1

    @property
    def cardinality(self) -> int:
        """Embedding rows needed: the vocabulary plus index 0."""
        return len(self.vocabulary) + 1

    def encode(self, values: list[Any]) -> np.ndarray:
        """Encode one value per entity: [N] for categorical, [N, width] for multi-categorical."""
        lookup = {v: i + 1 for i, v in enumerate(self.vocabulary)}
        if self.kind == "categorical":
            return np.array([lookup.get(str(v), 0) if v is not None else 0 for v in values], dtype=np.int64)
        out = np.zeros((len(values), self.width), dtype=np.int64)
        for row, vs in enumerate(values):
            codes = [lookup.get(str(v), 0) for v in (vs or [])][: self.width]
            out[row, : len(codes)] = codes
        return out


@dataclass(frozen=True)
class FeatureSpec:
    """The user and item features of a dataset; stored in dataset.json and in checkpoints."""

    user: tuple[FeatureDef, ...] = ()
    item: tuple[FeatureDef, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"user": [asdict(f) for f in self.user], "item": [asdict(f) for f in self.item]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Rebuild from :meth:`to_dict`'s output."""

        def defs(rows: list[dict[str, Any]]) -> tuple[FeatureDef, ...]:
            return tuple(FeatureDef(r["name"], r["kind"], tuple(r["vocabulary"]), int(r.get("width", 1))) for r in rows)

        return cls(user=defs(d.get("user", [])), item=defs(d.get("item", [])))


def build_features(table: pa.Table | None, columns: tuple[str, ...], max_width: int = 8) -> tuple[FeatureDef, ...]:
    """Vocabularies for ``columns`` of ``table`` (sorted values, so the same data gives the same spec)."""
    if table is None:
        return ()
    defs = []
    for col in columns:
        arr = table[col]
        if pa.types.is_list(arr.type):
            lists = arr.to_pylist()
            vocab = sorted({str(v) for vs in lists if vs for v in vs})
            width = min(max_width, max((len(vs) for vs in lists if vs), default=1))
            defs.append(FeatureDef(col, "multi_categorical", tuple(vocab), max(width, 1)))
        else:
            vocab = sorted({str(v) for v in arr.to_pylist() if v is not None})
            defs.append(FeatureDef(col, "categorical", tuple(vocab)))
    return tuple(defs)


def encode_table(
    defs: tuple[FeatureDef, ...], table: pa.Table | None, key: str, ids: np.ndarray
) -> dict[str, np.ndarray]:
    """Encode every feature for the entities ``ids`` (in index order); missing rows encode as 0."""
    if not defs or table is None:
        return {}
    key_ids = [str(v) for v in table[key].to_pylist()]
    pos = {k: i for i, k in enumerate(key_ids)}
    rows = [pos.get(str(i), -1) for i in ids]
    out: dict[str, np.ndarray] = {}
    for f in defs:
        column = table[f.name].to_pylist()
        values = [column[r] if r >= 0 else None for r in rows]
        out[f.name] = f.encode(values)
    return out
