"""Parity between an exported graph and the PyTorch module it came from.

Checks, in order: input and output names, then dtypes and shapes, then values. Values are compared
on real users and items from the dataset and on random inputs at batch sizes 1, an odd size and the
maximum.

Scores are judged relative to their magnitude, like numpy's ``allclose`` with the magnitude of the
graph's scores in place of each element's: an onnxruntime score may differ from PyTorch's by at most
``atol + rtol * scale``, where ``scale`` is the largest |score| the graph produced in the check (a bound
in float32 steps of the largest score). float32 rounding in a dot product or a layer is proportional
to the size of what is summed, not to the result, so a score near 0 carries the rounding of the
model's magnitude (one float32 step at 35 is 3.8e-6; an absolute 1e-5 failed good models). The
defaults (``DEFAULT_RTOL``, ``DEFAULT_ATOL``) are justified in :mod:`onnxrec.exporter.spec`. The
decisive check is the ranking: the top-k sets must agree for at least ``min_topk_agreement`` of the
rows, where a difference only counts when a score error within the tolerance cannot explain it (a
tie). The observed error, where it was largest and the tolerance are recorded per graph
(:class:`GraphParity`, written into the manifest).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from onnxrec.errors import ParityError
from onnxrec.exporter.spec import DEFAULT_ATOL, DEFAULT_RTOL, GraphSpec, K

_NP_DTYPES = {"int64": np.int64, "float32": np.float32, "float16": np.float16}
_ORT_TYPES = {"int64": "tensor(int64)", "float32": "tensor(float)", "float16": "tensor(float16)"}


@dataclass(frozen=True)
class Tolerance:
    """|onnxruntime - PyTorch| <= atol + rtol * (the largest |score| of the graph)."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    def allowed(self, scale: float) -> float:
        """The largest difference allowed in a graph whose largest |score| is ``scale``."""
        return self.atol + self.rtol * scale

    def tie_width(self, scale: float) -> float:
        """Two scores closer than this may swap places: each may be off by :meth:`allowed`."""
        return 2 * self.allowed(scale)


@dataclass(frozen=True)
class RawIds:
    """Raw user and item ids per index, to name rows in error messages (either may be absent)."""

    users: np.ndarray | None = None
    items: np.ndarray | None = None

    def user(self, idx: int) -> str:
        """``user 41 (id '42')``."""
        return _named("user", idx, self.users)

    def item(self, idx: int) -> str:
        """``item 7 (id '8')``."""
        return _named("item", idx, self.items)


def _named(kind: str, idx: int, ids: np.ndarray | None) -> str:
    if ids is not None and 0 <= idx < len(ids):
        return f"{kind} {idx} (id {str(ids[idx])!r})"
    return f"{kind} {idx}"


