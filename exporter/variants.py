"""Reduced-precision variants of the exported graphs and their measured quality change.

* ``fp16``: the graph module computed in half precision (weights and arithmetic), outputs cast
  back to float32 so the signature stays the same, for GPUs.
* ``int8``: onnxruntime's dynamic quantization of MatMul and Gather weights, for CPUs.

The quality change is measured on the validation split through the ``score`` graph over the whole
catalog, by the same evaluation code as training, side by side with the fp32 graph.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from onnxrec.errors import ExportError
from onnxrec.exporter.onnx_io import cpu_session, export_module
from onnxrec.exporter.spec import GraphSpec
from onnxrec.trainer.data.dataset import Dataset
from onnxrec.trainer.evaluate import evaluate

PRECISIONS = ("fp16", "int8")


class HalfPrecision(nn.Module):
    """A graph module computed in float16 whose float outputs are returned as float32, so the
    variant keeps the fp32 graph's signature."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(inner).half()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.inner(*inputs)
        if isinstance(out, tuple):
            return tuple(o.float() if o.is_floating_point() else o for o in out)
        return out.float()


class _QuantizerAdvice(logging.Filter):
    """Drops the warnings onnxruntime's quantizer logs on the root logger ("Please consider to run
    pre-processing before quantization"): advice about onnxrec's own pipeline, nothing a user can act
    on. Its errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root, advice = logging.getLogger(), _QuantizerAdvice()
    root.addFilter(advice)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(advice)


def make_variant(
    module: nn.Module, spec: GraphSpec, example: tuple[torch.Tensor, ...], fp32_file: Path, dst: Path, precision: str
) -> None:
    """Write the ``precision`` variant of one graph to ``dst``: fp16 is exported from a half-precision
    copy of ``module``; int8 quantizes the (unoptimised) fp32 graph at ``fp32_file``."""
    if precision == "fp16":
        export_module(HalfPrecision(module), spec, example, dst)
    elif precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # the exporter's recorded intermediate shapes trip the quantizer's shape inference; drop them
        plain = onnx.load(str(fp32_file))
        del plain.graph.value_info[:]
        stripped = dst.with_suffix(".in.onnx")
        onnx.save(plain, str(stripped))
        try:
            with _quiet_quantizer():
                quantize_dynamic(
                    str(stripped), str(dst), op_types_to_quantize=["MatMul", "Gather"], weight_type=QuantType.QInt8
                )
        except Exception as exc:  # the quantizer raises onnx/ORT errors of many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{spec.name}: int8 quantization failed ({first})") from exc
        finally:
            stripped.unlink(missing_ok=True)
    else:
        raise ExportError(f"unknown precision {precision!r} (use {' or '.join(PRECISIONS)})")
    onnx.checker.check_model(str(dst))


class SessionScorer:
    """Scores every item through a ``score`` graph session (the evaluation scorer interface)."""

    def __init__(self, session: ort.InferenceSession, num_items: int) -> None:
        self.session = session
        self.num_items = num_items

    def __call__(self, users: np.ndarray, stage: str) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = np.broadcast_to(np.arange(self.num_items, dtype=np.int64), (len(users), self.num_items))
        (scores,) = self.session.run(["scores"], {"user_idx": users, "items": np.ascontiguousarray(items)})
        return np.asarray(scores, dtype=np.float64)


def quality_change(fp32_score: Path, variant_score: Path, ds: Dataset) -> dict[str, float]:
    """Validation HR@10 / NDCG@10 (both views) of fp32 and the variant, and the change."""
    base = evaluate(SessionScorer(cpu_session(fp32_score), ds.num_items), ds, "valid", batch_size=64)
    var = evaluate(SessionScorer(cpu_session(variant_score), ds.num_items), ds, "valid", batch_size=64)
    out: dict[str, float] = {}
    for view in ("sampled", "full"):
        for metric in ("hr@10", "ndcg@10"):
            out[f"{view}/{metric}_fp32"] = base[view][metric]
            out[f"{view}/{metric}"] = var[view][metric]
            out[f"{view}/{metric}_change"] = round(var[view][metric] - base[view][metric], 6)
    out["hr@10_change"] = out["sampled/hr@10_change"]
    out["ndcg@10_change"] = out["sampled/ndcg@10_change"]
    return out
