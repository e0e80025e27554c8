"""The model contract: every model states what it can export, and the exporter reads only that.

A model type new to onnxrec, defined here (collaborative metric learning, a distance instead of a dot
product), is registered with one line, trained, exported and served through onnxruntime with the
scores of its PyTorch module: adding a model is one module and one registry entry.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.models.base import Recommender
from onnxrec.trainer.models.config import FeatureInput, ModelConfig, ModelOptions
from onnxrec.trainer.models.registry import MODEL_TYPES, ModelType, build_model, config_from_dict
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.train import train

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- a model new to onnxrec


@dataclass(frozen=True)
class CMLConfig(ModelConfig):
    """Sizes of a :class:`CML` model."""

    num_users: int
    num_items: int
    dim: int = 8

    @classmethod
    def from_options(cls, opts: ModelOptions) -> CMLConfig:
        return cls(opts.num_users, opts.num_items, opts.dim)


class CML(Recommender):
    """Collaborative metric learning (Hsieh et al., 2017): score(u, i) = -||p_u - q_i||^2. Not a dot
    product, so it exports through the user tables (known users, and fold-in from a history)."""

    cfg: CMLConfig

    def __init__(self, cfg: CMLConfig) -> None:
        super().__init__(cfg)
        self.user_emb = nn.Embedding(cfg.num_users, cfg.dim)
        self.item_emb = nn.Embedding(cfg.num_items, cfg.dim)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)

    def user_tables(self) -> list[nn.Embedding]:
        return [self.user_emb]

    def score_with_user(
        self, user_rows: list[torch.Tensor], items: torch.Tensor | None, inputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        (p,) = user_rows
        q = self.item_emb.weight.unsqueeze(0) if items is None else self.item_emb(items)  # [1 or B, N, d]
        return -((p.unsqueeze(1) - q) ** 2).sum(-1)

    def item_representation(self) -> torch.Tensor:
        return self.item_emb.weight


@pytest.fixture
def cml_registered() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(MODEL_TYPES, "cml", ModelType(CML, CMLConfig, default_loss="bpr"))  # the one registry line
        yield


# --------------------------------------------------------------------------- every model's contract

SMALL = ModelOptions(
    num_users=7,
    num_items=11,
    dim=4,
    feature_dim=2,
    layers=(8,),
    history_len=3,
    user_features=(FeatureInput("age", 5),),
    item_features=(FeatureInput("genre", 4, width=2),),
)


def _small_model(name: str) -> tuple[Recommender, dict[str, torch.Tensor]]:
    """``name`` built from :data:`SMALL` through its registry entry and the checkpoint's dict form,
    and the inputs of users 0..6 that its contract says it reads."""
    torch.manual_seed(0)
    config = MODEL_TYPES[name].config.from_options(SMALL)
    model = build_model(name, json.loads(json.dumps(config.to_dict())))
    assert model.cfg == config
    model.set_item_features({"genre": torch.randint(0, 4, (SMALL.num_items, 2))})
    inputs = {f"user_{n}": torch.randint(0, 5, (7,)) for n in model.user_feature_names}
    if model.history_len:
        inputs["history"] = torch.tensor([[3, 1, -1], [4, -1, -1], [-1, -1, -1], [0, 1, 2]] + [[5, 6, 7]] * 3)
    return model.eval(), inputs


#: The models that read the user and item side features (the rankers read no history).
READ_FEATURES = ("twotower", "linear", "fm", "deepfm")


@pytest.mark.parametrize("name", ["mf", "mlp", "neumf", "twotower", "linear", "fm", "deepfm", "sasrec", "cml"])
def test_every_model_states_what_it_exports_and_its_methods_agree(name: str, cml_registered: None) -> None:
    model, inputs = _small_model(name)
    users = torch.arange(7)
    with torch.no_grad():
        scores = model.score_all(users, inputs)
        assert scores.shape == (7, SMALL.num_items) and bool(torch.isfinite(scores).all())
        every_item = Recommender.all_items(7, SMALL.num_items, users.device)
        assert torch.allclose(model.score_candidates(users, every_item, inputs), scores, atol=1e-5)
        assert model.item_representation().shape[0] == model.num_items == SMALL.num_items
        if model.factorized:
            vectors = model.user_vectors(users, inputs) @ model.item_vectors().T + model.item_bias()
            assert torch.allclose(vectors, scores, atol=1e-5)
        if model.encodes_unknown_users:  # a user the model does not know still gets a vector
            unknown = model.user_vectors(torch.full((7,), -1), inputs)
            assert bool(torch.isfinite(unknown).all())
        else:  # fold-in: scores from explicit user-table rows, of a user whose side features are unknown (0)
            rows = [t(users) for t in model.user_tables()]
            unknown_features = {k: torch.zeros_like(v) if k.startswith("user_") else v for k, v in inputs.items()}
            no_features = model.score_all(users, unknown_features)
            assert torch.allclose(model.score_with_user(rows, None), no_features, atol=1e-5)
            if model.factorized:  # the fold-in rows as a user vector: the same scores up to a constant per row
                folded = model.fold_in_user_vectors(rows) @ model.item_vectors().T + model.item_bias()
                shift = no_features - folded
                assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)
    assert model.history_len == (SMALL.history_len if name in ("twotower", "sasrec") else 0)
    assert model.user_feature_names == (("age",) if name in READ_FEATURES else ())
    assert model.item_feature_names == (("genre",) if name in READ_FEATURES else ())
    assert model.num_users == SMALL.num_users


def test_an_unknown_model_type_or_config_key_is_refused() -> None:
    with pytest.raises(Exception, match="unknown model type 'nope'"):
        build_model("nope", {})
    with pytest.raises(Exception, match="mf config has unknown keys: layers"):
        config_from_dict("mf", {"num_users": 1, "num_items": 1, "layers": [3]})


# The README's sentence on what the exporter imports from the trainer, as a list.
EXPORTER_MAY_IMPORT = {
    "onnxrec.trainer.models.base",  # the model contract
    "onnxrec.trainer.runs",  # the run directory: checkpoint and dataset
    "onnxrec.trainer.checkpoint",  # the model rebuilt from the checkpoint (through the model registry)
    "onnxrec.trainer.data.dataset",  # the dataset artifact
    "onnxrec.trainer.data.text",  # item text -> vector, for items added at export (export --new-items)
    "onnxrec.trainer.history",  # each user's known items, from the dataset
    "onnxrec.trainer.evaluate",  # a precision variant's quality change
    "onnxrec.trainer.blend",  # a ranker run's blend of retrieval's score and its own (the checkpoint's "blend")
}


def test_the_exporter_asks_the_contract_never_the_type() -> None:
    model_classes = {
        "Recommender",
        "FactorizedRecommender",
        "MF",
        "MLP",
        "NeuMF",
        "TwoTower",
        "Linear",
        "FM",
        "DeepFM",
        "SasRec",
    }
    for path in sorted((REPO / "exporter").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("onnxrec.trainer"):
                assert node.module in EXPORTER_MAY_IMPORT, f"{where} imports {node.module}"
                if node.module == "onnxrec.trainer.models.base":
                    assert [a.name for a in node.names] == ["Recommender"], where
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("onnxrec.trainer") for a in node.names), where
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "hasattr", f"{where}: hasattr"
                if node.func.id == "isinstance" and len(node.args) == 2:
                    assert not (set(ast.unparse(node.args[1]).replace(",", " ").split()) & model_classes), where


# --------------------------------------------------------------------------- the new model end to end


@pytest.fixture(scope="module")
def cml_export(
    synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Recommender, Dataset]]:
    root = tmp_path_factory.mktemp("cml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(MODEL_TYPES, "cml", ModelType(CML, CMLConfig, default_loss="bpr"))
        data = save_dataset(synthetic, root / "data")
        cfg = TrainConfig(data=str(data), out=str(root / "run"), model="cml", epochs=2, dim=8, progress=False)
        run = train(cfg)
        version = export(run, root / "repo", "cml", options=ExportOptions(k_max=20, max_batch=32))
        ckpt, ds = open_run(run)
        yield version, model_from_checkpoint(ckpt), ds


def _run(version: Path, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(version / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
    return list(session.run(None, feed))


def _assert_top_k(scores: np.ndarray, items: np.ndarray, expected: np.ndarray) -> None:
    """onnxruntime's top-k (``scores``, ``items``) is PyTorch's: each returned item's expected score,
    and the k best expected scores, in order (ties may pick either item)."""
    tol = {"rtol": 1e-4, "atol": 1e-5 * max(1.0, float(np.abs(expected[np.isfinite(expected)]).max()))}
    np.testing.assert_allclose(scores, np.take_along_axis(expected, items, axis=1), **tol)
    np.testing.assert_allclose(scores, -np.sort(-expected, axis=1)[:, : scores.shape[1]], **tol)


@pytest.mark.slow
def test_a_model_new_to_onnxrec_trains_exports_and_serves_its_own_scores(
    cml_export: tuple[Path, Recommender, Dataset],
) -> None:
    version, model, ds = cml_export
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["model_type"] == "cml" and manifest["model_config"] == model.cfg.to_dict()
    assert set(manifest["parity"]["graphs"]) == {"recommend", "recommend_from_history", "score", "similar_items"}
    rng = np.random.default_rng(0)
    users = rng.integers(0, ds.num_users, 40)
    items = rng.integers(0, ds.num_items, (40, 30))
    exclude = np.concatenate([rng.integers(0, ds.num_items, (40, 4)), np.full((40, 1), -1)], axis=1)
    with torch.no_grad():
        every = model.score_all(torch.from_numpy(users), {}).numpy()
        pairs = model.score_candidates(torch.from_numpy(users), torch.from_numpy(items), {}).numpy()
    (scores,) = _run(version, "score", {"user_idx": users, "items": items})
    np.testing.assert_allclose(scores, pairs, rtol=1e-4, atol=1e-5)

    np.put_along_axis(every, exclude[:, :4], -np.inf, axis=1)
    top, top_items = _run(version, "recommend", {"user_idx": users, "exclude": exclude, "k": np.array([10])})
    assert top.shape == (40, 10)
    _assert_top_k(top, top_items, every)


@pytest.mark.slow
def test_the_new_model_folds_in_a_history_and_finds_similar_items(
    cml_export: tuple[Path, Recommender, Dataset],
) -> None:
    version, model, ds = cml_export
    # fold-in as the contract says: a user's table row is the mean, over its history, of each item's
    # centroid (the mean row of the users known to have it; the table's mean for items nobody has)
    s = ds.splits
    who = np.concatenate([s.train.user_idx, s.valid.user_idx, s.test.user_idx]).astype(np.int64)
    what = np.concatenate([s.train.item_idx, s.valid.item_idx, s.test.item_idx]).astype(np.int64)
    table = model.user_tables()[0].weight.detach().numpy().astype(np.float64)
    sums = np.zeros((ds.num_items, table.shape[1]))
    np.add.at(sums, what, table[who])
    counts = np.bincount(what, minlength=ds.num_items)[:, None]
    centroids = np.where(counts > 0, sums / np.maximum(counts, 1), table.mean(0))
    rng = np.random.default_rng(1)
    history = rng.integers(0, ds.num_items, (25, 6))
    history[::3, 2:] = -1
    rows = np.stack([centroids[h[h >= 0]].mean(0) for h in history]).astype(np.float32)
    with torch.no_grad():
        expected = model.score_with_user([torch.from_numpy(rows)], None).numpy()
    exclude = np.concatenate([history, np.full((25, 1), -1)], axis=1)
    for row, ex in zip(expected, exclude, strict=True):
        row[ex[ex >= 0]] = -np.inf
    top, top_items = _run(
        version, "recommend_from_history", {"history": history, "exclude": exclude, "k": np.array([10])}
    )
    _assert_top_k(top, top_items, expected)

    vectors = model.item_representation().detach().numpy()
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    query = np.arange(12)
    cosine = normed[query] @ normed.T
    cosine[query, query] = -np.inf  # an item is not similar to itself
    sims, sim_items = _run(version, "similar_items", {"item_idx": query, "k": np.array([5])})
    _assert_top_k(sims, sim_items, cosine)
