"""A ranker that reads the retrieval stage's score and rank of each candidate (issue #17): the FM's and
the linear model's logits against sums computed by hand, the training-time values against the retrieval
model's own scores and candidate order, and a pipeline version whose served answers are the PyTorch
pipeline's (Recommend, RecommendBatch, Score). A ranker without those fields is blended with
retrieval's score at the weight validation chose (trainer/blend.py), in PyTorch and served alike. Real
onnxruntime sessions, a real server on 127.0.0.1."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onnxrec.cli import main
from onnxrec.errors import ExportError, TrainingError
from onnxrec.exporter.export import ExportOptions, export
from onnxrec.server.loaded_model import LoadedModel
from onnxrec.trainer.blend import Blend, fit_blend
from onnxrec.trainer.candidates import load_pool
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.evaluate import evaluate
from onnxrec.trainer.models.fields import RetrievalFields, RetrievalFieldsConfig
from onnxrec.trainer.models.fm import FM
from onnxrec.trainer.models.linear import Linear
from onnxrec.trainer.pipeline_eval import PipelineScorer, position_inputs
from onnxrec.trainer.retrieval_features import RetrievalFeatures
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.scorer import ModelScorer, user_inputs
from onnxrec.trainer.train import train
from onnxrec.v1 import recommender_pb2 as pb
from onnxrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.serverproc import served
from tests.small_runs import export_pipelines, ranker_config, train_small_runs
from tests.test_rankers import _active, _brute_force_fm, _emb, _features, _inputs, _random_model

FIELDS = RetrievalFieldsConfig(candidates=8, score_shift=0.3, score_scale=1.7)
C = 24  # candidates of the served pipeline (of the synthetic catalog's 200 items)


def _model_with_fields(name: str) -> FM | Linear:
    """``name`` from the rankers' test options, reading retrieval fields, float64, every parameter random."""
    model = _random_model(name, lambda cfg: cfg.with_retrieval(FIELDS))
    assert isinstance(model, FM | Linear) and model.reads_retrieval
    return model


def _retrieval(shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    ranks = torch.randint(0, 3 * FIELDS.candidates, shape, generator=gen)
    ranks[0, :3] = torch.tensor([0, FIELDS.candidates - 1, FIELDS.candidates])
    return scores, ranks


def _bucket(rank: int) -> int:
    """floor(log2(rank + 1)) below the candidate count, the last bucket from it: by a loop."""
    if rank >= FIELDS.candidates:
        return FIELDS.num_buckets - 1
    b = 0
    while 2 ** (b + 1) <= rank + 1:
        b += 1
    return b


def test_rank_buckets_are_log_spaced_with_one_for_beyond_the_candidates() -> None:
    fields = RetrievalFields(FIELDS, 4)
    ranks = torch.arange(0, 40)
    assert fields.buckets(ranks).tolist() == [_bucket(r) for r in range(40)]
    assert FIELDS.num_buckets == 5 and fields.buckets(torch.tensor([7, 8])).tolist() == [3, 4]


def test_fm_with_retrieval_fields_equals_a_brute_force_sum_over_every_pair() -> None:
    """The two new fields (score: x = standardised score; rank: its bucket, one-hot) are two more
    features of the FM: their weights, their pair, and their pairs with every user and item feature."""
    model = _model_with_fields("fm")
    assert isinstance(model, FM)
    users, items, inputs = _inputs()
    scores, ranks = _retrieval(tuple(items.shape))  # type: ignore[arg-type]
    rf = model.fields.retrieval
    assert rf is not None and rf.score_emb is not None and rf.rank_emb is not None
    with torch.no_grad():
        expected = _brute_force_fm(model, users, items, inputs)
        sides = model.fields.user, model.fields.item
        for b in range(items.shape[0]):
            for n in range(items.shape[1]):
                x = (float(scores[b, n]) - FIELDS.score_shift) / FIELDS.score_scale
                bucket = _bucket(int(ranks[b, n]))
                v_s, v_r = rf.score_emb, rf.rank_emb.weight[bucket]
                total = rf.score_lin[0] * x + rf.rank_lin.weight[bucket, 0] + x * (v_s @ v_r)
                user_values, item_values = _features(model, users, items, inputs, b, n)
                active = [(sides[0], *a) for a in _active(sides[0], int(users[b]), user_values)]
                active += [(sides[1], *a) for a in _active(sides[1], int(items[b, n]), item_values)]
                for side, lin, row, xf in active:
                    v_f = _emb(side, lin).weight[row]
                    total = total + x * xf * (v_s @ v_f) + xf * (v_r @ v_f)
                expected[b, n] += total
        got = model.score_candidates(users, items, {**inputs, "retrieval_score": scores, "retrieval_rank": ranks})
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))


