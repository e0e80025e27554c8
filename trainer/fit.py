"""The fit loop: batches, losses, optimiser, per-epoch evaluation and early stopping.

Networks live in :mod:`onnxrec.trainer.models`; this module only trains them. Under ``torchrun``
the same loop runs data-parallel with DistributedDataParallel (each rank takes its share of every
epoch's shuffled examples; rank 0 evaluates and decides when to stop).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from onnxrec.errors import TrainingError
from onnxrec.trainer.averaging import WeightAverage
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.determinism import epoch_seeds
from onnxrec.trainer.evaluate import Scorer, evaluate
from onnxrec.trainer.history import UserSequences, training_histories
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.fields import with_retrieval_inputs
from onnxrec.trainer.negatives import NegativeSampler
from onnxrec.trainer.plan import choose_softmax, long_epoch_warning
from onnxrec.trainer.progress import Progress
from onnxrec.trainer.scorer import ModelScorer, user_inputs

if TYPE_CHECKING:
    from onnxrec.trainer.sequence_fit import SequenceEpochData

log = logging.getLogger("onnxrec.train")
#: Batches timed before an epoch's length is estimated (and warned about when long).
_ESTIMATE_AFTER = 3


class TrainingStep(nn.Module):
    """Computes one batch's loss; the module DistributedDataParallel wraps."""

    def __init__(self, model: Recommender, loss: str, temperature: float, full_softmax: bool) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.temperature = temperature
        self.full_softmax = full_softmax

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, inputs: dict[str, Any]
    ) -> torch.Tensor:
        m = self.model
        if self.loss == "softmax" and self.full_softmax and m.factorized:
            table = m.item_vectors()
            if m.history_len:
                inputs = {**inputs, "item_table": table}
            logits = (m.user_vectors(users, inputs) @ table.T + m.item_bias()) / self.temperature
            return F.cross_entropy(logits, items)
        cands = torch.cat([items.unsqueeze(1), negatives], dim=1)
        if m.history_len and m.factorized:
            inputs = compact_history(m, inputs)
        return candidate_loss(m.score_candidates(users, cands, inputs), self.loss, self.temperature)


def candidate_loss(scores: torch.Tensor, loss: str, temperature: float) -> torch.Tensor:
    """The loss of candidate scores [B, 1 + n] whose first column is the positive and the rest its negatives."""
    if loss == "softmax":
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores / temperature, target)
    if loss == "bce":
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(scores, labels)
    if loss == "bpr":
        return -F.logsigmoid(scores[:, :1] - scores[:, 1:]).mean()
    raise TrainingError(f"unknown loss {loss!r} (use softmax, bce or bpr)")


