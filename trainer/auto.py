"""``--model auto``: train the fast candidate models one after another within ``--time-budget`` and
keep the one whose validation score (the early-stopping metric at its best epoch) is highest.

Each candidate starts from the run's seed as it would trained alone (``--model NAME``), so the picked
model's weights are those of that run whenever its share of the budget did not cut it short. The
budget is shared as it goes: a candidate may use an equal share of what is left for it and the ones
after it, so time a fast model leaves over goes to the later ones; a candidate whose share runs out
stops after the epoch it is in (at least one epoch each), keeping its best epoch so far. The run
records every candidate's score, epochs and seconds under ``auto`` in ``eval.json``.

Nothing here imports torch: :func:`check_auto` runs in the CLI's preflight.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from onnxrec.errors import ConfigError
from onnxrec.trainer.config import TEXT_MODELS, TrainConfig

if TYPE_CHECKING:
    from onnxrec.trainer.train import Trained

log = logging.getLogger("onnxrec.train")

AUTO = "auto"
#: What ``--model auto`` tries, cheapest first, so a short budget still trains the cheap ones whole.
AUTO_CANDIDATES = ("mf", "twotower", "sasrec")


def check_auto(cfg: TrainConfig) -> None:
    """A :class:`ConfigError` when ``--model auto`` is combined with an option it cannot honour."""
    if cfg.model != AUTO:
        return
    if cfg.time_budget <= 0:
        raise ConfigError(f"--time-budget must be positive seconds, not {cfg.time_budget}")
    for given, option in ((cfg.candidates_from, "--candidates-from"), (cfg.resume, "--resume")):
        if given:
            raise ConfigError(f"--model auto chooses a retrieval model; {option} needs the model named with --model")
    if cfg.context_fields:
        raise ConfigError(
            "--model auto chooses a retrieval model; --context-fields is a ranker's (name it with --model)"
        )


def auto_candidates(cfg: TrainConfig) -> tuple[str, ...]:
    """The models ``--model auto`` tries with ``cfg``'s options (with ``--item-text``: those that read it)."""
    return tuple(m for m in AUTO_CANDIDATES if m in TEXT_MODELS) if cfg.item_text else AUTO_CANDIDATES


def select_model(cfg: TrainConfig, fit_one: Callable[[TrainConfig, float], Trained]) -> tuple[Trained, dict[str, Any]]:
    """Train each candidate with ``fit_one(cfg with model=NAME, deadline)`` (a :func:`time.monotonic`
    value) and return the best on validation and the record of the choice. Ties go to the earlier
    (cheaper) candidate. ``cfg`` has passed :func:`check_auto` (``train``'s preflight)."""
    names = auto_candidates(cfg)
    end = time.monotonic() + cfg.time_budget
    best: Trained | None = None
    tried: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        now = time.monotonic()
        share = max(0.0, end - now) / (len(names) - i)
        log.info("auto: training %s (%d of %d, up to %.0f s of the budget)", name, i + 1, len(names), share)
        trained = fit_one(dataclasses.replace(cfg, model=name), now + share)
        result = trained.result
        tried.append(
            {
                "model": name,
                "valid": round(result.best_score, 6),
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.epochs),
                "train_seconds": round(trained.wall, 2),
                "out_of_time": result.out_of_time,
            }
        )
        if best is None or result.best_score > best.result.best_score:
            best = trained
    assert best is not None  # names is never empty
    others = ", ".join(f"{t['model']} {t['valid']:.4f}" for t in tried if t["model"] != best.model_type)
    log.info(
        "auto: picked %s (valid %s %.4f; %s)", best.model_type, cfg.early_stop_metric, best.result.best_score, others
    )
    record = {
        "picked": best.model_type,
        "metric": f"valid {cfg.early_stop_metric}",
        "time_budget_s": cfg.time_budget,
        "candidates": tried,
    }
    return best, record
