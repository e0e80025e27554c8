"""The training configuration: one frozen dataclass, from defaults, a TOML file, the environment
(``ONNXREC_TRAIN_<KEY>``) and CLI options, in that order; unknown keys and wrong types are errors."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from onnxrec.errors import ConfigError

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


def _coerce(name: str, typ: Any, value: Any) -> Any:
    origin = str(typ)
    try:
        if typ is bool or origin == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            raise ValueError(value)
        if typ is int or origin == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ is float or origin == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if "float | None" in origin:
            return None if value in (None, "", "none", "None") else float(value)
        if "str | None" in origin:
            return None if value in (None, "") else str(value)
        if "tuple[int" in origin:
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            if not isinstance(value, list | tuple):
                raise ValueError(value)
            return tuple(int(v) for v in value)
        if typ is str or origin == "str":
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"option {name!r}: {value!r} is not a valid {origin}") from exc
    raise ConfigError(f"option {name!r} cannot be set")


def load_train_config(
    toml_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrainConfig:
    """Defaults <- TOML file <- environment <- ``overrides`` (CLI options that were given)."""
    hints = get_type_hints(TrainConfig)
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "extra"]
    values: dict[str, Any] = {}
    if toml_path is not None:
        try:
            doc = tomllib.loads(Path(toml_path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{toml_path}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_path}: not valid TOML ({exc})") from exc
        doc = doc.get("train", doc)
        unknown = sorted(set(doc) - set(names))
        if unknown:
            raise ConfigError(f"{toml_path}: unknown option(s) {', '.join(unknown)}")
        values.update(doc)
    env = os.environ if environ is None else environ
    for key, raw in env.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name not in names:
                raise ConfigError(f"environment variable {key}: unknown option {name!r}")
            values[name] = raw
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"unknown option {key!r}")
        values[key] = value
    return TrainConfig(**{k: _coerce(k, hints[k], v) for k, v in values.items()})
