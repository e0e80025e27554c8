"""The training configuration: one frozen dataclass, from defaults, a TOML file, the environment
(``ONNXREC_TRAIN_<KEY>``) and CLI options, in that order; unknown keys and wrong types are errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxrec.settings import load_config, setting

ENV_PREFIX = "ONNXREC_TRAIN_"
#: The models that read item text (``--item-text``).
TEXT_MODELS = ("twotower", "sasrec")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``onnxrec train``. ``model="auto"`` trains the fast candidates and keeps the best
    on validation (:mod:`onnxrec.trainer.auto`)."""

    data: str = setting(
        "synthetic", "a prepared dataset directory, a MovieLens folder, a CSV/TSV/Parquet log, or synthetic"
    )
    out: str = setting("runs/default", "the run directory to write")
    model: str = setting(
        "twotower",
        "twotower | sasrec | mf | mlp | neumf | linear | fm | deepfm | auto (auto: trains mf, twotower and sasrec "
        "within --time-budget and keeps the best on validation)",
    )
    time_budget: float = setting(
        600.0,
        "--model auto: seconds of training for all candidates together; each may use an equal share of what is "
        "left, and trains at least one epoch",
    )
    loss: str = setting("auto", "auto | softmax | bce | bpr (auto: the model's default)")
    dim: int = setting(64, "embedding size of users and items")
    feature_dim: int = setting(16, "embedding size of each side feature")
    layers: tuple[int, ...] = setting(
        (), "hidden layer sizes, e.g. 128,64 (none: the model's default: 128 two-tower, 64,32,16 MLP and NeuMF)"
    )
    history_len: int = setting(50, "how many of a user's most recent items the history encoder reads")
    id_dropout: float = setting(
        0.1, "probability of dropping a user or item id in training (so unknown ids still get vectors)"
    )
    dropout: float = setting(0.0, "dropout between hidden layers")
    blocks: int = setting(0, "sasrec: transformer blocks (0: the model's default, 1)")
    sequence_objective: str = setting(
        "all_positions",
        "sasrec: all_positions (every position of each history window predicts its next item) | last_position "
        "(one example per training item, its history scored at the newest position)",
    )
    sequence_batch_size: int = setting(
        512,
        "sasrec all_positions: target positions per step, as windows of --history-len (512 // 50 = 10 windows; "
        "--batch-size is the other objectives'). 512, not 1024, won on ML-100K validation over 3 seeds (#19)",
    )
    epochs: int = setting(10, "most epochs to train (early stopping may end sooner)")
    batch_size: int = setting(1024, "training examples per step")
    lr: float = setting(0.005, "learning rate")
    weight_decay: float = setting(0.0, "weight decay (L2) of the optimizer")
    ema: float | None = setting(
        None,
        "validate, early-stop on and keep an exponential moving average of the weights with this decay per step "
        "(none: the model's default: 0.995 for sasrec, off for the others; 0: off)",
    )
    optimizer: str = setting("adamw", "adam | adamw")
    num_negatives: int = setting(4, "sampled negatives per positive (bce, bpr, sampled softmax)")
    deletions: str | None = setting(
        None,
        "a deletion ledger (REPOSITORY/deletions.jsonl, written by onnxrec forget): those users' interactions "
        "are dropped from training, and the run records it",
    )
    candidates_from: str | None = setting(
        None,
        "a retrieval run on the same data: negatives also come from its top --candidates items per user that the "
        "user did not train on (hard negatives), and each epoch validates the pipeline retrieval -> this model",
    )
    candidates: int = setting(200, "with --candidates-from: how many of the retrieval run's best items per user")
    hard_negatives: float = setting(
        0.5, "with --candidates-from: the share of negatives drawn from the candidates (the rest from the catalog)"
    )
    retrieval_fields: bool = setting(
        True,
        "with --candidates-from: an fm or linear ranker also reads each candidate's retrieval score and rank as "
        "fields (a pipeline version passes them from its retrieval stage)",
    )
    context_fields: bool = setting(
        False,
        "with --candidates-from: an fm, deepfm, linear or twotower ranker also reads the interaction's context (hour "
        "of day and day of week in UTC, time since the user's previous interaction, from the log's timestamps); a "
        "pipeline version takes each request's time",
    )
    blend: bool = setting(
        True,
        "with --candidates-from: after training, choose on validation how much retrieval's score weighs against "
        "the ranker's in the pipeline's final ranking (rankers without retrieval fields; --no-blend: the ranker alone)",
    )
    max_softmax_items: int = setting(200_000, "full softmax up to this many items, sampled softmax above")
    temperature: float = setting(1.0, "softmax temperature")
    seed: int = setting(0, "random seed of initialisation, sampling and data order")
    patience: int = setting(3, "epochs without a better validation metric before stopping")
    early_stop_metric: str = setting("full/ndcg@10", "validation metric that picks the best epoch")
    eval_ks: tuple[int, ...] = setting((10,), "cut-offs K of the reported metrics, e.g. 5,10,20")
    threads: int = setting(
        0, "torch CPU threads (0: torch's default, one per core); a seeded run repeats exactly at the same count"
    )
    device: str = setting("cpu", "cpu | cuda")
    # data preparation, when --data is a raw log rather than a prepared dataset
    positive_threshold: float | None = setting(
        None, "raw logs: ratings >= this are positives (none: every interaction)"
    )
    min_user_interactions: int = setting(1, "raw logs: k-core, fewest interactions a user keeps")
    min_item_interactions: int = setting(1, "raw logs: k-core, fewest interactions an item keeps")
    split: str = setting("leave_one_out", "raw logs: leave_one_out | temporal")
    eval_negatives: int = setting(99, "raw logs: sampled negatives per evaluated user")
    user_col: str | None = setting(None, "CSV/Parquet logs: the user column (none: found as user_id, userId or user)")
    item_col: str | None = setting(
        None, "CSV/Parquet logs: the item column (none: found as item_id, itemId, movieId or item)"
    )
    rating_col: str | None = setting(
        None, "CSV/Parquet logs: the rating column (none: found as rating; 'none': the log has no rating)"
    )
    time_col: str | None = setting(
        None, "CSV/Parquet logs: the timestamp column (none: found as timestamp, time or ts; 'none': use row order)"
    )
    user_features: tuple[str, ...] = setting((), "CSV/Parquet logs: user side-feature columns, e.g. age,country")
    item_features: tuple[str, ...] = setting((), "CSV/Parquet logs: item side-feature columns, e.g. genres")
    item_text: bool = setting(
        False,
        "two-tower and sasrec: each item's vector also reads its text vector (a dataset prepared with data prepare "
        "--item-text), so items without interactions get vectors from their text",
    )
    sep: str | None = setting(None, "CSV logs: the separator, one character or 'tab' (none: detected)")
    progress: bool = setting(True, "show a progress bar (plain periodic lines when stderr is not a terminal)")
    resume: str | None = setting(None, "a run directory whose checkpoint (model and optimizer) training continues from")
    overwrite: bool = setting(False, "replace an existing run directory")

    def to_dict(self) -> dict[str, Any]:
        """Every option as used, TOML-ready (None values left out)."""
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}


def load_train_config(
    toml_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrainConfig:
    """Defaults <- TOML file (``[train]``) <- environment (``ONNXREC_TRAIN_*``) <- ``overrides``."""
    return load_config(TrainConfig, "train", ENV_PREFIX, toml_path, overrides, environ)
