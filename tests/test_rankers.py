"""The ranker models (linear, FM, DeepFM): their logits against sums computed by hand from their own
parameters, FM's factorized form against its pairwise scores, and each trained through ``train`` and
exported with ONNX parity."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from onnxrec.exporter.export import ExportOptions, export
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, build_dataset, save_dataset
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.split import SplitSpec
from onnxrec.trainer.data.synth import generate_synthetic
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.config import FeatureInput, ModelOptions
from onnxrec.trainer.models.fields import FieldSide
from onnxrec.trainer.models.fm import FM, DeepFM
from onnxrec.trainer.models.linear import Linear
from onnxrec.trainer.models.registry import MODEL_TYPES, build_model
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.train import train

RANKERS = ("linear", "fm", "deepfm")
OPTIONS = ModelOptions(
    num_users=9,
    num_items=13,
    dim=5,
    layers=(7, 4),
    user_features=(FeatureInput("age", 6), FeatureInput("tags", 5, width=3)),
    item_features=(FeatureInput("genres", 8, width=4), FeatureInput("year", 7)),
)
B, N = 6, 5  # users and candidates per user in the hand-computed checks


def _random_model(name: str, configure: Callable[[Any], Any] | None = None) -> Recommender:
    """``name`` built from :data:`OPTIONS` through the registry (its config changed by ``configure``), in
    float64, every parameter random (the linear weights and the feature tables' unknown rows too, so the
    checks see them or their absence), with random item features (multi-hot rows with padding)."""
    torch.manual_seed(0)
    cfg = MODEL_TYPES[name].config.from_options(OPTIONS)
    model = build_model(name, (configure(cfg) if configure else cfg).to_dict()).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.5)
    genres = torch.randint(0, 8, (OPTIONS.num_items, 4))
    genres[::3, 1:] = 0  # one genre or none
    model.set_item_features({"genres": genres, "year": torch.randint(0, 7, (OPTIONS.num_items,))})
    return model.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Users [B], candidate items [B, N] and the users' features (unknown values and empty rows too)."""
    gen = torch.Generator().manual_seed(1)
    users = torch.randint(0, OPTIONS.num_users, (B,), generator=gen)
    items = torch.randint(0, OPTIONS.num_items, (B, N), generator=gen)
    tags = torch.randint(0, 5, (B, 3), generator=gen)
    tags[0] = 0
    return users, items, {"user_age": torch.randint(0, 6, (B,), generator=gen), "user_tags": tags}


def _active(side: FieldSide, idx: int, values: list[torch.Tensor]) -> list[tuple[nn.Embedding, int, float]]:
    """One side's non-zero entries of the feature vector x: (table, row, x) per active value; the id
    is 1, a categorical feature's known value 1, each of a multi-hot feature's n known values 1/n."""
    out: list[tuple[nn.Embedding, int, float]] = [(side.id_lin, idx, 1.0)]
    for j, v in enumerate(values):
        known = [int(x) for x in np.atleast_1d(v.numpy()) if x > 0]
        out += [(side.feature_lin[j], x, 1.0 / len(known)) for x in known]  # type: ignore[misc]
    return out


def _emb(side: FieldSide, lin: nn.Embedding) -> nn.Embedding:
    """The embedding table of the field whose linear table is ``lin``."""
    if lin is side.id_lin:
        assert side.id_emb is not None
        return side.id_emb
    return side.feature_emb[list(side.feature_lin).index(lin)]  # type: ignore[return-value]


def _features(model: Recommender, users: torch.Tensor, items: torch.Tensor, inputs: dict[str, Any], b: int, n: int):  # type: ignore[no-untyped-def]
    user_values = [inputs[f"user_{f.name}"][b] for f in model.cfg.user_features]  # type: ignore[attr-defined]
    item_values = [r[int(items[b, n])] for r in model.item_feature_rows(torch.arange(model.num_items))]
    return user_values, item_values


