"""``serve --workers N`` is supervised (issue #14.5): a worker's death is logged with its exit status and
the worker comes back; workers that keep dying make the supervisor exit non-zero and say why; with a
fixed ``--metrics-port`` P, worker i serves its metrics on P + i."""

from __future__ import annotations

import os
import re
import signal
import socket
import urllib.request
from pathlib import Path

import grpc
import pytest

from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess, run_serve, start_server, wait_until

pytestmark = pytest.mark.slow  # end to end; left out of make test-quick

_SERVING = re.compile(r"onnxrec serving on 127\.0\.0\.1:\d+ \(pid (\d+)\)")


def _free_ports(n: int) -> int:
    """The first of ``n`` consecutive ports on 127.0.0.1 that were free a moment ago."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = int(s.getsockname()[1])
        if first + n > 65535:
            continue
        try:
            socks = []
            for port in range(first, first + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise OSError("no run of free ports")


def _serving_pids(srv: ServerProcess) -> list[int]:
    return [int(p) for p in _SERVING.findall(srv.log.read_text())]


def _answers(address: str, calls: int) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        for _ in range(calls):
            stub.ListModels(pb.ListModelsRequest(), timeout=10)
    return True


@pytest.mark.slow
def test_a_killed_worker_is_logged_and_restarted(served_repo: Path, tmp_path: Path) -> None:
    port = _free_ports(3)
    srv = start_server(
        served_repo, tmp_path / "server.log", "--port", str(port), "--workers", "2", "--metrics-port", str(port + 1)
    )
    try:
        wait_until(lambda: len(_serving_pids(srv)) == 2, 60, "both workers serving")
        victim = _serving_pids(srv)[1]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: f"(pid {victim}) was killed by signal 9 (SIGKILL)" in srv.log.read_text(), 30, "the death logged"
        )
        assert _answers(srv.address, 20)  # the other worker answers meanwhile
        wait_until(lambda: len(_serving_pids(srv)) == 3, 60, "the worker back")
        newcomer = _serving_pids(srv)[2]
        assert newcomer != victim and os.path.exists(f"/proc/{newcomer}")
        assert _answers(srv.address, 20)
        # the metrics of worker 0 on P + 0 ... and of the restarted worker, again on its own port
        for metrics_port in (port + 1, port + 2):
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
                assert b"onnxrec_requests_total" in r.read()
        assert "Traceback" not in srv.log.read_text()
    finally:
        assert srv.stop() == 0
    assert "starting it again" in srv.log.read_text()


def test_workers_that_keep_dying_make_serve_exit_nonzero(tmp_path: Path) -> None:
    """Every worker fails at start (here: --device cuda without a usable GPU, which only a worker finds
    out, as it loads onnxruntime): each failure says why in the log, the supervisor restarts them with
    back-off, then gives up with a message and exit status 2."""
    from onnxrec.server.loaded_model import cuda_status

    if cuda_status()[0]:
        pytest.skip("this machine has a working CUDA execution provider")
    port = _free_ports(1)
    p = run_serve("--repository", str(tmp_path), "--device", "cuda", "--port", str(port), "--workers", "2")
    assert p.returncode == 2, p.stderr
    assert "error: worker 0: --device cuda: CUDA is not usable" in p.stderr
    assert re.search(r"worker \d \(pid \d+\) exited with status 2; starting it again in", p.stderr)
    assert p.stderr.strip().splitlines()[-1].startswith("error: workers keep dying: 6 deaths in 60 s")


def test_a_busy_metrics_port_is_refused_before_any_worker_starts(served_repo: Path, tmp_path: Path) -> None:
    port = _free_ports(3)
    with socket.socket() as other:
        other.bind(("127.0.0.1", port + 2))
        other.listen()
        p = run_serve(
            "--repository", str(served_repo), "--port", str(port), "--workers", "2", "--metrics-port", str(port + 1)
        )
    assert p.returncode == 2, p.stderr
    assert [ln for ln in p.stderr.splitlines() if ln.strip()] == [
        f"error: metrics port of worker 1: address in use: 127.0.0.1:{port + 2} "
        "(another server is listening there; pick another --metrics-port)"
    ]
