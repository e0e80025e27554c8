"""The Java example client (clients/java) against a real server: same answers as the Python stub.

The toolchain comes from `make clients` (scripts/ci/install_*.sh: Debian's packages and the npm registry),
which `make test` runs first; these tests (re)build the example when its sources are newer, and FAIL, never
skip, when the toolchain is missing: a skip would hide a broken client.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.example_clients import ExampleClientContract, require_toolchain, run_step

pytestmark = pytest.mark.clients  # needs `make clients` (toolchains from Debian and npm); not in the quick lane

REPO = Path(__file__).resolve().parents[1]
CLIENT_DIR = REPO / "clients" / "java"
BINARY = CLIENT_DIR / "bin" / "recommend"
SOURCE = CLIENT_DIR / "src" / "dev" / "onnxrec" / "example" / "Recommend.java"
CLASS = CLIENT_DIR / "build" / "classes" / "dev" / "onnxrec" / "example" / "Recommend.class"
INPUTS = [
    SOURCE,
    CLIENT_DIR / "build.sh",
    REPO / "clients" / "build_common.sh",
    REPO / "proto" / "onnxrec" / "v1" / "recommender.proto",
]
JARS = Path("/usr/share/java")  # Debian's jars, as build.sh uses them
# a sample of the jars build.sh needs, from each Debian package that ships them
KEY_JARS = ["protobuf", "grpc-core", "grpc-netty", "guava", "gson", "perfmark-api", "netty-codec-http2"]


def _missing_toolchain() -> list[str]:
    missing = [t for t in ("protoc", "javac", "java") if shutil.which(t) is None]
    if not (shutil.which("grpc_java_plugin") or shutil.which("protoc-gen-grpc-java")):
        missing.append("grpc_java_plugin")
    return missing + [f"{JARS}/{jar}.jar" for jar in KEY_JARS if not (JARS / f"{jar}.jar").is_file()]


@pytest.fixture(scope="module")
def client_command() -> list[str]:
    """clients/java/bin/recommend (a launcher), installed and (re)built when missing or older than its sources."""
    require_toolchain("Java", _missing_toolchain())
    if not BINARY.exists() or not CLASS.exists() or BINARY.stat().st_mtime < max(p.stat().st_mtime for p in INPUTS):
        run_step(["bash", str(CLIENT_DIR / "build.sh")], "building the Java client", 600)
    assert BINARY.is_file(), f"{BINARY} was not built"
    return [str(BINARY)]


class TestJavaClient(ExampleClientContract):
    """The example-client contract for clients/java."""