def compact_history(model: Recommender, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with the history re-indexed into a table of only the items it holds.

    The sampled losses need item vectors for the batch's history items alone; computing the item
    tower for the whole catalog instead cost 11-13 s per batch at 10^6 items."""
    history = inputs["history"]
    present = history >= 0
    unique, position = torch.unique(history.clamp_min(0), return_inverse=True)
    return {
        **inputs,
        "history": torch.where(present, position, torch.full_like(position, -1)),
        "item_table": model.item_vectors(unique),
    }


@dataclass
class FitResult:
    """What :func:`fit` leaves: the best weights, the epoch they came from, and every epoch's log."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_score: float
    epochs: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    #: training ended at ``deadline`` before early stopping or the last epoch
    out_of_time: bool = False


def _metric(metrics: dict[str, dict[str, float]], key: str) -> float:
    view, _, name = key.partition("/")
    try:
        return float(metrics[view][name])
    except KeyError as exc:
        raise TrainingError(f"early-stop metric {key!r} is not computed (e.g. full/ndcg@10)") from exc


def _optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    # the fused kernel: every step updates every embedding row's moments, and at 10^6 items the
    # default (foreach) update took 1.8-2.4 s per step against 0.2 s fused (2 cores, dim 64)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    raise TrainingError(f"unknown optimizer {cfg.optimizer!r} (use adam or adamw)")


def fit(
    model: Recommender,
    ds: Dataset,
    cfg: TrainConfig,
    loss: str,
    *,
    start_epoch: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    negatives: NegativeSampler | None = None,
    scorer: Scorer | None = None,
    deadline: float | None = None,
    ema: float = 0.0,
) -> tuple[FitResult, torch.optim.Optimizer]:
    """Train ``model`` on ``ds``'s training split; keep the weights with the best validation score.

    Each epoch's data order, negatives and dropout come from ``(cfg.seed, epoch)`` (see
    :mod:`onnxrec.trainer.determinism`). ``negatives`` draws the sampled losses' negatives (default:
    uniformly over the catalog; with hard ones, a softmax loss is the sampled one over them);
    ``scorer`` is what each epoch validates (default: the model alone). With ``deadline`` (a
    :func:`time.monotonic` value), no epoch starts after it: at least one epoch always runs. With
    ``ema`` > 0, each epoch is validated and kept with the moving average of the weights at that
    decay per step (:mod:`onnxrec.trainer.averaging`)."""
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = torch.device(cfg.device)
    model.to(device)
    # each rank takes an equal share of the global batch, so N processes take the same steps as one
    batch = max(1, -(-cfg.batch_size // world))
    step, epoch_data = _objective(model, ds, cfg, loss, batch, rank, world, negatives)
    if distributed:
        step = nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
    opt = _optimizer(cfg, step.parameters())
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
    scorer = ModelScorer(model, ds, device) if scorer is None else scorer
    average = WeightAverage(model, ema) if ema > 0 else None
    result = FitResult(best_state={}, best_epoch=-1, best_score=-math.inf)
    bad_epochs = 0
    for epoch in range(start_epoch, cfg.epochs):
        gen, torch_seed = epoch_seeds(cfg.seed, epoch)
        torch.manual_seed(torch_seed)
        record = _train_epoch(step, opt, model, cfg, epoch_data, gen, epoch, device, average)
        result.train_seconds += record["seconds"]
        stop = False
        if rank == 0:
            with average.applied() if average is not None else contextlib.nullcontext():
                better = _validate(model, scorer, ds, cfg, record, result)
            bad_epochs = 0 if better else bad_epochs + 1
            stop = bad_epochs >= cfg.patience
            if not stop and deadline is not None and time.monotonic() >= deadline and epoch + 1 < cfg.epochs:
                stop = result.out_of_time = True
            if on_epoch is not None:
                on_epoch(record)
        result.epochs.append(record)
        if distributed:
            flag = torch.tensor([1 if stop else 0])
            dist.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop:
            break
    seen = sum(r["examples"] for r in result.epochs)
    result.examples_per_second = seen * world / result.train_seconds if result.train_seconds else 0.0
    if rank == 0 and result.best_state:
        model.load_state_dict(result.best_state)
    return result, opt


def _validate(
    model: Recommender, scorer: Scorer, ds: Dataset, cfg: TrainConfig, record: dict[str, Any], result: FitResult
) -> bool:
    """Score the epoch's weights on validation into ``record``; keep them in ``result`` when they are
    the best so far (returns whether they are)."""
    metrics = evaluate(scorer, ds, "valid", ks=cfg.eval_ks)
    record["valid"] = metrics
    score = _metric(metrics, cfg.early_stop_metric)
    if score <= result.best_score:
        return False
    result.best_score, result.best_epoch = score, record["epoch"]
    result.best_state = copy.deepcopy(model.state_dict())
    return True


def _objective(
    model: Recommender,
    ds: Dataset,
    cfg: TrainConfig,
    loss: str,
    batch: int,
    rank: int,
    world: int,
    negatives: NegativeSampler | None,
) -> tuple[nn.Module, _EpochData | SequenceEpochData]:
    """The training step module and what each epoch reads: one example per history prefix, or (SASRec's
    all-positions objective) windows whose every position predicts its next item."""
    # it imports this module
    from onnxrec.trainer.sequence_fit import sequence_training, trains_every_position, windows_per_step

    # the all-positions objective (SASRec): a step is windows of up to history_len targets each, as many as
    # --sequence-batch-size target positions fill
    every_position = trains_every_position(model, cfg.sequence_objective)
    windows = windows_per_step(cfg, model.history_len, world)
    rows_per_step = windows * model.history_len if every_position else batch
    plan = choose_softmax(model.num_items, rows_per_step, cfg.max_softmax_items)
    negatives = NegativeSampler(ds.num_items) if negatives is None else negatives
    full = plan.full and negatives.pool is None
    if loss == "softmax" and rank == 0:
        pairs = "sampled softmax (the model scores pairs, not a catalog)"
        hard = "sampled softmax over the positive and its negatives (hard negatives from retrieval candidates)"
        log.info("loss: %s", hard if negatives.pool is not None else plan.reason if model.factorized else pairs)
    seq = UserSequences.from_parts([ds.splits.train], ds.num_users)
    if len(seq.items) == 0:
        raise TrainingError("the training split is empty")
    epoch_data: _EpochData | SequenceEpochData
    step: nn.Module
    if every_position:
        if rank == 0:
            log.info(
                "objective: the next item at every position of %d windows of %d items per step",
                windows,
                model.history_len,
            )
        step, epoch_data = sequence_training(model, loss, cfg, full, seq, windows, rank, world, negatives)
    else:
        step = TrainingStep(model, loss, cfg.temperature, full)
        owners = np.repeat(np.arange(ds.num_users), np.diff(seq.indptr))
        epoch_data = _EpochData(model, ds, seq, owners, batch, rank, world, negatives, cfg.num_negatives)
    return step, epoch_data


@dataclass(frozen=True)
class _EpochData:
    """What every epoch of the per-prefix objective reads: the training sequences, each position's user,
    the per-rank batch and the negatives' sampler; an example is an item and the items before it."""

    model: Recommender
    ds: Dataset
    seq: UserSequences
    owners: np.ndarray
    batch: int
    rank: int
    world: int
    negatives: NegativeSampler
    num_negatives: int

    def batches(
        self, gen: np.random.Generator, device: torch.device
    ) -> tuple[int, int, Iterator[tuple[tuple[Any, ...], int]]]:
        """(examples this epoch, steps, each step's ``TrainingStep`` arguments and its example count)."""
        seq = self.seq
        perm = gen.permutation(len(seq.items))[self.rank :: self.world]
        history_len = self.model.history_len

        def steps() -> Iterator[tuple[tuple[Any, ...], int]]:
            for start in range(0, len(perm), self.batch):
                pos = perm[start : start + self.batch]
                users_np = self.owners[pos]
                hist = training_histories(seq, history_len, pos) if history_len else None
                users = torch.from_numpy(users_np).to(device)
                items = torch.from_numpy(seq.items[pos]).to(device)
                negs_np = self.negatives.draw(gen, users_np, self.num_negatives)
                negs = torch.from_numpy(negs_np).to(device)
                times = (seq.times[pos], seq.times_before(pos)) if self.model.reads_context else None
                inputs = user_inputs(self.model, self.ds, users_np, hist, device, times)
                if self.model.reads_retrieval:
                    cands = np.concatenate([seq.items[pos][:, None], negs_np], axis=1)
                    inputs |= training_retrieval_inputs(self.negatives, users_np, cands, device)
                yield (users, items, negs, inputs), len(pos)

        return len(perm), -(-len(perm) // self.batch), steps()


def training_retrieval_inputs(
    negatives: NegativeSampler, users: np.ndarray, items: np.ndarray, device: torch.device
) -> dict[str, torch.Tensor]:
    """A ranker's retrieval fields of ``items`` [B, N] for ``users`` [B]: retrieval's scores and ranks,
    from the candidate pool's retrieval model."""
    features = negatives.pool.features if negatives.pool is not None else None
    if features is None:
        raise TrainingError(
            "a ranker reading retrieval's score and rank trains on a factorized retrieval run's candidates"
        )
    scores, ranks = features.inputs(users, items)
    return with_retrieval_inputs(torch.from_numpy(scores).to(device), torch.from_numpy(ranks).to(device))


def _train_epoch(
    step: nn.Module,
    opt: torch.optim.Optimizer,
    model: Recommender,
    cfg: TrainConfig,
    data: _EpochData | SequenceEpochData,
    gen: np.random.Generator,
    epoch: int,
    device: torch.device,
    average: WeightAverage | None = None,
) -> dict[str, Any]:
    """One pass over this rank's share of the shuffled training examples (``average`` updated after
    each step); the epoch's record."""
    model.train()
    t0, cpu0 = time.perf_counter(), time.process_time()
    examples, num_batches, steps = data.batches(gen, device)
    total, batches, done = 0.0, 0, 0
    progress = Progress(num_batches, f"epoch {epoch + 1}/{cfg.epochs}", enabled=cfg.progress and data.rank == 0)
    try:
        for args, count in steps:
            loss_value = step(*args)
            if not torch.isfinite(loss_value):
                raise TrainingError(
                    f"the loss became {loss_value.item()} at epoch {epoch + 1}; lower --lr "
                    f"(now {cfg.lr}) or check the data"
                )
            opt.zero_grad(set_to_none=True)
            loss_value.backward()
            opt.step()
            if average is not None:
                average.update()
            total += float(loss_value.detach())
            batches += 1
            done += count
            progress.update(batches, done, total / batches)
            if batches == _ESTIMATE_AFTER and data.rank == 0:
                per_batch = (time.perf_counter() - t0) / batches
                warning = long_epoch_warning(per_batch, num_batches, model.num_items)
                if warning:
                    log.warning("%s", warning)
    finally:
        progress.close()
    dt = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "loss": total / max(batches, 1),
        "seconds": round(dt, 3),
        # this process's CPU time (every thread): on a machine shared with other jobs, what the epoch cost
        # itself, where the wall-clock seconds also count the time it waited for a core
        "cpu_seconds": round(time.process_time() - cpu0, 3),
        "examples": examples,
        "examples_per_second": round(examples * data.world / dt, 1),
    }
