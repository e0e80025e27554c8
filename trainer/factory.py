"""Choose and build the model a training config asks for, sized for a dataset."""

from __future__ import annotations

from onnxrec.errors import ConfigError
from onnxrec.trainer.config import TEXT_MODELS, TrainConfig
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.models.config import FeatureInput, ModelConfig, ModelOptions
from onnxrec.trainer.models.registry import MODEL_TYPES, registered


def resolve_model(cfg: TrainConfig) -> tuple[str, str]:
    """The (model type, loss) that ``cfg`` means; ``--loss auto`` is the model type's default loss."""
    model = cfg.model
    if model not in MODEL_TYPES:
        raise ConfigError(f"unknown model {cfg.model!r} (choose from auto, {', '.join(MODEL_TYPES)})")
    loss = MODEL_TYPES[model].default_loss if cfg.loss == "auto" else cfg.loss
    if loss not in ("softmax", "bce", "bpr"):
        raise ConfigError(f"unknown loss {cfg.loss!r} (choose from auto, softmax, bce, bpr)")
    return model, loss


def resolve_ema(cfg: TrainConfig, model: str) -> float:
    """The weight average's decay per step for ``model`` (``--ema``, else the model type's default)."""
    return MODEL_TYPES[model].default_ema if cfg.ema is None else cfg.ema


def model_options(cfg: TrainConfig, ds: Dataset) -> ModelOptions:
    """``cfg``'s model options and ``ds``'s shape and side features: what a model config is sized from."""
    spec = ds.feature_spec
    return ModelOptions(
        num_users=ds.num_users,
        num_items=ds.num_items,
        dim=cfg.dim,
        feature_dim=cfg.feature_dim,
        layers=tuple(cfg.layers),
        history_len=cfg.history_len,
        dropout=cfg.dropout,
        blocks=cfg.blocks,
        id_dropout=cfg.id_dropout,
        user_features=tuple(FeatureInput(f.name, f.cardinality, f.width) for f in spec.user),
        item_features=tuple(FeatureInput(f.name, f.cardinality, f.width) for f in spec.item),
        text_dim=_text_dim(cfg, ds),
    )


def _text_dim(cfg: TrainConfig, ds: Dataset) -> int:
    """The item text vectors' size when ``--item-text`` asks for them (0 otherwise)."""
    if not cfg.item_text:
        return 0
    if ds.item_text is None:
        raise ConfigError(
            f"--item-text: dataset {ds.name!r} has no item text (prepare it with data prepare --item-text)"
        )
    return int(ds.item_text.shape[1])


def model_config(model: str, cfg: TrainConfig, ds: Dataset) -> ModelConfig:
    """The config dataclass of model type ``model`` for ``ds`` with ``cfg``'s sizes."""
    if cfg.item_text and model not in TEXT_MODELS:
        raise ConfigError(f"--item-text: only the {' and '.join(TEXT_MODELS)} models read item text (not {model})")
    return registered(model).config.from_options(model_options(cfg, ds))
