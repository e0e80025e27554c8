"""Which model versions a server answers with, and what its health says, as the repository changes
under it: a real grpc.aio server on 127.0.0.1 (port 0) in this process, real onnxruntime sessions."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onnxrec.server.app import SERVICE_NAME
from onnxrec.server.config import ServerConfig
from onnxrec.server.reload import Rejections, dir_signature
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.test_request_limits import LocalServer, eventually

pytestmark = pytest.mark.slow  # end to end; left out of make test-quick

V = TypeVar("V")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(address: str, service: str = "") -> int:
    """The health status of ``service`` (NOT_FOUND from the health service raises)."""
    with grpc.insecure_channel(address) as channel:
        return int(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        )


def version_copy(source: Path, target: Path, *, name: str | None = None, version: int | None = None) -> Path:
    """Copy a version directory, renaming the model and/or renumbering the version in its manifest."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["name"] = name or manifest["name"]
    manifest["version"] = version or manifest["version"]
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def broken_copy(source: Path, target: Path, version: int) -> Path:
    """A version whose graph file no longer matches its manifest's hash (rejected at load)."""
    version_copy(source, target, version=version)
    (target / "recommend.onnx").write_bytes(b"broken")
    return target


def config(repo: Path, **kw: Any) -> ServerConfig:
    return ServerConfig(repository=str(repo), port=0, device="cpu", reload_interval_s=0.2, **kw)


@pytest.fixture()
def demo_v1(served_repo: Path) -> Path:
    return served_repo / "demo" / "1"


@pytest.fixture()
def local() -> Iterator[list[LocalServer]]:
    """Servers started by a test, closed after it."""
    started: list[LocalServer] = []
    yield started
    for srv in started:
        srv.close()


def recommend(address: str, model: str) -> pb.RecommendResponse:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        return stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name=model), user_id="u1", k=5), timeout=10)


def code_of(address: str, model: str) -> grpc.StatusCode | None:
    try:
        recommend(address, model)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_health_is_per_model_and_not_serving_without_a_loaded_version(
    demo_v1: Path, tmp_path: Path, local: list[LocalServer]
) -> None:
    """Service names ``onnxrec.v1.RecommenderService/NAME`` give each model's health; the server's
    (``""`` and ``onnxrec.v1.RecommenderService``) is SERVING only while every model has a loaded
    version. Deleting a model's only version makes it and the server NOT_SERVING (and empties its
    ``model_loaded`` gauge); a new version makes both SERVING again."""
    repo = tmp_path / "repo"
    shutil.copytree(demo_v1, repo / "demo" / "1")
    version_copy(demo_v1, repo / "other" / "1", name="other")
    srv = LocalServer(config(repo))
    local.append(srv)
    addr = srv.address
    eventually(lambda: health(addr) == SERVING, what="SERVING with both models loaded")
    for service in (SERVICE_NAME, f"{SERVICE_NAME}/demo", f"{SERVICE_NAME}/other"):
        assert health(addr, service) == SERVING, service
    assert srv.sample("onnxrec_model_loaded", {"model": "other", "version": "1"}) == 1.0

    shutil.rmtree(repo / "other" / "1")  # its only version
    eventually(lambda: health(addr, f"{SERVICE_NAME}/other") == NOT_SERVING, what="other NOT_SERVING")
    assert health(addr) == NOT_SERVING
    assert health(addr, SERVICE_NAME) == NOT_SERVING
    assert health(addr, f"{SERVICE_NAME}/demo") == SERVING
    assert code_of(addr, "other") == grpc.StatusCode.NOT_FOUND
    assert recommend(addr, "demo").items  # the other model answers on
    assert srv.sample("onnxrec_model_loaded", {"model": "other", "version": "1"}) == 0.0
    time.sleep(1.0)  # several rescans later it is still known (its folder is there) and NOT_SERVING
    assert health(addr) == NOT_SERVING

    version_copy(demo_v1, repo / "other" / "2", name="other", version=2)
    eventually(lambda: health(addr) == SERVING, what="SERVING again with a new version")
    assert health(addr, f"{SERVICE_NAME}/other") == SERVING
    assert recommend(addr, "other").model_version == 2


def test_the_only_model_deleted_means_not_serving(demo_v1: Path, tmp_path: Path, local: list[LocalServer]) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_v1, repo / "demo" / "1")
    srv = LocalServer(config(repo))
    local.append(srv)
    assert health(srv.address) == SERVING
    shutil.rmtree(repo / "demo")  # the whole model folder
    eventually(lambda: health(srv.address) == NOT_SERVING, what="NOT_SERVING with nothing loaded")
    assert health(srv.address, f"{SERVICE_NAME}/demo") == NOT_SERVING
    assert code_of(srv.address, "demo") == grpc.StatusCode.NOT_FOUND


