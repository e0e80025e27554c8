"""Start a real ``onnxrec serve`` process on 127.0.0.1 for tests, and stop it."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onnxrec.server.process import launch_server


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_server(
    repository: Path,
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 120.0,
    wait_serving: bool = True,
) -> ServerProcess:
    """Run ``onnxrec serve --port 0`` and wait until it says where it listens (and is SERVING)."""
    deadline = time.monotonic() + ready_timeout
    proc, address = launch_server(
        repository, log, ["--reload-interval-s", "0.5", *args], env=env, timeout=ready_timeout
    )
    server = ServerProcess(proc, int(address.rsplit(":", 1)[1]), log)
    if wait_serving:
        wait_health(server.address, health_pb2.HealthCheckResponse.SERVING, deadline - time.monotonic())
    return server


def wait_health(address: str, status: int, timeout: float, credentials: grpc.ChannelCredentials | None = None) -> None:
    deadline = time.monotonic() + timeout
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        last = None
        while time.monotonic() < deadline:
            try:
                last = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                if last == status:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"health of {address} did not become {status} (last {last})")
