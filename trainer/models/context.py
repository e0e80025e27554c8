"""The interaction's context as ranker fields: hour of day, day of week, time since the previous one.

A ranker trained with ``--context-fields`` reads two times per request, both unix seconds (int64 [B]):
``request_time``, when the user asks (in training, when the interaction happened), and ``last_time``,
the user's previous interaction (-1: none known). :func:`context_values` turns them into three
categorical fields the ranker reads like user side features (value 0 = unknown, weighing nothing):

* ``context_hour``: the hour of day in UTC, 1 .. 24 (hour 0 .. 23, plus one);
* ``context_weekday``: the day of the week in UTC, 1 (Monday) .. 7 (Sunday);
* ``context_gap``: 1 when the user has no previous interaction, else 2 + the number of
  :data:`GAP_EDGES_S` the time since it reaches (under a minute, ten minutes, an hour, six hours, a
  day, a week, thirty days, and beyond); a previous interaction later than the request counts as 0 s.

A request time below 0 is unknown: all three fields are 0. The encoding runs inside the model, so the
exported graphs take the two times and compute the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from onnxrec.trainer.models.config import FeatureInput

#: The edges (seconds) of the time-since-previous-interaction buckets.
GAP_EDGES_S = (60, 600, 3_600, 21_600, 86_400, 604_800, 2_592_000)
#: The context fields, read as user-side fields (unknown = 0 in each).
CONTEXT_FEATURES = (
    FeatureInput("context_hour", 25),
    FeatureInput("context_weekday", 8),
    FeatureInput("context_gap", len(GAP_EDGES_S) + 3),
)
#: The ``inputs`` keys of the two times.
REQUEST_TIME, LAST_TIME = "request_time", "last_time"


def context_values(request_time: torch.Tensor, last_time: torch.Tensor) -> list[torch.Tensor]:
    """The encoded context fields of requests at ``request_time`` by users whose previous interaction
    was at ``last_time`` (int64 [B] each): hour, weekday and gap values [B] (see the module docstring)."""
    known = request_time >= 0
    t = request_time.clamp_min(0)
    # divisions only of values below 2^24 (a day's and a week's seconds): an exported graph may divide in
    # float32, exact there and not for whole unix times (1.7e9 s are 128 s apart in float32)
    hour = torch.div(torch.remainder(t, 86_400), 3_600, rounding_mode="floor") + 1
    # 1970-01-01 was a Thursday: day d is weekday (d + 3) mod 7, Monday = 0
    weekday = torch.remainder(torch.div(torch.remainder(t, 604_800), 86_400, rounding_mode="floor") + 3, 7) + 1
    gap = (t - last_time).clamp_min(0)
    edges = torch.tensor(GAP_EDGES_S, dtype=torch.long, device=t.device)
    bucket = (gap.unsqueeze(-1) >= edges).sum(-1) + 2
    gap_value = torch.where(last_time < 0, torch.ones_like(bucket), bucket)
    zero = torch.zeros_like(t)
    return [torch.where(known, v, zero) for v in (hour, weekday, gap_value)]


def context_inputs(request_time: torch.Tensor, last_time: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``inputs`` entries of a ranker's context: the two times [B] (what :func:`read_context` reads)."""
    return {REQUEST_TIME: request_time, LAST_TIME: last_time}


def read_context(inputs: Mapping[str, Any] | None, batch: int, device: torch.device) -> list[torch.Tensor]:
    """The context fields of ``inputs`` (all unknown when it holds no times)."""
    if inputs is None or REQUEST_TIME not in inputs:
        return [torch.zeros(batch, dtype=torch.long, device=device) for _ in CONTEXT_FEATURES]
    return context_values(inputs[REQUEST_TIME], inputs[LAST_TIME])
