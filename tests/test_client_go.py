"""The Go example client (clients/go) against a real server: same answers as the Python stub.

The toolchain comes from `make clients` (scripts/ci/install_*.sh: Debian's packages and the npm registry),
which `make test` runs first; these tests (re)build the example when its sources are newer, and FAIL, never
skip, when the toolchain is missing: a skip would hide a broken client.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.example_clients import ExampleClientContract, require_toolchain, run_step, stale

pytestmark = pytest.mark.clients  # needs `make clients` (toolchains from Debian and npm); not in the quick lane

REPO = Path(__file__).resolve().parents[1]
CLIENT_DIR = REPO / "clients" / "go"
BINARY = CLIENT_DIR / "bin" / "recommend"
INPUTS = [
    CLIENT_DIR / "cmd" / "recommend" / "main.go",
    CLIENT_DIR / "build.sh",
    REPO / "clients" / "build_common.sh",
    REPO / "proto" / "onnxrec" / "v1" / "recommender.proto",
]
TOOLS = ["go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"]
GRPC_GO = Path("/usr/share/gocode/src/google.golang.org/grpc")


def _missing() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None] + ([] if GRPC_GO.is_dir() else [str(GRPC_GO)])


@pytest.fixture(scope="module")
def client_command() -> list[str]:
    """clients/go/bin/recommend, installed and (re)built when missing or older than its sources."""
    require_toolchain("Go", _missing())
    if stale(BINARY, INPUTS):
        run_step(["bash", str(CLIENT_DIR / "build.sh")], "building the Go client", 600)
    assert BINARY.is_file(), f"{BINARY} was not built"
    return [str(BINARY)]


class TestGoClient(ExampleClientContract):
    """The example-client contract for clients/go."""
