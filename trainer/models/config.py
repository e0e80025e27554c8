"""What every model config is: built from the training options, stored as a plain dict, rebuilt from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self


@dataclass(frozen=True)
class FeatureInput:
    """One side feature as a model sees it: embedding rows and width (1 = categorical)."""

    name: str
    cardinality: int
    width: int = 1


@dataclass(frozen=True)
class ModelOptions:
    """What a model config is sized from: the dataset's shape and side features, and the model
    options of ``onnxrec train``. A model takes what it uses and ignores the rest."""

    num_users: int
    num_items: int
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # every subclass is a dataclass
    dim: int = 64
    feature_dim: int = 16
    layers: tuple[int, ...] = ()  # () = the model's own default
    history_len: int = 0
    dropout: float = 0.0
    blocks: int = 0  # 0 = the model's own default
    id_dropout: float = 0.0
    user_features: tuple[FeatureInput, ...] = ()
    item_features: tuple[FeatureInput, ...] = ()
    text_dim: int = 0  # item text vectors' size (0 = the model reads no item text)


class ModelConfig:
    """Base of every model's config dataclass (frozen, with ``num_users`` and ``num_items``).

    A config is built from :class:`ModelOptions` for training (:meth:`from_options`), stored in a
    checkpoint as a plain dict (:meth:`to_dict`) and rebuilt from it (:meth:`from_dict`)."""

    num_users: int
    num_items: int
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # every subclass is a dataclass

    @classmethod
    def from_options(cls, opts: ModelOptions) -> Self:
        """The config ``onnxrec train`` builds for ``opts``."""
        raise NotImplementedError(f"{cls.__name__} does not say how to build itself from training options")

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (nested dataclasses as dicts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """Rebuild a config from :meth:`to_dict`'s output (lists become tuples); a config with nested
        dataclasses rebuilds them first."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
