"""``export --new-items FILE``: serve items added after training, known by their text alone.

A two-tower or SASRec run trained with ``--item-text`` encodes an item it never saw from its text
vector (the two-tower's item tower with the id and side features unknown, ``TwoTower.text_item_vectors``;
SASRec's text projection with a zero id row, ``SasRec.text_item_vectors``). Given a CSV or
Parquet file of new items (an ``item_id`` column and the dataset's text columns, e.g. title and
genres for MovieLens), the exporter embeds each new item's text with the same packaged model as
``data prepare --item-text`` and appends the items to the catalog before it builds the graphs: the
model's item tables grow by one row each (``with_new_text_items``: for the two-tower, id embedding =
the unknown id's, side features unknown, the item's text vector, bias = the median of the trained
items' biases, i.e. a typical item; for SASRec a zero id row and the text vector), the dataset's
id map and item table grow with them, and every graph, parity check and index then covers them like
any other item. No user has seen them, so their popularity is 0. The manifest lists them
(``new_items``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from onnxrec.errors import ExportError
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.data.text import embed_texts, item_texts
from onnxrec.trainer.models.base import Recommender


@dataclasses.dataclass(frozen=True)
class NewItems:
    """What was added: raw ids, their texts, and the bias they were given."""

    item_ids: list[str]
    texts: list[str]
    bias: float

    def entry(self) -> dict[str, Any]:
        """The manifest's ``new_items``."""
        return {
            "count": len(self.item_ids),
            "bias": self.bias,
            "rule": "item tower from the text vector alone (id and side features unknown); bias = median of "
            "the trained items' biases",
            "items": [{"item_id": i, "text": t} for i, t in zip(self.item_ids, self.texts, strict=True)],
        }


def read_new_items(path: Path) -> pa.Table:
    """The new-items file as a table of strings (CSV with a header, or Parquet)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"--new-items: {path} is not a file")
    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ExportError(f"--new-items: {path} is not a readable CSV or Parquet file ({exc})") from exc
    if "item_id" not in table.column_names:
        raise ExportError(f"--new-items: {path} has no item_id column (columns: {', '.join(table.column_names)})")
    return table


def _text_columns(ds: Dataset) -> list[str]:
    info = ds.meta.get("item_text") or {}
    return list(info.get("columns", []))


def add_new_items(model: Recommender, ds: Dataset, table: pa.Table) -> tuple[Recommender, Dataset, NewItems]:
    """``model`` and ``ds`` with the items of ``table`` appended (module docstring)."""
    if not model.reads_item_text:
        raise ExportError(
            "--new-items needs a two-tower or sasrec run trained with --item-text (it encodes items from text)"
        )
    columns = _text_columns(ds)
    present = [c for c in columns if c in table.column_names]
    if not present:
        raise ExportError(f"--new-items: the file has none of the dataset's text columns ({', '.join(columns)})")
    ids = [str(v) for v in table["item_id"].to_pylist()]
    known = set(str(v) for v in ds.item_ids)
    clash = [i for i in ids if i in known]
    if clash or len(set(ids)) != len(ids) or any(not i for i in ids):
        what = f"{clash[0]!r} is already in the catalog" if clash else "ids must be non-empty and distinct"
        raise ExportError(f"--new-items: {what}")
    rows = _rows(table, ds.item_table.schema, present)
    texts = item_texts(rows, columns)
    vectors = embed_texts(texts)
    n_old, n = ds.num_items, len(ids)
    bigger, bias = model.with_new_text_items(torch.from_numpy(vectors))
    bigger.eval()
    new_rows = pa.Table.from_pylist(
        [{"item_idx": n_old + j, "item_id": ids[j], **rows[j]} for j in range(n)], schema=ds.item_table.schema
    )
    item_features = {
        k: np.concatenate([v, np.zeros((n, *v.shape[1:]), dtype=v.dtype)]) for k, v in ds.item_features.items()
    }
    assert ds.item_text is not None  # a run trained with --item-text was trained on a dataset with text
    bigger_ds = dataclasses.replace(
        ds,
        num_items=n_old + n,
        item_ids=np.concatenate([ds.item_ids, np.asarray(ids, dtype=object)]),
        item_features=item_features,
        item_table=pa.concat_tables([ds.item_table, new_rows]),
        item_text=np.concatenate([ds.item_text, vectors]),
    )
    return bigger, bigger_ds, NewItems(ids, texts, bias)


def _rows(table: pa.Table, schema: pa.Schema, columns: list[str]) -> list[dict[str, Any]]:
    """Each new item's text columns, typed like the dataset's item table (a list column from 'a|b')."""
    out: list[dict[str, Any]] = [{} for _ in range(table.num_rows)]
    for col in columns:
        values = ["" if v is None else str(v) for v in table[col].to_pylist()]
        is_list = col in schema.names and pa.types.is_list(schema.field(col).type)
        for row, v in zip(out, values, strict=True):
            row[col] = [x for x in v.split("|") if x] if is_list else v
    return out
