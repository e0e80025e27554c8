"""``onnxrec bench`` works on a tiny run (speed itself is measured in benchmarks/, never in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow  # end to end; left out of make test-quick


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxrec", "bench", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )


def test_closed_and_open_loop_tiny_runs(live_server: ServerProcess, served_repo: Path, tmp_path: Path) -> None:
    common = [
        "--server",
        live_server.address,
        "--users-from",
        str(served_repo / "demo" / "1"),
        "--duration",
        "1",
        "--warmup",
        "0.5",
    ]
    p = _bench(*common, "--concurrency", "1,4", "--processes", "2", "--json", "--plot", str(tmp_path / "sweep.png"))
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)
    assert [r["offered"] for r in results] == [1.0, 4.0]
    assert [r["processes"] for r in results] == [1, 2]  # concurrency 1 stays 1 request in flight
    for r in results:
        assert r["mode"] == "closed" and r["qps"] > 0 and r["errors"] == {}
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p999_ms"]
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    o = _bench(*common, "--rate", "50", "--batch-users", "4", "--json")
    assert o.returncode == 0, o.stderr
    (r,) = json.loads(o.stdout)
    assert r["mode"] == "open" and r["errors"] == {} and r["users_per_s"] == r["qps"] * 4


def test_bad_arguments(live_server: ServerProcess, tmp_path: Path) -> None:
    p = _bench("--server", live_server.address, "--users-from", str(tmp_path / "none"))
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr
    users = tmp_path / "users.txt"
    users.write_text("u1\nu2\n")
    p = _bench("--server", live_server.address, "--users-from", str(users), "--concurrency", "0")
    assert p.returncode == 2 and "positive" in p.stderr
