"""The fit loop: batches, losses, optimiser, per-epoch evaluation and early stopping.

Networks live in :mod:`onnxrec.trainer.models`; this module only trains them. Under ``torchrun``
the same loop runs data-parallel with DistributedDataParallel (each rank takes its share of every
epoch's shuffled examples; rank 0 evaluates and decides when to stop).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from onnxrec.errors import TrainingError
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.evaluate import evaluate
from onnxrec.trainer.history import UserSequences, known_sequences, training_histories
from onnxrec.trainer.models.base import FactorizedRecommender, Recommender


def user_inputs(
    model: Recommender, ds: Dataset, users: np.ndarray, history: np.ndarray | None, device: torch.device
) -> dict[str, Any]:
    """The extra per-user inputs ``model`` reads: user features and (if used) the history."""
    inputs: dict[str, Any] = {}
    cfg = getattr(model, "cfg", None)
    for f in getattr(cfg, "user_features", ()):
        inputs[f"user_{f.name}"] = torch.from_numpy(ds.user_features[f.name][users]).to(device)
    if model.uses_history and history is not None:
        inputs["history"] = torch.from_numpy(history).to(device)
    return inputs


class ModelScorer:
    """Adapts a trained model to the evaluation code's scorer interface."""

    def __init__(self, model: Recommender, ds: Dataset, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.ds = ds
        self.device = torch.device(device)
        self._known: dict[str, UserSequences] = {}

    @torch.no_grad()
    def __call__(self, users: np.ndarray, stage: str) -> np.ndarray:
        self.model.eval()
        history = None
        if self.model.uses_history:
            if stage not in self._known:
                self._known[stage] = known_sequences(self.ds, stage)
            history = self._known[stage].recent(users, self.model.cfg.history_len)
        inputs = user_inputs(self.model, self.ds, users, history, self.device)
        u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device)
        return self.model.score_all(u, inputs).float().cpu().numpy()


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
        if self.loss == "softmax" and self.full_softmax and isinstance(m, FactorizedRecommender):
            table = m.item_vectors()
            if m.uses_history:
                inputs = {**inputs, "item_table": table}
            logits = (m.user_vectors(users, inputs) @ table.T + m.item_bias()) / self.temperature
            return F.cross_entropy(logits, items)
        cands = torch.cat([items.unsqueeze(1), negatives], dim=1)
        if m.uses_history and isinstance(m, FactorizedRecommender):
            inputs = {**inputs, "item_table": m.item_vectors()}
        scores = m.score_candidates(users, cands, inputs)
        if self.loss == "softmax":
            return F.cross_entropy(scores / self.temperature, torch.zeros_like(users))
        if self.loss == "bce":
            target = torch.zeros_like(scores)
            target[:, 0] = 1.0
            return F.binary_cross_entropy_with_logits(scores, target)
        if self.loss == "bpr":
            return -F.logsigmoid(scores[:, :1] - scores[:, 1:]).mean()
        raise TrainingError(f"unknown loss {self.loss!r} (use softmax, bce or bpr)")


@dataclass
class FitResult:
    """What :func:`fit` leaves: the best weights, the epoch they came from, and every epoch's log."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_score: float
    epochs: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    examples_per_second: float = 0.0


def _metric(metrics: dict[str, dict[str, float]], key: str) -> float:
    view, _, name = key.partition("/")
    try:
        return float(metrics[view][name])
    except KeyError as exc:
        raise TrainingError(f"early-stop metric {key!r} is not computed (e.g. full/ndcg@10)") from exc


def _optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
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
) -> tuple[FitResult, torch.optim.Optimizer]:
    """Train ``model`` on ``ds``'s training split; keep the weights with the best validation score."""
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = torch.device(cfg.device)
    model.to(device)
    full_softmax = model.num_items <= cfg.max_softmax_items
    step: nn.Module = TrainingStep(model, loss, cfg.temperature, full_softmax)
    if distributed:
        step = nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
    opt = _optimizer(cfg, step.parameters())
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
    seq = UserSequences.from_parts([ds.splits.train], ds.num_users)
    owners = np.repeat(np.arange(ds.num_users), np.diff(seq.indptr))
    n = len(seq.items)
    if n == 0:
        raise TrainingError("the training split is empty")
    gen = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    history_len = getattr(model.cfg, "history_len", 0) if model.uses_history else 0
    scorer = ModelScorer(model, ds, device)
    result = FitResult(best_state={}, best_epoch=-1, best_score=-math.inf)
    bad_epochs = 0
    t_train = 0.0
    seen_examples = 0
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        perm = gen.permutation(n)[rank::world]
        t0 = time.perf_counter()
        total, batches = 0.0, 0
        # each rank takes an equal share of the global batch, so N processes take the same steps as one
        batch = max(1, -(-cfg.batch_size // world))
        bar = tqdm(
            range(0, len(perm), batch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not cfg.progress or rank != 0,
            leave=False,
            dynamic_ncols=True,
        )
        for start in bar:
            pos = perm[start : start + batch]
            users_np = owners[pos]
            hist = training_histories(seq, history_len, pos) if history_len else None
            users = torch.from_numpy(users_np).to(device)
            items = torch.from_numpy(seq.items[pos]).to(device)
            negs = torch.from_numpy(gen.integers(0, ds.num_items, size=(len(pos), cfg.num_negatives))).to(device)
            inputs = user_inputs(model, ds, users_np, hist, device)
            loss_value = step(users, items, negs, inputs)
            if not torch.isfinite(loss_value):
                raise TrainingError(
                    f"the loss became {loss_value.item()} at epoch {epoch + 1}; lower --lr "
                    f"(now {cfg.lr}) or check the data"
                )
            opt.zero_grad(set_to_none=True)
            loss_value.backward()
            opt.step()
            total += float(loss_value.detach())
            batches += 1
            if batches % 10 == 0:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{total / batches:.4f}", ex_s=f"{(start + len(pos)) / elapsed:,.0f}")
        dt = time.perf_counter() - t0
        t_train += dt
        seen_examples += len(perm)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": total / max(batches, 1),
            "seconds": round(dt, 3),
            "examples_per_second": round(len(perm) * world / dt, 1),
        }
        stop = False
        if rank == 0:
            metrics = evaluate(scorer, ds, "valid", ks=cfg.eval_ks)
            record["valid"] = metrics
            score = _metric(metrics, cfg.early_stop_metric)
            if score > result.best_score:
                result.best_score, result.best_epoch = score, epoch + 1
                result.best_state = copy.deepcopy(model.state_dict())
                bad_epochs = 0
            else:
                bad_epochs += 1
            stop = bad_epochs >= cfg.patience
            if on_epoch is not None:
                on_epoch(record)
        result.epochs.append(record)
        if distributed:
            flag = torch.tensor([1 if stop else 0])
            dist.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop:
            break
    result.train_seconds = t_train
    result.examples_per_second = seen_examples * world / t_train if t_train else 0.0
    if rank == 0 and result.best_state:
        model.load_state_dict(result.best_state)
    return result, opt
