"""An exponential moving average of the weights (``--ema``): after every optimizer step the average
moves ``1 - decay`` of the way to the new weights, and each epoch is validated, early-stopped on and
saved with the averaged weights in place of the last step's.

On SASRec, where validation NDCG@10 moves by up to 0.015 from one epoch to the next, the average of
the last few hundred steps scored higher on ML-100K validation at every seed tried (BENCHMARKS.md,
issue #19), so a decay of 0.995 (about 200 steps, one epoch at the default 512 positions per step)
is that model's default. torch's :class:`~torch.optim.swa_utils.AveragedModel` keeps the average; a
resumed run starts its average afresh from the checkpoint's weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The moving average of ``model``'s parameters with ``decay`` per :meth:`update`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = model
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    def update(self) -> None:
        """Fold the model's current parameters into the average (the first call copies them)."""
        self.average.update_parameters(self.model)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged parameters in the model for the body; the trained ones back afterwards."""
        params = list(self.model.parameters())
        trained = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, a in zip(params, self.average.module.parameters(), strict=True):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(params, trained, strict=True):
                    p.copy_(t)
