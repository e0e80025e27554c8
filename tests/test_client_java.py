"""The Java example client (clients/java) against a real server: same answers as the Python stub.

Builds the client on first use (scripts/ci/install_cpp_java.sh java, then clients/java/build.sh). A missing
toolchain that cannot be installed FAILS these tests: CI installs it, so a skip would hide a broken client.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.example_clients import ExampleClientContract, run_step

REPO = Path(__file__).resolve().parents[1]
CLIENT_DIR = REPO / "clients" / "java"
BINARY = CLIENT_DIR / "bin" / "recommend"
SOURCE = CLIENT_DIR / "src" / "dev" / "onnxrec" / "example" / "Recommend.java"
CLASS = CLIENT_DIR / "build" / "classes" / "dev" / "onnxrec" / "example" / "Recommend.class"
INPUTS = [SOURCE, CLIENT_DIR / "build.sh", REPO / "proto" / "onnxrec" / "v1" / "recommender.proto"]
JARS = Path("/usr/share/java")  # Debian's jars, as build.sh uses them
# a sample of the jars build.sh needs, from each Debian package that ships them
KEY_JARS = ["protobuf", "grpc-core", "grpc-netty", "guava", "gson", "perfmark-api", "netty-codec-http2"]
INSTALL = REPO / "scripts" / "ci" / "install_cpp_java.sh"


def _missing_toolchain() -> list[str]:
    missing = [t for t in ("protoc", "javac", "java") if shutil.which(t) is None]
    if not (shutil.which("grpc_java_plugin") or shutil.which("protoc-gen-grpc-java")):
        missing.append("grpc_java_plugin")
    return missing + [f"{JARS}/{jar}.jar" for jar in KEY_JARS if not (JARS / f"{jar}.jar").is_file()]


@pytest.fixture(scope="module")
def client_command() -> list[str]:
    """clients/java/bin/recommend (a launcher), installed and (re)built when missing or older than its sources."""
    missing = _missing_toolchain()
    if missing:
        run_step(["bash", str(INSTALL), "java"], f"installing the Java toolchain (missing: {', '.join(missing)})", 900)
        still = _missing_toolchain()
        assert not still, f"Java toolchain still missing after {INSTALL}: {', '.join(still)}"
    if not BINARY.exists() or not CLASS.exists() or BINARY.stat().st_mtime < max(p.stat().st_mtime for p in INPUTS):
        run_step(["bash", str(CLIENT_DIR / "build.sh")], "building the Java client", 600)
    assert BINARY.is_file(), f"{BINARY} was not built"
    return [str(BINARY)]


class TestJavaClient(ExampleClientContract):
    """The example-client contract for clients/java."""
