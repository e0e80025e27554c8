"""The Go example client (clients/go) against a real server: same answers as the Python stub.

Builds the client on first use (scripts/ci/install_node_go.sh go: Go, protoc and its Go plugins from
Debian; then clients/go/build.sh, GOPATH mode). A missing toolchain that cannot be installed FAILS these
tests: CI installs it, so a skip would hide a broken client.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import grpc
import pytest

from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess

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


def _run_step(cmd: list[str], what: str, timeout: float) -> None:
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} timed out after {timeout:.0f} s: {' '.join(cmd)}")
    if p.returncode != 0:
        pytest.fail(f"{what} failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")


def _missing() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None] + ([] if GRPC_GO.is_dir() else [str(GRPC_GO)])


@pytest.fixture(scope="module")
def go_client() -> list[str]:
    """clients/go/bin/recommend, installed and (re)built when missing or older than its sources."""
    if _missing():
        _run_step(["bash", str(INSTALL), "go"], f"installing the Go toolchain (missing: {', '.join(_missing())})", 900)
        assert not _missing(), f"Go toolchain still missing after {INSTALL}: {', '.join(_missing())}"
    if not BINARY.exists() or BINARY.stat().st_mtime < max(p.stat().st_mtime for p in INPUTS):
        _run_step(["bash", str(CLIENT_DIR / "build.sh")], "building the Go client", 600)
    assert BINARY.is_file(), f"{BINARY} was not built"
    return [str(BINARY)]


def _client(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *args], check=False, capture_output=True, text=True, timeout=60)


def _expected(address: str, model: str, user: str, k: int) -> str:
    """What the client must print: the Python stub's answer to the same request."""
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.RecommenderServiceStub(channel).Recommend(
            pb.RecommendRequest(model=pb.ModelRef(name=model), user_id=user, k=k), timeout=10
        )
    return "".join(f"{item.item_id}\t{item.score:.6f}\n" for item in response.items)


def _expected_error(address: str, model: str, user: str, k: int) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name=model), user_id=user, k=k), timeout=10)
    return f"error: {err.value.code().name}: {err.value.details()}\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_go_client_prints_the_servers_answer(go_client: list[str], live_server: ServerProcess) -> None:
    address = live_server.address
    for user in ("u1", "u2", "u7"):
        p = _client(go_client, address, "demo", user)  # K defaults to 10
        assert p.returncode == 0, p.stderr
        assert p.stdout == _expected(address, "demo", user, 10)
        assert len(p.stdout.splitlines()) == 10 and p.stderr == ""
    p = _client(go_client, address, "demo", "u3", "3")
    assert p.returncode == 0, p.stderr
    assert p.stdout == _expected(address, "demo", "u3", 3) and len(p.stdout.splitlines()) == 3


def test_go_client_reports_grpc_errors(go_client: list[str], live_server: ServerProcess) -> None:
    address = live_server.address
    p = _client(go_client, address, "nope", "u1")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("error: NOT_FOUND: unknown model 'nope'")
    assert p.stderr == _expected_error(address, "nope", "u1", 10)
    p = _client(go_client, address, "demo", "u1", "1000")  # above the model's k_max
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr == _expected_error(address, "demo", "u1", 1000)
    assert p.stderr.startswith("error: INVALID_ARGUMENT: ")
    p = _client(go_client, f"127.0.0.1:{_free_port()}", "demo", "u1")  # nobody listens
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("error: UNAVAILABLE: ") and len(p.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args", [[], ["127.0.0.1:1", "demo"], ["127.0.0.1:1", "demo", "u1", "ten"], ["a", "b", "c", "0"]]
)
def test_go_client_usage_errors(go_client: list[str], args: list[str]) -> None:
    p = _client(go_client, *args)
    assert p.returncode == 2 and p.stdout == ""
    assert "usage:" in p.stderr