def _brute_force_fm(
    model: FM | DeepFM,
    users: torch.Tensor,
    items: torch.Tensor,
    inputs: dict[str, Any],
    more_user_values: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """b + sum_j w_j x_j + sum_{i<j} <v_i, v_j> x_i x_j, by a double loop over every pair of the active
    features of each (user, item) example; ``more_user_values`` ([B] each) are user-side fields after the
    user features (the context's)."""
    sides = model.fields.user, model.fields.item
    out = torch.zeros(items.shape, dtype=torch.float64)
    for b in range(items.shape[0]):
        for n in range(items.shape[1]):
            user_values, item_values = _features(model, users, items, inputs, b, n)
            user_values += [v[b] for v in more_user_values or []]
            active = [(sides[0], *a) for a in _active(sides[0], int(users[b]), user_values)]
            active += [(sides[1], *a) for a in _active(sides[1], int(items[b, n]), item_values)]
            total = model.fields.bias[0] + sum(lin.weight[row, 0] * x for _, lin, row, x in active)
            for i in range(len(active)):
                for j in range(i + 1, len(active)):
                    (si, li, ri, xi), (sj, lj, rj, xj) = active[i], active[j]
                    total = total + (_emb(si, li).weight[ri] @ _emb(sj, lj).weight[rj]) * xi * xj
            out[b, n] = total
    return out


def test_fm_logit_equals_a_brute_force_sum_over_every_pair_of_features() -> None:
    model = _random_model("fm")
    assert isinstance(model, FM)
    users, items, inputs = _inputs()
    with torch.no_grad():
        expected = _brute_force_fm(model, users, items, inputs)
        got = model.score_candidates(users, items, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))


