"""Choose and build the model a training config asks for, sized for a dataset."""

from __future__ import annotations

from typing import Any

from onnxrec.errors import ConfigError
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.models.mf import MFConfig
from onnxrec.trainer.models.mlp import MLPConfig, NeuMFConfig
from onnxrec.trainer.models.registry import MODEL_TYPES
from onnxrec.trainer.models.two_tower import FeatureInput, TwoTowerConfig

#: The model ``--model auto`` trains, and the loss ``--loss auto`` uses per model.
DEFAULT_MODEL = "twotower"
DEFAULT_LOSS = {"mf": "softmax", "twotower": "softmax", "mlp": "bce", "neumf": "bce"}


def resolve_model(cfg: TrainConfig) -> tuple[str, str]:
    """The (model type, loss) that ``cfg`` means."""
    model = DEFAULT_MODEL if cfg.model == "auto" else cfg.model
    if model not in MODEL_TYPES:
        raise ConfigError(f"unknown model {cfg.model!r} (choose from auto, {', '.join(MODEL_TYPES)})")
    loss = DEFAULT_LOSS[model] if cfg.loss == "auto" else cfg.loss
    if loss not in ("softmax", "bce", "bpr"):
        raise ConfigError(f"unknown loss {cfg.loss!r} (choose from auto, softmax, bce, bpr)")
    return model, loss


def model_config(model: str, cfg: TrainConfig, ds: Dataset) -> Any:
    """The config dataclass of ``model`` for ``ds`` with ``cfg``'s sizes."""
    layers = tuple(cfg.layers)
    if model == "mf":
        return MFConfig(ds.num_users, ds.num_items, cfg.dim)
    if model == "mlp":
        return MLPConfig(ds.num_users, ds.num_items, cfg.dim, layers or (64, 32, 16), cfg.dropout)
    if model == "neumf":
        return NeuMFConfig(ds.num_users, ds.num_items, cfg.dim, cfg.dim, layers or (64, 32, 16), cfg.dropout)
    spec = ds.feature_spec
    return TwoTowerConfig(
        num_users=ds.num_users,
        num_items=ds.num_items,
        dim=cfg.dim,
        feature_dim=cfg.feature_dim,
        user_features=tuple(FeatureInput(f.name, f.cardinality, f.width) for f in spec.user),
        item_features=tuple(FeatureInput(f.name, f.cardinality, f.width) for f in spec.item),
        history_len=cfg.history_len,
        hidden=layers or (128,),
        dropout=cfg.dropout,
        id_dropout=cfg.id_dropout,
    )
