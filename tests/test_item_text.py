"""Item text: the packaged all-MiniLM-L6-v2, the tokenizer, and the vectors' round trip through the
dataset artifact (``onnxrec data prepare --item-text-columns`` -> item_text.parquet -> the same vectors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from onnxrec.cli import main
from onnxrec.errors import DataError
from onnxrec.trainer.data.dataset import Dataset, item_text_table, load_dataset
from onnxrec.trainer.data.text import MOVIELENS_TEXT_COLUMNS, TEXT_DIM, WordPieceTokenizer, embed_texts, item_texts


def test_tokenizer_matches_the_models_reference_tokenizer() -> None:
    # ids from the model's own tokenizer.json (HuggingFace tokenizers 0.23, BertNormalizer lowercase,
    # BertPreTokenizer, WordPiece), taken once and pinned here
    tok = WordPieceTokenizer()
    assert tok.encode("Toy Story (1995). genres: Animation, Children's, Comedy") == [
        101, 9121, 2466, 1006, 2786, 1007, 1012, 11541, 1024, 7284, 1010, 2336, 1005, 1055, 1010, 4038, 102,
    ]  # fmt: skip
    assert tok.encode("Crème brûlée: l'été 東京!") == [
        101, 13675, 21382, 7987, 9307, 2063, 1024, 1048, 1005, 3802, 2063, 1879, 1755, 999, 102,
    ]  # fmt: skip
    assert tok.encode("unaffable xyzzyq") == [101, 14477, 20961, 3468, 1060, 2100, 28753, 4160, 102]
    assert len(tok.encode("word " * 500)) == tok.max_tokens


def test_vectors_are_unit_length_and_mean_something() -> None:
    texts = ["Star Wars (1977). genres: Action, Sci-Fi", "Return of the Jedi (1983). genres: Action, Sci-Fi",
             "Sense and Sensibility (1995). genres: Drama, Romance", ""]  # fmt: skip
    v = embed_texts(texts)
    assert v.shape == (4, TEXT_DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, rtol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1
    # one text alone and in a batch of others of other lengths: the same vector (padding is masked)
    np.testing.assert_allclose(embed_texts(texts[:1])[0], v[0], rtol=1e-4, atol=1e-5)


def test_item_texts_join_the_named_columns() -> None:
    rows = [{"title": "Heat (1995)", "genres": ["Action", "Crime"]}, {"title": "", "genres": None}]
    assert item_texts(rows, ["title", "genres"]) == ["Heat (1995). genres: Action, Crime", ""]


def _log(path: Path) -> Path:
    rows = ["user_id,item_id,timestamp,title,description"]
    catalog = {
        "a": ("The Space Saga", "rockets, aliens and a galactic empire"),
        "b": ("Love in Paris", "a romantic comedy by the Seine"),
        "c": ("Deep Sea", "a documentary | about whales"),
        "d": ("Deep Sea 2", ""),
    }
    t = 0
    for u in range(6):
        for item, (title, desc) in catalog.items():
            if item == "abcd"[u % 4]:
                continue  # each user leaves one item, the one evaluation negative
            t += 1
            rows.append(f'u{u},{item},{t},"{title}","{desc}"')
    path.write_text("\n".join(rows) + "\n")
    return path


def test_prepare_round_trip(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.csv")
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        main,
        [
            "data",
            "prepare",
            str(log),
            "--out",
            str(out),
            "--item-text-columns",
            "title,description",
            "--negatives",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["item_text"]["model"] == "all-MiniLM-L6-v2-onnx-int8"
    assert meta["item_text"]["columns"] == ["title", "description"]
    ds = load_dataset(out)
    assert ds.item_text is not None and ds.item_text.shape == (4, TEXT_DIM)
    # the text columns are kept as text (a '|' in a description is not a multi-valued feature), not features
    assert ds.item_table["description"].type == pa.string()
    assert ds.feature_spec.item == ()
    texts = item_texts(ds.item_table.to_pylist(), ["title", "description"])
    assert texts[ds.item_ids.tolist().index("c")] == "Deep Sea. description: a documentary | about whales"
    assert texts[ds.item_ids.tolist().index("d")] == "Deep Sea 2"
    np.testing.assert_allclose(ds.item_text, embed_texts(texts), rtol=1e-4, atol=1e-6)


def test_movielens_text_is_title_and_genres(ml100k: Dataset) -> None:
    # what --item-text embeds for MovieLens (no columns named): the reader's title and genres
    rows = ml100k.item_table.slice(0, 3).to_pylist()
    assert item_texts(rows, MOVIELENS_TEXT_COLUMNS)[0] == f"{rows[0]['title']}. genres: {', '.join(rows[0]['genres'])}"


def test_damaged_or_unknown_text_is_refused(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.csv")
    out = tmp_path / "ds"
    runner = CliRunner()
    bad = runner.invoke(
        main, ["data", "prepare", str(log), "--out", str(out), "--item-text-columns", "plot", "--negatives", "1"]
    )
    assert bad.exit_code == 2 and "plot" in bad.output
    ok = runner.invoke(
        main, ["data", "prepare", str(log), "--out", str(out), "--item-text-columns", "title", "--negatives", "1"]
    )
    assert ok.exit_code == 0, ok.output
    vectors = load_dataset(out).item_text
    assert vectors is not None
    pq.write_table(item_text_table(vectors + 1e-3), out / "item_text.parquet")
    with pytest.raises(DataError, match="sha256"):
        load_dataset(out)


def test_train_item_text_needs_text_and_a_two_tower(tmp_path: Path) -> None:
    from onnxrec.errors import ConfigError
    from onnxrec.trainer.config import TrainConfig
    from onnxrec.trainer.train import train

    log = _log(tmp_path / "log.csv")
    runner = CliRunner()
    for out, extra in ((tmp_path / "plain", []), (tmp_path / "text", ["--item-text-columns", "title"])):
        result = runner.invoke(main, ["data", "prepare", str(log), "--out", str(out), "--negatives", "1", *extra])
        assert result.exit_code == 0, result.output
    with pytest.raises(ConfigError, match="no item text"):
        train(TrainConfig(data=str(tmp_path / "plain"), out=str(tmp_path / "r1"), item_text=True, progress=False))
    with pytest.raises(ConfigError, match="only the twotower and sasrec models read item text"):
        train(
            TrainConfig(
                data=str(tmp_path / "text"), out=str(tmp_path / "r2"), model="mf", item_text=True, progress=False
            )
        )


def test_new_text_items_get_exactly_the_text_paths_vectors() -> None:
    import torch

    from onnxrec.trainer.models.config import FeatureInput
    from onnxrec.trainer.models.two_tower import TwoTower, TwoTowerConfig

    torch.manual_seed(0)
    cfg = TwoTowerConfig(
        num_users=5, num_items=4, dim=8, text_dim=6, item_features=(FeatureInput("g", 3, 2),), history_len=3
    )
    model = TwoTower(cfg)
    model.set_item_features({"g": torch.tensor([[1, 2], [2, 0], [1, 0], [0, 0]])})
    model.set_item_text(torch.randn(4, 6))
    with torch.no_grad():
        model.item_b.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    model.eval()
    text = torch.randn(2, 6)
    bigger, bias = model.with_new_text_items(text)
    assert bigger.num_items == 6 and bias == pytest.approx(0.0)  # torch.median: the lower middle value
    with torch.no_grad():
        torch.testing.assert_close(bigger.item_vectors()[:4], model.item_vectors())
        torch.testing.assert_close(bigger.item_vectors()[4:], model.text_item_vectors(text))
        torch.testing.assert_close(bigger.item_bias()[4:], torch.full((2,), bias))


def test_sasrec_new_text_items_get_exactly_the_text_paths_vectors() -> None:
    import torch

    from onnxrec.trainer.models.sasrec import SasRec, SasRecConfig

    torch.manual_seed(0)
    model = SasRec(SasRecConfig(num_users=5, num_items=4, dim=8, text_dim=6, history_len=3, id_dropout=0.5))
    table = torch.randn(4, 6)
    model.set_item_text(table)
    model.eval()
    text = torch.randn(2, 6)
    bigger, bias = model.with_new_text_items(text)
    assert bigger.num_items == 6 and bias == 0.0
    history = torch.tensor([[5, 1, -1], [0, 4, 2]])  # the new items (4, 5) read as history like any other
    with torch.no_grad():
        # an item's row is its id embedding plus its text's projection; a new item's, the projection alone
        torch.testing.assert_close(model.item_vectors(), model.item_emb + model.item_text_proj(table))
        torch.testing.assert_close(bigger.item_vectors()[:4], model.item_vectors())
        torch.testing.assert_close(bigger.item_vectors()[4:], model.text_item_vectors(text))
        rows = bigger.item_vectors()
        torch.testing.assert_close(bigger.encode(history), bigger.encode(history, rows))
    # in training, id dropout zeroes whole id rows, never the text's part
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        dropped = model.item_vectors() - model.item_text_proj(table)
    kept = [torch.allclose(dropped[i], model.item_emb[i], atol=1e-6) for i in range(4)]
    zero = [torch.allclose(dropped[i], torch.zeros(8), atol=1e-6) for i in range(4)]
    assert all(k or z for k, z in zip(kept, zero, strict=True)) and any(kept)