@dataclass
class GraphParity:
    """The parity figures of one graph (these go into the manifest)."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    rows: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0  # max_abs_diff / max_abs_score
    max_abs_score: float = 0.0  # the largest |score| PyTorch gave (the scale of rtol)
    tolerance_used: float = 0.0  # max_abs_diff / (atol + rtol * max_abs_score): above 1 fails
    worst: str = ""  # where max_abs_diff was
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


def max_abs_score(scores: np.ndarray) -> float:
    """The largest finite |score| in ``scores`` (0 without one)."""
    return float(np.max(np.abs(scores[np.isfinite(scores)]), initial=0.0))


def _topk_agree(
    ref_s: np.ndarray, ref_i: np.ndarray, got_s: np.ndarray, got_i: np.ndarray, k: int, width: float
) -> np.ndarray:
    """Per row: whether the top-k sets agree, ties aside. A swap is a tie when a score error within the
    tolerance t can explain it: if every score is off by at most t, an item in one top-k but not the
    other scores within 2t of that list's k-th score, so ``width`` is 2t (:meth:`Tolerance.tie_width`).
    An item swapped at rank k itself always passes (the outputs hold no score of the other list's item
    there); the values check holds the k-th scores to the tolerance."""
    k = min(k, ref_i.shape[1])
    out = np.ones(len(ref_i), dtype=bool)
    for row in range(len(ref_i)):
        # -inf entries (fewer than k items left) carry arbitrary items, which the server drops
        keep = np.isfinite(ref_s[row, :k]) & np.isfinite(got_s[row, :k])
        rs, gs = ref_s[row, :k][keep], got_s[row, :k][keep]
        r, g = ref_i[row, :k][keep].tolist(), got_i[row, :k][keep].tolist()
        if set(r) == set(g):
            continue
        only_ref = [j for j in range(len(r)) if r[j] not in set(g)]
        only_got = [j for j in range(len(g)) if g[j] not in set(r)]
        out[row] = all(rs[j] - rs[-1] <= width for j in only_ref) and all(gs[j] - gs[-1] <= width for j in only_got)
    return out


def check_runtime_k(
    session: ort.InferenceSession,
    spec: GraphSpec,
    feed: dict[str, np.ndarray],
    full: list[np.ndarray],
    tol: Tolerance,
) -> None:
    """A smaller runtime ``k`` returns the first k of ``full``, the k_max answer to ``feed`` (ties at the
    cut-off aside). (A ``k`` above k_max is the caller's error: the server never sends one.)"""
    full_s, full_i = full[0].astype(np.float64), full[1]
    small = max(1, spec.k_max // 3)
    part_s, part_i = session.run(["scores", "items"], {**feed, K: np.array([small], dtype=np.int64)})
    if part_s.shape[1] != small:
        raise ParityError(f"{spec.name}: k={small} returned {part_s.shape[1]} columns")
    part_s, head = part_s.astype(np.float64), full_s[:, :small]
    scale = max_abs_score(head)
    same_inf = np.array_equal(np.isfinite(part_s), np.isfinite(head))
    if not same_inf or not (np.abs(np.where(np.isfinite(head), head - part_s, 0.0)) <= tol.allowed(scale)).all():
        raise ParityError(f"{spec.name}: the top-{small} scores are not the first {small} of the top-{spec.k_max}")
    if not _topk_agree(head, full_i, part_s, part_i, small, tol.tie_width(scale)).all():
        raise ParityError(f"{spec.name}: the top-{small} items are not the first {small} of the top-{spec.k_max}")


def _round_up(x: float) -> str:
    """``x`` rounded up to one significant digit, as an option value: 2.1e-4 -> '3e-04'."""
    if x <= 0 or not math.isfinite(x):
        return f"{x:g}"
    exp = math.floor(math.log10(x))
    digit = math.ceil(round(x / 10**exp, 9))
    if digit >= 10:
        digit, exp = 1, exp + 1
    return f"{digit}e{exp:+03d}"


class _Where:
    """Names a row and column of a batch: the user, item or history of the row, and the item."""

    def __init__(
        self, spec: GraphSpec, feed: dict[str, np.ndarray], items: tuple[np.ndarray, np.ndarray] | None, ids: RawIds
    ) -> None:
        self.spec, self.feed, self.items, self.ids = spec, feed, items, ids

    def row(self, row: int) -> str:
        f = self.feed
        if "user_idx" in f:
            return self.ids.user(int(f["user_idx"][row]))
        if "item_idx" in f:
            return f"the row of {self.ids.item(int(f['item_idx'][row]))}"
        if "history" in f:
            h = [int(i) for i in f["history"][row] if i >= 0]
            shown = ", ".join(self.ids.item(i) for i in h[:3]) + (f" and {len(h) - 3} more" if len(h) > 3 else "")
            return f"the row of history [{shown}]"
        return f"row {row}"

    def __call__(self, row: int, col: int) -> str:
        if self.items is not None:  # a top-k output: the column is a rank, the items PyTorch's and onnxruntime's
            ref, got = (int(i[row, col]) for i in self.items)
            if ref == got:
                return f"{self.row(row)}, {self.ids.item(ref)} at rank {col + 1}"
            both = f"{self.ids.item(ref)} in PyTorch, {self.ids.item(got)} in onnxruntime"
            return f"{self.row(row)}, rank {col + 1} ({both})"
        if "items" in self.feed:
            return f"{self.row(row)}, {self.ids.item(int(self.feed['items'][row, col]))}"
        return f"{self.row(row)}, column {col}"


@dataclass
class _Batch:
    """One batch's outputs, kept until the graph's scale is known."""

    where: _Where
    ref: np.ndarray  # PyTorch's scores (float64)
    got: np.ndarray  # onnxruntime's scores (float64)
    items: tuple[np.ndarray, np.ndarray] | None  # top-k graphs: PyTorch's and onnxruntime's items


def _check_finite(spec: GraphSpec, batch: _Batch) -> None:
    """PyTorch's scores hold no NaN, and -inf stands where it stands in onnxruntime's."""
    nan = np.argwhere(np.isnan(batch.ref.reshape(len(batch.ref), -1)))
    if len(nan):  # the model itself is broken: no graph can agree with it in a useful way
        raise ParityError(
            f"{spec.name}: PyTorch's own score is NaN at {batch.where(int(nan[0][0]), int(nan[0][1]))}: the "
            "trained model has NaN weights; train it again (e.g. with a lower --lr)"
        )
    finite = np.isfinite(batch.ref)
    if not np.array_equal(finite, np.isfinite(batch.got)):
        bad = int(np.argwhere(finite != np.isfinite(batch.got))[0][0])
        raise ParityError(
            f"{spec.name}: -inf/NaN positions differ between PyTorch and onnxruntime ({batch.where.row(bad)})"
        )


def _compare(report: GraphParity, batches: list[_Batch], tol: Tolerance, topk: int) -> tuple[float, str]:
    """Fill ``report``'s value figures from every batch, against the largest |score| of them all;
    return the first row whose top-k disagrees beyond ties ("" if none)."""
    report.max_abs_score = max((max_abs_score(b.ref) for b in batches), default=0.0)
    width = tol.tie_width(report.max_abs_score)
    agree_rows, first_disagreement = 0, ""
    for b in batches:
        ref2, got2 = b.ref.reshape(len(b.ref), -1), b.got.reshape(len(b.got), -1)
        diff = np.abs(np.where(np.isfinite(ref2), ref2 - got2, 0.0))
        if diff.size and (diff.max() > report.max_abs_diff or not report.worst):
            row, col = np.unravel_index(int(np.argmax(diff)), diff.shape)
            report.max_abs_diff, report.worst = float(diff[row, col]), b.where(int(row), int(col))
        if b.items is not None:
            agree = _topk_agree(b.ref, b.items[0], b.got, b.items[1], topk, width)
            if not first_disagreement and not agree.all():
                first_disagreement = b.where.row(int(np.argmin(agree)))
            agree_rows += int(agree.sum())
            report.topk_rows += len(agree)
    if report.topk_rows:
        report.topk_agreement = agree_rows / report.topk_rows
    scale, allowed = report.max_abs_score, tol.allowed(report.max_abs_score)
    report.max_rel_diff = report.max_abs_diff / scale if scale > 0 else 0.0
    report.tolerance_used = report.max_abs_diff / allowed if allowed > 0 else (math.inf if report.max_abs_diff else 0.0)
    return allowed, first_disagreement


def _run_batch(
    session: ort.InferenceSession, module: nn.Module, spec: GraphSpec, batch: tuple[np.ndarray, ...]
) -> tuple[dict[str, np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The feed, PyTorch's outputs and onnxruntime's outputs for one batch."""
    feed = {
        t.name: np.ascontiguousarray(a, dtype=_NP_DTYPES[t.dtype])
        for t, a in zip(spec.module_inputs, batch, strict=True)
    }
    with torch.no_grad():
        out = module(*(torch.from_numpy(feed[t.name]) for t in spec.module_inputs))
    ref = [r.numpy() for r in (out if isinstance(out, tuple) else (out,))]
    if spec.k_max:
        feed[K] = np.array([spec.k_max], dtype=np.int64)
    got = session.run([t.name for t in spec.outputs], feed)
    b = len(next(iter(feed.values())))
    for t, g, r in zip(spec.outputs, got, ref, strict=True):
        want = tuple(b if d == "batch" else (r.shape[i] if isinstance(d, str) else d) for i, d in enumerate(t.shape))
        if g.shape != want or g.shape != r.shape:
            raise ParityError(f"{spec.name}: output {t.name} has shape {g.shape}, expected {want}")
        if g.dtype != _NP_DTYPES[t.dtype]:
            raise ParityError(f"{spec.name}: output {t.name} is {g.dtype}, expected {t.dtype}")
    return feed, ref, got


def check_values(
    session: ort.InferenceSession,
    module: nn.Module,
    spec: GraphSpec,
    batches: Iterable[tuple[np.ndarray, ...]],
    *,
    tolerance: Tolerance | None = None,
    min_topk_agreement: float = 0.999,
    topk: int = 10,
    ids: RawIds | None = None,
) -> GraphParity:
    """Run every batch through both; raise :class:`ParityError` past the tolerances, naming the graph,
    the row and item of the largest difference, the observed and the allowed difference, and what to do."""
    tol, ids = tolerance or Tolerance(), ids or RawIds()
    report = GraphParity(atol=tol.atol, rtol=tol.rtol)
    kept: list[_Batch] = []
    sizes: set[int] = set()
    module.eval()
    for batch in batches:
        feed, ref, got = _run_batch(session, module, spec, batch)
        items = (ref[1], got[1]) if len(spec.outputs) == 2 else None
        kept.append(_Batch(_Where(spec, feed, items, ids), ref[0].astype(np.float64), got[0].astype(np.float64), items))
        _check_finite(spec, kept[-1])
        if spec.k_max and len(kept) == 1:  # once per graph, on its first batch
            check_runtime_k(session, spec, feed, got, tol)
        sizes.add(len(ref[0]))
        report.rows += len(ref[0])
    report.batch_sizes = tuple(sorted(sizes))
    allowed, first_disagreement = _compare(report, kept, tol, topk)
    if report.tolerance_used > 1.0:
        scale = report.max_abs_score
        need = (report.max_abs_diff - tol.atol) / scale if scale > 0 else 0.0
        fix = f"--rtol {_round_up(need)}" if scale > 0 else f"--atol {_round_up(report.max_abs_diff)}"
        raise ParityError(
            f"{spec.name}: onnxruntime's score differs from PyTorch's by {report.max_abs_diff:.3g} at {report.worst}, "
            f"where {allowed:.3g} is allowed (atol {tol.atol:g} + rtol {tol.rtol:g} x {scale:.3g}, the largest "
            f"|score|); re-run with {fix} if this is acceptable, or report a bug"
        )
    if report.topk_agreement < min_topk_agreement:
        raise ParityError(
            f"{spec.name}: the top-{topk} items agree with PyTorch for only {report.topk_agreement:.2%} of rows "
            f"(at least {min_topk_agreement:.1%} required, ties within the tolerance aside; first at "
            f"{first_disagreement}); report a bug"
        )
    return report
