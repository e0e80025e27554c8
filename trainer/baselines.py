"""Non-learned baselines scored by the same evaluation code: Popularity and ItemKNN."""

from __future__ import annotations

import numpy as np
import torch

from onnxrec.errors import DataError
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.history import UserSequences, known_sequences

ITEMKNN_MAX_ITEMS = 12_000


class Popularity:
    """Scores every item by its number of training interactions."""

    def __init__(self, ds: Dataset) -> None:
        self.counts = np.bincount(ds.splits.train.item_idx, minlength=ds.num_items).astype(np.float64)

    def __call__(self, users: np.ndarray, stage: str) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts)))


class ItemKNN:
    """Item-based k-nearest-neighbours with cosine similarity on the training matrix.

    score(u, i) = sum over the user's known items j of sim(i, j), keeping each item's ``neighbours``
    most similar items; ``shrink`` damps similarities of rarely co-consumed pairs.
    """

    def __init__(self, ds: Dataset, neighbours: int = 100, shrink: float = 10.0) -> None:
        n = ds.num_items
        if n > ITEMKNN_MAX_ITEMS:
            raise DataError(f"ItemKNN supports at most {ITEMKNN_MAX_ITEMS} items (this dataset has {n})")
        train = ds.splits.train
        co = torch.zeros(n, n)
        chunk = max(1, 2**24 // n)  # users per dense block
        order = np.argsort(train.user_idx, kind="stable")
        users, items = train.user_idx[order], train.item_idx[order]
        for start in range(0, ds.num_users, chunk):
            lo, hi = np.searchsorted(users, [start, start + chunk])
            block = torch.zeros(min(chunk, ds.num_users - start), n)
            block[torch.from_numpy(users[lo:hi] - start).long(), torch.from_numpy(items[lo:hi]).long()] = 1.0
            co += block.T @ block  # co-occurrence counts
        norms = co.diagonal().clone()
        sim = co / (torch.sqrt(norms[:, None] * norms[None, :]) + shrink)
        sim.fill_diagonal_(0.0)
        if neighbours < n:
            vals, cols = torch.topk(sim, neighbours, dim=1)
            pruned = torch.zeros_like(sim)
            pruned.scatter_(1, cols, vals)
            sim = pruned
        self.sim = sim.numpy()
        self.ds = ds
        self._known: dict[str, UserSequences] = {}

    def __call__(self, users: np.ndarray, stage: str) -> np.ndarray:
        if stage not in self._known:
            self._known[stage] = known_sequences(self.ds, stage)
        known = self._known[stage]
        out = np.zeros((len(users), self.ds.num_items))
        for row, u in enumerate(users):
            items = known.of(int(u))
            if len(items):
                out[row] = self.sim[items].sum(0)
        return out