def test_linear_with_retrieval_fields_adds_their_two_weights() -> None:
    model = _model_with_fields("linear")
    assert isinstance(model, Linear) and model.retrieval is not None
    users, items, inputs = _inputs()
    scores, ranks = _retrieval(tuple(items.shape))  # type: ignore[arg-type]
    with torch.no_grad():
        plain = super(Linear, model).score_candidates(users, items, inputs)
        got = model.score_candidates(users, items, {**inputs, "retrieval_score": scores, "retrieval_rank": ranks})
        for b in range(items.shape[0]):
            for n in range(items.shape[1]):
                x = (float(scores[b, n]) - FIELDS.score_shift) / FIELDS.score_scale
                w = model.retrieval.score_lin[0] * x + model.retrieval.rank_lin.weight[_bucket(int(ranks[b, n])), 0]
                assert math.isclose(float(got[b, n]), float(plain[b, n] + w), rel_tol=1e-12, abs_tol=1e-12)


def test_a_model_reading_retrieval_fields_refuses_to_score_without_them() -> None:
    model = _model_with_fields("fm")
    users, items, inputs = _inputs()
    with pytest.raises(ValueError, match="reads retrieval's score and rank"):
        model.score_candidates(users, items, inputs)
    with pytest.raises(ValueError, match="not a catalog"):
        model.score_all(users, inputs)


def test_a_rank_is_the_position_among_the_candidates_or_beyond_them() -> None:
    """User 0 has 3 candidates (of 5 a pipeline passes), user 1 none: a candidate's rank is its position,
    a score between two candidates ranks where it would stand, one below all is beyond (5)."""
    features = RetrievalFeatures(
        user_vectors=np.array([[1.0], [1.0]], dtype=np.float32),
        item_vectors=np.array([[3.0], [2.0], [1.0], [2.5], [0.5]], dtype=np.float32),
        item_bias=np.zeros(5, dtype=np.float32),
        indptr=np.array([0, 3, 3]),
        candidate_scores=np.array([3.0, 2.0, 1.0], dtype=np.float32),
        candidates=5,
    )
    scores, ranks = features.inputs(np.array([0, 1]), np.array([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]))
    np.testing.assert_array_equal(scores[0], [3.0, 2.0, 1.0, 2.5, 0.5])
    assert ranks.tolist() == [[0, 1, 2, 1, 5], [5, 5, 5, 5, 5]]


# ---------------------------------------------------------------- trained on real candidates, then served


