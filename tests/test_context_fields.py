"""A ranker that reads the interaction's context (issue #17): hour of day, day of week and the time since
the user's previous interaction, as fields. The encoding against the calendar, the FM's logit against a
brute-force sum over every pair with the context fields in, the fold-in path against the known-user path,
the training and evaluation times against the data, and pipeline versions (FM with retrieval fields,
DeepFM) whose served scores at a request's time are the PyTorch ranker's. Real onnxruntime sessions, a
real server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxrec.cli import main
from onnxrec.clients import RecommenderClient
from onnxrec.exporter.onnx_io import export_module
from onnxrec.exporter.spec import GraphSpec, TensorSpec
from onnxrec.server.loaded_model import LoadedModel
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.history import StageTimes, UserSequences, known_sequences
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.context import GAP_EDGES_S, context_inputs, context_values
from onnxrec.trainer.models.fm import FM
from onnxrec.trainer.pipeline_eval import position_inputs
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.scorer import user_inputs
from onnxrec.trainer.train import train
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import served
from tests.small_runs import export_pipelines, ranker_config, train_small_runs
from tests.test_rankers import _brute_force_fm, _inputs, _random_model

MONDAY = 1_704_067_200  # 2024-01-01 00:00:00 UTC, a Monday
C = 24  # candidates of the served pipelines


def _gap_value(request: int, last: int) -> int:
    """The gap field by a loop: 1 without a previous interaction, else 2 + the edges the gap reaches."""
    if last < 0:
        return 1
    gap = max(request - last, 0)
    return 2 + sum(1 for edge in GAP_EDGES_S if gap >= edge)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 4_102_444_800), st.integers(-1, 4_102_444_800))
def test_the_context_is_the_utc_calendar_and_the_gap_bucket(request: int, last: int) -> None:
    hour, weekday, gap = (int(v[0]) for v in context_values(torch.tensor([request]), torch.tensor([last])))
    when = dt.datetime.fromtimestamp(request, dt.UTC)
    assert (hour, weekday, gap) == (when.hour + 1, when.weekday() + 1, _gap_value(request, last))


def test_known_points_of_the_encoding() -> None:
    request = torch.tensor([MONDAY, MONDAY + 13 * 3600 + 59, MONDAY + 6 * 86_400, MONDAY, MONDAY, -1])
    last = torch.tensor([-1, MONDAY + 13 * 3600 + 29, MONDAY + 4 * 86_400, MONDAY + 60, MONDAY - 40 * 86_400, 5])
    hour, weekday, gap = (v.tolist() for v in context_values(request, last))
    assert hour == [1, 14, 1, 1, 1, 0]
    assert weekday == [1, 1, 7, 1, 1, 0]  # Monday, Monday, Sunday; an unknown request time: all 0
    assert gap == [1, 2, 7, 2, 9, 0]  # none; 30 s; two days; a later "previous" one counts as 0 s; 40 days


class _Encoding(torch.nn.Module):
    def forward(self, request_time: torch.Tensor, last_time: torch.Tensor) -> torch.Tensor:
        return torch.stack(context_values(request_time, last_time), dim=-1)


def test_the_exported_encoding_is_exact_at_every_boundary(tmp_path: Path) -> None:
    """onnxruntime's fields equal PyTorch's a second either side of hour, day and gap boundaries at
    today's unix times (a graph that divided whole unix times in float32 would be off by up to 128 s)."""
    spec = GraphSpec(
        "encoding",
        (TensorSpec("request_time", "int64", ("batch",)), TensorSpec("last_time", "int64", ("batch",))),
        (TensorSpec("fields", "int64", ("batch", 3)),),
    )
    example = (torch.tensor([MONDAY, MONDAY + 7]), torch.tensor([-1, MONDAY]))
    export_module(_Encoding(), spec, example, tmp_path / "encoding.onnx")
    session = ort.InferenceSession(str(tmp_path / "encoding.onnx"), providers=["CPUExecutionProvider"])
    hours = MONDAY + 3_600 * np.arange(-24 * 9, 24 * 9)
    request = (hours[:, None] + np.array([-1, 0, 1])).ravel()
    steps = np.array([0, *GAP_EDGES_S])
    gap = np.resize((steps[:, None] + np.array([-1, 0, 1])).ravel(), len(request))  # -1: a "later" previous one
    last = np.where(np.arange(len(request)) % 10 == 0, -1, request - gap)
    (got,) = session.run(None, {"request_time": request, "last_time": last})
    want = _Encoding()(torch.from_numpy(request), torch.from_numpy(last)).numpy()
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- the models' logits


