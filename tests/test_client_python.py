"""The Python client (sync and asyncio) and the client CLI against a real server process."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from onnxrec.clients import AsyncRecommenderClient, RecommenderClient, RecommenderError
from onnxrec.server.loaded_model import LoadedModel
from tests.contract import RecommenderContract
from tests.serverproc import ServerProcess, start_server


def test_sync_and_async_clients_agree(live_server: ServerProcess) -> None:
    users = [f"u{i}" for i in range(1, 9)]
    with RecommenderClient(live_server.address) as client:
        sync = [client.recommend("demo", u, 10) for u in users]
        batch = client.recommend_batch("demo", users, 10)
        models = client.list_models()
        meta = client.model_metadata("demo")
        assert client.health() == "SERVING"

    async def run() -> list[list[str]]:
        async with AsyncRecommenderClient(live_server.address) as aclient:
            results = await asyncio.gather(*[aclient.recommend("demo", u, 10) for u in users])
            return [r.item_ids for r in results]

    assert [r.item_ids for r in sync] == asyncio.run(run()) == [r.item_ids for r in batch]
    assert all(r.source == "model" and r.model_name == "demo" and r.model_version == 1 for r in sync)
    assert [m.name for m in models] == ["demo"] and meta.k_max == 50


def test_errors_carry_code_and_message(live_server: ServerProcess) -> None:
    with RecommenderClient(live_server.address) as client:
        with pytest.raises(RecommenderError) as err:
            client.recommend("nope", "u1")
        assert err.value.code.name == "NOT_FOUND" and "unknown model 'nope'" in err.value.details
        with pytest.raises(RecommenderError) as err:
            client.recommend("demo", "u1", k=0)
        assert err.value.code.name == "INVALID_ARGUMENT"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_is_one_clear_error() -> None:
    address = f"127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with RecommenderClient(address, timeout=3, retries=2) as client, pytest.raises(RecommenderError) as err:
        client.recommend("demo", "u1")
    assert err.value.code.name == "UNAVAILABLE" and address in str(err.value)
    assert time.monotonic() - t0 < 10
    p = _cli("recommend", "--server", address, "--model", "demo", "--user", "u1", "--timeout", "3")
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "UNAVAILABLE" in lines[0] and address in lines[0]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxrec", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_cli_commands(live_server: ServerProcess) -> None:
    server = ["--server", live_server.address]
    p = _cli("recommend", *server, "--user", "u1", "-k", "5")  # the only model is picked
    assert p.returncode == 0, p.stderr
    assert "user u1: demo version 1 (model)" in p.stdout and len(p.stdout.strip().splitlines()) == 6
    j = json.loads(_cli("recommend", *server, "--user", "u1", "-k", "5", "--json").stdout)
    with RecommenderClient(live_server.address) as client:
        assert [i["item_id"] for i in j["items"]] == client.recommend("demo", "u1", 5).item_ids
        first = client.recommend("demo", "u1", 2).item_ids
    s = _cli("score", *server, "--user", "u1", "--items", ",".join(first))
    assert s.returncode == 0 and [ln.split("\t")[0] for ln in s.stdout.splitlines()[1:]] == first
    assert _cli("similar", *server, "--item", first[0], "-k", "3").returncode == 0
    assert "demo" in _cli("models", *server).stdout
    assert _cli("health", *server).stdout.strip() == "SERVING"
    bad = _cli("recommend", *server, "--user", "u1", "-k", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert _cli("recommend", *server).returncode == 2  # --user missing
    nf = _cli("recommend", *server, "--model", "nope", "--user", "u1")
    assert nf.returncode == 1 and "NOT_FOUND" in nf.stderr


class _GrpcBackend:
    """The contract's index-based interface, over the gRPC client (raw ids on the wire)."""

    def __init__(self, address: str, version_dir: Path) -> None:
        self.client = RecommenderClient(address)
        self.model = LoadedModel(version_dir, device="cpu")

    def recommend(self, users: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        replies = [
            self.client.recommend(
                "demo",
                str(self.model.user_ids[u]),
                k,
                exclude=[str(self.model.item_ids[e]) for e in row if e >= 0],
                exclude_seen=False,
            )
            for u, row in zip(users, exclude, strict=True)
        ]
        items = np.array([[self.model.item_index[i.item_id] for i in r.items] for r in replies])
        scores = np.array([[i.score for i in r.items] for r in replies])
        return scores, items

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.array(
            [
                [
                    i.score
                    for i in self.client.score(
                        "demo", str(self.model.user_ids[u]), [str(self.model.item_ids[j]) for j in row]
                    ).items
                ]
                for u, row in zip(users, items, strict=True)
            ]
        )


class TestGrpcContract(RecommenderContract):
    """The recommender contract, through the gRPC client and a real server."""

    @pytest.fixture(autouse=True)
    def _bind(self, live_server: ServerProcess, served_repo: Path) -> None:
        backend = _GrpcBackend(live_server.address, served_repo / "demo" / "1")
        self.backend = backend
        self.num_users = backend.model.num_users
        self.num_items = backend.model.num_items


def test_cli_against_a_server_with_no_model_says_so(tmp_path: Path) -> None:
    """Before the fix `recommend` said 'pass --model' and `models` printed nothing with exit 0."""
    repo = tmp_path / "empty-repo"
    repo.mkdir()
    server = start_server(repo, tmp_path / "server.log", wait_serving=False)
    try:
        for args in (("recommend", "--user", "u1"), ("models",), ("similar", "--item", "i1")):
            p = _cli(*args, "--server", server.address)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 1, (args, p.stderr)
            assert len(lines) == 1 and "has no model loaded (health: NOT_SERVING)" in lines[0], (args, lines)
            assert "--model" not in lines[0]
    finally:
        server.stop()


def test_every_call_answers_the_same_sync_and_awaited(live_server: ServerProcess) -> None:
    """Both clients' methods come from the same request builders: each call, and each error, alike."""
    calls: list[tuple[str, tuple[object, ...], dict[str, object]]] = [
        ("recommend", ("demo", "u1", 5), {"exclude": ["i1"], "include_metadata": True}),
        ("recommend", ("demo", "someone-new", 5), {"history": ["i2", "i3"]}),
        ("recommend_batch", ("demo", ["u1", "u2"], 3), {}),
        ("score", ("demo", "u1", ["i3", "i1"]), {}),
        ("similar", ("demo", "i1", 4), {}),
        ("list_models", (), {}),
        ("model_metadata", ("demo",), {"version": 1}),
        ("health", (), {}),
        ("recommend", ("nope", "u1"), {}),
        ("score", ("demo", "u1", []), {"timeout": 2.0}),
    ]

    sync: list[object] = []
    with RecommenderClient(live_server.address) as client:
        for name, args, kwargs in calls:
            try:
                sync.append(getattr(client, name)(*args, **kwargs))
            except RecommenderError as err:
                sync.append((err.code, err.details, err.target))

    async def awaited() -> list[object]:
        answers: list[object] = []
        async with AsyncRecommenderClient(live_server.address) as aclient:
            for name, args, kwargs in calls:
                try:
                    answers.append(await getattr(aclient, name)(*args, **kwargs))
                except RecommenderError as err:
                    answers.append((err.code, err.details, err.target))
        return answers

    assert sync == asyncio.run(awaited())
    assert isinstance(sync[-2], tuple) and sync[-2][0].name == "NOT_FOUND"
