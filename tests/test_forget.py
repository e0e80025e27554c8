"""Forgetting a user (issue #18): ``onnxrec forget`` and the ForgetUser admin RPC write a new version
without the user (no file of it holds their raw id; their graph rows are zeros; everyone else answers
as before), append them to the deletion ledger that the next training honours, and a server under load
answers through the forget-and-reload with zero failed calls. Real graphs, a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
from pathlib import Path

import grpc
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from onnx import numpy_helper

from onnxrec.errors import DataError
from onnxrec.exporter.export import ExportOptions, export
from onnxrec.exporter.forget import LEDGER, forget, forgotten_users
from onnxrec.server.loaded_model import LoadedModel
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import build_dataset, load_dataset, save_dataset
from onnxrec.trainer.data.log import InteractionLog
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.split import SplitSpec
from onnxrec.trainer.data.synth import generate_synthetic
from onnxrec.trainer.train import train
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import start_server

pytestmark = pytest.mark.slow

TOKEN = "admin-token"


def _distinctive(uid: str) -> str:
    return "person-" + hashlib.sha1(uid.encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    """A synthetic log whose user ids are distinctive strings (so a byte search means something)."""
    raw = generate_synthetic(num_users=150, num_items=120, interactions_per_user=20, seed=5)
    rename = pc.cast(raw.interactions["user_id"], pa.string()).to_pylist()
    interactions = raw.interactions.set_column(0, "user_id", pa.array([_distinctive(u) for u in rename]))
    assert raw.user_table is not None
    users = raw.user_table.set_column(
        0, "user_id", pa.array([_distinctive(u) for u in raw.user_table["user_id"].to_pylist()])
    )
    return dataclasses.replace(raw, interactions=interactions, user_table=users)


@pytest.fixture(scope="module")
def repo(log: InteractionLog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("forget")
    ds = build_dataset(log, PreprocessSpec(), SplitSpec(num_negatives=20), "people")
    data = save_dataset(ds, root / "data")
    for model, index in (("mf", "flat"), ("mlp", "exact"), ("twotower", "exact")):
        run = train(
            TrainConfig(
                data=str(data), out=str(root / model), model=model, epochs=1, progress=False, dim=8, layers=(16,)
            )
        )
        export(run, root / "repo", model, options=ExportOptions(k_max=20, max_batch=8, parity_users=32, index=index))
    return root / "repo"


def _victim(repo: Path, name: str) -> tuple[str, int]:
    model = LoadedModel(sorted((repo / name).iterdir())[-1])
    return str(model.user_ids[7]), 7


@pytest.mark.parametrize("name", ["mf", "mlp"])
def test_forget_writes_a_version_without_the_user(repo: Path, name: str) -> None:
    user, row = _victim(repo, name)
    before = LoadedModel(repo / name / "1")
    done = forget(repo, name, user)
    assert done.version_dir == repo / name / "2" and done.rows_zeroed >= 2
    after = LoadedModel(done.version_dir)  # loads: every hash verified
    assert user in before.user_index and user not in after.user_index
    for f in done.version_dir.iterdir():  # no file of the new version holds the raw id
        assert user.encode() not in f.read_bytes(), f.name
    assert len(after.seen(row)) == 0
    others = np.array([u for u in range(before.num_users) if u != row][:40])
    rows = [np.array([-1])] * len(others)
    for a, b in zip(before.recommend(others, rows, 10), after.recommend(others, rows, 10), strict=True):
        assert a.items.tolist() == b.items.tolist()  # everyone else answers as before
    (old,) = before.score(np.array([row]), [np.arange(10)])
    (new,) = after.score(np.array([row]), [np.arange(10)])
    assert not np.allclose(old, new)  # the forgotten user's row changed ...
    for graph in ("score.onnx", "recommend.onnx"):  # ... to zeros in every table read by user index
        tables = [
            numpy_helper.to_array(t)
            for t in onnx.load(str(done.version_dir / graph)).graph.initializer
            if t.dims and t.dims[0] == before.num_users
        ]
        assert tables and all(not np.any(t[row]) for t in tables)
    assert user in forgotten_users(repo / LEDGER)


def _holders(version: Path, vector: np.ndarray) -> list[str]:
    """graph file: initializer of every 2-D float table of ``version``'s graphs with a row equal to ``vector``."""
    found = []
    for path in sorted(version.glob("*.onnx")):
        for t in onnx.load(str(path)).graph.initializer:
            values = numpy_helper.to_array(t)
            if values.ndim != 2 or values.shape[1] != len(vector) or values.dtype.kind != "f":
                continue
            if np.any(np.all(np.abs(values.astype(np.float32) - vector) <= 1e-6, axis=1)):
                found.append(f"{path.name}: {t.name}")
    return found