def _context_model(name: str) -> Recommender:
    """``name`` reading the context, float64, every parameter random, random item features."""
    model = _random_model(name, lambda cfg: replace(cfg, context=True))
    assert model.reads_context
    return model


def _times(b: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    request = MONDAY + torch.randint(0, 30 * 86_400, (b,), generator=gen)
    last = request - torch.randint(0, 10 * 86_400, (b,), generator=gen)
    last[0], request[1] = -1, -1  # no previous interaction; an unknown request time
    return context_inputs(request, last)


def test_fm_with_context_equals_a_brute_force_sum_over_every_pair() -> None:
    """The context's three fields are three more user-side features of the FM: their weights, their
    pairs with each other, with the user's and with the item's features."""
    model = _context_model("fm")
    assert isinstance(model, FM)
    users, items, inputs = _inputs()
    times = _times(len(users))
    ctx = context_values(times["request_time"], times["last_time"])
    with torch.no_grad():
        expected = _brute_force_fm(model, users, items, inputs, ctx)
        got = model.score_candidates(users, items, inputs | times)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))


def test_the_linear_models_context_moves_a_users_scores_not_their_order() -> None:
    model = _context_model("linear")
    users, items, inputs = _inputs()
    times = _times(len(users))
    with torch.no_grad():
        plain = model.score_candidates(users, items, inputs)
        got = model.score_candidates(users, items, inputs | times)
    ctx = context_values(times["request_time"], times["last_time"])
    tables = list(model.user.feature_lin)[-3:]  # type: ignore[attr-defined]
    shift = sum(t.weight[c, 0] * (c > 0) for t, c in zip(tables, ctx, strict=True))
    torch.testing.assert_close(got - plain, shift.unsqueeze(-1).expand_as(got).detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["fm", "deepfm", "linear"])
def test_a_folded_in_user_reads_the_same_context(name: str) -> None:
    """Scores from a user's own id rows (the fold-in path) equal the known user's, side features unknown,
    at the same request times; and the context changes them."""
    model = _context_model(name)
    users, items, inputs = _inputs()
    times = _times(len(users))
    unknown = {k: torch.zeros_like(v) for k, v in inputs.items()}
    with torch.no_grad():
        rows = [t(users) for t in model.user_tables()]
        folded = model.score_with_user(rows, items, times)
        known = model.score_candidates(users, items, unknown | times)
        without = model.score_candidates(users, items, unknown)
    torch.testing.assert_close(folded, known, rtol=1e-10, atol=1e-10 * float(known.abs().max()))
    assert not torch.allclose(known, without)


# ---------------------------------------------------------------- the times training and evaluation read


def test_training_reads_each_interactions_time_and_the_one_before() -> None:
    seq = UserSequences(np.array([0, 3, 3, 5]), np.array([4, 2, 7, 1, 1]), np.array([10, 20, 35, 7, 9]))
    assert seq.times_before(np.array([0, 1, 2, 3, 4])).tolist() == [-1, 10, 20, -1, 7]
    assert seq.last_times(np.array([0, 1, 2])).tolist() == [35, -1, 9]


def test_evaluation_asks_at_the_held_out_interactions_time(synthetic: Dataset) -> None:
    times = StageTimes(synthetic)
    users = np.arange(0, synthetic.num_users, 11)
    for stage, part, known in (
        ("valid", synthetic.splits.valid, [synthetic.splits.train]),
        ("test", synthetic.splits.test, [synthetic.splits.train, synthetic.splits.valid]),
    ):
        seqs = known_sequences(synthetic, stage)
        request, last = times(users, stage, seqs)
        for row, u in enumerate(users):
            held = part.timestamp[part.user_idx == u]
            assert request[row] == (held.min() if len(held) else -1)
            before = np.concatenate([p.timestamp[p.user_idx == u] for p in known])
            assert last[row] == (before.max() if len(before) else -1)
        assert (last <= np.where(request < 0, np.inf, request)).all() and len(seqs.times) == len(seqs.items)


# ---------------------------------------------------------------- trained, exported, served


