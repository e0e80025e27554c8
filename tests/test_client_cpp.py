"""The C++ example client (clients/cpp) against a real server: same answers as the Python stub.

The toolchain comes from `make clients` (scripts/ci/install_*.sh: Debian's packages and the npm registry),
which `make test` runs first; these tests (re)build the example when its sources are newer, and FAIL, never
skip, when the toolchain is missing: a skip would hide a broken client.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.example_clients import ExampleClientContract, require_toolchain, run_step, stale

pytestmark = pytest.mark.clients  # needs `make clients` (toolchains from Debian and npm); not in the quick lane

REPO = Path(__file__).resolve().parents[1]
CLIENT_DIR = REPO / "clients" / "cpp"
BINARY = CLIENT_DIR / "bin" / "recommend"
INPUTS = [
    CLIENT_DIR / "recommend.cc",
    CLIENT_DIR / "build.sh",
    REPO / "clients" / "build_common.sh",
    REPO / "proto" / "onnxrec" / "v1" / "recommender.proto",
]


def _missing_toolchain() -> list[str]:
    missing = [t for t in ("protoc", "grpc_cpp_plugin", "pkg-config", "g++") if shutil.which(t) is None]
    if "pkg-config" not in missing:
        for lib in ("grpc++", "protobuf"):
            if subprocess.run(["pkg-config", "--exists", lib], check=False, timeout=30).returncode != 0:
                missing.append(f"pkg-config {lib}")
    return missing


@pytest.fixture(scope="module")
def client_command() -> list[str]:
    """clients/cpp/bin/recommend, installed and (re)built when missing or older than its sources."""
    require_toolchain("C++", _missing_toolchain())
    if stale(BINARY, INPUTS):
        run_step(["bash", str(CLIENT_DIR / "build.sh")], "building the C++ client", 600)
    assert BINARY.is_file(), f"{BINARY} was not built"
    return [str(BINARY)]


class TestCppClient(ExampleClientContract):
    """The example-client contract for clients/cpp."""
