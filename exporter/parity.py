"""Parity between an exported graph and the PyTorch module it came from.

Checks, in order: input and output names, then dtypes and shapes, then values. Values are compared
on real users and items from the dataset and on random inputs at batch sizes 1, an odd size and the
maximum. Scores must agree to ``atol`` (max abs diff recorded) and the top-10 sets must agree for at
least ``min_topk_agreement`` of the rows, where a difference only counts when it is not a tie.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from onnxrec.errors import ParityError
from onnxrec.exporter.spec import GraphSpec, K

_NP_DTYPES = {"int64": np.int64, "float32": np.float32, "float16": np.float16}
_ORT_TYPES = {"int64": "tensor(int64)", "float32": "tensor(float)", "float16": "tensor(float16)"}


@dataclass
class GraphParity:
    """The parity figures of one graph (these go into the manifest)."""

    rows: int = 0
    max_abs_diff: float = 0.0
    topk_rows: int = 0
    topk_agreement: float = 1.0
    batch_sizes: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        d = asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        return d


def check_signature(session: ort.InferenceSession, spec: GraphSpec) -> None:
    """Names first, then element types and ranks, of the session's inputs and outputs."""
    for kind, got, want in (
        ("input", session.get_inputs(), spec.inputs),
        ("output", session.get_outputs(), spec.outputs),
    ):
        got_names = [g.name for g in got]
        want_names = [w.name for w in want]
        if got_names != want_names:
            raise ParityError(f"{spec.name}: {kind} names {got_names} differ from the spec's {want_names}")
        for g, w in zip(got, want, strict=True):
            if g.type != _ORT_TYPES[w.dtype]:
                raise ParityError(f"{spec.name}: {kind} {w.name} is {g.type}, the spec says {w.dtype}")
            if len(g.shape) != len(w.shape):
                raise ParityError(f"{spec.name}: {kind} {w.name} has rank {len(g.shape)}, the spec says {len(w.shape)}")


def _topk_agree(
    ref_s: np.ndarray, ref_i: np.ndarray, got_s: np.ndarray, got_i: np.ndarray, k: int, atol: float
) -> np.ndarray:
    """Per row: whether the top-k sets agree, ties at the cut-off aside."""
    k = min(k, ref_i.shape[1])
    out = np.ones(len(ref_i), dtype=bool)
    for row in range(len(ref_i)):
        r, g = ref_i[row, :k], got_i[row, :k]
        if set(r.tolist()) == set(g.tolist()):
            continue
        cut = ref_s[row, k - 1]
        only_ref = [j for j in range(k) if r[j] not in set(g.tolist())]
        only_got = [j for j in range(k) if g[j] not in set(r.tolist())]
        tie = all(abs(ref_s[row, j] - cut) <= atol for j in only_ref) and all(
            abs(got_s[row, j] - cut) <= atol for j in only_got
        )
        out[row] = tie
    return out


def check_runtime_k(
    session: ort.InferenceSession,
    spec: GraphSpec,
    feed: dict[str, np.ndarray],
    full: list[np.ndarray],
    atol: float,
) -> None:
    """A smaller runtime ``k`` returns the first k of ``full``, the k_max answer to ``feed`` (ties at the
    cut-off aside). (A ``k`` above k_max is the caller's error: the server never sends one.)"""
    full_s, full_i = full
    small = max(1, spec.k_max // 3)
    part_s, part_i = session.run(["scores", "items"], {**feed, K: np.array([small], dtype=np.int64)})
    if part_s.shape[1] != small:
        raise ParityError(f"{spec.name}: k={small} returned {part_s.shape[1]} columns")
    if not np.allclose(part_s, full_s[:, :small], atol=atol, equal_nan=True):
        raise ParityError(f"{spec.name}: the top-{small} scores are not the first {small} of the top-{spec.k_max}")
    if not _topk_agree(full_s.astype(np.float64), full_i, part_s.astype(np.float64), part_i, small, atol).all():
        raise ParityError(f"{spec.name}: the top-{small} items are not the first {small} of the top-{spec.k_max}")


def check_values(
    session: ort.InferenceSession,
    module: nn.Module,
    spec: GraphSpec,
    batches: Iterable[tuple[np.ndarray, ...]],
    *,
    atol: float = 1e-5,
    min_topk_agreement: float = 0.999,
    topk: int = 10,
) -> GraphParity:
    """Run every batch through both; raise :class:`ParityError` past the tolerances."""
    report = GraphParity()
    agree_rows = 0
    sizes: set[int] = set()
    module.eval()
    for batch in batches:
        feed = {
            t.name: np.ascontiguousarray(a, dtype=_NP_DTYPES[t.dtype])
            for t, a in zip(spec.module_inputs, batch, strict=True)
        }
        with torch.no_grad():
            ref = module(*(torch.from_numpy(feed[t.name]) for t in spec.module_inputs))
        if spec.k_max:
            feed[K] = np.array([spec.k_max], dtype=np.int64)
        got = session.run([t.name for t in spec.outputs], feed)
        if spec.k_max and not report.rows:  # once per graph, on its first batch
            check_runtime_k(session, spec, feed, got, atol)
        ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        b = len(next(iter(feed.values())))
        sizes.add(b)
        for t, g, r in zip(spec.outputs, got, ref, strict=True):
            want_shape = tuple(
                b if d == "batch" else (r.shape[i] if isinstance(d, str) else d) for i, d in enumerate(t.shape)
            )
            if g.shape != want_shape or g.shape != r.shape:
                raise ParityError(f"{spec.name}: output {t.name} has shape {g.shape}, expected {want_shape}")
            if g.dtype != _NP_DTYPES[t.dtype]:
                raise ParityError(f"{spec.name}: output {t.name} is {g.dtype}, expected {t.dtype}")
        scores_ref, scores_got = ref[0].astype(np.float64), got[0].astype(np.float64)
        finite = np.isfinite(scores_ref)
        if not np.array_equal(finite, np.isfinite(scores_got)):
            raise ParityError(f"{spec.name}: -inf/NaN positions differ between PyTorch and onnxruntime")
        diff = float(np.abs(scores_ref[finite] - scores_got[finite]).max()) if finite.any() else 0.0
        report.max_abs_diff = max(report.max_abs_diff, diff)
        report.rows += b
        if len(spec.outputs) == 2:
            agree = _topk_agree(scores_ref, ref[1], scores_got, got[1], topk, atol)
            agree_rows += int(agree.sum())
            report.topk_rows += b
    report.batch_sizes = tuple(sorted(sizes))
    if report.topk_rows:
        report.topk_agreement = agree_rows / report.topk_rows
    if report.max_abs_diff > atol:
        raise ParityError(
            f"{spec.name}: scores differ from PyTorch by up to {report.max_abs_diff:.3g} (tolerance {atol:g})"
        )
    if report.topk_agreement < min_topk_agreement:
        raise ParityError(
            f"{spec.name}: top-{topk} agrees with PyTorch for only {report.topk_agreement:.2%} of rows "
            f"(at least {min_topk_agreement:.1%} required)"
        )
    return report
