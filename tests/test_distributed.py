"""Data-parallel training: the same command under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxrec.trainer.data.dataset import Dataset, save_dataset

pytestmark = pytest.mark.slow  # end to end; left out of make test-quick

ARGS = [
    "--epochs",
    "4",
    "--threads",
    "1",
    "--no-progress",
    "--dim",
    "16",
    "--history-len",
    "10",
    "--layers",
    "32",
    "--patience",
    "10",
]


def _train(*prefix: str, data: Path, out: Path) -> dict[str, dict[str, float]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [*prefix, "train", "--data", str(data), "--out", str(out), *ARGS],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("wrote") == 1, p.stdout  # only rank 0 reports
    return dict(json.loads((out / "eval.json").read_text())["test"])


def test_torchrun_two_processes_matches_single_process_quality(synthetic: Dataset, tmp_path: Path) -> None:
    data = save_dataset(synthetic, tmp_path / "data")
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this interpreter")
    ddp = _train(
        str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "onnxrec", data=data, out=tmp_path / "ddp"
    )
    single = _train(sys.executable, "-m", "onnxrec", data=data, out=tmp_path / "single")
    # it learned: random ranking of 1 positive among 51 candidates gives HR@10 = 10/51 = 0.196
    assert ddp["sampled"]["hr@10"] > 0.35
    for view in ("sampled", "full"):
        assert abs(ddp[view]["ndcg@10"] - single[view]["ndcg@10"]) < 0.05, (view, ddp[view], single[view])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
