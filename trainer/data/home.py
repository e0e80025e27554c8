"""Where fetched MovieLens data lives and the names ``--data`` knows it by (no heavy imports here:
the CLI checks ``--data`` with these before torch loads)."""

from __future__ import annotations

import os
from pathlib import Path

from onnxrec.errors import ConfigError, DataError

#: ``--data`` names of the MovieLens datasets -> their folder under :func:`data_home`.
MOVIELENS_FOLDERS = {
    "movielens-100k": "ml-100k",
    "ml-100k": "ml-100k",
    "movielens-1m": "ml-1m",
    "ml-1m": "ml-1m",
    "movielens-20m": "ml-20m",
    "ml-20m": "ml-20m",
}


def data_home() -> Path:
    """Where fetched datasets live."""
    return Path(os.environ.get("ONNXREC_DATA_HOME", Path.home() / ".cache" / "onnxrec" / "data"))


def check_source(spec: str, *, columns_given: bool = False) -> None:
    """Cheap checks of ``--data`` (no file is read): the path exists, a MovieLens name is downloaded,
    and column options (``columns_given``) are only given for a CSV/TSV/Parquet log."""
    path = Path(spec)
    if spec == "synthetic":
        kind = "the synthetic data"
    elif spec in MOVIELENS_FOLDERS:
        folder = data_home() / MOVIELENS_FOLDERS[spec]
        if not folder.exists():
            raise DataError(f"{spec} is not downloaded yet: run 'onnxrec data fetch {spec}' (looked in {folder})")
        kind = "a MovieLens dataset"
    elif not path.exists():
        raise DataError(f"{path}: no such file or directory")
    elif path.is_dir():
        kind = "a folder (a prepared dataset or a MovieLens folder)"
    else:
        return
    if columns_given:
        raise ConfigError(
            f"--data {spec} is {kind}: the column options (--user-col, --item-col, --rating-col, --time-col, "
            "--user-features, --item-features, --sep) apply to CSV/TSV/Parquet logs only"
        )
