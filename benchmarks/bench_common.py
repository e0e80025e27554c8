"""Helpers the benchmark scripts share: where MovieLens-100K is, what machine ran them, one timed point."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def default_data() -> Path:
    """``$ONNXREC_SHARED_DATA/ml-100k``, else ``<repo>/../shared/data/ml-100k``."""
    base = os.environ.get("ONNXREC_SHARED_DATA")
    return (Path(base) if base else REPO.parent / "shared" / "data") / "ml-100k"


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU (its model and the vector instructions torch's kernels use), core count, Python, torch and load
    average (plus ``extra``), for the record. The same seeded training rounds differently on another CPU
    model or instruction set, so a quality figure is only comparable to one taken on the same CPU."""
    import torch

    cpu = platform.processor() or platform.machine()
    out = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), cpu)
    except OSError:
        pass
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    cpu_id = "/".join(fields.get(k, "").strip() for k in ("CPU family", "Model", "Stepping"))
    return {
        "cpu": cpu,
        "cpu_id": cpu_id,  # family / model / stepping
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # e.g. AVX2, AVX512
        "nproc": os.cpu_count(),
        "gpu": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **extra,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def time_point(
    fn: Callable[[Any], Any], feeds: Sequence[Any], batch: int, seconds: float, min_calls: int
) -> dict[str, Any]:
    """``fn(feed)`` cycling over ``feeds``: 3 warm-up calls, then timed for ``seconds`` (at least ``min_calls``
    calls); users/s (``batch`` users a call) and p50 / p99 ms per call."""
    import numpy as np

    for feed in feeds[:3]:
        fn(feed)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_calls:
        feed = feeds[len(times) % len(feeds)]
        t0 = time.perf_counter()
        fn(feed)
        times.append(time.perf_counter() - t0)
    t = np.array(times)
    return {
        "batch": batch,
        "calls": len(t),
        "users_per_s": round(batch * len(t) / float(t.sum()), 1),
        "p50_ms": round(float(np.percentile(t, 50)) * 1000, 3),
        "p99_ms": round(float(np.percentile(t, 99)) * 1000, 3),
    }
