"""Small trained runs of several model types on one dataset, and pipeline versions of them, for the export
and serving tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from onnxrec.exporter.export import ExportOptions, export
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.train import train


def train_small_runs(dataset: Dataset, root: Path, models: Iterable[str]) -> dict[str, Path]:
    """One 2-epoch run per model type in ``models`` (dim 16, history 8, one 32-unit layer) under ``root``."""
    data = save_dataset(dataset, root / "data")
    return {
        m: train(
            TrainConfig(
                data=str(data),
                out=str(root / m),
                model=m,
                epochs=2,
                progress=False,
                dim=16,
                history_len=8,
                layers=(32,),
            )
        )
        for m in models
    }


def ranker_config(root: Path, retrieval: Path, name: str, model: str, candidates: int, **overrides: Any) -> TrainConfig:
    """A 2-epoch ranker (dim 8, one thread) on ``retrieval``'s top ``candidates``, into ``root / name``, on the
    dataset :func:`train_small_runs` saved under ``root``."""
    return TrainConfig(
        data=str(root / "data"),
        out=str(root / name),
        model=model,
        epochs=2,
        dim=8,
        progress=False,
        threads=1,
        candidates_from=str(retrieval),
        candidates=candidates,
        **overrides,
    )


def export_pipelines(retrieval: Path, root: Path, candidates: int, rankers: dict[str, Path]) -> Path:
    """Under ``root``: one pipeline version per ``rankers`` entry (name -> ranker run), ``retrieval``'s top
    ``candidates`` ranked, top-10; and ``one``, the retrieval run alone answering up to ``candidates``."""
    small = ExportOptions(k_max=10, max_batch=16, parity_users=64)
    for name, ranker in rankers.items():
        export(retrieval, root, name, options=replace(small, ranker=ranker, candidates=candidates))
    export(retrieval, root, "one", options=replace(small, k_max=candidates))
    return root