def test_linear_logit_equals_w_dot_x_plus_b_computed_by_hand() -> None:
    model = _random_model("linear")
    assert isinstance(model, Linear)
    users, items, inputs = _inputs()
    expected = torch.zeros(items.shape, dtype=torch.float64)
    model.requires_grad_(False)
    for b in range(B):
        for n in range(N):
            user_values, item_values = _features(model, users, items, inputs, b, n)
            active = _active(model.user, int(users[b]), user_values)
            active += _active(model.item, int(items[b, n]), item_values)
            expected[b, n] = model.bias[0] + sum(lin.weight[row, 0] * x for lin, row, x in active)
    with torch.no_grad():
        got = model.score_candidates(users, items, inputs)
        every = model.score_all(users, inputs)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * scale)
    torch.testing.assert_close(torch.sigmoid(got), 1 / (1 + torch.exp(-expected)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.gather(every, 1, items), expected, rtol=1e-12, atol=1e-12 * scale)


@pytest.mark.parametrize("name", ["fm", "linear"])
def test_the_factorized_form_is_the_logit_itself(name: str) -> None:
    """user_vectors @ item_vectors.T + item_bias is the model's logit exactly (no per-user constant
    dropped: a ranker's scores are compared by value), for candidates and for the catalog; folded-in
    id rows give the logit of that user with unknown side features."""
    model = _random_model(name)
    users, items, inputs = _inputs()
    with torch.no_grad():
        factorized = model.user_vectors(users, inputs) @ model.item_vectors().T + model.item_bias()
        pairs = model.score_candidates(users, items, inputs)
        scale = float(factorized.abs().max())
        torch.testing.assert_close(torch.gather(factorized, 1, items), pairs, rtol=1e-12, atol=1e-12 * scale)
        torch.testing.assert_close(model.score_all(users, inputs), factorized, rtol=1e-12, atol=1e-12 * scale)
        rows = [t(users) for t in model.user_tables()]
        unknown = {k: torch.zeros_like(v) for k, v in inputs.items()}
        folded = model.fold_in_user_vectors(rows) @ model.item_vectors().T + model.item_bias()
        torch.testing.assert_close(folded, model.score_all(users, unknown), rtol=1e-12, atol=1e-12 * scale)
        torch.testing.assert_close(model.score_with_user(rows, items), torch.gather(folded, 1, items))


def test_deepfm_is_its_fm_part_plus_an_mlp_over_the_concatenated_field_embeddings() -> None:
    """DeepFM's logit is the FM logit of its (shared) fields plus its MLP on [user fields, item fields]
    concatenated, as the paper writes it: the split first layer changes nothing."""
    deep = _random_model("deepfm")
    fm = _random_model("fm")
    assert isinstance(deep, DeepFM) and isinstance(fm, FM)
    fm.load_state_dict({k: v for k, v in deep.state_dict().items() if not k.startswith("deep.")})
    users, items, inputs = _inputs()
    with torch.no_grad():
        u_fields, _ = deep.fields.user_terms(deep.fields.user.id_rows(users), deep.fields.user_values(users, inputs))
        i_fields, _ = deep.fields.item_terms(items, deep.item_feature_rows(items))
        concat = torch.cat([u_fields.flatten(-2).unsqueeze(1).expand(-1, N, -1), i_fields.flatten(-2)], dim=-1)
        expected = fm.score_candidates(users, items, inputs) + deep.deep(concat).squeeze(-1)
        got = deep.score_candidates(users, items, inputs)
        every = deep.score_all(users, inputs)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * scale)
    torch.testing.assert_close(torch.gather(every, 1, items), expected, rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("name", ["fm", "deepfm"])
def test_training_scores_each_distinct_candidate_once_and_the_same(name: str) -> None:
    """In training the item side is computed once per distinct candidate item (repeats are common);
    the scores are those of evaluation, where every candidate is computed."""
    model = _random_model(name)
    users, items, inputs = _inputs()
    items[:, 2:] = items[:, :1]  # repeats within and across rows
    with torch.no_grad():
        scored = model.score_candidates(users, items, inputs)
        trained = model.train().score_candidates(users, items, inputs)
    torch.testing.assert_close(trained, scored, rtol=1e-12, atol=1e-12 * float(scored.abs().max()))


def test_an_unknown_feature_value_weighs_nothing() -> None:
    """Value 0 of a side feature is "unknown": whatever its rows hold, a user whose features are all
    unknown is scored on its id (and the item's fields) alone."""
    model = _random_model("deepfm")
    assert isinstance(model, DeepFM)
    users, items, inputs = _inputs()
    unknown = {k: torch.zeros_like(v) for k, v in inputs.items()}
    with torch.no_grad():
        before = model.score_candidates(users, items, unknown)
        for t in [*model.fields.user.feature_lin, *model.fields.user.feature_emb]:
            t.weight[0] += 1.0  # type: ignore[operator]
        after = model.score_candidates(users, items, unknown)
        folded = model.score_with_user([t(users) for t in model.user_tables()], items)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(folded, before, rtol=0, atol=0)


# --------------------------------------------------------------------------- trained and exported


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset with user and item side features (a multi-hot genre among them)."""
    log = generate_synthetic(num_users=120, num_items=80, interactions_per_user=15, seed=3)
    ds: Dataset = build_dataset(log, PreprocessSpec(), SplitSpec(num_negatives=30), "tiny")
    assert ds.feature_spec.user and any(f.width > 1 for f in ds.feature_spec.item)
    return save_dataset(ds, tmp_path_factory.mktemp("rankers") / "data")


@pytest.mark.slow
@pytest.mark.parametrize("name", RANKERS)
def test_a_ranker_trains_and_exports_with_onnx_parity(name: str, tiny_data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        data=str(tiny_data), out=str(tmp_path / "run"), model=name, epochs=1, dim=8, layers=(16,), progress=False
    )
    run = train(cfg)
    summary = json.loads((run / "eval.json").read_text())
    assert summary["model_type"] == name and summary["loss"] == "bce"
    version = export(run, tmp_path / "repo", name, options=ExportOptions(k_max=10, max_batch=16))
    manifest = json.loads((version / "manifest.json").read_text())
    parity = manifest["parity"]["graphs"]
    exact = {"recommend", "recommend_from_history", "score", "similar_items"}
    explains = {"explain", "explain_from_history"}  # FM's exact fold-in shares explain it (issue #18)
    assert set(parity) == (exact | explains if name == "fm" else exact)
    for graph, p in parity.items():
        assert p["rows"] > 0 and p["max_rel_diff"] <= p["rtol"], graph
    # the history graph takes the user features its spec names (the fold-in scores them as unknown)
    inputs = [t["name"] for t in manifest["graphs"]["recommend_from_history"]["inputs"]]
    assert {"user_age_group", "user_segment"} <= set(inputs)
    # onnxruntime's scores of (user, candidates) are the trained model's, with the users' features
    ckpt, ds = open_run(run)
    model = model_from_checkpoint(ckpt)
    users = np.arange(20)
    items = np.random.default_rng(0).integers(0, ds.num_items, (20, 15))
    session = ort.InferenceSession(str(version / "score.onnx"), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"user_idx": users, "items": items})
    features = {f"user_{k}": torch.from_numpy(v[users]) for k, v in ds.user_features.items()}
    with torch.no_grad():
        expected = model.score_candidates(torch.from_numpy(users), torch.from_numpy(items), features).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
