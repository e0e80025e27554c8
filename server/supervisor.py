"""``serve --workers N``: a supervisor process that forks N workers sharing one port and keeps them up.

The supervisor checks the port before forking and holds it (:class:`~onnxrec.server.transport.PortHold`):
a port another server listens on is refused ("address in use", exit 2), and SO_REUSEPORT is shared only
among this server's own workers. It forks before any gRPC server or onnxruntime session exists, then:

* logs each worker's death with its exit status or signal, and starts it again after a back-off
  (0.5 s, doubling per recent death of that worker, at most :data:`MAX_BACKOFF_S`);
* gives up when workers keep dying, more than :data:`MAX_DEATHS` deaths in :data:`DEATH_WINDOW_S`
  seconds: it stops the others and exits non-zero (2) with a message;
* forwards SIGTERM and SIGINT to the workers (each goes NOT_SERVING and drains for ``grace_s``),
  waits for them, and exits 0.

A worker that fails at start prints why (its one-line error, or its traceback) before exiting, to the
same stderr as the supervisor. Metrics: each worker serves its own ``/metrics``: with ``metrics_port``
P, worker i listens on P + i (each checked free before forking); with 0, each on a free port; every
worker prints where. Scrape them all (their counters add up).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable

from onnxrec.errors import ConfigError, OnnxrecError
from onnxrec.server.config import ServerConfig
from onnxrec.server.transport import PortHold, bind_error

log = logging.getLogger("onnxrec.server")

MAX_DEATHS = 5  # more worker deaths than this ...
DEATH_WINDOW_S = 60.0  # ... within this many seconds, and the supervisor gives up
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


class WorkersFailed(OnnxrecError):
    """The workers kept dying: the supervisor stopped the rest and exits non-zero."""


def worker_config(config: ServerConfig, index: int) -> ServerConfig:
    """Worker ``index``'s configuration: its own metrics port (P + index) when P is fixed."""
    if config.metrics_port:
        return dataclasses.replace(config, metrics_port=config.metrics_port + index)
    return config


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"was killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    """Forks, watches and restarts the workers of one server (see the module docstring)."""

    def __init__(self, config: ServerConfig, run_worker: Callable[[ServerConfig], None]) -> None:
        self.config = config
        self.run_worker = run_worker
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.restart_at: dict[int, float] = {}  # worker index -> when to start it again
        self.deaths: deque[float] = deque()
        self.recent: dict[int, int] = {}  # worker index -> deaths in the window (for its back-off)
        self.stopping = False
        self.failed: str | None = None
        self.hold: PortHold | None = None

    def check_ports(self) -> PortHold:
        """Refuse a busy gRPC or metrics port before any worker starts; hold the gRPC port."""
        hold = PortHold(self.config.host, self.config.port)
        if self.config.metrics_port:
            for i in range(self.config.workers):
                error = bind_error(self.config.host, self.config.metrics_port + i, option="--metrics-port")
                if error is not None:
                    hold.close()
                    raise ConfigError(f"metrics port of worker {i}: {error}")
        return hold

    def spawn(self, index: int) -> None:
        """Fork worker ``index``; the child never returns from here."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(self._child(index))
        self.pids[pid] = index
        log.info("worker %d started (pid %d)", index, pid)

    def _child(self, index: int) -> int:
        code = 0
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if self.hold is not None:
                self.hold.close()  # the supervisor's, not this worker's
            _die_with_parent()
            self.run_worker(worker_config(self.config, index))
        except OnnxrecError as exc:
            print(f"error: worker {index}: {exc}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            code = 130
        except BaseException:  # a crash: the traceback is the reason, for the log
            print(f"worker {index} (pid {os.getpid()}) crashed:", file=sys.stderr)
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return code

    def on_signal(self, signum: int, _frame: object) -> None:
        """SIGTERM/SIGINT: stop restarting and pass the signal on to every worker."""
        self.stopping = True
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def reap(self) -> None:
        """Collect dead workers: log each and plan its restart (or give up if they keep dying)."""
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            if self.stopping:
                log.info("worker %d (pid %d) %s", index, pid, _describe(status))
                continue
            self._died(index, pid, status)

    def _died(self, index: int, pid: int, status: int) -> None:
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > DEATH_WINDOW_S:
            self.deaths.popleft()
        if len(self.deaths) > MAX_DEATHS:
            self.failed = (
                f"workers keep dying: {len(self.deaths)} deaths in {DEATH_WINDOW_S:.0f} s, the last worker {index} "
                f"(pid {pid}) {_describe(status)}; see the log above for why"
            )
            log.error("worker %d (pid %d) %s; giving up", index, pid, _describe(status))
            return
        self.recent[index] = self.recent.get(index, 0) + 1
        delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (self.recent[index] - 1))
        log.error("worker %d (pid %d) %s; starting it again in %.1f s", index, pid, _describe(status), delay)
        self.restart_at[index] = now + delay

    def run(self) -> None:
        """Start the workers and supervise them until a signal stops them or they keep dying."""
        hold = self.hold = self.check_ports()
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self.on_signal)
            for i in range(self.config.workers):
                self.spawn(i)
            while self.pids or (self.restart_at and not self.stopping and self.failed is None):
                if self.failed is not None and not self.stopping:
                    self.on_signal(signal.SIGTERM, None)
                self.reap()
                now = time.monotonic()
                for index, when in list(self.restart_at.items()):
                    if self.stopping or self.failed is not None:
                        self.restart_at.clear()
                    elif when <= now:
                        del self.restart_at[index]
                        self.spawn(index)
                self._forget_old_deaths(now)
                time.sleep(_POLL_S)
        finally:
            hold.close()
        if self.failed is not None:
            raise WorkersFailed(self.failed)

    def _forget_old_deaths(self, now: float) -> None:
        if self.deaths and now - self.deaths[-1] > DEATH_WINDOW_S:
            self.deaths.clear()
            self.recent.clear()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker if the supervisor dies (no orphaned workers holding the port)."""
    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        ctypes.CDLL(name).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(config: ServerConfig, run_worker: Callable[[ServerConfig], None]) -> None:
    """Run ``config.workers`` workers of ``run_worker`` under a :class:`Supervisor`."""
    if config.port == 0:
        raise ConfigError("--workers needs a fixed --port (the processes share it)")
    Supervisor(config, run_worker).run()
