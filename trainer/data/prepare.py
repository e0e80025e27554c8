"""``prepare``: read a source, preprocess, split, and write the dataset artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxrec.errors import DataError
from onnxrec.trainer.data.dataset import check_no_leakage, save_dataset
from onnxrec.trainer.data.erasure import Erasure
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.readers import ColumnMapping
from onnxrec.trainer.data.source import resolve_data
from onnxrec.trainer.data.split import SplitSpec


def prepare(
    source: str,
    out: Path,
    pre: PreprocessSpec,
    split_spec: SplitSpec,
    *,
    columns: ColumnMapping | None = None,
    sep: str | None = None,
    overwrite: bool = False,
    erasure: Erasure | None = None,
    item_text: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Write the dataset artifact for ``source`` to ``out``; returns its dataset.json content. With
    ``erasure`` (the deletion ledger) the forgotten users are left out. With ``item_text`` (columns of
    the item table; () = MovieLens' title and genres) each item's text is embedded into a vector
    (:mod:`onnxrec.trainer.data.text`) stored in the artifact."""
    if Path(out).exists() and not overwrite:
        raise DataError(f"{out} already exists (use --overwrite or another --out)")
    ds, prepared = resolve_data(
        source, pre, split_spec, columns=columns, sep=sep, seed=split_spec.seed, erasure=erasure
    )
    if prepared is not None:
        raise DataError(f"{source} is already a prepared dataset")
    check_no_leakage(ds)
    if item_text is not None:
        from onnxrec.trainer.data.text import with_item_text

        ds = with_item_text(ds, item_text)
    save_dataset(ds, Path(out), overwrite=overwrite)
    return ds.meta
