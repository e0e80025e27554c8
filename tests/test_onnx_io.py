"""The exporter's one retry: CPython 3.11's ast race (python/cpython#106905) fails an export with a
SystemError when another thread parses source meanwhile; the export is run again, for real, and nothing
else is retried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnxrec.errors import ExportError
from onnxrec.exporter.onnx_io import AST_RACE, export_module
from onnxrec.exporter.spec import GraphSpec, TensorSpec

SPEC = GraphSpec("affine", (TensorSpec("x", "float32", ("batch", 3)),), (TensorSpec("y", "float32", ("batch", 3)),))


class _Affine(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


@pytest.mark.parametrize("message, exported", [(AST_RACE + " (before=183, after=35)", True), ("other", False)])
def test_the_exporter_runs_again_after_cpythons_ast_race_only(
    message: str, exported: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = torch.onnx.export, []

    def racy(*args: Any, **kwargs: Any) -> Any:
        """The first call fails as the race does; later ones are the real exporter."""
        calls.append(1)
        if len(calls) == 1:
            raise SystemError(message)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", racy)
    example = (torch.arange(6, dtype=torch.float32).reshape(2, 3),)
    path = tmp_path / "affine.onnx"
    if not exported:
        with pytest.raises(ExportError, match="ONNX export failed: other"):
            export_module(_Affine(), SPEC, example, path)
        assert len(calls) == 1 and not path.exists()
        return
    export_module(_Affine(), SPEC, example, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x * 2 + 1, rtol=1e-6)
    assert len(calls) == 2
