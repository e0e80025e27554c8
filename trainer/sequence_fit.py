"""The all-positions next-item objective of SASRec: each training window predicts, at every position, the
item that follows it.

The per-prefix objective of :mod:`onnxrec.trainer.fit` makes one example of each training item and the
``history_len`` items before it, and reads the encoder at the newest position only: every item's
attention over its history is recomputed for each of the ~``history_len`` examples that hold it. Here a
user's training sequence is cut into windows of ``history_len`` inputs, and the causal encoder's output
at each position (which reads that position and older ones only, never padding:
:meth:`~onnxrec.trainer.models.sasrec.SasRec.encode`) is scored against the next item, as SASRec (Kang &
McAuley, 2018) and RecBole train it. One pass of the encoder trains up to ``history_len`` targets.

Windows, per user and epoch: the sequence ``s_0 .. s_{n-1}`` (training split only, oldest first) has the
targets ``s_1 .. s_{n-1}``. The newest window ends at ``s_{n-1}`` and the others end every
``history_len`` items before a random offset ``r`` in ``[1, history_len]`` drawn from the epoch's
generator, so each target is predicted exactly once per epoch, from a context that differs between
epochs. A window's history is newest first like every history (position 0 = the newest input, -1 pads);
its target at position ``p`` is the item after ``history[p]``, or -1 where that item is no target of this
window (before the sequence, or owned by the next window, whose inputs it still is).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from onnxrec.errors import TrainingError
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.fit import candidate_loss, compact_history
from onnxrec.trainer.history import UserSequences
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.sasrec import SasRec
from onnxrec.trainer.negatives import NegativeSampler

#: ``TrainConfig.sequence_objective`` values.
ALL_POSITIONS = "all_positions"
LAST_POSITION = "last_position"
OBJECTIVES = (ALL_POSITIONS, LAST_POSITION)


def trains_every_position(model: Recommender, objective: str) -> bool:
    """Whether ``model`` trains on the all-positions objective: a SASRec unless ``last_position`` is asked."""
    return isinstance(model, SasRec) and objective == ALL_POSITIONS


def windows_per_step(cfg: TrainConfig, history_len: int, world: int) -> int:
    """Windows of ``history_len`` inputs per step of each of ``world`` ranks: ``--sequence-batch-size`` target
    positions per step in all. Its default of 512 (10 windows of 50) against the 1024 of ``--batch-size``,
    which it was until then: full NDCG@10 on ML-100K validation 0.1209 / 0.1167 / 0.1174 against 0.1178 /
    0.1038 / 0.1167 over seeds 0-2 (#19), for about 10 % more training CPU (twice the steps per epoch)."""
    if cfg.sequence_batch_size < 1:
        raise TrainingError(f"sequence_batch_size must be at least 1, not {cfg.sequence_batch_size}")
    return max(1, -(-cfg.sequence_batch_size // world) // max(history_len, 1))


@dataclass(frozen=True)
class Windows:
    """One epoch's training windows: ``history`` [W, L] (newest first, -1 pads), ``targets`` [W, L] (the
    item after ``history[:, p]``, -1 where none) and each window's user ``users`` [W]."""

    history: np.ndarray
    targets: np.ndarray
    users: np.ndarray


def epoch_windows(seq: UserSequences, length: int, gen: np.random.Generator) -> Windows:
    """Cut every user's sequence of ``seq`` into windows of ``length`` inputs (see the module's text):
    each item but a sequence's first is the target of exactly one window position."""
    n = np.diff(seq.indptr)
    num_users = len(n)
    # r in [1, length]: how many targets the newest window owns; the older windows own `length` each
    r = gen.integers(1, length + 1, size=num_users)
    older = np.where(n - 1 > r, (n - 1 - r + length - 1) // length, 0)
    counts = np.where(n >= 2, 1 + older, 0)
    users = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    k = np.arange(len(users), dtype=np.int64) - np.repeat(first, counts)  # 0 = the newest window
    nu, ru = n[users], r[users]
    end = np.where(k == 0, nu - 1, nu - 1 - ru - (k - 1) * length)  # index of the window's newest target
    lower = np.where(k == 0, nu - 1 - ru, end - length)  # targets are the indices in (lower, end]
    base = seq.indptr[users]
    p = np.arange(length, dtype=np.int64)[None, :]
    target_at = end[:, None] - p  # [W, L]: index of the target at position p
    inputs_ok = target_at - 1 >= 0
    owned = (target_at > lower[:, None]) & (target_at >= 1)
    items = seq.items
    if not len(items):
        empty = np.zeros((0, length), dtype=np.int64)
        return Windows(empty, empty.copy(), users)
    history = np.where(inputs_ok, items[np.clip(base[:, None] + target_at - 1, 0, len(items) - 1)], -1)
    targets = np.where(owned, items[np.clip(base[:, None] + target_at, 0, len(items) - 1)], -1)
    return Windows(history.astype(np.int64), targets.astype(np.int64), users)


class SequenceStep(nn.Module):
    """One batch of windows' loss: the mean over every target position (full softmax over the catalog, or
    the sampled softmax, BCE or BPR against each position's sampled negatives)."""

    def __init__(self, model: SasRec, loss: str, temperature: float, full_softmax: bool) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.temperature = temperature
        self.full_softmax = full_softmax

    def forward(self, history: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        m = self.model
        mask = targets >= 0
        wanted = targets[mask]  # [M], in row-major order like the negatives' rows
        if self.loss == "softmax" and self.full_softmax:
            table = m.item_vectors()
            out = m.encode(history, table)[mask]  # [M, D]
            # the temperature divides the [M, D] vectors, not the [M, num_items] logits (0.6 s of a 9 s epoch)
            logits = (out / self.temperature) @ table.T + m.item_bias() / self.temperature
            return nn.functional.cross_entropy(logits, wanted)
        compact = compact_history(m, {"history": history})
        out = m.encode(compact["history"], compact["item_table"])[mask]
        cands = torch.cat([wanted.unsqueeze(1), negatives], dim=1)  # [M, 1 + n]
        flat = cands.reshape(-1)
        v = m.item_vectors(flat).reshape(*cands.shape, -1)
        scores = torch.einsum("md,mnd->mn", out, v) + m.item_bias(flat).reshape(cands.shape)
        return candidate_loss(scores, self.loss, self.temperature)


@dataclass(frozen=True)
class SequenceEpochData:
    """What every epoch of the all-positions objective reads: the training sequences, windows of
    ``length`` inputs, ``batch`` windows per step of this rank's share (:func:`windows_per_step`:
    ``--sequence-batch-size`` // ``length``), and the negatives' sampler."""

    seq: UserSequences
    length: int
    batch: int
    rank: int
    world: int
    negatives: NegativeSampler
    num_negatives: int
    needs_negatives: bool

    def batches(
        self, gen: np.random.Generator, device: torch.device
    ) -> tuple[int, int, Iterator[tuple[tuple[Any, ...], int]]]:
        """(targets this epoch, steps, each step's ``SequenceStep`` arguments and its target count)."""
        w = epoch_windows(self.seq, self.length, gen)
        perm = gen.permutation(len(w.users))[self.rank :: self.world]
        targets_per_window = (w.targets >= 0).sum(axis=1)
        total = int(targets_per_window[perm].sum())

        def steps() -> Iterator[tuple[tuple[Any, ...], int]]:
            for start in range(0, len(perm), self.batch):
                rows = perm[start : start + self.batch]
                targets = w.targets[rows]
                count = int(targets_per_window[rows].sum())
                if self.needs_negatives:
                    owners = np.repeat(w.users[rows], targets_per_window[rows])
                    negs = self.negatives.draw(gen, owners, self.num_negatives)
                else:
                    negs = np.zeros((count, 0), dtype=np.int64)
                args = (
                    torch.from_numpy(w.history[rows]).to(device),
                    torch.from_numpy(targets).to(device),
                    torch.from_numpy(negs).to(device),
                )
                yield args, count

        return total, -(-len(perm) // self.batch), steps()


def sequence_training(
    model: Recommender,
    loss: str,
    cfg: TrainConfig,
    full_softmax: bool,
    seq: UserSequences,
    batch: int,
    rank: int,
    world: int,
    negatives: NegativeSampler,
) -> tuple[SequenceStep, SequenceEpochData]:
    """The step and the epochs' data of the all-positions objective for ``model`` (a :class:`SasRec`)."""
    if not isinstance(model, SasRec):
        raise TrainingError(f"the all-positions objective trains sequence models (sasrec), not {type(model).__name__}")
    needs_negatives = not (loss == "softmax" and full_softmax)
    data = SequenceEpochData(seq, model.history_len, batch, rank, world, negatives, cfg.num_negatives, needs_negatives)
    return SequenceStep(model, loss, cfg.temperature, full_softmax), data
