"""What a server does between SIGTERM and its end, so that calls already sent are answered.

grpc.aio's ``server.stop(grace)`` lets the calls its handlers are running finish, but cancels every call
gRPC has received and not yet handed to a handler (grpc/grpc#41785): under load that is most of the
calls in flight, and their callers see CANCELLED, a code no client retries. So :meth:`ShutdownGate.drain`
runs first:

1. for ``drain_s`` (bounded by the grace period) the server answers as usual, with health NOT_SERVING,
   so calls already sent are served and load balancers have time to stop sending;
2. then each new call is refused at once with UNAVAILABLE ("shutting down"), a code clients retry on
   another replica, until no call has arrived for :data:`QUIET_S` and none is running (at most
   :data:`REFUSE_MAX_S`);
3. then ``server.stop`` with what is left of the grace period.
"""

from __future__ import annotations

import asyncio
import time

QUIET_S = 0.05  # no call arrived for this long: gRPC's queue of received calls is empty
REFUSE_MAX_S = 1.0  # the longest step 2 waits for quiet (clients that retry at once never go quiet)
SHUTTING_DOWN = "the server is shutting down; retry on another replica"


class ShutdownGate:
    """Counts the calls running; refuses new ones once :attr:`refusing` is set."""

    __slots__ = ("last_arrival", "refusing", "running")

    def __init__(self) -> None:
        self.refusing = False
        self.running = 0
        self.last_arrival = 0.0

    def enter(self, now: float) -> bool:
        """A call arrives at ``now`` (perf_counter): False if it must be refused, else it is running
        until :meth:`leave`."""
        self.last_arrival = now
        if self.refusing:
            return False
        self.running += 1
        return True

    def leave(self) -> None:
        """A call admitted by :meth:`enter` has ended."""
        self.running -= 1

    async def drain(self, drain_s: float, grace_s: float) -> float:
        """Steps 1 and 2 above; returns the seconds of ``grace_s`` that are left for ``server.stop``."""
        start = time.perf_counter()
        if drain_s > 0 and grace_s > 0:
            await asyncio.sleep(min(drain_s, grace_s))
        self.refusing = True
        refuse_until = min(time.perf_counter() + REFUSE_MAX_S, start + grace_s)
        while time.perf_counter() < refuse_until and (
            self.running or time.perf_counter() - self.last_arrival < QUIET_S
        ):
            await asyncio.sleep(QUIET_S / 5)
        return max(0.0, grace_s - (time.perf_counter() - start))
