"""Tracked events move a known user's next answer toward what they just watched (issue #18, ML-100K).

A sequential model (sasrec) trained on ML-100K, exported and served by a real ``onnxrec serve``: for
users spread over the catalog's users, the answer before (the tracked items excluded, so both answers
are over the same items) and after TrackEvents of the genre's three most popular items the user has
not seen. The events go first in the history the server feeds the model, and a model that reads the
order of a history weighs them most (the default two-tower, whose history is a recency-weighted mean
over up to 50 items, does not move toward Horror: BENCHMARKS.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from onnxrec.exporter.export import ExportOptions, export
from onnxrec.server.loaded_model import LoadedModel
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.train import train
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests import rpc
from tests.serverproc import ServerProcess, start_server

pytestmark = pytest.mark.slow

USERS = 20
EVENTS = 3


@pytest.fixture(scope="module")
def version(ml100k: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("genre")
    data = save_dataset(ml100k, root / "data")
    run = train(TrainConfig(data=str(data), out=str(root / "run"), model="sasrec", epochs=5, progress=False))
    return export(run, root / "repo", "seq", options=ExportOptions(k_max=10, index="exact"))


@pytest.fixture(scope="module")
def stub(version: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.RecommenderServiceStub]:
    server: ServerProcess = start_server(version.parents[1], tmp_path_factory.mktemp("genre-srv") / "server.log")
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield pb_grpc.RecommenderServiceStub(channel)
    finally:
        server.stop()


@pytest.mark.parametrize(("genre", "offset"), [("Horror", 0), ("Sci-Fi", 1), ("Musical", 2)])
def test_tracking_three_items_of_a_genre_ranks_more_of_that_genre(
    version: Path, stub: pb_grpc.RecommenderServiceStub, genre: str, offset: int
) -> None:
    items = pq.read_table(version / "items.parquet").to_pydict()
    item_ids = [str(i) for i in items["item_id"]]
    of_genre = {i for i, g in zip(item_ids, items["genres"], strict=True) if genre in (g or [])}
    by_popularity = [item_ids[j] for j in np.argsort(-np.asarray(items["popularity"]), kind="stable")]
    model = LoadedModel(version)
    users = np.linspace(offset, model.num_users - 1 - offset, USERS).astype(int)  # other users per genre
    before = after = more = fewer = 0
    for u in users:
        user = str(model.user_ids[u])
        seen = {model.item_id_text[i] for i in model.seen(int(u))}
        tracked = [i for i in by_popularity if i in of_genre and i not in seen][:EVENTS]
        first = rpc.recommend(stub, user, model="seq", exclude_item_ids=tracked)
        assert rpc.track(stub, user, tracked, model="seq").accepted == EVENTS
        then = rpc.recommend(stub, user, model="seq")
        assert then.source == pb.SOURCE_HISTORY and not set(rpc.ids(then)) & set(tracked)
        nb = sum(i in of_genre for i in rpc.ids(first))
        na = sum(i in of_genre for i in rpc.ids(then))
        before, after, more, fewer = before + nb, after + na, more + (na > nb), fewer + (na < nb)
    assert after > before and more > fewer, (genre, before, after, more, fewer)
