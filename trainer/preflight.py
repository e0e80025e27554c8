"""Checks of a training config that cost nothing: they run before torch loads.

Importing torch takes 3-9 s on a busy 2-core machine; a wrong ``--data`` path, a bad option value
or an existing ``--out`` is reported at once, as one line, instead of after that wait. Nothing here
imports torch, numpy or pyarrow (a test checks it).
"""

from __future__ import annotations

from pathlib import Path

from onnxrec.errors import ConfigError, TrainingError
from onnxrec.trainer.auto import check_auto
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.home import check_source


def columns_given(cfg: TrainConfig) -> bool:
    """Whether any column option (``--user-col`` ... ``--sep``) is set."""
    named = (cfg.user_col, cfg.item_col, cfg.rating_col, cfg.time_col, cfg.sep)
    return any(v is not None for v in named) or bool(cfg.user_features) or bool(cfg.item_features)


def validate_options(cfg: TrainConfig) -> None:
    """A :class:`ConfigError` for the first option whose value cannot work."""
    checks = [
        (cfg.epochs >= 1, "epochs must be at least 1"),
        (cfg.batch_size >= 1, "batch_size must be at least 1"),
        (cfg.dim >= 1, "dim must be at least 1"),
        (0 < cfg.lr <= 10, "lr must be in (0, 10]"),
        (cfg.num_negatives >= 1, "num_negatives must be at least 1"),
        (cfg.candidates >= 1, "candidates must be at least 1"),
        (0 <= cfg.hard_negatives <= 1, "hard_negatives must be in [0, 1]"),
        (cfg.eval_negatives >= 1, "eval_negatives must be at least 1"),
        (cfg.patience >= 1, "patience must be at least 1"),
        (cfg.history_len >= 0, "history_len must be 0 or more"),
        (0 <= cfg.id_dropout < 1, "id_dropout must be in [0, 1)"),
        (cfg.temperature > 0, "temperature must be positive"),
        (cfg.threads >= 0, "threads must be 0 (torch's default) or more"),
        (cfg.max_softmax_items >= 0, "max_softmax_items must be 0 or more"),
        (all(k >= 1 for k in cfg.eval_ks) and len(cfg.eval_ks) > 0, "eval_ks must be positive integers"),
        (cfg.split in ("leave_one_out", "temporal"), f"unknown split {cfg.split!r} (use leave_one_out or temporal)"),
        (cfg.optimizer in ("adam", "adamw"), f"unknown optimizer {cfg.optimizer!r} (use adam or adamw)"),
        (cfg.loss in ("auto", "softmax", "bce", "bpr"), f"unknown loss {cfg.loss!r} (use auto, softmax, bce or bpr)"),
        (cfg.blocks >= 0, "blocks must be 0 (the model's default) or more"),
        (cfg.ema is None or 0 <= cfg.ema < 1, "ema must be in [0, 1) (0: off)"),
        (
            cfg.sequence_objective in ("all_positions", "last_position"),
            f"unknown sequence_objective {cfg.sequence_objective!r} (use all_positions or last_position)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def preflight(cfg: TrainConfig) -> None:
    """Every check of ``cfg`` that needs neither torch nor reading the data: option values, that
    ``--out`` is free, that ``--resume``, ``--candidates-from`` and ``--data`` exist, and that column
    options are only given for a CSV/TSV/Parquet log."""
    validate_options(cfg)
    check_auto(cfg)
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise TrainingError(f"{out} already exists (use --overwrite or another --out)")
    if cfg.resume and not Path(cfg.resume).is_dir():
        raise TrainingError(f"--resume {cfg.resume}: no such run directory")
    if cfg.candidates_from and not Path(cfg.candidates_from).is_dir():
        raise TrainingError(f"--candidates-from {cfg.candidates_from}: no such run directory")
    check_source(cfg.data, columns_given=columns_given(cfg))
