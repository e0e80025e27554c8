"""SASRec (Kang & McAuley, 2018): causal self-attention over the user's most recent items.

The history (``inputs["history"]`` [B, H], newest first, -1 pads) is embedded with the item table and
a learned embedding of each position (position 0 = the newest item), then passes through a few
pre-norm transformer blocks whose attention is causal: position p attends only to itself and older
positions (p' >= p), and never to padding. The user vector is the last block's output at the newest
position, and an item's score is its dot product with the item's row of the same table the history is
embedded with. The user id is not read, so any user with a history gets a vector (a user the model
does not know included), and a known user's vector is computed once at export from their history.

With ``text_dim`` > 0 (``--item-text``) an item's row is its id embedding plus a linear projection of
its text vector (a buffer given once by ``set_item_text``), in the history and in the
scores alike; in training each item's id embedding is dropped (zeroed) with probability
``id_dropout``, so an item known by its text alone (id row zero: a cold item, or one added with
``export --new-items``) gets a vector the model has learned to use.

The attention is written with plain matrix products and masks (no ``nn.MultiheadAttention``), so the
masking is explicit and exports to ONNX as ordinary operators. The fit loop trains it on SASRec's own
next-item objective (:mod:`onnxrec.trainer.sequence_fit`): each window of a user's training sequence
is encoded once and every position predicts the item after it, which the causal mask keeps out of that
position's view; ``--sequence-objective last_position`` trains one example per item and its history
instead, read at the newest position only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from onnxrec.errors import ConfigError
from onnxrec.trainer.models.base import FactorizedRecommender
from onnxrec.trainer.models.config import ModelConfig, ModelOptions

DEFAULT_HISTORY_LEN = 50
DEFAULT_DROPOUT = 0.2
DEFAULT_BLOCKS = 1  # chosen on ML-100K validation: full NDCG@10 0.1178 against 0.1092 with 2 (#19)
DEFAULT_POSITIONS = "relative"
INIT_STD = 0.02


@dataclass(frozen=True)
class SasRecConfig(ModelConfig):
    """Sizes of a :class:`SasRec` model. From the training options: ``dim``, ``history_len`` (0: 50),
    ``blocks`` (0: 1; the reference SASRec has 2, which scored lower on ML-100K validation) and
    ``dropout`` (0: 0.2; on the embeddings and each block's two residual branches); two heads (one when
    ``dim`` is odd)."""

    num_users: int
    num_items: int
    dim: int = 64
    blocks: int = DEFAULT_BLOCKS
    heads: int = 2
    dropout: float = DEFAULT_DROPOUT
    history_len: int = DEFAULT_HISTORY_LEN
    #: "absolute": a learned embedding of each item's place in the window (0 = newest) added to its
    #: embedding (SASRec's); "relative": none, and each head's attention logit gains a learned bias per
    #: distance between the query and the key, so a position's output depends on the items it reads and
    #: their distances only, wherever the query sits in the window. (Checkpoints without the field: absolute.)
    positions: str = "absolute"
    text_dim: int = 0  # 0 = no item text input
    id_dropout: float = 0.0  # with text: the chance an item's id embedding is dropped in a training step

    def __post_init__(self) -> None:
        if self.positions not in ("absolute", "relative"):
            raise ConfigError(f"sasrec positions must be absolute or relative, not {self.positions!r}")
        if self.history_len < 1 or self.blocks < 1 or self.heads < 1 or self.dim % self.heads:
            raise ConfigError(
                f"sasrec needs history_len, blocks and heads of at least 1 and dim divisible by heads (history_len "
                f"{self.history_len}, blocks {self.blocks}, heads {self.heads}, dim {self.dim})"
            )

    @classmethod
    def from_options(cls, opts: ModelOptions) -> SasRecConfig:
        # 0 (the options' defaults) means the model's own: SASRec's history of 50 and dropout of 0.2
        heads = 2 if opts.dim % 2 == 0 else 1
        return cls(
            num_users=opts.num_users,
            num_items=opts.num_items,
            dim=opts.dim,
            heads=heads,
            dropout=opts.dropout if opts.dropout > 0 else DEFAULT_DROPOUT,
            blocks=opts.blocks or DEFAULT_BLOCKS,
            history_len=opts.history_len or DEFAULT_HISTORY_LEN,
            positions=DEFAULT_POSITIONS,
            text_dim=opts.text_dim,
            id_dropout=opts.id_dropout if opts.text_dim else 0.0,
        )


class FastDropout(nn.Module):
    """Dropout whose mask comes from random bytes: ``nn.Dropout``'s Bernoulli draw was most of a training
    step's time on CPU (1.4 s of a 1024 x 50 x 64 tensor on a loaded core, against 0.06 s here). The drop
    probability is rounded to a multiple of 1/256; the kept entries are scaled by the exact inverse of
    the keep probability. An identity outside training (and in exported graphs)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.threshold = round(p * 256)
        self.scale = 256 / (256 - self.threshold) if self.threshold < 256 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        keep = torch.empty(x.shape, dtype=torch.uint8, device=x.device).random_() >= self.threshold
        return x * keep.to(x.dtype) * self.scale


