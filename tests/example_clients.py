"""What every example client (clients/<language>) must do, checked the same way for each language.

A test module provides a module-scoped fixture ``client_command`` (the argv prefix that runs its
example, installed and built as needed) and a class inheriting :class:`ExampleClientContract`.
The contract: ``PROGRAM ADDRESS MODEL USER_ID [K]`` prints ``ITEM_ID<TAB>SCORE`` lines equal to the
Python stub's answer; a gRPC error is one ``error: CODE: details`` line and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import grpc
import pytest

from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess

REPO = Path(__file__).resolve().parents[1]
PROTO = REPO / "proto" / "onnxrec" / "v1" / "recommender.proto"


def run_step(cmd: list[str], what: str, timeout: float) -> None:
    """Run an install or build step; fail the test (never skip) with its output when it fails."""
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} timed out after {timeout:.0f} s: {' '.join(cmd)}")
    if p.returncode != 0:
        pytest.fail(f"{what} failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")


def require_toolchain(language: str, missing: list[str]) -> None:
    """Fail (never skip) when ``make clients`` has not installed what the example needs: installs are
    not the tests' business, and a skip would hide a broken client."""
    if missing:
        pytest.fail(
            f"the {language} example client needs {', '.join(missing)}: run `make clients` first "
            "(it installs the toolchains from Debian's packages and the npm registry, then builds every example)"
        )


def stale(target: Path, inputs: list[Path]) -> bool:
    """Whether ``target`` is missing or older than any of ``inputs``."""
    return not target.exists() or target.stat().st_mtime < max(p.stat().st_mtime for p in inputs)


def run_client(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the example with ``args``."""
    return subprocess.run([*command, *args], check=False, capture_output=True, text=True, timeout=60)


def expected(address: str, model: str, user: str, k: int) -> str:
    """What the client must print: the Python stub's answer to the same request."""
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.RecommenderServiceStub(channel).Recommend(
            pb.RecommendRequest(model=pb.ModelRef(name=model), user_id=user, k=k), timeout=10
        )
    return "".join(f"{item.item_id}\t{item.score:.6f}\n" for item in response.items)


def expected_error(address: str, model: str, user: str, k: int) -> str:
    """The one stderr line the client must print for a request the server refuses."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name=model), user_id=user, k=k), timeout=10)
    return f"error: {err.value.code().name}: {err.value.details()}\n"  # type: ignore[attr-defined]


def free_port() -> int:
    """A port nobody listens on (just released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ExampleClientContract:
    """The checks every language's example passes (``client_command`` comes from the test module)."""

    def test_prints_the_servers_answer(self, client_command: list[str], live_server: ServerProcess) -> None:
        address = live_server.address
        for user in ("u1", "u2", "u7"):
            p = run_client(client_command, address, "demo", user)  # K defaults to 10
            assert p.returncode == 0, p.stderr
            assert p.stdout == expected(address, "demo", user, 10)
            assert len(p.stdout.splitlines()) == 10 and p.stderr == ""
        p = run_client(client_command, address, "demo", "u3", "3")
        assert p.returncode == 0, p.stderr
        assert p.stdout == expected(address, "demo", "u3", 3) and len(p.stdout.splitlines()) == 3

    def test_reports_grpc_errors(self, client_command: list[str], live_server: ServerProcess) -> None:
        address = live_server.address
        p = run_client(client_command, address, "nope", "u1")
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr.startswith("error: NOT_FOUND: unknown model 'nope'")
        assert p.stderr == expected_error(address, "nope", "u1", 10)
        p = run_client(client_command, address, "demo", "u1", "1000")  # above the model's k_max
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr == expected_error(address, "demo", "u1", 1000)
        assert p.stderr.startswith("error: INVALID_ARGUMENT: ")
        p = run_client(client_command, f"127.0.0.1:{free_port()}", "demo", "u1")  # nobody listens
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr.startswith("error: UNAVAILABLE: ") and len(p.stderr.splitlines()) == 1

    @pytest.mark.parametrize(
        "args", [[], ["127.0.0.1:1", "demo"], ["127.0.0.1:1", "demo", "u1", "ten"], ["a", "b", "c", "0"]]
    )
    def test_usage_errors(self, client_command: list[str], args: list[str]) -> None:
        p = run_client(client_command, *args)
        assert p.returncode == 2 and p.stdout == ""
        assert "usage:" in p.stderr