def test_forget_zeroes_the_two_towers_id_embedding_in_its_history_graph(repo: Path) -> None:
    """The two-tower's recommend_from_history carries the whole user-id embedding table ([num_users + 1,
    d], user u at row u + 1) though it reads only row 0 (the unknown user): before the fix, forget left
    the forgotten user's trained embedding there. Now no graph of the new version holds it, and every
    answer (known users, history requests) is the same as before."""
    import torch

    name = "twotower"
    user, row = _victim(repo, name)
    before = LoadedModel(repo / name / "1")
    weights = torch.load(repo.parent / name / "checkpoint.pt", weights_only=True)["state_dict"]["user_id.weight"]
    assert weights.shape[0] == before.num_users + 1
    embedding = weights[row + 1].numpy()
    assert "recommend_from_history.onnx: model.user_id.weight" in _holders(before.path, embedding)
    done = forget(repo, name, user)
    assert done.version_dir is not None
    after = LoadedModel(done.version_dir)  # loads: every hash in the manifest verified
    assert _holders(done.version_dir, embedding) == []
    (old,) = [
        numpy_helper.to_array(t)
        for t in onnx.load(str(before.path / "recommend_from_history.onnx")).graph.initializer
        if t.name == "model.user_id.weight"
    ]
    (new,) = [
        numpy_helper.to_array(t)
        for t in onnx.load(str(done.version_dir / "recommend_from_history.onnx")).graph.initializer
        if t.name == "model.user_id.weight"
    ]
    assert not np.any(new[row + 1]) and np.array_equal(np.delete(old, row + 1, 0), np.delete(new, row + 1, 0))
    others = np.array([u for u in range(before.num_users) if u != row][:40])
    rows = [np.array([-1])] * len(others)
    for a, b in zip(before.recommend(others, rows, 10), after.recommend(others, rows, 10), strict=True):
        assert a.items.tolist() == b.items.tolist() and np.array_equal(a.scores, b.scores)
    histories = [before.seen(int(u))[::-1][:20] for u in others]  # newest first
    features = [before.user_feature_codes(int(u)) for u in others]
    for a, b in zip(
        before.recommend_from_history(histories, rows, features, 10),
        after.recommend_from_history(histories, rows, features, 10),
        strict=True,
    ):
        assert a.items.tolist() == b.items.tolist() and np.array_equal(a.scores, b.scores)


def test_the_next_training_drops_forgotten_users(repo: Path, log: InteractionLog, tmp_path: Path) -> None:
    user, _ = _victim(repo, "mf")
    if user not in forgotten_users(repo / LEDGER):
        forget(repo, "mf", user)
    source = tmp_path / "log.parquet"
    pq.write_table(log.interactions, source)
    run = train(
        TrainConfig(
            data=str(source),
            out=str(tmp_path / "run"),
            model="mf",
            epochs=1,
            progress=False,
            dim=8,
            eval_negatives=20,
            deletions=str(repo / LEDGER),
        )
    )
    ds = load_dataset(run / "dataset")
    assert user not in set(ds.user_ids) and ds.meta["erasure"]["users_dropped"] >= 1
    prepared = save_dataset(
        build_dataset(log, PreprocessSpec(), SplitSpec(num_negatives=20), "people"), tmp_path / "prepared"
    )
    with pytest.raises(DataError, match="prepare the source again"):
        train(
            TrainConfig(
                data=str(prepared),
                out=str(tmp_path / "run2"),
                model="mf",
                epochs=1,
                progress=False,
                deletions=str(repo / LEDGER),
            )
        )