class CausalBlock(nn.Module):
    """A pre-norm transformer block: x + attention(LN(x)), then x + FFN(LN(x)), dropout on both branches."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.drop = FastDropout(dropout)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, heads, L, D / heads] (a view: one head needs no copy)."""
        b, n, d = t.shape
        return t.unsqueeze(1) if self.heads == 1 else t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, queries: int | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` [B, H, D] -> [B, Q, D]: each query position attends to the key positions ``allowed``
        [B, Q, H] lets it; with ``queries``, only the first ``queries`` positions (the newest) are
        computed (Q = ``queries``, else H). ``bias`` [heads, Q, H] is added to the attention logits."""
        b, _, d = x.shape
        normed = self.attn_norm(x)
        if queries is not None:
            x = x[:, :queries]
        q = self._split(self.query(normed if queries is None else normed[:, :queries]))
        k, v = self._split(self.key(normed)), self._split(self.value(normed))
        logits = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // self.heads))  # [B, heads, Q, H]
        if bias is not None:
            logits = logits + bias
        weights = torch.softmax(logits.masked_fill(~allowed.unsqueeze(1), float("-inf")), dim=-1)
        attended = weights @ v  # [B, heads, Q, D / heads]
        attended = attended.squeeze(1) if self.heads == 1 else attended.transpose(1, 2).reshape(b, -1, d)
        x = x + self.drop(self.out(attended))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class SasRec(FactorizedRecommender):
    """score(history, i) = <encoder(history) at the newest position, E_i>, E the item embedding table."""

    cfg: SasRecConfig
    encodes_unknown_users = True  # the vector comes from the history alone

    def __init__(self, cfg: SasRecConfig) -> None:
        super().__init__(cfg)
        self.item_emb = nn.Parameter(torch.randn(cfg.num_items, cfg.dim) * INIT_STD)
        if cfg.positions == "absolute":
            self.pos_emb = nn.Parameter(torch.randn(cfg.history_len, cfg.dim) * INIT_STD)
        else:  # one bias per head and query-key distance 0 .. history_len - 1, shared by the blocks
            self.distance_bias = nn.Parameter(torch.zeros(cfg.heads, cfg.history_len))
        self.emb_drop = FastDropout(cfg.dropout)
        self.blocks = nn.ModuleList(CausalBlock(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.final_norm = nn.LayerNorm(cfg.dim)
        if cfg.text_dim:
            self.item_text_proj = nn.Linear(cfg.text_dim, cfg.dim, bias=False)
            self.register_buffer("item_text", torch.zeros(cfg.num_items, cfg.text_dim))

    @property
    def history_len(self) -> int:
        return self.cfg.history_len

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.item_emb if items is None else self.item_emb[items]
        if not self.cfg.text_dim:
            return ids
        if self.training and self.cfg.id_dropout > 0:
            ids = ids * (torch.rand(ids.shape[:-1], device=ids.device) >= self.cfg.id_dropout).unsqueeze(-1)
        text = cast(torch.Tensor, self.item_text)
        return ids + self.item_text_proj(text if items is None else text[items])

    @property
    def reads_item_text(self) -> bool:
        return self.cfg.text_dim > 0

    def text_item_vectors(self, text: torch.Tensor) -> torch.Tensor:
        """Vectors [N, D] of items the model does not know, from their text vectors [N, text_dim] alone."""
        return self.item_text_proj(text)

    def with_new_text_items(self, text: torch.Tensor) -> tuple[SasRec, float]:
        """Items appended with a zero id embedding and their text vectors: their vectors are exactly
        :meth:`text_item_vectors` (SASRec has no item bias: 0)."""
        if not self.reads_item_text:
            raise NotImplementedError("this sasrec model was trained without item text")
        n = text.shape[0]
        state = dict(self.state_dict())
        state["item_emb"] = torch.cat([state["item_emb"], state["item_emb"].new_zeros(n, self.cfg.dim)])
        state["item_text"] = torch.cat([state["item_text"], text.to(state["item_text"].dtype)])
        bigger = SasRec(dataclasses.replace(self.cfg, num_items=self.cfg.num_items + n))
        bigger.load_state_dict(state)
        return bigger.train(self.training), 0.0

    def item_bias(self, items: torch.Tensor | None = None) -> torch.Tensor:
        n = self.cfg.num_items if items is None else items.shape[0]
        return torch.zeros(n, dtype=self.item_emb.dtype, device=self.item_emb.device)

    def encode(
        self, history: torch.Tensor, item_table: torch.Tensor | None = None, newest_only: bool = False
    ) -> torch.Tensor:
        """The last block's output per position [B, H, D] of ``history`` [B, H] (newest first, -1 pads;
        at most :attr:`history_len` columns are read), or at the newest position only [B, D].
        ``item_table`` ([num_items, D]) holds the rows ``history`` indexes, when not the model's own."""
        history = history[:, : self.cfg.history_len]
        h = history.shape[1]
        valid = history >= 0
        safe = history.clamp_min(0)
        rows = self.item_vectors(safe.reshape(-1)).reshape(*safe.shape, -1) if item_table is None else item_table[safe]
        x = rows * valid.unsqueeze(-1).to(rows.dtype)
        pos = torch.arange(h, device=history.device)
        bias = None
        if self.cfg.positions == "absolute":
            x = x + self.pos_emb[:h].unsqueeze(0)
        else:  # [heads, Q, H]: the bias of key k for query q, by their distance k - q (only k >= q attend)
            bias = self.distance_bias[:, (pos.unsqueeze(0) - pos.unsqueeze(1)).clamp_min(0)]
        x = self.emb_drop(x)
        older = pos.unsqueeze(0) >= pos.unsqueeze(1)  # [Q, H]: key k is no newer than query q
        itself = pos.unsqueeze(0) == pos.unsqueeze(1)  # a padding query attends to itself: no empty row
        allowed = (older.unsqueeze(0) & valid.unsqueeze(1)) | itself.unsqueeze(0)  # [B, H, H]
        for j, block in enumerate(self.blocks):
            # the last block's outputs are read at the newest position only: one query there
            newest = newest_only and j == len(self.blocks) - 1
            if newest:
                x = block(x, allowed[:, :1], queries=1, bias=None if bias is None else bias[:, :1])
            else:
                x = block(x, allowed, bias=bias)
        x = self.final_norm(x)
        return x[:, 0] if newest_only else x

    def user_vectors(self, users: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        return self.encode(inputs["history"], inputs.get("item_table"), newest_only=True)
