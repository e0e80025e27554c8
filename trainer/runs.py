"""Reading a run directory back: its checkpoint, model and dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxrec.errors import DataError, OnnxrecError, TrainingError
from onnxrec.trainer.checkpoint import CHECKPOINT_FILE, load_checkpoint
from onnxrec.trainer.data.dataset import Dataset, load_dataset


def check_run_dir(run: Path) -> Path:
    """``run`` if it is a complete run directory, else a :class:`TrainingError`."""
    run = Path(run)
    if not run.exists():
        raise TrainingError(f"{run}: no such run directory")
    if not run.is_dir():
        raise TrainingError(f"{run}: not a run directory (a directory made by 'onnxrec train' is expected)")
    if not (run / CHECKPOINT_FILE).is_file():
        raise TrainingError(f"{run}: not a run directory (no {CHECKPOINT_FILE})")
    return run


def run_dataset(run: Path, ckpt: dict[str, Any]) -> Dataset:
    """The dataset a run was trained on, checked against the hash in its checkpoint."""
    info = ckpt["dataset"]
    path = Path(info["path"])
    if not path.is_absolute():
        path = Path(run) / path
    if not path.exists():
        raise DataError(f"{run}: the training dataset {path} is gone")
    ds = load_dataset(path)
    if ds.content_hash != info["content_hash"]:
        raise DataError(f"{run}: the dataset at {path} changed since training (content hash differs)")
    return ds


def open_run(run: Path) -> tuple[dict[str, Any], Dataset]:
    """The checkpoint and dataset of a run directory."""
    run = check_run_dir(run)
    ckpt = load_checkpoint(run / CHECKPOINT_FILE)
    return ckpt, run_dataset(run, ckpt)


def open_run_trained_on(
    run: Path, ds: Dataset, subject: str, other: str, error: type[OnnxrecError] = TrainingError
) -> dict[str, Any]:
    """The checkpoint of the run at ``run``, refused with ``error`` ("SUBJECT was trained on another
    dataset than OTHER ...") unless it was trained on ``ds`` (the same content hash): a second run whose
    user and item indices must mean what ``ds``'s do (a ranker, a retrieval run's candidates)."""
    ckpt, run_ds = open_run(Path(run))
    if run_ds.content_hash != ds.content_hash:
        raise error(
            f"{subject} was trained on another dataset than {other} "
            f"({run_ds.name}, hash {run_ds.content_hash[:12]} against {ds.name}, {ds.content_hash[:12]}); "
            "train both on the same prepared dataset"
        )
    return ckpt
