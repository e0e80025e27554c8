"""Checkpoints: a plain dict of tensors and plain values, loaded with ``weights_only=True``.

Keys: ``format``, ``model_type``, ``model_config`` (the config dataclass as a dict),
``state_dict``, ``optimizer``, ``epoch``, ``best_epoch``, ``feature_spec``, ``dataset`` (path,
name, content hash, counts), ``user_ids`` and ``item_ids`` (raw id per index), ``metrics``,
``train_config`` and ``onnxrec_version``. The model is rebuilt from its config; no pickled objects.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from onnxrec.atomic import atomic_write_bytes
from onnxrec.errors import TrainingError
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.registry import build_model

FORMAT = "onnxrec.checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """Write ``ckpt`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint (is this a run directory made by 'onnxrec train'?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise TrainingError(f"{path}: not a readable onnxrec checkpoint ({type(exc).__name__})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TrainingError(f"{path}: not an onnxrec checkpoint (format {FORMAT} expected)")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> Recommender:
    """Rebuild the network from the checkpoint's config and load its weights."""
    model = build_model(ckpt["model_type"], ckpt["model_config"])
    state = ckpt["state_dict"]
    item_feats = {k[len("item_feature_") :]: v for k, v in state.items() if k.startswith("item_feature_")}
    if item_feats and hasattr(model, "set_item_features"):
        model.set_item_features(item_feats)
    model.load_state_dict(state)
    model.eval()
    return model