@pytest.fixture(scope="module")
def runs(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-tower retrieval run, an MF run (another retrieval model) and an FM trained on the
    two-tower's top-C candidates (retrieval fields by default)."""
    root = tmp_path_factory.mktemp("fields-runs")
    out = train_small_runs(synthetic, root, ("twotower", "mf"))
    cfg = ranker_config(root, out["twotower"], "fm", "fm", C)
    mlp = replace(cfg, out=str(root / "mlp"), model="mlp", layers=(16,))
    return {
        **out,
        "fm": train(cfg),
        "mlp": train(mlp),
        "mlp-plain": train(replace(mlp, out=str(root / "p"), blend=False)),
    }


def test_training_values_are_retrievals_scores_and_candidate_positions(
    runs: dict[str, Path], synthetic: Dataset
) -> None:
    pool = load_pool(runs["twotower"], synthetic, C)
    assert pool.features is not None
    scorer = ModelScorer(model_from_checkpoint(open_run(runs["twotower"])[0]), synthetic)
    users = np.arange(0, synthetic.num_users, 7)
    full = scorer(users, "valid")
    for row, u in enumerate(users):
        cands = pool.of(int(u))
        scores, ranks = pool.features.inputs(np.array([u]), cands[None])
        assert ranks[0].tolist() == list(range(len(cands)))  # a candidate's rank is its position
        want = full[row, cands]
        np.testing.assert_allclose(scores[0], want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
        # an item retrieval ranks below every candidate: "beyond the candidates"
        worst = int(np.argmin(full[row]))
        assert pool.features.inputs(np.array([u]), np.array([[worst]]))[1][0, 0] == C
    cfg = pool.features.fields_config()
    assert cfg.candidates == C and cfg.score_scale > 0


def test_such_a_ranker_has_no_standalone_use(runs: dict[str, Path], synthetic: Dataset, tmp_path: Path) -> None:
    ckpt, _ = open_run(runs["fm"])
    assert ckpt["model_config"]["retrieval"]["candidates"] == C
    with pytest.raises(TrainingError, match="evaluate it behind its retrieval run"):
        ModelScorer(model_from_checkpoint(ckpt), synthetic)(np.arange(3), "valid")
    with pytest.raises(ExportError, match="export it behind the retrieval run it was trained on"):
        export(runs["fm"], tmp_path, "alone")
    with pytest.raises(ExportError, match="trained on the candidates of"):
        export(runs["mf"], tmp_path, "other", options=ExportOptions(ranker=runs["fm"], candidates=C))
    assert not (tmp_path / "alone").exists() and not (tmp_path / "other").exists()


@pytest.fixture(scope="module")
def repo(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    rankers = {"pipe": runs["fm"], "blend": runs["mlp"]}
    return export_pipelines(runs["twotower"], tmp_path_factory.mktemp("fields-repo"), C, rankers)


@pytest.fixture(scope="module")
def stub(repo: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with (
        served(repo, tmp_path_factory.mktemp("fields-log") / "server.log") as srv,
        grpc.insecure_channel(srv.address) as channel,
    ):
        yield pb_grpc.RecommenderServiceStub(channel)


def _fm(runs: dict[str, Path]) -> Any:
    return model_from_checkpoint(open_run(runs["fm"])[0]).eval()


def _ranked(fm: Any, ds: Dataset, user: int, items: np.ndarray, retrieval_scores: np.ndarray) -> np.ndarray:
    """The PyTorch ranker's logits of ``items`` (retrieval's order) with retrieval's scores and positions."""
    cpu = torch.device("cpu")
    with torch.no_grad():
        inputs = user_inputs(fm, ds, np.array([user]), None, cpu) | position_inputs(retrieval_scores[None], cpu)
        return fm.score_candidates(torch.tensor([user]), torch.from_numpy(items)[None], inputs)[0].numpy()


pipeline_slow = pytest.mark.slow


@pipeline_slow
def test_the_manifest_says_the_ranker_reads_retrieval(repo: Path) -> None:
    model = LoadedModel(repo / "pipe" / "1")
    assert model.rank_inputs.retrieval and not model.rank_inputs.context
    assert model.manifest["stages"][-1]["retrieval_fields"] is True
    for graph in ("rank", "rank_from_history"):
        names = [t["name"] for t in model.manifest["graphs"][graph]["inputs"]]
        assert names[2] == "retrieval_scores"
    shown = CliRunner().invoke(main, ["inspect", str(repo / "pipe" / "1")])
    assert shown.exit_code == 0 and "reads retrieval's score and rank of each candidate" in shown.output
    shown = CliRunner().invoke(main, ["inspect", str(repo / "blend" / "1")])
    assert shown.exit_code == 0 and "blended with retrieval's score at weight" in shown.output


@pipeline_slow
def test_recommend_is_the_pytorch_pipelines_answer(stub, repo: Path, runs: dict[str, Path], synthetic: Dataset) -> None:  # type: ignore[no-untyped-def]
    """Known users: the one-stage top-C with their scores, ranked by the FM in PyTorch with those scores
    and positions: the served pipeline's top 10, items and scores."""
    one, fm = LoadedModel(repo / "one" / "1"), _fm(runs)
    for user in one.user_ids[:15]:
        uid = str(user)
        reply = stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name="pipe"), user_id=uid, k=10), timeout=30)
        base = stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name="one"), user_id=uid, k=C), timeout=30)
        cands = np.array([one.item_index[i.item_id] for i in base.items], dtype=np.int64)
        want = _ranked(
            fm, synthetic, one.user_index[uid], cands, np.array([i.score for i in base.items], dtype=np.float32)
        )
        order = np.argsort(-want, kind="stable")[:10]
        assert [i.item_id for i in reply.items] == [one.item_id_text[i] for i in cands[order]]
        got = np.array([s.score for s in reply.items])
        np.testing.assert_allclose(got, want[order], rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pipeline_slow
def test_batch_answers_equal_single_answers(stub, repo: Path) -> None:  # type: ignore[no-untyped-def]
    one = LoadedModel(repo / "one" / "1")
    ref = pb.ModelRef(name="pipe")
    requests = [pb.RecommendRequest(model=ref, user_id=str(u), k=10) for u in one.user_ids[:10]]
    history = [one.item_id_text[i] for i in (4, 9, 17)]
    requests.append(pb.RecommendRequest(model=ref, user_id="new-user", k=10, history=history))
    batch = stub.RecommendBatch(pb.RecommendBatchRequest(requests=requests), timeout=30)
    for request, got in zip(requests, batch.responses, strict=True):
        single = stub.Recommend(request, timeout=30)
        assert [i.item_id for i in got.items] == [i.item_id for i in single.items]
        np.testing.assert_allclose([i.score for i in got.items], [i.score for i in single.items], rtol=1e-5)
    assert list(batch.responses[-1].stages) == ["retrieve", "rank"] and len(batch.responses[-1].items) == 10


@pipeline_slow
def test_score_ranks_the_callers_items_in_retrievals_order(
    stub, repo: Path, runs: dict[str, Path], synthetic: Dataset
) -> None:  # type: ignore[no-untyped-def]
    """Score on the pipeline: the caller's items ordered by retrieval's score, ranked by the FM with
    those scores and positions, answered in the caller's order."""
    one, fm = LoadedModel(repo / "one" / "1"), _fm(runs)
    uid, items = str(one.user_ids[7]), [one.item_id_text[i] for i in (40, 0, 11, 5, 123)]
    reply = stub.Score(pb.ScoreRequest(model=pb.ModelRef(name="pipe"), user_id=uid, item_ids=items), timeout=30)
    plain = stub.Score(pb.ScoreRequest(model=pb.ModelRef(name="one"), user_id=uid, item_ids=items), timeout=30)
    found = np.array([s.score for s in plain.items], dtype=np.float32)
    idx = np.array([one.item_index[i] for i in items], dtype=np.int64)
    order = np.argsort(-found, kind="stable")
    want = np.empty(len(items))
    want[order] = _ranked(fm, synthetic, one.user_index[uid], idx[order], found[order])
    assert [s.item_id for s in reply.items] == items
    got = np.array([s.score for s in reply.items])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


# ---------------------------------------------------------------- a ranker blended with retrieval's score


def test_a_blend_is_its_weighted_standardised_scores() -> None:
    blend = Blend(0.3, 1.0, 2.0, -0.5, 4.0)
    r, k = np.array([3.0, -1.0]), np.array([0.5, 7.5])
    np.testing.assert_allclose(blend.apply(r, k), 0.3 * (r - 1.0) / 2.0 + 0.7 * (k + 0.5) / 4.0, rtol=1e-12)
    assert Blend.from_dict(blend.to_dict()) == blend and Blend.from_dict(None) is None


def test_fit_blend_keeps_the_best_weight_and_retrievals_order_on_a_tie() -> None:
    values = (np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 3.0]))
    best, table = fit_blend(values, lambda b: 1.0 - abs(b.weight - 0.3))
    assert best.weight == 0.3 and len(table) == 11 and table["0.3"] == 1.0
    assert (best.retrieval_shift, best.ranker_shift) == (2.0, 1.0)
    assert math.isclose(best.retrieval_scale, float(np.std([1.0, 2.0, 3.0])), rel_tol=1e-5)
    assert fit_blend(values, lambda b: 0.5)[0].weight == 1.0