@pytest.fixture(scope="module")
def runs(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-tower retrieval run; an FM (retrieval fields, context), a DeepFM and a two-tower (context, no
    blend) trained on its top-C candidates."""
    root = tmp_path_factory.mktemp("context-runs")
    out = train_small_runs(synthetic, root, ("twotower",))
    cfg = ranker_config(root, out["twotower"], "fm", "fm", C, context_fields=True)
    deep = replace(cfg, out=str(root / "deepfm"), model="deepfm", layers=(16,), blend=False)
    tower = replace(deep, out=str(root / "tt"), model="twotower", history_len=8, layers=())
    return {**out, "fm": train(cfg), "deepfm": train(deep), "twotower-ranker": train(tower)}


@pytest.fixture(scope="module")
def repo(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    rankers = {"fm": runs["fm"], "deepfm": runs["deepfm"], "tt": runs["twotower-ranker"]}
    return export_pipelines(runs["twotower"], tmp_path_factory.mktemp("context-repo"), C, rankers)


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with served(repo, tmp_path_factory.mktemp("context-log") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


def _torch_scores(
    run: Path, ds: Dataset, user: int, items: np.ndarray, at: int, retrieval: np.ndarray | None
) -> np.ndarray:
    """The PyTorch ranker's logits of ``items`` for a known ``user`` asking at ``at`` (previous interaction:
    their last one in the data), with retrieval's scores and positions when it reads them."""
    model: Any = model_from_checkpoint(open_run(run)[0]).eval()
    cpu = torch.device("cpu")
    known = known_sequences(ds, "serve")
    history = known.recent(np.array([user]), model.history_len) if model.history_len else None
    inputs = user_inputs(
        model, ds, np.array([user]), history, cpu, (np.array([at]), known.last_times(np.array([user])))
    )
    if model.reads_retrieval and retrieval is not None:
        inputs |= position_inputs(retrieval[None], cpu)
    with torch.no_grad():
        return model.score_candidates(torch.tensor([user]), torch.from_numpy(items)[None], inputs)[0].numpy()


pipeline_slow = pytest.mark.slow


@pipeline_slow
def test_the_version_says_its_ranker_reads_the_context(stub, repo: Path) -> None:  # type: ignore[no-untyped-def]
    for name in ("fm", "deepfm", "tt"):
        model = LoadedModel(repo / name / "1")
        assert model.rank_inputs.context and model.manifest["stages"][-1]["context_fields"] is True
        for graph in ("rank", "rank_from_history"):
            names = [t["name"] for t in model.manifest["graphs"][graph]["inputs"]]
            at = names.index("items") + 1 + ("retrieval_scores" in names)  # after retrieval's scores, if read
            assert names[at : at + 2] == ["request_time", "last_time"]
        meta = stub.GetModelMetadata(pb.GetModelMetadataRequest(model=pb.ModelRef(name=name)), timeout=30)
        assert meta.context_fields
        shown = CliRunner().invoke(main, ["inspect", str(repo / name / "1")])
        assert shown.exit_code == 0 and "reads the interaction's context" in shown.output
    one = stub.GetModelMetadata(pb.GetModelMetadataRequest(model=pb.ModelRef(name="one")), timeout=30)
    assert not one.context_fields


@pipeline_slow
@pytest.mark.parametrize("name", ["fm", "deepfm", "tt"])
def test_score_is_the_pytorch_rankers_at_the_requests_time(  # type: ignore[no-untyped-def]
    stub, repo: Path, runs: dict[str, Path], synthetic: Dataset, name: str
) -> None:
    """Score on the pipeline at two request times: the PyTorch ranker's logits at each (the previous
    interaction: the user's last one in the data), and not the same at both."""
    one = LoadedModel(repo / "one" / "1")
    uid, idx = str(one.user_ids[7]), np.array([40, 0, 11, 5, 123], dtype=np.int64)
    items = [one.item_id_text[i] for i in idx]
    ref = pb.ModelRef(name=name)
    plain = stub.Score(pb.ScoreRequest(model=pb.ModelRef(name="one"), user_id=uid, item_ids=items), timeout=30)
    found = np.array([s.score for s in plain.items], dtype=np.float32)
    order = np.argsort(-found, kind="stable")
    answers = []
    for at in (MONDAY + 3 * 3600, MONDAY + 4 * 86_400 + 20 * 3600):
        reply = stub.Score(pb.ScoreRequest(model=ref, user_id=uid, item_ids=items, request_time=at), timeout=30)
        want = np.empty(len(items))
        run = runs["twotower-ranker" if name == "tt" else name]
        want[order] = _torch_scores(run, synthetic, one.user_index[uid], idx[order], at, found[order])
        got = np.array([s.score for s in reply.items])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))
        answers.append(got)
    assert not np.allclose(answers[0], answers[1], rtol=1e-6, atol=0.0)


