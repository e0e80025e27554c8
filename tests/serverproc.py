"""Start a real ``onnxrec serve`` process on 127.0.0.1 for tests, and stop it."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
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


@contextlib.contextmanager
def served(repository: Path, log: Path, *args: str) -> Iterator[ServerProcess]:
    """:func:`start_server` for the block, stopped after it."""
    srv = start_server(repository, log, *args)
    try:
        yield srv
    finally:
        srv.stop()


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


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.2 s until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def run_serve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``onnxrec serve --device cpu ARGS`` to its end (for the ways it must refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", "onnxrec", "serve", "--device", "cpu", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (VmRSS from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no VmRSS for pid {pid}")


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass
class _SlowConnection:
    sock: socket.socket
    h2: h2.connection.H2Connection
    unsent: dict[int, bytes] = field(default_factory=dict)  # stream id -> request bytes not yet sent
    status: dict[int, str] = field(default_factory=dict)  # stream id -> what became of the call
    closed: bool = False


class SlowReaders:
    """The hostile client of issue #14: HTTP/2 connections that send gRPC calls with every stream's receive
    window at 0 and never read a response. It does process the frames the server sends (settings, window
    updates; h2 answers pings), so keepalive cannot tell it from a healthy client: the server can send it
    headers and trailers but not one byte of a response message. ``outcomes()`` says what became of each
    call: ``pending`` (still held by the server), ``status N`` (answered with grpc-status N, e.g. 8 =
    RESOURCE_EXHAUSTED), ``reset`` (the server reset the stream) or ``closed`` (the connection went away)."""

    def __init__(self, address: str, path: str, request: bytes, connections: int, calls: int) -> None:
        host, port = address.rsplit(":", 1)
        self._conns: list[_SlowConnection] = []
        self._stop = threading.Event()
        frame = grpc_frame(request)
        for _ in range(connections):
            sock = socket.create_connection((host, int(port)), timeout=10)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
            conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
            )
            conn.initiate_connection()
            slow = _SlowConnection(sock, conn)
            headers = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
            for _ in range(calls):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers)
                slow.unsent[sid] = frame
                slow.status[sid] = "pending"
            sock.setblocking(False)
            self._conns.append(slow)
        self._thread = threading.Thread(target=self._run, name="slow-readers", daemon=True)
        self._thread.start()

    def _send_what_fits(self, c: _SlowConnection) -> None:
        for sid, pending in list(c.unsent.items()):
            data = pending
            room = min(c.h2.local_flow_control_window(sid), c.h2.max_outbound_frame_size)
            while data and room > 0:
                c.h2.send_data(sid, data[:room], end_stream=len(data) <= room)
                data = data[room:]
                room = min(c.h2.local_flow_control_window(sid), c.h2.max_outbound_frame_size)
            if data:
                c.unsent[sid] = data
            else:
                del c.unsent[sid]

    def _on_events(self, c: _SlowConnection, events: list[h2.events.Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived):
                status = dict(ev.headers or []).get("grpc-status")
                if status is not None and ev.stream_id is not None:
                    c.status[ev.stream_id] = f"status {status}"
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id is not None:
                c.status[ev.stream_id] = "reset"
            elif isinstance(ev, h2.events.ConnectionTerminated):
                c.closed = True

    def _run(self) -> None:
        while not self._stop.is_set():
            for c in self._conns:
                if c.closed:
                    continue
                try:
                    data = c.sock.recv(65536)
                    if not data:
                        c.closed = True
                        continue
                    self._on_events(c, c.h2.receive_data(data))
                except BlockingIOError:
                    pass
                except (OSError, h2.exceptions.ProtocolError):
                    c.closed = True
                    continue
                self._send_what_fits(c)
                with contextlib.suppress(BlockingIOError, OSError):
                    out = c.h2.data_to_send()
                    if out:
                        c.sock.setblocking(True)
                        c.sock.sendall(out)
                        c.sock.setblocking(False)
            time.sleep(0.02)

    def outcomes(self) -> dict[str, int]:
        """How many calls ended each way (see the class docstring); a closed connection's pending calls
        count as ``closed``."""
        counts: dict[str, int] = {}
        for c in self._conns:
            for status in c.status.values():
                key = "closed" if c.closed and status == "pending" else status
                counts[key] = counts.get(key, 0) + 1
        return counts

    def close(self) -> None:
        """Stop the reader thread and close every connection."""
        self._stop.set()
        self._thread.join(10)
        for c in self._conns:
            c.sock.close()