def test_forget_user_rpc_is_admin_only_and_serves_the_new_version(repo: Path, tmp_path: Path) -> None:
    """Without tokens the server refuses ForgetUser; with them it writes the version, drops the user's
    events, serves the new version before answering, and 64 clients calling all along see no failure."""
    name = "mlp"
    model = LoadedModel(sorted((repo / name).iterdir(), key=lambda p: int(p.name))[-1])
    victim = str(model.user_ids[21])
    others = [str(u) for u in model.user_ids[30:94]]
    plain = start_server(repo, tmp_path / "plain.log")
    try:
        with grpc.insecure_channel(plain.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.RecommenderServiceStub(channel).ForgetUser(
                    pb.ForgetUserRequest(model=name, user_id=victim), timeout=30
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        plain.stop()
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    srv = start_server(repo, tmp_path / "server.log", "--auth-tokens-file", str(tokens))
    auth = (("authorization", f"Bearer {TOKEN}"),)
    failures: list[str] = []
    stop = threading.Event()
    load = threading.Thread(target=_load, args=(srv.address, name, others, stop, failures))
    try:
        with grpc.insecure_channel(srv.address) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            item = model.item_id_text[3]
            event = pb.UserEvent(user_id=victim, item_id=item)
            stub.TrackEvents(
                pb.TrackEventsRequest(model=pb.ModelRef(name=name), events=[event]), metadata=auth, timeout=30
            )
            load.start()
            reply = stub.ForgetUser(pb.ForgetUserRequest(model=name, user_id=victim), metadata=auth, timeout=120)
            assert reply.version == int(model.path.name) + 1 and reply.events_removed
            answer = stub.Recommend(
                pb.RecommendRequest(model=pb.ModelRef(name=name), user_id=victim, k=5), metadata=auth, timeout=30
            )
            assert answer.model_version == reply.version and answer.source == pb.SOURCE_POPULARITY
    finally:
        stop.set()
        load.join(60)
        srv.stop()
    assert failures == []


def _load(address: str, name: str, users: list[str], stop: threading.Event, failures: list[str]) -> None:
    """64 concurrent callers of Recommend until ``stop``; every failure's status is kept."""

    async def caller(stub: pb_grpc.RecommenderServiceStub, user: str) -> None:
        while not stop.is_set():
            try:
                await stub.Recommend(
                    pb.RecommendRequest(model=pb.ModelRef(name=name), user_id=user, k=5),
                    metadata=(("authorization", f"Bearer {TOKEN}"),),
                    timeout=30,
                )
            except grpc.aio.AioRpcError as exc:
                failures.append(exc.code().name)

    async def main() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            await asyncio.gather(*(caller(stub, u) for u in users[:64]))

    asyncio.run(main())


def test_cli_forget(repo: Path) -> None:
    import subprocess
    import sys

    latest = LoadedModel(sorted((repo / "mlp").iterdir(), key=lambda p: int(p.name))[-1])
    user = next(str(u) for u in latest.user_ids[40:] if u is not None)  # one no other test forgot
    cmd = [sys.executable, "-m", "onnxrec", "forget", "--repository", str(repo)]
    ok = subprocess.run([*cmd, "--name", "mlp", "--user", user], check=False, capture_output=True, text=True)
    assert ok.returncode == 0 and "without user" in ok.stdout, ok.stderr
    bad = subprocess.run([*cmd, "--name", "nope", "--user", user], check=False, capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no model versions" in bad.stderr
