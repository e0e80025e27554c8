"""The Node.js example client (clients/node) against a real server: same answers as the Python stub.

Installs the client on first use (scripts/ci/install_node_go.sh node: node + npm if absent, then
`npm install` in clients/node). A missing toolchain that cannot be installed FAILS these tests: CI
installs it, so a skip would hide a broken client.
"""

from __future__ import annotations

import json
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
CLIENT_DIR = REPO / "clients" / "node"
SCRIPT = CLIENT_DIR / "recommend.js"
MODULES = [CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js", CLIENT_DIR / "node_modules" / "@grpc" / "proto-loader"]
TOOLS = ["node", "npm"]
INSTALL = REPO / "scripts" / "ci" / "install_node_go.sh"


def _run_step(cmd: list[str], what: str, timeout: float) -> None:
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} timed out after {timeout:.0f} s: {' '.join(cmd)}")
    if p.returncode != 0:
        pytest.fail(f"{what} failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")


@pytest.fixture(scope="module")
def node_client() -> list[str]:
    """The command line that runs clients/node/recommend.js, with node and the npm packages installed."""
    missing = [t for t in TOOLS if shutil.which(t) is None] + [str(m) for m in MODULES if not m.is_dir()]
    if missing:
        _run_step(["bash", str(INSTALL), "node"], f"installing the Node.js client (missing: {', '.join(missing)})", 900)
        still = [t for t in TOOLS if shutil.which(t) is None] + [str(m) for m in MODULES if not m.is_dir()]
        assert not still, f"Node.js client still missing after {INSTALL}: {', '.join(still)}"
    node = shutil.which("node")
    assert node is not None
    return [node, str(SCRIPT)]


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


def test_node_client_prints_the_servers_answer(node_client: list[str], live_server: ServerProcess) -> None:
    address = live_server.address
    for user in ("u1", "u2", "u7"):
        p = _client(node_client, address, "demo", user)  # K defaults to 10
        assert p.returncode == 0, p.stderr
        assert p.stdout == _expected(address, "demo", user, 10)
        assert len(p.stdout.splitlines()) == 10 and p.stderr == ""
    p = _client(node_client, address, "demo", "u3", "3")
    assert p.returncode == 0, p.stderr
    assert p.stdout == _expected(address, "demo", "u3", 3) and len(p.stdout.splitlines()) == 3


def test_node_client_reports_grpc_errors(node_client: list[str], live_server: ServerProcess) -> None:
    address = live_server.address
    p = _client(node_client, address, "nope", "u1")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("error: NOT_FOUND: unknown model 'nope'")
    assert p.stderr == _expected_error(address, "nope", "u1", 10)
    p = _client(node_client, address, "demo", "u1", "1000")  # above the model's k_max
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr == _expected_error(address, "demo", "u1", 1000)
    assert p.stderr.startswith("error: INVALID_ARGUMENT: ")
    p = _client(node_client, f"127.0.0.1:{_free_port()}", "demo", "u1")  # nobody listens
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("error: UNAVAILABLE: ") and len(p.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args", [[], ["127.0.0.1:1", "demo"], ["127.0.0.1:1", "demo", "u1", "ten"], ["a", "b", "c", "0"]]
)
def test_node_client_usage_errors(node_client: list[str], args: list[str]) -> None:
    p = _client(node_client, *args)
    assert p.returncode == 2 and p.stdout == ""
    assert "usage:" in p.stderr


def test_node_client_formats_scores_as_printf(node_client: list[str]) -> None:
    """Exact ties round to even as printf's %.6f and Python's format do (toFixed alone rounds them up)."""
    scores = [0.0078125, -0.0078125, 0.0234375, 3.1415927410125732, -1e-9, 0.5, 123.4567885, 1e-7]
    code = (
        "const { formatScore } = require(process.argv[1]);"
        "for (const x of JSON.parse(process.argv[2])) console.log(formatScore(x));"
    )
    p = subprocess.run(
        [node_client[0], "-e", code, str(SCRIPT), json.dumps(scores)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"{x:.6f}" for x in scores]
