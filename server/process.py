"""Run ``onnxrec serve`` as a child process and learn where it listens (the demo and tests use it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from onnxrec.errors import OnnxrecError

_LISTENING = re.compile(r"onnxrec serving on (\S+):(\d+)")


def launch_server(
    repository: Path,
    log: Path,
    extra_args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> tuple[subprocess.Popen[str], str]:
    """Start ``onnxrec serve --repository REPOSITORY --port 0 --device cpu EXTRA_ARGS`` (later options
    win), its output going to ``log``; wait for the line saying where it listens; return the process
    and ``host:port``. Raises :class:`OnnxrecError` if it exits or stays silent past ``timeout``."""
    with Path(log).open("w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "onnxrec",
                "serve",
                "--repository",
                str(repository),
                "--port",
                "0",
                "--device",
                "cpu",
                *extra_args,
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = Path(log).read_text()
        m = _LISTENING.search(text)
        if m:
            return proc, f"{m.group(1)}:{m.group(2)}"
        if proc.poll() is not None:
            tail = [ln for ln in text.splitlines() if ln.strip()][-1:]
            raise OnnxrecError(f"the server exited with status {proc.returncode}: {tail[0] if tail else ''}")
        time.sleep(0.1)
    proc.kill()
    raise OnnxrecError(f"the server did not say where it listens within {timeout:.0f} s (log: {log})")
