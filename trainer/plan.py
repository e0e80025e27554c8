"""What training will cost, decided before the first batch: full or sampled softmax, and whether
the run fits in memory at all.

A full softmax scores every item for every example of a batch: ``batch_size x num_items`` logits,
held three times over (logits, softmax, gradient). At 1,024 examples and 10^6 items that is 12 GB
per step, hours per epoch. The full softmax is used only while the catalog is within
``max_softmax_items`` *and* those logits fit in :data:`FULL_SOFTMAX_BYTES`; otherwise the sampled
softmax (the positive against ``num_negatives`` sampled items) trains instead, and the log says
why. A model whose tables and optimizer state alone would not fit in this machine's memory is
refused with the options that shrink it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from onnxrec.errors import TrainingError

#: Most memory the full softmax's logits may take per step (logits, softmax and gradient, float32).
FULL_SOFTMAX_BYTES = 1 << 30
#: float32 copies a full softmax step holds of its [batch, items] logits.
LOGIT_COPIES = 3
#: Bytes per parameter while training with Adam/AdamW: weight, gradient, two moments (float32).
TRAINING_BYTES_PER_PARAMETER = 16


@dataclass(frozen=True)
class SoftmaxPlan:
    """Whether a softmax loss scores the whole catalog each step, and why."""

    full: bool
    logits_bytes: int
    reason: str


def choose_softmax(
    num_items: int,
    batch_size: int,
    max_softmax_items: int,
    *,
    budget_bytes: int = FULL_SOFTMAX_BYTES,
) -> SoftmaxPlan:
    """Full softmax when the catalog is within ``max_softmax_items`` and a step's logits
    (``batch_size x num_items``, :data:`LOGIT_COPIES` float32 copies) fit ``budget_bytes``;
    sampled softmax otherwise."""
    logits = LOGIT_COPIES * 4 * batch_size * num_items
    if num_items > max_softmax_items:
        return SoftmaxPlan(
            False, logits, f"{num_items:,} items is above --max-softmax-items {max_softmax_items:,}: sampled softmax"
        )
    if logits > budget_bytes:
        return SoftmaxPlan(
            False,
            logits,
            f"a full softmax over {num_items:,} items x batch {batch_size:,} needs {_gb(logits)} of logits per step "
            f"(budget {_gb(budget_bytes)}): sampled softmax (a smaller --batch-size keeps the full one)",
        )
    return SoftmaxPlan(True, logits, f"full softmax over {num_items:,} items ({_gb(logits)} of logits per step)")


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**28 else f"{n / 2**20:.0f} MB"


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_model_memory(
    num_parameters: int, num_users: int, num_items: int, *, available: int | None = None, fraction: float = 0.8
) -> int:
    """The bytes training ``num_parameters`` takes (weights, gradients, Adam moments); a
    :class:`TrainingError` naming the options that shrink it when that exceeds ``fraction`` of
    ``available`` (default: this machine's memory)."""
    need = TRAINING_BYTES_PER_PARAMETER * num_parameters
    available = physical_memory() if available is None else available
    if available is not None and need > fraction * available:
        raise TrainingError(
            f"the model has {num_parameters:,} parameters for {num_users:,} users and {num_items:,} items and needs "
            f"about {_gb(need)} to train, more than {fraction:.0%} of this machine's {_gb(available)}: drop rare "
            "users and items (--min-user-interactions, --min-item-interactions) or lower --dim"
        )
    return need


#: An epoch estimated to take longer than this (seconds) gets a warning with the options that shorten it.
LONG_EPOCH_SECONDS = 1800.0


def long_epoch_warning(seconds_per_batch: float, batches: int, num_items: int) -> str | None:
    """The warning for an epoch of ``batches`` at ``seconds_per_batch`` (measured on the first
    batches) when it would pass :data:`LONG_EPOCH_SECONDS`; None otherwise. Every step updates every
    item's embedding and optimizer moments, so a wide catalog costs per batch, not per item seen."""
    total = seconds_per_batch * batches
    if total <= LONG_EPOCH_SECONDS:
        return None
    return (
        f"an epoch of {batches:,} batches will take about {total / 60:,.0f} min at {seconds_per_batch:.2f} s per batch "
        f"({num_items:,} items): drop rare items with --min-item-interactions, or raise --batch-size for fewer steps"
    )
