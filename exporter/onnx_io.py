"""PyTorch module -> ONNX file, onnxruntime's offline optimisation, and CPU sessions for checking."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import nn

from onnxrec.errors import ExportError
from onnxrec.exporter.repository import data_file
from onnxrec.exporter.spec import GraphSpec, K

OPSET = 18
IR_VERSION = 10  # readable by every onnxruntime >= 1.16

log = logging.getLogger("onnxrec.export")
#: CPython 3.11's ast module keeps one recursion counter per interpreter, so an ``ast.parse`` in another
#: thread while the exporter (onnxscript) parses torchlib's sources can fail it with this SystemError
#: (python/cpython#106905); the export is deterministic, so it is run again.
AST_RACE = "AST constructor recursion depth mismatch"
AST_RACE_RETRIES = 2
#: a graph whose weights pass this many bytes is written with them in a separate file beside it (ONNX
#: external data, ``<graph>.onnx.data``): one protobuf message cannot pass 2 GiB, and a 10M-item
#: catalog's 64-dim table alone is 2.6 GB
EXTERNAL_DATA_BYTES = 1 << 30


def weight_bytes(module: nn.Module) -> int:
    """The bytes of ``module``'s parameters and buffers (what its graph holds as initializers)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress and warnings about optional packages; keep the CLI output clean."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        logging.getLogger("onnx_ir").setLevel(logging.WARNING)
        logging.getLogger("onnxscript").setLevel(logging.WARNING)
        yield


def export_module(
    module: nn.Module,
    spec: GraphSpec,
    example: tuple[torch.Tensor, ...],
    path: Path,
    external_from_bytes: int | None = None,
) -> bool:
    """Export ``module`` called with ``example`` to ``path`` with ``spec``'s names and dynamic axes;
    a module whose weights reach ``external_from_bytes`` (default :data:`EXTERNAL_DATA_BYTES`) keeps
    them in :func:`data_file` (returns whether it did)."""
    module.eval()
    limit = EXTERNAL_DATA_BYTES if external_from_bytes is None else external_from_bytes
    external = weight_bytes(module) >= limit
    dims: dict[str, torch.export.Dim] = {}
    dynamic: list[dict[int, torch.export.Dim]] = []
    for tensor in spec.module_inputs:
        axes = {}
        for axis, name in enumerate(tensor.shape):
            if isinstance(name, str):
                axes[axis] = dims.setdefault(name, torch.export.Dim(name, min=1))
        dynamic.append(axes)
    # a forward(*features) takes its trailing inputs as one tuple, and so must their dynamic shapes
    params = list(inspect.signature(module.forward).parameters.values())
    if params and params[-1].kind is inspect.Parameter.VAR_POSITIONAL and len(dynamic) > len(params) - 1:
        fixed = len(params) - 1
        shapes: tuple[Any, ...] = (*dynamic[:fixed], tuple(dynamic[fixed:]))
    else:
        shapes = tuple(dynamic)
    for attempt in range(1 + AST_RACE_RETRIES):
        try:
            _export(module, spec, example, shapes, path, external)
            break
        except ExportError:
            raise
        except SystemError as exc:
            if AST_RACE not in str(exc) or attempt == AST_RACE_RETRIES:
                raise ExportError(f"{spec.name}: ONNX export failed: {_summary(exc)}") from exc
            log.warning("%s: the ONNX exporter hit CPython's ast race (%s); exporting again", spec.name, exc)
        except Exception as exc:  # torch.export raises many types; the message is what matters
            raise ExportError(f"{spec.name}: ONNX export failed: {_summary(exc)}") from exc
    model = onnx.load(str(path), load_external_data=False)  # external weights stay where they are
    model.ir_version = min(model.ir_version, IR_VERSION)
    if spec.k_max:
        add_k_input(model, spec)
    onnx.save(model, str(path))
    return external


def _export(
    module: nn.Module,
    spec: GraphSpec,
    example: tuple[torch.Tensor, ...],
    shapes: tuple[Any, ...],
    path: Path,
    external: bool,
) -> None:
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=[t.name for t in spec.module_inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_shapes=shapes,
            opset_version=OPSET,
            external_data=external,
            verbose=False,
        )
        if program is None:
            raise ExportError(f"{spec.name}: the ONNX exporter returned nothing")
        program.save(str(path), external_data=external)
    if external and not data_file(path).exists():
        raise ExportError(f"{spec.name}: the exporter wrote no {data_file(path).name}")


def add_k_input(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Make the graph's top-k take its k at run time: a new int64 input ``k`` [1] feeds the TopK node
    instead of the constant PyTorch traced, and the outputs' k axis becomes symbolic. A caller asking
    for 10 of a k_max=100 graph then pays for a top-10 (the sort is most of the graph's time at large
    batches). ``k`` must be in ``[1, spec.k_max]``: the server checks it, so the graph spends no nodes
    clamping it."""
    graph = model.graph
    topks = [n for n in graph.node if n.op_type == "TopK"]
    if len(topks) != 1:
        raise ExportError(f"{spec.name}: expected one TopK node in the exported graph, found {len(topks)}")
    graph.input.append(onnx.helper.make_tensor_value_info(K, onnx.TensorProto.INT64, [1]))
    topks[0].input[1] = K
    del graph.value_info[:]  # shapes recorded with the traced k; onnxruntime infers them again
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) == 2:
            dims[1].Clear()
            dims[1].dim_param = K


def _summary(exc: Exception) -> str:
    """One line out of the exporter's long multi-part message: its exception summary if it has one."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("<class"):
            return ln
    return lines[0] if lines else type(exc).__name__


def optimize_offline(src: Path, dst: Path, external: bool = False) -> None:
    """Save onnxruntime's basic (provider-independent) offline optimisation of ``src`` as ``dst`` (with
    ``external``, its weights in :func:`data_file` of ``dst``).

    Its warnings (``Removing initializer 'val_8'. It is not used by any node``: the exporter leaves
    constants that folding made unused, and this pass drops them) are nothing a user can act on;
    errors still show."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    if external:
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_file(dst).name)
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    onnx.checker.check_model(str(dst))


def cpu_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``path``."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
