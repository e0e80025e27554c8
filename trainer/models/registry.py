"""Build any onnxrec model from its type name and config dict (what a checkpoint stores)."""

from __future__ import annotations

import dataclasses
from typing import Any

from onnxrec.errors import OnnxrecError
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.mf import MF, MFConfig
from onnxrec.trainer.models.mlp import MLP, MLPConfig, NeuMF, NeuMFConfig
from onnxrec.trainer.models.two_tower import FeatureInput, TwoTower, TwoTowerConfig

MODEL_TYPES: dict[str, tuple[type[Recommender], type[Any]]] = {
    "mf": (MF, MFConfig),
    "mlp": (MLP, MLPConfig),
    "neumf": (NeuMF, NeuMFConfig),
    "twotower": (TwoTower, TwoTowerConfig),
}


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A model config dataclass as a plain dict (tuples become lists)."""
    return dataclasses.asdict(cfg)


def config_from_dict(model_type: str, d: dict[str, Any]) -> Any:
    """Rebuild a model config dataclass from :func:`config_to_dict`'s output."""
    if model_type not in MODEL_TYPES:
        raise OnnxrecError(f"unknown model type {model_type!r} (known: {', '.join(MODEL_TYPES)})")
    cls = MODEL_TYPES[model_type][1]
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise OnnxrecError(f"{model_type} config has unknown keys: {', '.join(sorted(unknown))}")
    for key, value in d.items():
        if key in ("user_features", "item_features"):
            kwargs[key] = tuple(FeatureInput(**f) for f in value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def build_model(model_type: str, config: Any) -> Recommender:
    """Instantiate the network of ``model_type`` from its config (dataclass or dict)."""
    if isinstance(config, dict):
        config = config_from_dict(model_type, config)
    if model_type not in MODEL_TYPES:
        raise OnnxrecError(f"unknown model type {model_type!r} (known: {', '.join(MODEL_TYPES)})")
    return MODEL_TYPES[model_type][0](config)
