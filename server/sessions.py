"""onnxruntime sessions for a model version: which device really works, and the sessions of its graphs.

``auto`` takes CUDA only when a probe session really runs on it; ``cuda`` never falls back to the CPU
silently (the active provider of every session is checked).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import onnxruntime as ort

from onnxrec.errors import OnnxrecError

log = logging.getLogger("onnxrec.server")

GRAPHS = ("recommend", "recommend_from_history", "score", "similar_items")
INDEX_GRAPHS = ("user_vector", "user_vector_from_history")  # versions with a nearest-neighbour index
RANK_GRAPHS = ("rank", "rank_from_history")  # pipeline versions (retrieve, then rank)
EXPLAIN_GRAPHS = ("explain", "explain_from_history")  # versions that explain (exporter/explain.py)
SMALL_CATALOG = 100_000  # below this many items, intra_op_threads=0 means one onnxruntime thread on the CPU


class ModelLoadError(OnnxrecError):
    """A version directory could not be loaded (bad manifest, hash mismatch, no CUDA, ...)."""


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return bytes(model.SerializeToString())


def cuda_status() -> tuple[bool, str]:
    """Whether onnxruntime really runs on CUDA here (a session is created and its providers checked),
    and why not."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        quiet = io.StringIO()  # it prints what it cannot find; the probe below reports that in one line
        with contextlib.suppress(Exception), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            preload()
    ort.set_default_logger_severity(4)  # the probe's expected failure on CPU machines is not news
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        session = ort.InferenceSession(_probe_model(), opts, providers=["CUDAExecutionProvider"])
        active = session.get_providers()[0]
    except Exception as exc:  # onnxruntime's own error types
        return False, f"creating a CUDA session failed ({str(exc).splitlines()[0]})"
    finally:
        ort.set_default_logger_severity(2)
    if active != "CUDAExecutionProvider":
        return False, f"onnxruntime fell back to {active} (no GPU, or CUDA/cuDNN libraries missing)"
    return True, "CUDAExecutionProvider is active"


def resolve_device(device: str) -> str:
    """``cuda`` or ``cpu`` for ``device`` (auto, cuda, cpu): auto takes CUDA when it really works;
    cuda raises :class:`ModelLoadError` when it does not (never a silent CPU fallback)."""
    if device == "cpu":
        return "cpu"
    if device not in ("auto", "cuda"):
        raise ModelLoadError(f"unknown device {device!r} (use auto, cuda or cpu)")
    ok, why = cuda_status()
    if device == "cuda" and not ok:
        raise ModelLoadError(f"--device cuda: CUDA is not usable: {why}")
    chosen = "cuda" if ok else "cpu"
    log.info("device %s: running on %s (%s)", device, chosen, why)
    return chosen


def providers_for(device: str) -> list[str]:
    """The execution providers for ``device`` (auto, cuda or cpu). ``auto`` is resolved by a real
    probe (:func:`resolve_device`); with ``cuda`` each session's active provider is checked after
    creation, so CUDA never falls back to the CPU silently."""
    if device == "auto":
        device = resolve_device(device)
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    raise ModelLoadError(f"unknown device {device!r} (use auto, cuda or cpu)")


def open_sessions(
    path: Path, manifest: dict[str, Any], device: str, intra_op_threads: int, precision: str
) -> dict[str, ort.InferenceSession]:
    """One session per graph of the version at ``path`` (the ``precision`` variant when not fp32), the
    user-vector graphs included when the version has a nearest-neighbour index (and only they when it is
    :func:`index_only`) and the ranking graphs when it is a pipeline (:func:`is_pipeline`).

    Idle onnxruntime threads would spin on the cores the gRPC event loop needs, so spinning is off; a
    small catalog's run is shorter than waking a second thread, so ``intra_op_threads=0`` means one
    thread on the CPU below :data:`SMALL_CATALOG` items. Plain ``run()`` (no IO binding): on
    onnxruntime 1.31 CUDA (H200) it was as fast or faster at every batch size (BENCHMARKS.md, GPU)."""
    providers = providers_for(device)
    opts = ort.SessionOptions()
    if intra_op_threads == 0 and providers[0] == "CPUExecutionProvider" and int(manifest["num_items"]) < SMALL_CATALOG:
        intra_op_threads = 1
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    sessions: dict[str, ort.InferenceSession] = {}
    graphs: tuple[str, ...] = () if index_only(manifest) else GRAPHS
    graphs += (INDEX_GRAPHS if manifest.get("index") else ()) + (RANK_GRAPHS if is_pipeline(manifest) else ())
    graphs += EXPLAIN_GRAPHS if explains(manifest) else ()
    for graph in graphs:
        file = manifest["graphs"][graph]["file"]
        if precision != "fp32":
            file = f"{graph}.{precision}.onnx"
            if file not in manifest.get("files", {}):
                raise ModelLoadError(f"{path}: no {precision} variant (export with --precision {precision})")
        try:
            session = ort.InferenceSession(str(path / file), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{path / file}: onnxruntime cannot load it ({exc})") from exc
        if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
            raise ModelLoadError(f"{path / file}: CUDA was asked for but {session.get_providers()[0]} runs")
        sessions[graph] = session
    return sessions


def explains(manifest: dict[str, Any]) -> bool:
    """Whether the version has the explain graphs (its manifest names how it explains)."""
    return bool((manifest.get("explain") or {}).get("methods"))


def index_only(manifest: dict[str, Any]) -> bool:
    """Whether the version holds only the user-vector graphs and the index (exporter/catalog.py)."""
    return bool((manifest.get("index") or {}).get("index_only"))


def is_pipeline(manifest: dict[str, Any]) -> bool:
    """Whether the version retrieves, then ranks (its manifest lists a ``rank`` stage)."""
    return any(stage.get("stage") == "rank" for stage in manifest.get("stages", []))


def feature_inputs(manifest: dict[str, Any], graph: str) -> list[str]:
    """The user features ``graph`` reads (its ``user_<name>`` inputs), in input order."""
    inputs = manifest["graphs"][graph]["inputs"]
    return [t["name"][len("user_") :] for t in inputs if t["name"].startswith("user_") and t["name"] != "user_idx"]


def explain_refusal(manifest: dict[str, Any]) -> str | None:
    """Why the version answers no explain request (None: it does)."""
    if explains(manifest):
        return None
    named = f"model {manifest['name']} version {manifest['version']}"
    if "explain" not in manifest:
        return f"{named} was exported before explanations; export its run again (onnxrec export) to explain"
    return f"{named} cannot explain its recommendations: {manifest['explain'].get('why', '')}"
