"""The README's main command, shortened: the demo runs the whole path and says where things went."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end; left out of make test-quick


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    p = subprocess.run(
        [sys.executable, "-m", "onnxrec", "demo", "--out", str(out), "--epochs", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ.copy(),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "twotower" in p.stdout and "popularity" in p.stdout and "itemknn" in p.stdout
    assert "onnxrec evaluate" in p.stdout and "onnxrec inspect" in p.stdout
    assert "$ onnxrec recommend --server 127.0.0.1:" in p.stdout and "(server stopped)" in p.stdout
    assert "user u1: demo version 1 (model)" in p.stdout  # the served model answered
    assert "onnxrec serve --repository" in p.stdout
    assert (out / "run" / "checkpoint.pt").is_file()
    assert (out / "repository" / "demo" / "1" / "manifest.json").is_file()
