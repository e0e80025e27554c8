"""A two-tower or SASRec model trained with item text serves a brand-new item known by its text alone:
prepare (text embedded) -> train --item-text -> export --new-items -> a real server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onnxrec.cli import main
from onnxrec.exporter.export import ExportOptions, export
from onnxrec.trainer.checkpoint import load_checkpoint, model_from_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.text import embed_texts
from onnxrec.trainer.train import train
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess, start_server

pytestmark = pytest.mark.slow  # train, export and a server process

THEMES = {
    "Sci-Fi": ["Star", "Galaxy", "Rocket", "Alien", "Planet", "Orbit", "Nebula", "Astronaut"],
    "Romance": ["Love", "Heart", "Kiss", "Wedding", "Valentine", "Bride", "Sweetheart", "Honeymoon"],
    "Cooking": ["Kitchen", "Recipe", "Chef", "Bakery", "Dinner", "Soup", "Pasta", "Dessert"],
}
NEW_ITEMS = {
    "new-space": ("Rocket Planet Odyssey", "Sci-Fi"),
    "new-love": ("Wedding Kiss Story", "Romance"),
}


def _log(path: Path) -> Path:
    """Users who each like one theme; items titled from their theme's words."""
    rng = np.random.default_rng(7)
    items = []
    for genre, words in THEMES.items():
        for j in range(10):
            title = f"{words[j % 8]} {words[(3 * j + 1) % 8]} {j}"
            items.append((f"{genre[:3].lower()}{j}", title, genre))
    rows = ["user_id,item_id,timestamp,title,genres"]
    t = 0
    for u in range(90):
        genre = list(THEMES)[u % 3]
        mine = [it for it in items if it[2] == genre]
        others = [it for it in items if it[2] != genre]
        picks = [mine[i] for i in rng.choice(10, 8, replace=False)] + [others[i] for i in rng.choice(20, 1)]
        for item_id, title, g in picks:
            t += 1
            rows.append(f"u{u},{item_id},{t},{title},{g}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module", params=["twotower", "sasrec"])
def repo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("text-serving")
    data = root / "data"
    result = CliRunner().invoke(
        main,
        ["data", "prepare", str(_log(root / "log.csv")), "--out", str(data), "--negatives", "5",
         "--item-text-columns", "title,genres"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    options = {"epochs": 10, "batch_size": 32, "lr": 0.01, "dim": 16, "history_len": 8, "id_dropout": 0.5}
    if request.param == "sasrec":
        options["sequence_batch_size"] = 64  # 8 windows of 8 per step: 12 steps an epoch on 90 users
    run = train(
        TrainConfig(
            data=str(data),
            out=str(root / "run"),
            model=request.param,
            item_text=True,
            progress=False,
            seed=1,
            threads=1,
            patience=10,
            **options,
        )
    )
    new = root / "new.csv"
    new.write_text("item_id,title,genres\n" + "".join(f"{i},{t},{g}\n" for i, (t, g) in NEW_ITEMS.items()))
    repository = root / "repo"
    export(run, repository, "text", options=ExportOptions(k_max=40, max_batch=16, new_items=new))
    return run, repository


@pytest.fixture(scope="module")
def stub(repo: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.RecommenderServiceStub]:
    server: ServerProcess = start_server(repo[1], tmp_path_factory.mktemp("text-log") / "server.log")
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield pb_grpc.RecommenderServiceStub(channel)
    finally:
        server.stop()


def test_new_item_is_served_with_the_text_paths_score(
    repo: tuple[Path, Path], stub: pb_grpc.RecommenderServiceStub
) -> None:
    run, repository = repo
    manifest = json.loads((repository / "text" / "1" / "manifest.json").read_text())
    assert [e["item_id"] for e in manifest["new_items"]["items"]] == list(NEW_ITEMS)
    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt)
    users = [f"u{u}" for u in range(12)]
    user_idx = torch.tensor([ckpt_user for ckpt_user in _user_indices(repository, users)])
    texts = [f"{t}. genres: {g}" for t, g in NEW_ITEMS.values()]
    with torch.no_grad():
        u = model.user_vectors(user_idx, _inputs(model.history_len, repository, user_idx))
        v = model.text_item_vectors(torch.from_numpy(embed_texts(texts)))
        expected = (u @ v.T + manifest["new_items"]["bias"]).numpy()
    served = np.array(
        [
            [
                s.score
                for s in stub.Score(
                    pb.ScoreRequest(model=pb.ModelRef(name="text"), user_id=user, item_ids=list(NEW_ITEMS)), timeout=10
                ).items
            ]
            for user in users
        ]
    )
    scale = np.abs(expected).max()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-3 * scale)
    # what the text says matters: each theme's fans score the new item of their theme higher
    space_fans, love_fans = served[0::3], served[1::3]
    assert (space_fans[:, 0] - space_fans[:, 1]).mean() > 0.1 * scale
    assert (love_fans[:, 1] - love_fans[:, 0]).mean() > 0.1 * scale
    # and the new items are recommended like any other (nobody has seen them), in the order the text says
    top = stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name="text"), user_id="u0", k=32), timeout=10)
    ranked = [i.item_id for i in top.items]
    assert ranked.index("new-space") < ranked.index("new-love")
    similar = stub.SimilarItems(
        pb.SimilarItemsRequest(model=pb.ModelRef(name="text"), item_id="new-space", k=5), timeout=10
    )
    assert sum(i.item_id.startswith("sci") for i in similar.items) >= 3


def _user_indices(repository: Path, users: list[str]) -> list[int]:
    import pyarrow.parquet as pq

    ids = pq.read_table(repository / "text" / "1" / "users.parquet")["user_id"].to_pylist()
    return [ids.index(u) for u in users]


def _inputs(h: int, repository: Path, user_idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """The known users' last ``h`` items (newest first, -1 pads), as the exporter builds them."""
    seen = np.load(repository / "text" / "1" / "seen.npz")
    history = np.full((len(user_idx), h), -1, dtype=np.int64)
    for row, u in enumerate(user_idx.tolist()):
        items = seen["indices"][seen["indptr"][u] : seen["indptr"][u + 1]][::-1][:h]
        history[row, : len(items)] = items
    return {"history": torch.from_numpy(history)}