def test_a_version_copied_in_file_by_file_loads_once_complete(
    demo_v1: Path, tmp_path: Path, local: list[LocalServer], caplog: pytest.LogCaptureFixture
) -> None:
    """``manifest.json`` arrives first (rejected: files missing), the rest later: the version is tried
    again once its files change, loads, and serves; the rejection was logged once."""
    caplog.set_level(logging.INFO, logger="onnxrec.server")
    repo = tmp_path / "repo"
    shutil.copytree(demo_v1, repo / "demo" / "1")
    srv = LocalServer(config(repo))
    local.append(srv)
    v2 = repo / "demo" / "2"
    v2.mkdir()
    staged = version_copy(demo_v1, tmp_path / "staged", version=2)
    shutil.copy2(staged / "manifest.json", v2 / "manifest.json")
    eventually(lambda: "rejected demo version 2" in caplog.text, what="the partial version rejected")
    assert "is missing" in caplog.text
    time.sleep(1.0)  # rescans of unchanged files do not try (or log) it again
    assert caplog.text.count("rejected demo version 2") == 1
    assert recommend(srv.address, "demo").model_version == 1
    for f in sorted(staged.iterdir()):
        if f.name != "manifest.json":
            shutil.copy2(f, v2 / f.name)
    eventually(lambda: recommend(srv.address, "demo").model_version == 2, what="version 2 served")
    assert "trying demo version 2 again" in caplog.text


def test_a_deleted_served_version_is_unloaded_and_an_older_one_serves(
    demo_v1: Path, tmp_path: Path, local: list[LocalServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Policy: a served version whose directory is gone is unloaded; the newest older version that loads
    takes over (never the rejected newer one); with none left the model is unloaded and NOT_SERVING."""
    caplog.set_level(logging.INFO, logger="onnxrec.server")
    repo = tmp_path / "repo"
    shutil.copytree(demo_v1, repo / "demo" / "1")
    version_copy(demo_v1, repo / "demo" / "2", version=2)
    broken_copy(demo_v1, repo / "demo" / "3", version=3)
    srv = LocalServer(config(repo))
    local.append(srv)
    assert recommend(srv.address, "demo").model_version == 2  # 3 is rejected, 2 serves
    assert "rejected demo version 3" in caplog.text
    shutil.rmtree(repo / "demo" / "2")
    eventually(lambda: recommend(srv.address, "demo").model_version == 1, what="version 1 serving")
    assert "demo version 2: its directory is gone; serving v1" in caplog.text
    assert srv.server.registry.health() == {"demo": True}
    shutil.rmtree(repo / "demo" / "1")
    eventually(lambda: code_of(srv.address, "demo") == grpc.StatusCode.NOT_FOUND, what="demo unloaded")
    eventually(lambda: health(srv.address) == NOT_SERVING, what="NOT_SERVING")
    assert srv.server.registry.health() == {"demo": False}
    assert srv.sample("onnxrec_model_loaded", {"model": "demo", "version": "1"}) == 0.0


def test_a_broken_newest_version_at_start_falls_back_to_the_previous(
    demo_v1: Path, tmp_path: Path, local: list[LocalServer]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_v1, repo / "demo" / "1")
    broken_copy(demo_v1, repo / "demo" / "2", version=2)
    srv = LocalServer(config(repo))
    local.append(srv)
    assert recommend(srv.address, "demo").model_version == 1
    assert health(srv.address) == SERVING


def test_rejections_retry_on_changed_files_with_backoff(tmp_path: Path) -> None:
    now = [100.0]
    rejections = Rejections(first_s=1.0, max_s=4.0, clock=lambda: now[0])
    key = ("m", 1)
    (tmp_path / "manifest.json").write_text("{}")
    first = dir_signature(tmp_path)
    assert rejections.should_try(key, first)
    assert rejections.record(key, first, "items.parquet is missing")  # a new reason: logged
    assert not rejections.should_try(key, first)  # same files: never again
    now[0] += 100
    assert not rejections.should_try(key, first)
    (tmp_path / "items.parquet").write_bytes(b"x")
    second = dir_signature(tmp_path)
    assert second != first and rejections.should_try(key, second)
    assert not rejections.record(key, second, "items.parquet is missing")  # same reason: not logged again
    (tmp_path / "users.parquet").write_bytes(b"y")
    third = dir_signature(tmp_path)
    assert not rejections.should_try(key, third)  # changed, but within the 2 s backoff
    now[0] += 2.0
    assert rejections.should_try(key, third)
    assert rejections.record(key, third, "users.parquet does not match its hash")
    assert rejections.get(key) is not None and rejections.get(key).retry_at == now[0] + 4.0
    rejections.clear(key)
    assert key not in rejections and rejections.should_try(key, third)
    rejections.record(key, third, "x")
    rejections.keep_only([])
    assert key not in rejections
