"""SASRec: the causal mask (no position sees a newer one), padding never attended, and the exported
transformer answering as PyTorch does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnxrec.errors import ConfigError
from onnxrec.exporter.export import ExportOptions, export
from onnxrec.trainer.checkpoint import model_from_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import Dataset, save_dataset
from onnxrec.trainer.history import known_sequences
from onnxrec.trainer.models.config import ModelOptions
from onnxrec.trainer.models.sasrec import DEFAULT_BLOCKS, SasRec, SasRecConfig
from onnxrec.trainer.runs import open_run
from onnxrec.trainer.train import train

NUM_ITEMS = 30


def _model(heads: int = 2, blocks: int = 2, history_len: int = 8, positions: str = "absolute") -> SasRec:
    torch.manual_seed(0)
    cfg = SasRecConfig(
        num_users=5,
        num_items=NUM_ITEMS,
        dim=8,
        blocks=blocks,
        heads=heads,
        history_len=history_len,
        positions=positions,
    )
    model = SasRec(cfg)
    with torch.no_grad():  # weights far from their initial scale, so a leak would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


@pytest.mark.parametrize("positions", ["absolute", "relative"])
@pytest.mark.parametrize(("heads", "blocks"), [(1, 1), (2, 2), (4, 3)])
def test_no_position_sees_a_newer_one(heads: int, blocks: int, positions: str) -> None:
    """Position p's output (0 = newest) reads only positions p and older: changing the item at position
    j changes the outputs at j and newer ones, never at older ones."""
    model = _model(heads, blocks, positions=positions)
    history = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [7, 18, 2, 8, 11, -1, -1, -1]])
    with torch.no_grad():
        base = model.encode(history)  # [B, H, D]
        assert base.shape == (2, 8, 8)
        torch.testing.assert_close(model.encode(history, newest_only=True), base[:, 0])
        for j in range(8):
            changed = history.clone()
            changed[:, j] = torch.where(changed[:, j] >= 0, (changed[:, j] + 13) % NUM_ITEMS, -1)
            out = model.encode(changed)
            torch.testing.assert_close(out[:, j + 1 :], base[:, j + 1 :], rtol=0, atol=0)
            moved = (out - base).abs().amax(-1)  # [B, H]
            assert moved[0, j] > 1e-3 and moved[0, 0] > 0  # position j itself, and the newest, read it
            if j < 5:  # row 1's item (not its padding)
                assert moved[1, j] > 1e-3 and moved[1, 0] > 0


@pytest.mark.parametrize("positions", ["absolute", "relative"])
@pytest.mark.parametrize("heads", [1, 2])
def test_padding_is_never_attended(heads: int, positions: str) -> None:
    """A history padded with -1 gives the vector of the same history without the padding columns, and
    the user id is not read (a user the model does not know gets the same vector)."""
    model = _model(heads, positions=positions)
    history = torch.tensor([[4, 12, 7, -1, -1, -1, -1, -1], [9, -1, -1, -1, -1, -1, -1, -1]])
    with torch.no_grad():
        padded = model.user_vectors(torch.tensor([0, 1]), {"history": history})
        for width in (1, 3, 5):  # row 0 holds 3 items, row 1 one
            trimmed = model.user_vectors(torch.tensor([-1, -1]), {"history": history[:, :width]})
            rows = slice(None) if width >= 3 else slice(1, 2)
            torch.testing.assert_close(trimmed[rows], padded[rows])
        # a history longer than the model reads is cut to its newest history_len items
        longer = torch.cat([history, torch.randint(0, NUM_ITEMS, (2, 4))], dim=1)
        torch.testing.assert_close(model.user_vectors(torch.tensor([0, 1]), {"history": longer}), padded)
        # an empty history still gets a finite vector (the newest position attends to itself)
        empty = model.user_vectors(torch.tensor([2]), {"history": torch.full((1, 8), -1)})
        assert bool(torch.isfinite(empty).all())


def test_relative_positions_answer_every_position_as_the_newest() -> None:
    """With distance biases instead of position embeddings, position p's output is the newest position's
    output for the history that ends at p: what training at every position teaches is what serving asks."""
    model = _model(2, 2, positions="relative")
    assert not hasattr(model, "pos_emb")
    history = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [7, 18, 2, 8, 11, -1, -1, -1]])
    with torch.no_grad():
        every = model.encode(history)
        for p in range(8):
            torch.testing.assert_close(every[:, p], model.encode(history[:, p:], newest_only=True))
    absolute = _model(2, 2, positions="absolute")
    with torch.no_grad():  # SASRec's absolute embeddings give no such equality
        assert not torch.allclose(absolute.encode(history)[:, 2], absolute.encode(history[:, 2:], newest_only=True))


def test_config_from_training_options() -> None:
    cfg = SasRecConfig.from_options(ModelOptions(num_users=3, num_items=4, dim=16, history_len=0))
    assert (cfg.history_len, cfg.dropout, cfg.blocks, cfg.heads, cfg.dim) == (50, 0.2, DEFAULT_BLOCKS, 2, 16)
    cfg = SasRecConfig.from_options(
        ModelOptions(num_users=3, num_items=4, dim=15, history_len=20, dropout=0.5, blocks=3)
    )
    assert (cfg.history_len, cfg.dropout, cfg.heads, cfg.blocks) == (20, 0.5, 1, 3)
    assert SasRecConfig(num_users=1, num_items=1).positions == "absolute"  # checkpoints written before the field
    with pytest.raises(ConfigError, match="absolute or relative"):
        SasRecConfig(num_users=1, num_items=1, positions="rotary")
    with pytest.raises(ConfigError, match="divisible"):
        SasRecConfig(num_users=1, num_items=1, dim=6, heads=4)


def test_the_item_table_is_the_input_embedding() -> None:
    """Scores are dot products with the rows the history is embedded with (one shared table), and a
    caller's ``item_table`` (the fit loop's, the exporter's) stands in for the model's own."""
    model = _model()
    history = torch.tensor([[1, 2, 3, -1, -1, -1, -1, -1]])
    with torch.no_grad():
        own = model.user_vectors(torch.tensor([0]), {"history": history})
        given = model.user_vectors(torch.tensor([0]), {"history": history, "item_table": model.item_vectors().clone()})
        torch.testing.assert_close(given, own)
        torch.testing.assert_close(model.score_all(torch.tensor([0]), {"history": history}), own @ model.item_emb.T)


@pytest.mark.slow
def test_a_trained_sasrec_exports_with_parity_and_runs_the_transformer_in_onnx(
    synthetic: Dataset, tmp_path: Path
) -> None:
    data = save_dataset(synthetic, tmp_path / "data")
    cfg = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), model="sasrec", epochs=1, dim=16, history_len=8, progress=False
    )
    run = train(cfg)
    version = export(run, tmp_path / "repo", "sasrec", options=ExportOptions(k_max=20, max_batch=32))
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["model_type"] == "sasrec" and manifest["opset"] >= 18
    for name in ("recommend", "recommend_from_history", "score", "similar_items"):
        p = manifest["parity"]["graphs"][name]
        assert p["rows"] > 0 and p["max_rel_diff"] <= p["rtol"], name
    ckpt, ds = open_run(run)
    model = model_from_checkpoint(ckpt).eval()
    assert isinstance(model, SasRec) and model.cfg.history_len == 8

    # onnxruntime runs the transformer on histories of any width, padded or not, as PyTorch does
    session = ort.InferenceSession(str(version / "recommend_from_history.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for width in (1, 5, 8, 12):
        history = rng.integers(0, ds.num_items, (6, width))
        history[1, 1:] = -1
        history[2, width // 2 :] = -1
        exclude = np.full((6, 1), -1, dtype=np.int64)
        scores, items = session.run(None, {"history": history, "exclude": exclude, "k": np.array([20])})
        with torch.no_grad():
            expected = model.score_all(torch.full((6,), -1), {"history": torch.from_numpy(history)}).numpy()
        np.testing.assert_allclose(scores, np.take_along_axis(expected, items, axis=1), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores, -np.sort(-expected, axis=1)[:, :20], rtol=1e-4, atol=1e-5)

    # a known user's vector is computed at export from their whole history (up to history_len)
    rec = ort.InferenceSession(str(version / "recommend.onnx"), providers=["CPUExecutionProvider"])
    users = np.arange(10, dtype=np.int64)
    scores, items = rec.run(None, {"user_idx": users, "exclude": np.full((10, 1), -1), "k": np.array([5])})
    history = torch.from_numpy(known_sequences(ds, "serve").recent(users, 8))
    with torch.no_grad():
        expected = model.score_all(torch.from_numpy(users), {"history": history}).numpy()
    np.testing.assert_allclose(scores, np.take_along_axis(expected, items, axis=1), rtol=1e-4, atol=1e-5)