@pipeline_slow
def test_batch_answers_equal_single_answers_at_each_entrys_time(stub, repo: Path) -> None:  # type: ignore[no-untyped-def]
    one = LoadedModel(repo / "one" / "1")
    for name in ("fm", "deepfm", "tt"):
        ref = pb.ModelRef(name=name)
        requests = [
            pb.RecommendRequest(model=ref, user_id=str(u), k=10, request_time=MONDAY + j * 7_919)
            for j, u in enumerate(one.user_ids[:8])
        ]
        history = [one.item_id_text[i] for i in (4, 9, 17)]
        requests.append(pb.RecommendRequest(model=ref, user_id="new", k=10, history=history, request_time=MONDAY))
        batch = stub.RecommendBatch(pb.RecommendBatchRequest(requests=requests), timeout=30)
        for request, got in zip(requests, batch.responses, strict=True):
            single = stub.Recommend(request, timeout=30)
            assert [i.item_id for i in got.items] == [i.item_id for i in single.items]
            np.testing.assert_allclose([i.score for i in got.items], [i.score for i in single.items], rtol=1e-5)
        assert list(batch.responses[-1].stages) == ["retrieve", "rank"]


@pipeline_slow
def test_a_tracked_event_is_the_users_previous_interaction(stub, repo: Path) -> None:  # type: ignore[no-untyped-def]
    """Two new users with the same tracked items: the same answer when the events' times are the same, and
    not when one's are a month older (the gap field)."""
    one = LoadedModel(repo / "one" / "1")
    at = MONDAY + 10 * 86_400
    items = [one.item_id_text[i] for i in (4, 9, 17)]
    answers = {}
    for user, ago_s in (("recent-a", 30), ("recent-b", 30), ("month-old", 31 * 86_400)):
        events = [pb.UserEvent(user_id=user, item_id=i, timestamp_ms=(at - ago_s) * 1000) for i in items]
        stub.TrackEvents(pb.TrackEventsRequest(model=pb.ModelRef(name="deepfm"), events=events), timeout=30)
        reply = stub.Recommend(
            pb.RecommendRequest(model=pb.ModelRef(name="deepfm"), user_id=user, k=10, request_time=at), timeout=30
        )
        assert list(reply.stages) == ["events", "retrieve", "rank"]
        answers[user] = np.array([i.score for i in reply.items])
    np.testing.assert_allclose(answers["recent-a"], answers["recent-b"], rtol=1e-6)
    assert not np.allclose(answers["recent-a"], answers["month-old"], rtol=1e-6, atol=0.0)


@pipeline_slow
def test_the_client_and_cli_pass_the_request_time(server, stub, repo: Path) -> None:  # type: ignore[no-untyped-def]
    one = LoadedModel(repo / "one" / "1")
    uid, items, at = str(one.user_ids[3]), [one.item_id_text[i] for i in (2, 8, 30)], MONDAY + 5 * 3600
    want = stub.Score(pb.ScoreRequest(model=pb.ModelRef(name="deepfm"), user_id=uid, item_ids=items, request_time=at))
    with RecommenderClient(server.address, timeout=30) as client:
        assert client.model_metadata("deepfm").context_fields
        got = client.score("deepfm", uid, items, request_time=at)
        assert [s.score for s in got.items] == [s.score for s in want.items]
    args = ["score", "--server", server.address, "--model", "deepfm", "--user", uid, "--items", ",".join(items)]
    shown = CliRunner().invoke(main, [*args, "--request-time", str(at), "--json"])
    assert shown.exit_code == 0, shown.output
    assert [s["score"] for s in json.loads(shown.output)["items"]] == [s.score for s in want.items]


@pipeline_slow
def test_a_bad_request_time_is_refused_with_what_to_send(stub, repo: Path) -> None:  # type: ignore[no-untyped-def]
    one = LoadedModel(repo / "one" / "1")
    uid = str(one.user_ids[0])
    for at, hint in ((-5, "unix seconds"), (1_704_067_200_000, "milliseconds")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name="fm"), user_id=uid, k=5, request_time=at))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and hint in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(pb.ScoreRequest(model=pb.ModelRef(name="fm"), user_id=uid, item_ids=["1"], request_time=at))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name="fm"), user_id=uid, k=5)).items) == 5


def test_only_a_pipelines_field_ranker_reads_the_context(runs: dict[str, Path], tmp_path: Path) -> None:
    data = str(Path(runs["twotower"]).parent / "data")
    for extra, problem in (
        (["--model", "mf", "--candidates-from", str(runs["twotower"])], "mf reads no context"),
        (["--model", "fm"], "--candidates-from"),
    ):
        args = ["train", "--data", data, "--out", str(tmp_path / "x"), "--epochs", "1", "--context-fields", *extra]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "--context-fields" in lines[0] and problem in lines[0], result.output
        assert not (tmp_path / "x").exists()
