"""Turn whatever ``--data`` names into a :class:`Dataset`.

``--data`` takes a prepared dataset directory, a raw MovieLens folder or log file (format
detected), ``synthetic`` (the embedded generator; works with no network), or a MovieLens name
(``movielens-100k``, ``movielens-1m``, ``movielens-20m``) looked up in the data home
(``$ONNXREC_DATA_HOME``, default ``~/.cache/onnxrec/data``) where ``onnxrec data fetch`` puts it.
"""

from __future__ import annotations

from pathlib import Path

from onnxrec.trainer.data.dataset import Dataset, build_dataset, is_dataset_dir, load_dataset
from onnxrec.trainer.data.erasure import Erasure, check_prepared, erase
from onnxrec.trainer.data.home import MOVIELENS_FOLDERS, check_source, data_home
from onnxrec.trainer.data.log import InteractionLog
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.readers import ColumnMapping, read_source
from onnxrec.trainer.data.split import SplitSpec

__all__ = ["MOVIELENS_FOLDERS", "check_source", "data_home", "resolve_data"]


def resolve_data(
    spec: str,
    pre: PreprocessSpec,
    split_spec: SplitSpec,
    *,
    columns: ColumnMapping | None = None,
    sep: str | None = None,
    seed: int = 0,
    erasure: Erasure | None = None,
) -> tuple[Dataset, Path | None]:
    """The dataset ``spec`` names, and its directory if it is a prepared one (else None).

    ``columns`` and ``sep`` apply to CSV/TSV/Parquet logs only; given for anything else they are a
    :class:`ConfigError` rather than silently ignored. With ``erasure`` (the deletion ledger of
    ``onnxrec forget``) the forgotten users' interactions and side features are dropped first, and the
    dataset records it (``dataset.json``: ``erasure``); a prepared dataset holding one is refused.
    """
    check_source(spec, columns_given=not (columns is None or columns.is_default()) or sep is not None)
    if spec == "synthetic":
        from onnxrec.trainer.data.synth import generate_synthetic

        return _build(generate_synthetic(seed=seed), pre, split_spec, "synthetic", erasure), None
    if spec in MOVIELENS_FOLDERS:
        return _build(read_source(data_home() / MOVIELENS_FOLDERS[spec]), pre, split_spec, spec, erasure), None
    path = Path(spec)
    if is_dataset_dir(path):
        ds = load_dataset(path)
        if erasure is not None:
            check_prepared(ds.user_ids, erasure, path)
        return ds, path
    log = read_source(path, columns, sep=sep)
    return _build(log, pre, split_spec, path.stem or path.name, erasure), None


def _build(
    log: InteractionLog, pre: PreprocessSpec, split_spec: SplitSpec, name: str, erasure: Erasure | None
) -> Dataset:
    record = None
    if erasure is not None:
        log, record = erase(log, erasure)
    ds = build_dataset(log, pre, split_spec, name)
    if record is not None:
        ds.meta["erasure"] = record
    return ds
