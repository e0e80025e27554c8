"""The Go example client (clients/go) against a real server: same answers as the Python stub.

Builds the client on first use (scripts/ci/install_node_go.sh go: Go, protoc and its Go plugins from
Debian; then clients/go/build.sh, GOPATH mode). A missing toolchain that cannot be installed FAILS these
tests: CI installs it, so a skip would hide a broken client.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.example_clients import ExampleClientContract, run_step, stale

REPO = Path(__file__).resolve().parents[1]
CLIENT_DIR = REPO / "clients" / "go"
BINARY = CLIENT_DIR / "bin" / "recommend"
INPUTS = [
    CLIENT_DIR / "cmd" / "recommend" / "main.go",
    CLIENT_DIR / "build.sh",
    REPO / "proto" / "onnxrec" / "v1" / "recommender.proto",
]
TOOLS = ["go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"]
INSTALL = REPO / "scripts" / "ci" / "install_node_go.sh"
GRPC_GO = Path("/usr/share/gocode/src/google.golang.org/grpc")


def _missing() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None] + ([] if GRPC_GO.is_dir() else [str(GRPC_GO)])


@pytest.fixture(scope="module")
def client_command() -> list[str]:
    """clients/go/bin/recommend, installed and (re)built when missing or older than its sources."""
    if _missing():
        run_step(["bash", str(INSTALL), "go"], f"installing the Go toolchain (missing: {', '.join(_missing())})", 900)
        assert not _missing(), f"Go toolchain still missing after {INSTALL}: {', '.join(_missing())}"
    if stale(BINARY, INPUTS):
        run_step(["bash", str(CLIENT_DIR / "build.sh")], "building the Go client", 600)
    assert BINARY.is_file(), f"{BINARY} was not built"
    return [str(BINARY)]


class TestGoClient(ExampleClientContract):
    """The example-client contract for clients/go."""
