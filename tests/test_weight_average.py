"""``--ema``: the model a run keeps is the moving average of the weights every optimizer step left
(recomputed here from the steps of a run without it), training itself is unchanged by it, and the
averaged weights are put back after validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from onnxrec.trainer.averaging import WeightAverage
from onnxrec.trainer.checkpoint import load_checkpoint, model_from_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.train import train

DECAY = 0.9


@pytest.fixture(scope="module")
def data_dir(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_dataset(synthetic, tmp_path_factory.mktemp("ema") / "data")


def _cfg(data: Path, out: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), model="sasrec", epochs=1, dim=16, threads=1, progress=False, **kw)


def test_the_kept_model_is_the_average_of_every_steps_weights(data_dir: Path, tmp_path: Path) -> None:
    shadow: list[torch.Tensor] = []
    steps = 0

    def follow(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        nonlocal steps
        params = [p.detach().clone() for group in opt.param_groups for p in group["params"]]
        if not shadow:
            shadow.extend(params)
        else:
            for s, p in zip(shadow, params, strict=True):
                s.mul_(DECAY).add_(p, alpha=1 - DECAY)
        steps += 1

    handle = register_optimizer_step_post_hook(follow)
    try:
        plain = train(_cfg(data_dir, tmp_path / "plain", ema=0.0))
    finally:
        handle.remove()
    assert steps > 3
    averaged = train(_cfg(data_dir, tmp_path / "averaged", ema=DECAY))
    assert json.loads((averaged / "eval.json").read_text())["ema"] == DECAY
    assert json.loads((plain / "eval.json").read_text())["ema"] == 0.0
    kept = list(model_from_checkpoint(load_checkpoint(averaged)).parameters())
    last = list(model_from_checkpoint(load_checkpoint(plain)).parameters())
    assert len(kept) == len(shadow) == len(last)
    for got, want in zip(kept, shadow, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    # the average is not the last step's weights (the check above could not pass by accident)
    assert any(not torch.allclose(s, r.detach(), atol=1e-4) for s, r in zip(shadow, last, strict=True))
    # the optimizer state is the trained weights' in both runs: the average did not change training
    opt_a = load_checkpoint(averaged)["optimizer"]["state"]
    opt_p = load_checkpoint(plain)["optimizer"]["state"]
    for key in opt_p:
        torch.testing.assert_close(opt_a[key]["exp_avg"], opt_p[key]["exp_avg"], rtol=0, atol=0)


def test_the_average_is_applied_only_inside_the_block() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, 0.5)
    average.update()  # the first update copies
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update()
    with average.applied():
        torch.testing.assert_close(model.weight.detach(), start + 0.5)
    torch.testing.assert_close(model.weight.detach(), start + 1.0)


def test_ema_out_of_range_is_refused(tmp_path: Path) -> None:
    from tests.test_cli_train import assert_clean_error, onnxrec

    proc = onnxrec("train", "--data", "synthetic", "--out", str(tmp_path / "r"), "--ema", "1")
    assert_clean_error(proc, "ema must be in [0, 1)")
