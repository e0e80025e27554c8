"""Small trained runs of several model types on one dataset, for the export tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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
