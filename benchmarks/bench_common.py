"""Helpers the benchmark scripts share: where MovieLens-100K is and what machine ran them."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def default_data() -> Path:
    """``$ONNXREC_SHARED_DATA/ml-100k``, else ``<repo>/../shared/data/ml-100k``."""
    base = os.environ.get("ONNXREC_SHARED_DATA")
    return (Path(base) if base else REPO.parent / "shared" / "data") / "ml-100k"


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU, core count, Python, torch and load average (plus ``extra``), for the record."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "gpu": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **extra,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