def test_training_chooses_the_blend_on_validation(runs: dict[str, Path], synthetic: Dataset) -> None:
    """The run's weight is the grid's best on validation, its figures those of the blended pipeline; with
    --no-blend the run holds none."""
    ckpt, _ = open_run(runs["mlp"])
    summary = ckpt["metrics"]
    table = summary["blend"]["valid_full_ndcg@10_by_weight"]
    assert ckpt["blend"]["weight"] == max(float(w) for w, v in table.items() if v == max(table.values()))
    assert math.isclose(summary["valid"]["full"]["ndcg@10"], max(table.values()), rel_tol=1e-5, abs_tol=1e-6)
    retrieval = model_from_checkpoint(open_run(runs["twotower"])[0])
    scorer = PipelineScorer(retrieval, model_from_checkpoint(ckpt), synthetic, C, blend=Blend.from_dict(ckpt["blend"]))
    assert evaluate(scorer, synthetic, "test")["full"] == pytest.approx(summary["test"]["full"], rel=1e-5, abs=1e-6)
    assert "blend" not in open_run(runs["mlp-plain"])[0]


@pipeline_slow
def test_a_blended_pipeline_serves_the_pytorch_blend(
    stub, repo: Path, runs: dict[str, Path], synthetic: Dataset
) -> None:  # type: ignore[no-untyped-def]
    one = LoadedModel(repo / "one" / "1")
    ckpt, _ = open_run(runs["mlp"])
    mlp, blend = model_from_checkpoint(ckpt).eval(), Blend.from_dict(ckpt["blend"])
    assert blend is not None and LoadedModel(repo / "blend" / "1").rank_inputs.retrieval
    assert LoadedModel(repo / "blend" / "1").manifest["stages"][-1]["blend"] == ckpt["blend"]
    for user in one.user_ids[:10]:
        uid = str(user)
        reply = stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name="blend"), user_id=uid, k=10), timeout=30)
        base = stub.Recommend(pb.RecommendRequest(model=pb.ModelRef(name="one"), user_id=uid, k=C), timeout=30)
        cands = np.array([one.item_index[i.item_id] for i in base.items], dtype=np.int64)
        with torch.no_grad():
            u = one.user_index[uid]
            inputs = user_inputs(mlp, synthetic, np.array([u]), None, torch.device("cpu"))
            logits = mlp.score_candidates(torch.tensor([u]), torch.from_numpy(cands)[None], inputs)[0].numpy()
        want = blend.apply(np.array([i.score for i in base.items], dtype=np.float64), logits.astype(np.float64))
        order = np.argsort(-want, kind="stable")[:10]
        assert [i.item_id for i in reply.items] == [one.item_id_text[i] for i in cands[order]]
        got = np.array([s.score for s in reply.items])
        np.testing.assert_allclose(got, want[order], rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))
