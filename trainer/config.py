"""The training configuration: one frozen dataclass, from defaults, a TOML file, the environment
(``ONNXREC_TRAIN_<KEY>``) and CLI options, in that order; unknown keys and wrong types are errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxrec.settings import load_config

ENV_PREFIX = "ONNXREC_TRAIN_"


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``onnxrec train``. ``model="auto"`` picks the best model for the data."""

    data: str = "synthetic"
    out: str = "runs/default"
    model: str = "auto"
    loss: str = "auto"  # auto | softmax | bce | bpr
    dim: int = 64
    feature_dim: int = 16
    layers: tuple[int, ...] = ()  # () = the model's default: (128,) two-tower, (64, 32, 16) MLP and NeuMF
    history_len: int = 50
    id_dropout: float = 0.1
    dropout: float = 0.0
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 0.005
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    num_negatives: int = 4
    max_softmax_items: int = 200_000
    temperature: float = 1.0
    seed: int = 0
    patience: int = 3
    early_stop_metric: str = "full/ndcg@10"
    eval_ks: tuple[int, ...] = (10,)
    threads: int = 0  # 0 = torch's default
    device: str = "cpu"
    # data preparation, when --data is a raw log rather than a prepared dataset
    positive_threshold: float | None = None
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    split: str = "leave_one_out"
    eval_negatives: int = 99
    progress: bool = True
    resume: str | None = None
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Every option as used, TOML-ready (None values left out)."""
        d = dataclasses.asdict(self)
        d.pop("extra")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}


def load_train_config(
    toml_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrainConfig:
    """Defaults <- TOML file (``[train]``) <- environment (``ONNXREC_TRAIN_*``) <- ``overrides``."""
    return load_config(TrainConfig, "train", ENV_PREFIX, toml_path, overrides, environ)
