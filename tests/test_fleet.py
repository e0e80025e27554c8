"""A fleet (issue #20): three replicas behind the Python client's round robin keep answering, with zero
failed calls, while one is SIGKILLed and restarted and a new model version is rolled out replica by
replica; with one shared redis-server, a user's events tracked on one replica reach the others. And a
replica that has not loaded its models yet says UNAVAILABLE (retryable), not NOT_FOUND."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import grpc
import pytest

from onnxrec.server.config import ServerConfig
from onnxrec.server.limits import RequestError, RequestLimits
from onnxrec.server.plan import Planner
from onnxrec.server.registry import ModelRegistry
from onnxrec.v1 import recommender_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from fleet import run_fleet


def test_a_replica_still_loading_says_unavailable_then_not_found(served_repo: Path) -> None:
    """Before its first scan of the repository a replica does not know whether a model exists: UNAVAILABLE
    (clients retry another replica); after it, an unknown model is NOT_FOUND."""
    registry = ModelRegistry(ServerConfig(repository=str(served_repo)))
    planner = Planner(registry, RequestLimits(256, 1000, 4 << 20))
    with pytest.raises(RequestError) as err:
        planner.served(pb.ModelRef(name="demo"))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "still loading" in str(err.value)

    async def scan_then_ask() -> None:
        await registry.refresh()
        try:
            assert planner.served(pb.ModelRef(name="demo")).model.name == "demo"
            with pytest.raises(RequestError) as err:
                planner.served(pb.ModelRef(name="nope"))
            assert err.value.code == grpc.StatusCode.NOT_FOUND
        finally:
            await registry.close()

    asyncio.run(scan_then_ask())


@pytest.mark.slow
@pytest.mark.parametrize("redis", [False, True], ids=["local-state", "shared-redis"])
def test_failover_and_rolling_update_under_load(served_repo: Path, tmp_path: Path, redis: bool) -> None:
    if redis and shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make redis)")
    report = run_fleet(served_repo, "demo", tmp_path, duration=20.0, clients=64, redis=redis)
    assert report["calls"] > 1000 and report["failed"] == {}, report
    assert set(report["versions_answered"]) == {"1", "2"}  # answers only ever from loaded versions
    assert all(v == [1, 2] for v in report["versions_on_disk"].values())
    if redis:
        events = report["events"]
        assert events.get("from_events", 0) >= 5 and events.get("not_from_events", 0) == 0, events
