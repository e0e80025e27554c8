"""GPU serving benchmark: Recommend on the CUDA execution provider against the CPU, PyTorch and plain graphs.

One script for one short session on a lent H100/H200 machine (and a ``--device cpu --quick`` dry run that
works on any CPU machine). For 64-dim matrix-factorisation catalogs of 1M and 100k items (in that order) it:

1. **builds the catalogs**: 100k through ``synthetic_catalog.make_catalog_run`` + the project's
   ``export()`` with ``ExportOptions(k_max=10, precisions=("fp16",))`` (the product's graphs and its
   fp16 variant, served and loaded through ``LoadedModel``); 1M as a seeded, untrained ``MF`` model
   only, because a full export of 1M items takes 4-6 minutes and 11 GB on this project's 2-core CPU
   machine, too long for the device budget. Catalogs above ``--export-max`` items (default 200,000) are
   built that way; the JSON says which was which;
2. **measures in-process users/s** at batch 1, 64, 256 and 1024 (CUDA) for:
   the exporter's own ``recommend`` graph (``exporter.graphs.RecommendGraph`` through ``export_module``,
   fp32 and fp16 through ``variants.HalfPrecision``: Gather -> MatMul -> exclusion scatter -> TopK, with
   a ``--exclude-width`` (32) exclusion list per user and runtime k), a plain hand-built
   Gather-MatMul-TopK graph without exclusions (the issue's baseline; fp32 and fp16), the exported
   version through the server's ``LoadedModel`` (fp32/fp16; exclusions = each user's seen items), each
   with IO binding off and on (inputs bound as OrtValues on the GPU, outputs bound to the GPU and copied
   back after ``run_with_iobinding``; the copies are inside the timing), PyTorch on CUDA (gather, matmul,
   topk on the same factors, fp32 and fp16), and the CPU execution provider (batch 1, 64, 256 only);
3. **checks parity**: top-10 on CUDA against top-10 on the CPU (same exclusions) for the plain, the
   recommend and the exported graph (a row agrees when the item sets are equal or every differing item's
   float64 score is within 1e-4 of the CPU's 10th score; >= 99.9 % of users required), and fp16 against
   fp32 (reported, not required);
4. **serves**: ``onnxrec serve --device cuda`` and ``--device cpu`` on the exported catalog, one process
   and ``--serve-workers`` (4) processes, driven by ``onnxrec.clients.bench.run_bench`` closed loop at
   concurrency 1, 16 and 64 (QPS, p50, p99, the server's mean batch).

5. **SASRec on CUDA** (issue #19; ``--skip sasrec`` leaves it out): trains a small SASRec on synthetic
   data with ``--device cuda`` (torch), exports it (parity against PyTorch on the CPU, as always), then
   answers the same 256 histories (``recommend_from_history``, the transformer graph) and the known
   users' ``recommend`` through ``LoadedModel`` on the CUDA and the CPU provider: the top-10s must
   agree as the parity check above says, the scores within 1e-3 of their magnitude.

Every CUDA session is checked: ``session.get_providers()[0]`` must be ``CUDAExecutionProvider`` (the
script stops with an error otherwise, never a silent CPU fallback); ``onnxruntime.preload_dlls()`` runs
first. Writes JSON to ``--out``, else ``$OUT/gpu.json`` when ``$OUT`` is set, else
``benchmarks/results/gpu.json``, and prints markdown tables. Each part's wall time is in the JSON
(``timings_s``); the whole run took 5 minutes on an H200 (2026-11-28).

On the device machine ``onnxrec`` is not installed: when ``import onnxrec`` fails, the script lays a
one-file shim package under the temp folder that maps ``onnxrec`` onto this checkout's ``onnxrec/`` (and
the ``trainer``, ``exporter``, ``server``, ``clients`` folders beside it) and puts it on ``PYTHONPATH``
for itself and the server and load processes it starts.

Device commands (from the repository root here, in this order; ``benchmarks/gpu_prepare.sh`` prints them too):

0. Here, once: ``bash ../shared/tools/ortgpu/prepare.sh`` (writes ``.ortgpu/part0..4`` and ``NAME``: the
   onnxruntime-gpu wheel in five parts) and ``bash benchmarks/gpu_prepare.sh`` (writes ``.gpuwheels/``,
   about 7.5 MiB: grpcio 1.85.3, protobuf 7.36.2, grpcio-health-checking, grpcio-reflection, tomli-w;
   the device image already has torch, numpy, pyarrow, onnx, onnxscript, onnx-ir, ml-dtypes, click,
   tqdm and prometheus-client, but maybe an older grpcio/protobuf than ``onnxrec/v1`` needs).
1. ``carry=[".ortgpu/part0", ".gpuwheels"]``, ``timeout_s=180`` (installs the small wheels and lists
   what imports, so a gap shows before the long run)::

       mkdir -p /tmp/ortgpu && cp .ortgpu/part0 /tmp/ortgpu/ &&
       python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpuwheels/*.whl &&
       PYTHONPATH=/tmp/site python3 benchmarks/gpu.py --check-deps

2. Three uploads, N = 1, 2, 3, each ``carry=[".ortgpu/partN"]``, ``timeout_s=120``::

       cp .ortgpu/partN /tmp/ortgpu/

3. The run, ``carry=[".ortgpu/part4", ".ortgpu/NAME"]``, ``timeout_s=600``::

       cp .ortgpu/part4 /tmp/ortgpu/ && cat /tmp/ortgpu/part? > /tmp/$(cat .ortgpu/NAME) &&
       python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/$(cat .ortgpu/NAME) &&
       export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 &&
       python3 benchmarks/gpu.py --device cuda 2>&1 | tee $OUT/gpu.log

   It writes ``$OUT/gpu.json`` and ``$OUT/gpu.log``. Expect about 2.5 minutes for the uploads (plus the
   machine's start) and 4-6 minutes for the run. If ``--check-deps`` shows pyarrow, onnx or onnxscript
   missing, ``gpu_prepare.sh --full`` fetches them too and prints the longer sequence.

Local dry run (CPU only; CUDA parts skipped with the reason in the JSON)::

    python benchmarks/gpu.py --device cpu --quick --out benchmarks/results/gpu_cpu_quick.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import time_point

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

K = 10
DIM = 64
TIE_TOL = 1e-4
MIN_AGREEMENT = 0.999
DEPENDENCIES = {  # module: distribution
    "numpy": "numpy",
    "torch": "torch",
    "onnxruntime": "onnxruntime-gpu",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnx_ir": "onnx-ir",
    "ml_dtypes": "ml-dtypes",
    "pyarrow": "pyarrow",
    "grpc": "grpcio",
    "grpc_health": "grpcio-health-checking",
    "grpc_reflection": "grpcio-reflection",
    "google.protobuf": "protobuf",
    "prometheus_client": "prometheus-client",
    "click": "click",
    "tomli_w": "tomli-w",
    "tqdm": "tqdm",
}

Feed = dict[str, Any]
Runner = Callable[[Feed], Any]


# --------------------------------------------------------------------------- environment


def ensure_onnxrec() -> str:
    """Make ``import onnxrec`` work: installed, or through a shim package mapped onto this checkout.

    The shim's ``__path__`` is ``[onnxrec/, repository root]``, so ``onnxrec.v1`` and ``onnxrec.cli`` come from
    ``onnxrec/`` and ``onnxrec.trainer`` / ``exporter`` / ``server`` / ``clients`` from the folders of the same
    name, as ``pyproject.toml``'s ``package-dir`` maps them. ``PYTHONPATH`` carries it to child processes.
    """
    if os.environ.get("ONNXREC_GPU_FORCE_SHIM") != "1":
        try:
            importlib.import_module("onnxrec")
            return "installed"
        except ImportError:
            pass
    shim = Path(tempfile.gettempdir()) / "onnxrec-shim"
    pkg = shim / "onnxrec"
    pkg.mkdir(parents=True, exist_ok=True)
    root = REPO / "onnxrec"
    (pkg / "__init__.py").write_text(
        "# generated by benchmarks/gpu.py: onnxrec from the checkout at " + str(REPO) + "\n"
        f"__path__ = [{str(root)!r}, {str(REPO)!r}]\n"
        f"exec(compile(open({str(root / '__init__.py')!r}).read(), {str(root / '__init__.py')!r}, 'exec'))\n"
    )
    sys.path.insert(0, str(shim))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    for name in [m for m in sys.modules if m == "onnxrec" or m.startswith("onnxrec.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    importlib.import_module("onnxrec")
    return f"shim at {pkg}"


def dependency_report() -> dict[str, str]:
    """Version (or why not importable) of each module the script and onnxrec use."""
    from importlib import metadata

    out: dict[str, str] = {}
    for name, dist in DEPENDENCIES.items():
        try:
            mod = importlib.import_module(name)
            where = Path(getattr(mod, "__file__", None) or "?").parent
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                version = metadata.version("onnxruntime") if name == "onnxruntime" else "present"
            out[name] = f"{version} ({where})"
        except Exception as exc:  # an import may fail with any error (version checks, missing libraries)
            out[name] = f"MISSING ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
    return out


def importable(*modules: str) -> tuple[bool, str]:
    """Whether every module imports, and the first failure."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # see dependency_report
            return False, f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return True, ""


def gpu_info() -> dict[str, Any]:
    """GPU name and driver from torch and nvidia-smi, where available."""
    info: dict[str, Any] = {}
    try:
        import torch

        info["torch_cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["name"] = torch.cuda.get_device_name(0)
            info["torch_cuda_version"] = torch.version.cuda
    except ImportError as exc:
        info["torch"] = f"missing: {exc}"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if smi.returncode == 0:
            info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["nvidia_smi"] = f"unavailable: {type(exc).__name__}"
    return info


# --------------------------------------------------------------------------- catalogs


@dataclass
class Catalog:
    """One catalog: its MF model and factors (the exporter's layout: user rows with a ones column, items with
    their bias), and the exported versions when it went through ``export()``."""

    size: int
    model: Any  # onnxrec MF model: the product's graphs are built from it
    user_matrix: np.ndarray  # [U, D + 1] float32, last column 1
    scoring: np.ndarray  # [D + 1, N] float32, last row the item biases
    source: str
    version: Path | None = None  # the exported version directory, if exported
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        """Users in the catalog's user table."""
        return int(self.user_matrix.shape[0])


def catalog_of(model: Any, source: str, info: dict[str, Any], version: Path | None = None) -> Catalog:
    """The catalog of an MF ``model``: its user rows [U, D + 1] (ones column) and scoring matrix [D + 1, N]
    (bias row), the layout the exporter's recommend graph uses."""
    users = model.user_emb.weight.detach().numpy().astype(np.float32)
    items = model.item_emb.weight.detach().numpy().astype(np.float32)
    bias = model.item_b.weight.detach().numpy().astype(np.float32).reshape(1, -1)
    return Catalog(
        size=int(model.cfg.num_items),
        model=model,
        user_matrix=np.hstack([users, np.ones((len(users), 1), np.float32)]),
        scoring=np.ascontiguousarray(np.vstack([items.T, bias])),
        source=source,
        version=version,
        info=info,
    )


def exported_catalog(size: int, work: Path, seed: int, precisions: tuple[str, ...]) -> Catalog:
    """An untrained MF run over ``size`` items exported with the project's exporter (k_max 10, ``precisions``)."""
    import onnxruntime as ort
    from synthetic_catalog import make_catalog_run

    from onnxrec.exporter.export import ExportOptions, export
    from onnxrec.trainer.checkpoint import load_checkpoint, model_from_checkpoint

    ort.set_default_logger_severity(3)
    info = make_catalog_run(work / f"run{size}", size, seed=seed)
    t0 = time.perf_counter()
    # parity on 512 users instead of 2,048, to keep the device run short
    opts = ExportOptions(k_max=K, seed=seed, precisions=precisions, parity_users=512, index="exact")
    version = export(info.run, work / "repo", f"cat{size}", options=opts)
    export_s = round(time.perf_counter() - t0, 1)
    return catalog_of(
        model_from_checkpoint(load_checkpoint(info.run)),
        "synthetic_catalog.make_catalog_run + onnxrec export()",
        {**info.to_dict(), "build_s": info.seconds, "export_s": export_s, "precisions": precisions},
        version,
    )


def random_catalog(size: int, seed: int) -> Catalog:
    """A seeded, untrained ``MF`` (N(0, 0.05) factors, zero biases) over ``size`` items, users as
    ``synthetic_catalog`` sizes them; no dataset and no export (the product's graphs are built from the model)."""
    import torch
    from synthetic_catalog import default_users

    from onnxrec.trainer.models.mf import MF, MFConfig

    torch.manual_seed(seed)
    model = MF(MFConfig(default_users(size), size, DIM))
    return catalog_of(
        model,
        "seeded untrained MF model, graphs built from it (no dataset, no export())",
        {"num_users": model.cfg.num_users, "num_items": size, "dim": DIM, "build_s": 0.0},
    )


def product_graph(cat: Catalog, precision: str, work: Path) -> Path:
    """The exporter's own recommend graph for ``cat``'s model (``exporter.graphs.RecommendGraph`` through
    ``export_module``, fp16 through ``variants.HalfPrecision``): user_idx, exclude, k -> scores, items.
    Parity and the other graphs are left out, which is what makes a 1M catalog quick to build."""
    import torch

    from onnxrec.exporter.graphs import RecommendGraph, ServingTables
    from onnxrec.exporter.onnx_io import export_module
    from onnxrec.exporter.spec import recommend_spec
    from onnxrec.exporter.variants import HalfPrecision

    tables = ServingTables(
        history=np.zeros((0, 0), np.int64), user_features={}, centroids=[], last_time=np.zeros(0, np.int64)
    )
    module: Any = RecommendGraph(cat.model, tables, K)
    if precision == "fp16":
        module = HalfPrecision(module)
    path = work / f"recommend-{cat.size}-{precision}.onnx"
    example = (torch.arange(3), torch.full((3, 4), -1))
    export_module(module, recommend_spec(K), example, path)
    return path


# --------------------------------------------------------------------------- hand-built graphs


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any], name: str) -> bytes:
    from onnx import checker, helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="benchmarks/gpu.py")
    model.ir_version = 10
    checker.check_model(model)
    return bytes(model.SerializeToString())


def plain_graph(cat: Catalog, precision: str = "fp32") -> bytes:
    """user_idx [B] -> Gather(user rows) -> MatMul(item matrix) -> TopK(10): scores (float32) [B, 10], items [B, 10]."""
    from onnx import TensorProto, helper, numpy_helper

    dtype = np.float16 if precision == "fp16" else np.float32
    inits = [
        numpy_helper.from_array(cat.user_matrix.astype(dtype), "user_matrix"),
        numpy_helper.from_array(cat.scoring.astype(dtype), "scoring"),
        numpy_helper.from_array(np.array([K], np.int64), "k"),
    ]
    nodes = [
        helper.make_node("Gather", ["user_matrix", "user_idx"], ["u"], axis=0),
        helper.make_node("MatMul", ["u", "scoring"], ["all_scores"]),
        helper.make_node("TopK", ["all_scores", "k"], ["top", "items"], axis=-1, largest=1, sorted=1),
    ]
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["top"], ["scores"], to=TensorProto.FLOAT))
    else:
        nodes.append(helper.make_node("Identity", ["top"], ["scores"]))
    inputs = [helper.make_tensor_value_info("user_idx", TensorProto.INT64, ["batch"])]
    outputs = [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", K]),
        helper.make_tensor_value_info("items", TensorProto.INT64, ["batch", K]),
    ]
    return _model(nodes, inputs, outputs, inits, f"plain_{precision}")


# --------------------------------------------------------------------------- sessions and runners


class CudaNotActive(RuntimeError):
    """CUDA was asked for and onnxruntime is not running on it: the run stops (never a silent CPU fallback)."""


def make_session(model: bytes | Path, device: str, profile_prefix: str | None = None) -> Any:
    """An onnxruntime session on ``device``; on CUDA the active provider is checked (no silent fallback).
    ``profile_prefix``: onnxruntime's per-node profiling on, its trace written under that prefix."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise CudaNotActive(
            f"CUDA was asked for but onnxruntime runs {session.get_providers()} (no GPU, or libs missing)"
        )
    return session


def node_profile(graph: bytes | Path, device: str, feeds: list[Feed], calls: int, work: Path) -> dict[str, Any]:
    """Where a graph's time goes: 3 warm-up and ``calls`` timed runs with onnxruntime's profiler on (all of them
    in the trace); per operator type the summed kernel time (µs per call) and share, from the node events."""
    session = make_session(graph, device, str(work / "ort-profile"))
    run = session_runner(session, device, False)
    for f in feeds[:3]:
        run(f)
    for j in range(calls):
        run(feeds[j % len(feeds)])
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = str(e.get("args", {}).get("op_name", "?"))
            per_op[op] = per_op.get(op, 0.0) + float(e.get("dur", 0))
    total = sum(per_op.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])
    return {
        "calls": calls + 3,
        "kernel_us_per_call": round(total / (calls + 3), 1),
        "by_op": {op: {"us_per_call": round(us / (calls + 3), 1), "share": round(us / total, 4)} for op, us in ranked},
    }


def session_runner(session: Any, device: str, io_binding: bool) -> Runner:
    """``feed -> [scores, items]`` through ``session.run`` or an IO binding (inputs as OrtValues on ``device``,
    outputs bound there, copied to the CPU after the run; ``k`` stays on the CPU, where TopK reads it)."""
    import onnxruntime as ort

    wanted = {i.name for i in session.get_inputs()}
    if not io_binding:
        return lambda feed: session.run(None, {n: v for n, v in feed.items() if n in wanted})
    out_names = [o.name for o in session.get_outputs()]

    def run(feed: Feed) -> Any:
        binding = session.io_binding()
        for name, value in feed.items():
            if name not in wanted:
                continue
            where = "cpu" if name == "k" else device
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, where, 0))
        for name in out_names:
            binding.bind_output(name, device)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    return run


def torch_runner(cat: Catalog, device: str, precision: str) -> Runner:
    """PyTorch on ``device``: index_select the user rows, matmul with the item matrix, topk(10), copy to the CPU."""
    import torch

    dev = torch.device(device)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    users = torch.from_numpy(cat.user_matrix).to(dev, dtype)
    scoring = torch.from_numpy(cat.scoring).to(dev, dtype)

    def run(feed: Feed) -> Any:
        with torch.inference_mode():
            idx = torch.from_numpy(feed["user_idx"]).to(dev)
            values, items = torch.topk(users.index_select(0, idx) @ scoring, K, dim=1)
            return [values.float().cpu().numpy(), items.cpu().numpy()]

    return run


def loaded_model_runner(model: Any) -> Runner:
    """The server's path: ``LoadedModel.recommend(users, seen lists)`` (exclusion = each user's seen items)."""

    def run(feed: Feed) -> Any:
        return model.recommend(feed["user_idx"], feed["seen"])

    return run


def exclusions(cat: Catalog, users: np.ndarray, width: int, seed: int) -> np.ndarray:
    """Per user a fixed exclusion list [n, width + 1] (its "seen" items for the product graphs): between
    width/2 and width random items, -1 pads after them (at least one, as model format 3 graphs need),
    the same for a user on every run."""
    out = np.full((len(users), width + 1), -1, np.int64)
    for j, u in enumerate(users):
        rng = np.random.default_rng([seed, int(u)])
        n = int(rng.integers(width // 2, width + 1))
        out[j, :n] = rng.integers(0, cat.size, size=n)
    return out


def make_feeds(
    cat: Catalog, batch: int, rng: np.random.Generator, width: int, seen: Any = None, n: int = 8
) -> list[Feed]:
    """``n`` random batches: user indices, their exclusion lists and k (a runner passes what its graph takes),
    or each user's seen items when ``seen`` is a LoadedModel."""
    feeds = []
    for _ in range(n):
        users = rng.integers(0, cat.num_users, size=batch).astype(np.int64)
        feed: Feed = {"user_idx": users, "exclude": exclusions(cat, users, width, 0), "k": np.array([K], np.int64)}
        if seen is not None:
            feed["seen"] = [seen.seen(int(u)) for u in users]
        feeds.append(feed)
    return feeds


# --------------------------------------------------------------------------- parity


def topk_agreement(cat: Catalog, users: np.ndarray, got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Rows of ``got`` [n, K] agreeing with ``ref`` [n, K] (item sets equal, or every differing item's float64
    score within 1e-4 of ``ref``'s K-th score), plus exact-order and same-set shares and the mean overlap."""
    exact = same = agree = 0
    overlap = 0.0
    worst = 0.0
    for j, u in enumerate(users):
        a, b = got[j], ref[j]
        sa, sb = set(a.tolist()), set(b.tolist())
        overlap += len(sa & sb) / max(len(sb), 1)
        if np.array_equal(a, b):
            exact += 1
        if sa == sb:
            same += 1
            agree += 1
            continue
        row = cat.user_matrix[u].astype(np.float64)
        diff = np.array(sorted(sa ^ sb), dtype=np.int64)
        diff = diff[(diff >= 0) & (diff < cat.size)]
        kth = float(row @ cat.scoring[:, b[-1]].astype(np.float64))
        gap = float(np.abs(row @ cat.scoring[:, diff].astype(np.float64) - kth).max()) if len(diff) else 0.0
        worst = max(worst, gap)
        if gap <= TIE_TOL:
            agree += 1
    n = max(len(users), 1)
    return {
        "users": len(users),
        "agreement": round(agree / n, 6),
        "same_set": round(same / n, 6),
        "exact_order": round(exact / n, 6),
        "mean_overlap": round(overlap / n, 6),
        "max_score_gap_of_disagreeing_items": worst,
        "pass": agree / n >= MIN_AGREEMENT,
    }


def topk_of(run: Runner, users: np.ndarray, batch: int, loaded: Any = None, exclude: Any = None) -> np.ndarray:
    """Items [n, K] for ``users`` through ``run`` in batches, with ``exclude`` [n, E] fed to graphs that take
    it; with ``loaded`` (a LoadedModel) each user's seen items are excluded and lists are padded with -1."""
    rows = []
    for start in range(0, len(users), batch):
        u = users[start : start + batch]
        if loaded is None:
            feed: Feed = {"user_idx": u, "k": np.array([K], np.int64)}
            if exclude is not None:
                feed["exclude"] = exclude[start : start + batch]
            rows.append(np.asarray(run(feed)[1], dtype=np.int64))
            continue
        block = np.full((len(u), K), -1, np.int64)
        for j, t in enumerate(run({"user_idx": u, "seen": [loaded.seen(int(x)) for x in u]})):
            block[j, : len(t.items)] = t.items[:K]
        rows.append(block)
    return np.concatenate(rows)


# --------------------------------------------------------------------------- served


def served(
    runs: list[tuple[str, str, Path, int]], concurrency: list[int], duration: float, warmup: float, log_dir: Path
) -> dict[str, Any]:
    """For each (label, device, version, workers): ``onnxrec serve --device D --workers W`` on the version's
    repository, closed loop at each concurrency (the versions are one model's, so the same users)."""
    from serving import answers_k

    from onnxrec.clients.bench import load_user_ids

    out: dict[str, Any] = {}
    cores = os.cpu_count() or 2
    for label, device, version, workers in runs:
        users = load_user_ids(version)
        ready = answers_k(version.parent.name, users[0])
        try:
            out[label] = _served_one(
                device, version, users, ready, concurrency, duration, warmup, log_dir, cores, workers
            )
            out[label]["version"] = version.name
        except RuntimeError as exc:  # the server did not start or answer (start_server's error has its log's tail)
            out[label] = {"error": str(exc)[-3000:]}
            print(f"  served {label} FAILED: {str(exc)[-500:]}", flush=True)
    return out


def _served_one(
    device: str,
    version: Path,
    users: tuple[str, ...],
    ready: Callable[[str], bool],
    concurrency: list[int],
    duration: float,
    warmup: float,
    log_dir: Path,
    cores: int,
    workers: int = 1,
) -> dict[str, Any]:
    """One ``onnxrec serve --device DEVICE [--workers N]`` server, measured at each concurrency."""
    from serving import free_port, measure, start_server

    model = version.parent.name
    port = free_port()
    cmd = [sys.executable, "-m", "onnxrec", "serve", "--repository", str(version.parent.parent)]
    cmd += ["--device", device, "--port", str(free_port() if workers > 1 else 0), "--metrics-port", str(port)]
    cmd += ["--version-policy", "specific", "--versions", version.name, "--workers", str(workers)]
    t0 = time.perf_counter()
    points = []
    with start_server(
        f"onnxrec-{device}",
        cmd,
        log_dir / f"serve-{device}-v{version.name}-w{workers}.log",
        ready,
        metrics_url=f"http://127.0.0.1:{port}/metrics",
        timeout=300,
    ) as srv:
        start_s = time.perf_counter() - t0
        for c in concurrency:
            p = measure(srv, users, c, duration, warmup, processes=max(1, min(4, cores // 4)), model=model)
            points.append(p)
            print(
                f"  served {device} v{version.name} w{workers} c{c}: {p['qps']:,.0f} QPS p50 {p['p50_ms']:.2f} "
                f"p99 {p['p99_ms']:.2f} ms "
                f"batch {p['server_mean_batch']} errors {p['errors']}",
                flush=True,
            )
    return {"start_s": round(start_s, 1), "points": points}


# --------------------------------------------------------------------------- the run


class Recorder:
    """Times runners over batch sizes for one catalog and appends a row per point."""

    def __init__(
        self, cat: Catalog, rows: list[dict[str, Any]], rng: np.random.Generator, seconds: float, width: int
    ) -> None:
        self.cat, self.rows, self.rng, self.seconds, self.width = cat, rows, rng, seconds, width

    def run(
        self,
        graph: str,
        engine: str,
        device: str,
        precision: str,
        io_binding: bool,
        runner: Runner,
        batches: list[int],
        loaded: Any = None,
    ) -> None:
        """One row per batch size (``loaded``: a LoadedModel whose seen items the feeds carry)."""
        for b in batches:
            feeds = make_feeds(self.cat, b, self.rng, self.width, loaded)
            point = time_point(runner, feeds, b, self.seconds, 3 if device == "cpu" and b > 1 else 5)
            self.rows.append(
                {
                    "catalog": self.cat.size,
                    "graph": graph,
                    "engine": engine,
                    "device": device,
                    "precision": precision,
                    "io_binding": io_binding,
                    **point,
                }
            )
            print(
                f"  {self.cat.size:,} {graph} {engine} {device} {precision} io={io_binding} b{b}: "
                f"{point['users_per_s']:,.0f} users/s p50 {point['p50_ms']:.3f} ms",
                flush=True,
            )


class Bench:
    """The run's shared state: options, report, timing, the time budget and error capture per part."""

    def __init__(self, args: argparse.Namespace, skip: set[str], out_path: Path, report: dict[str, Any]) -> None:
        self.args, self.skip, self.out_path, self.report = args, skip, out_path, report
        self.cuda = args.device == "cuda"
        self.device = args.device
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.rng = np.random.default_rng(args.seed)
        self.seconds = 0.25 if args.quick else 0.3
        self.gpu_batches = [1, 64, 256, 1024]
        self.cpu_batches = [1, 64] if args.quick else [1, 64, 256]
        self.loaded_ok, self.loaded_why = importable("onnxrec.server.loaded_model")

    @property
    def skipped(self) -> dict[str, str]:
        """Parts not run, with the reason."""
        return cast(dict[str, str], self.report["skipped"])

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.t0

    def save(self) -> None:
        """Write the JSON as it stands (after every part, so a cut-off run still leaves its results)."""
        self.report["timings_s"] = {**self.timings, "total": round(self.elapsed(), 1)}
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self.out_path.write_text(json.dumps(self.report, indent=2, default=str) + "\n")

    @contextmanager
    def part(self, name: str, optional: bool = True) -> Iterator[bool]:
        """Time ``name``; yields False (and records why) when the time budget is spent and the part is optional.
        An error is recorded and the run goes on, except :class:`CudaNotActive`, which stops it."""
        if optional and self.elapsed() > self.args.budget_s:
            self.skipped[name] = f"time budget: {self.elapsed():.0f} s > --budget-s {self.args.budget_s:.0f}"
            print(f"[{self.elapsed():6.1f}s] {name}: skipped ({self.skipped[name]})", flush=True)
            yield False
            return
        t = time.perf_counter()
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        try:
            yield True
        except CudaNotActive:
            raise
        except Exception as exc:  # record any failure of a part and go on with the next one
            import traceback

            self.report["errors"][name] = traceback.format_exc()[-3000:]
            print(f"[{self.elapsed():6.1f}s] {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        finally:
            self.timings[name] = round(time.perf_counter() - t, 1)
            print(f"[{self.elapsed():6.1f}s] {name}: {self.timings[name]:.1f} s", flush=True)
            self.save()

    # -- parts ----------------------------------------------------------------------------------
    def build(self, size: int, work: Path, exporter_ok: bool, exporter_why: str) -> Catalog:
        """The catalog: exported when small enough and the exporter imports,
        else a seeded model whose product graphs are built directly."""
        t = time.perf_counter()
        if size <= self.args.export_max and exporter_ok:
            precisions = () if "fp16" in self.skip else ("fp16",)
            cat = exported_catalog(size, work, self.args.seed, precisions)
        else:
            cat = random_catalog(size, self.args.seed)
            cat.info["why_not_exported"] = (
                f"above --export-max {self.args.export_max:,} (the exporter took 4-6 min for 1M items on 2 CPU cores)"
                if exporter_ok
                else f"exporter unavailable: {exporter_why}"
            )
        cat.info["seconds"] = round(time.perf_counter() - t, 1)
        self.report["catalogs"][str(size)] = {"source": cat.source, **cat.info}
        return cat

    def graphs(self, cat: Catalog, work: Path) -> dict[str, bytes | Path]:
        """The graphs for ``cat``: the hand-built plain Gather-MatMul-TopK and the exporter's own recommend
        graph (exclusions, runtime k), each in fp32 and fp16."""
        graphs: dict[str, bytes | Path] = {"plain": plain_graph(cat), "recommend": product_graph(cat, "fp32", work)}
        if "fp16" not in self.skip:
            graphs["plain-fp16"] = plain_graph(cat, "fp16")
            graphs["recommend-fp16"] = product_graph(cat, "fp16", work)
        return graphs

    def sessions(self, graphs: dict[str, bytes | Path], device: str) -> dict[str, Any]:
        """A session per graph; on the CPU a graph it cannot run (fp16 kernels) is skipped with the reason."""
        out: dict[str, Any] = {}
        for g, model in graphs.items():
            if device == "cuda":  # any failure on CUDA stops the run
                out[g] = make_session(model, device)
                continue
            try:
                out[g] = make_session(model, device)
            except Exception as exc:  # onnxruntime's own error types
                self.skipped[f"{g} on {device}"] = f"session failed: {str(exc).splitlines()[0][:300]}"
        return out

    def loaded(self, version: Path, device: str, precision: str = "fp32") -> Any:
        """The server's ``LoadedModel`` for an exported version, checked to run on CUDA when asked."""
        from onnxrec.server.loaded_model import LoadedModel

        lm = LoadedModel(version, device=device, precision=precision)
        if device == "cuda" and lm.provider != "CUDAExecutionProvider":
            raise CudaNotActive(f"LoadedModel runs on {lm.provider}, not CUDA")
        return lm

    def sasrec(self, work: Path) -> None:
        """Part 5: a SASRec trained on this device, exported, and its graphs on this device against the CPU."""
        import torch

        from onnxrec.exporter.export import ExportOptions, export
        from onnxrec.trainer.config import TrainConfig
        from onnxrec.trainer.data.dataset import build_dataset, save_dataset
        from onnxrec.trainer.data.preprocess import PreprocessSpec
        from onnxrec.trainer.data.split import SplitSpec
        from onnxrec.trainer.data.synth import generate_synthetic
        from onnxrec.trainer.train import train

        log = generate_synthetic(num_users=2000, num_items=3000, interactions_per_user=40, seed=self.args.seed)
        data = save_dataset(build_dataset(log, PreprocessSpec(), SplitSpec(), "synthetic-sasrec"), work / "sasrec-data")
        train_device = "cuda" if self.cuda and torch.cuda.is_available() else "cpu"
        t = time.perf_counter()
        run = train(TrainConfig(data=str(data), out=str(work / "sasrec-run"), model="sasrec", epochs=2,
                                device=train_device, progress=False))  # fmt: skip
        train_s = time.perf_counter() - t
        version = export(run, work / "sasrec-repo", "sasrec", options=ExportOptions(k_max=K, max_batch=256))
        here = self.loaded(version, self.device)
        cpu = self.loaded(version, "cpu") if self.cuda else here
        rng = np.random.default_rng(self.args.seed)
        n = here.num_items
        histories = [rng.choice(n, int(rng.integers(1, 60)), replace=False).astype(np.int64) for _ in range(256)]
        none = [np.empty(0, dtype=np.int64)] * len(histories)
        got = here.recommend_from_history(histories, histories, [[]] * len(histories), K)
        ref = cpu.recommend_from_history(histories, histories, [[]] * len(histories), K)
        users = np.arange(min(256, here.num_users), dtype=np.int64)
        got_u, ref_u = here.recommend(users, none[: len(users)], K), cpu.recommend(users, none[: len(users)], K)
        result: dict[str, Any] = {"train_device": train_device, "train_s": round(train_s, 1), "provider": here.provider}
        for name, a, b in (("from_history", got, ref), ("known_users", got_u, ref_u)):
            scale = max(float(np.abs(r.scores).max()) for r in b)
            same = [set(x.items.tolist()) == set(y.items.tolist()) for x, y in zip(a, b, strict=True)]
            diff = max(float(np.abs(x.scores - y.scores).max()) for x, y in zip(a, b, strict=True))
            result[name] = {"rows": len(a), "same_set": float(np.mean(same)), "max_score_diff": diff, "scale": scale,
                            "pass": diff <= 1e-3 * scale and float(np.mean(same)) >= 0.99}  # fmt: skip
        self.report["sasrec"] = result
        print(f"sasrec: {json.dumps(result)}", flush=True)

    def inprocess(self, cat: Catalog, sessions: dict[str, Any], device: str, batches: list[int]) -> None:
        """Users/s of every runner on ``device``: the graphs (IO binding off/on), the exported versions through
        LoadedModel (fp32/fp16; the server has no IO binding since plain runs measured as fast), PyTorch."""
        rec = Recorder(cat, self.report["inprocess"], self.rng, self.seconds, self.args.exclude_width)
        cpu_extra = device == "cpu" and self.cuda  # the CPU beside the GPU: fewer rows
        for g, sess in sessions.items():
            precision = "fp16" if "fp16" in g else "fp32"
            name = g.removesuffix("-fp16")
            for io in (False,) if cpu_extra else (False, True):
                rec.run(name, "onnxruntime", device, precision, io, session_runner(sess, device, io), batches)
        if cat.version is None:
            self.skipped[f"{cat.size:,} exported on {device}"] = cat.info.get("why_not_exported", "not exported")
        elif not self.loaded_ok:
            self.skipped[f"{cat.size:,} exported on {device}"] = f"LoadedModel unavailable: {self.loaded_why}"
        else:
            has16 = "fp16" in cat.info.get("precisions", ())
            for p in ["fp32", "fp16"] if has16 and not cpu_extra else ["fp32"]:
                for io in (False,):
                    try:
                        lm = self.loaded(cat.version, device, p)
                    except CudaNotActive:
                        raise
                    except Exception as exc:  # ModelLoadError, onnxruntime's errors
                        if device == "cuda":
                            raise
                        self.skipped[f"{cat.size:,} exported {p} io={io} on {device}"] = str(exc).splitlines()[0][:300]
                        continue
                    rec.run("exported", "LoadedModel", device, p, io, loaded_model_runner(lm), batches, lm)
        if "torch" not in self.skip and not cpu_extra:
            for p in ("fp32", "fp16") if device == "cuda" and "fp16" not in self.skip else ("fp32",):
                rec.run("torch", "torch", device, p, False, torch_runner(cat, device, p), batches)

    def profile(self, cat: Catalog, graphs: dict[str, bytes | Path], device: str, batch: int, work: Path) -> None:
        """Per-node kernel time of each graph at ``batch`` (onnxruntime's profiler), into the report."""
        feeds = make_feeds(cat, batch, self.rng, self.args.exclude_width)
        out = self.report.setdefault("profile", {}).setdefault(str(cat.size), {})
        for g, model in graphs.items():
            out[g] = {"batch": batch, **node_profile(model, device, feeds, 10, work)}
            top = ", ".join(f"{op} {v['share']:.0%}" for op, v in list(out[g]["by_op"].items())[:4])
            us = out[g]["kernel_us_per_call"]
            print(f"  profile {cat.size:,} {g} b{batch}: {us:,.0f} us/call ({top})", flush=True)

    def parity(self, cat: Catalog, sessions: dict[str, Any], cpu: dict[str, Any]) -> None:
        """Top-10 agreement with the CPU (same exclusions): the plain and recommend graphs and the exported
        version on CUDA, and fp16 against fp32."""
        par: dict[str, Any] = self.report["parity"].setdefault(str(cat.size), {})
        users = np.sort(self.rng.choice(cat.num_users, size=min(cat.num_users, 2000), replace=False)).astype(np.int64)
        exclude = exclusions(cat, users, self.args.exclude_width, 1)
        dev = self.device

        def put(key: str, got: np.ndarray, against: np.ndarray) -> None:
            par[key] = topk_agreement(cat, users, got, against)
            v = par[key]
            print(
                f"  parity {cat.size:,} {key}: agreement {v['agreement']:.4%} same set {v['same_set']:.4%} "
                f"overlap {v['mean_overlap']:.4f} pass {v['pass']}",
                flush=True,
            )

        def top(sess: Any, device: str, io: bool = False, ex: Any = exclude) -> np.ndarray:
            return topk_of(session_runner(sess, device, io), users, 256, exclude=ex)

        if "plain" in cpu and self.cuda:
            put("plain_cuda_vs_cpu", top(sessions["plain"], "cuda", True, None), top(cpu["plain"], "cpu", ex=None))
        if "recommend" in cpu:
            ref = top(cpu["recommend"], "cpu")
            for g in ("recommend", "recommend-fp16"):
                if g in sessions and (self.cuda or g != "recommend"):
                    put(f"{g}_{dev}_vs_recommend_cpu", top(sessions[g], dev, self.cuda), ref)
        if cat.version is not None and self.loaded_ok:
            lm_cpu = self.loaded(cat.version, "cpu")
            ref_ex = topk_of(loaded_model_runner(lm_cpu), users, 256, lm_cpu)
            if self.cuda:
                lm = self.loaded(cat.version, dev)
                put(f"exported_{dev}_vs_cpu", topk_of(loaded_model_runner(lm), users, 256, lm), ref_ex)
            if "fp16" in cat.info.get("precisions", ()) and self.cuda:
                lm16 = self.loaded(cat.version, dev, "fp16")
                put(f"exported-fp16_{dev}_vs_cpu", topk_of(loaded_model_runner(lm16), users, 256, lm16), ref_ex)


def main() -> None:
    """Parse the options and run every part; write the JSON (after each part) and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="small catalog (20k), short windows")
    ap.add_argument(
        "--sizes", help="comma-separated catalog sizes, in this order (default 1000000,100000; quick 20000)"
    )
    ap.add_argument("--export-max", type=int, default=200_000, help="larger catalogs are built with onnx.helper")
    ap.add_argument("--serve-workers", type=int, default=4, help="also serve with this many workers (1: not)")
    ap.add_argument("--exclude-width", type=int, default=32, help="exclusion list per user (recommend graphs)")
    ap.add_argument("--skip", default="", help="comma-separated: torch, cpu-ep, served, fp16, exporter, sasrec")
    ap.add_argument("--budget-s", type=float, default=400.0, help="optional parts starting later are skipped")
    ap.add_argument("--out", type=Path, help="JSON path (default $OUT/gpu.json, else benchmarks/results/gpu.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-deps", action="store_true", help="print what imports and exit")
    ap.add_argument(
        "--profile-batch", type=int, default=0, help="also profile the graphs per node at this batch size (0: not)"
    )
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    onnxrec_from = ensure_onnxrec()
    if args.check_deps:
        deps: dict[str, Any] = {"onnxrec": onnxrec_from, **dependency_report()}
        for mod in ("onnxrec.exporter.export", "onnxrec.server.app", "onnxrec.clients.bench", "serving"):
            ok, why = importable(mod)
            deps[mod] = "ok" if ok else f"FAILS ({why})"
        print(json.dumps(deps, indent=2))
        return
    if os.environ.get("OUT"):
        out_path = args.out or Path(os.environ["OUT"]) / "gpu.json"
    else:
        out_path = args.out or BENCH / "results" / "gpu.json"
    sizes = (
        [int(s) for s in args.sizes.split(",")] if args.sizes else ([20_000] if args.quick else [1_000_000, 100_000])
    )
    torch_ok, torch_why = importable("torch")  # torch first, then onnxruntime (its CUDA libraries)
    import onnxruntime as ort

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/gpu.py" + " ".join(["", *sys.argv[1:]]).rstrip(),
        "device": args.device,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "onnxruntime_providers": ort.get_available_providers(),
            "onnxrec_import": onnxrec_from,
        },
        "dependencies": dependency_report(),
        "settings": {"k": K, "dim": DIM, "sizes": sizes, "tie_tolerance": TIE_TOL, "min_agreement": MIN_AGREEMENT},
        "catalogs": {},
        "inprocess": [],
        "parity": {},
        "skipped": {},
        "errors": {},
    }
    bench = Bench(args, skip, out_path, report)
    report["settings"].update(
        {"gpu_batches": bench.gpu_batches, "cpu_batches": bench.cpu_batches, "seconds_per_point": bench.seconds}
    )
    if bench.cuda:
        if not hasattr(ort, "preload_dlls"):
            raise SystemExit(f"onnxruntime {ort.__version__} has no preload_dlls(); install onnxruntime-gpu >= 1.21")
        ort.preload_dlls()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SystemExit(
                f"--device cuda: onnxruntime {ort.__version__} at {ort.__file__} has no CUDAExecutionProvider "
                f"({ort.get_available_providers()}); put onnxruntime-gpu first on PYTHONPATH"
            )
        report["machine"]["gpu"] = gpu_info()
    else:
        why = "--device cpu: no CUDA measurements (CUDA EP, IO binding on the GPU, PyTorch CUDA, serve --device cuda)"
        bench.skipped["cuda"] = why
        bench.skipped["parity cuda vs cpu"] = why
    if not torch_ok:
        skip.add("torch")
        bench.skipped["torch"] = f"torch does not import ({torch_why})"
    exporter_ok, exporter_why = importable("onnxrec.exporter.export", "synthetic_catalog")
    if "exporter" in skip:
        exporter_ok, exporter_why = False, "--skip exporter"
    server_ok, server_why = importable("grpc", "onnxrec.server.app", "onnxrec.clients.bench", "serving")
    dev = bench.device

    with tempfile.TemporaryDirectory(prefix="onnxrec-gpu-") as tmp_s:
        tmp = Path(tmp_s)
        served_cat: Catalog | None = None
        for size in sizes:
            name = f"{size:,}"
            cat: Catalog | None = None
            with bench.part(f"build {name}", optional=False) as go:
                if go:
                    cat = bench.build(size, tmp, exporter_ok, exporter_why)
            if cat is None:
                continue
            graphs: dict[str, bytes | Path] = {}
            sessions: dict[str, Any] = {}
            cpu: dict[str, Any] = {}
            with bench.part(f"graphs {name}", optional=False) as go:
                if go:
                    graphs = bench.graphs(cat, tmp)
                    sessions = bench.sessions(graphs, dev)
                    if bench.cuda:
                        cpu = bench.sessions({g: graphs[g] for g in ("plain", "recommend") if g in graphs}, "cpu")
                    else:
                        cpu = sessions
            with bench.part(f"in-process {dev} {name}", optional=False) as go:
                if go:
                    bench.inprocess(cat, sessions, dev, bench.gpu_batches if bench.cuda else bench.cpu_batches)
            if bench.cuda and "cpu-ep" not in skip:
                with bench.part(f"in-process cpu {name}") as go:
                    if go:
                        bench.inprocess(cat, cpu, "cpu", bench.cpu_batches)
            with bench.part(f"parity {name}", optional=False) as go:
                if go:
                    bench.parity(cat, sessions, cpu)
            if args.profile_batch:
                with bench.part(f"profile {name}") as go:
                    if go:
                        bench.profile(cat, graphs, dev, args.profile_batch, tmp)
            sessions.clear()
            cpu.clear()
            for g in graphs.values():
                if isinstance(g, Path):
                    g.unlink(missing_ok=True)
            if cat.version is not None and served_cat is None:
                served_cat = cat

        if "served" in skip:
            bench.skipped["served"] = "--skip served"
        elif not server_ok:
            bench.skipped["served"] = f"server dependencies missing: {server_why}"
        elif served_cat is None or served_cat.version is None:
            bench.skipped["served"] = "no exported catalog to serve"
        else:
            v = served_cat.version
            devices = ["cuda", "cpu"] if bench.cuda else ["cpu"]
            runs = [(d, d, v, 1) for d in devices]
            if args.serve_workers > 1:
                runs += [(f"{d}-w{args.serve_workers}", d, v, args.serve_workers) for d in devices]
            duration, warmup = (2.0, 1.0) if args.quick else (4.0, 1.0)
            with bench.part(f"served {served_cat.size:,}") as go:
                if go:
                    report["served"] = {"catalog": served_cat.size, "duration_s": duration, "warmup_s": warmup}
                    report["served"].update(served(runs, [1, 16, 64], duration, warmup, tmp))

        if "sasrec" in skip or not exporter_ok:
            bench.skipped["sasrec"] = "--skip sasrec" if "sasrec" in skip else f"exporter unavailable: {exporter_why}"
        else:
            with bench.part("sasrec") as go:
                if go:
                    bench.sasrec(tmp)

    bench.save()
    print(format_tables(report))
    print(f"wrote {out_path} ({report['timings_s']['total']:.0f} s)", flush=True)
    failed = [
        f"{s} {k}" for s, par in report["parity"].items() for k, v in par.items() if "fp16" not in k and not v["pass"]
    ]
    if report.get("sasrec") and not all(v["pass"] for v in report["sasrec"].values() if isinstance(v, dict)):
        failed.append("sasrec")
    if failed or report["errors"]:
        raise SystemExit(f"parity below {MIN_AGREEMENT:.1%}: {failed}; errors in: {list(report['errors'])}")


def format_tables(report: dict[str, Any]) -> str:
    """Markdown: users/s per batch for each (catalog, graph, engine, device, precision, IO binding); parity;
    served points; skipped parts."""
    groups: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}
    for r in report["inprocess"]:
        key = (r["catalog"], r["graph"], r["engine"], r["device"], r["precision"], r["io_binding"])
        groups.setdefault(key, {})[r["batch"]] = r
    batches = sorted({r["batch"] for r in report["inprocess"]}) or [1]
    lines = [
        "| items | graph | engine | device | precision | IO binding | "
        + " | ".join(f"b{b} users/s" for b in batches)
        + " | b1 p50 ms |",
        "|---:|---|---|---|---|---|" + "---:|" * (len(batches) + 1),
    ]
    for key, pts in groups.items():
        cells = [f"{pts[b]['users_per_s']:,.0f}" if b in pts else "-" for b in batches]
        p50 = f"{pts[1]['p50_ms']:.3f}" if 1 in pts else "-"
        lines.append(
            f"| {key[0]:,} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {'on' if key[5] else 'off'} | "
            + " | ".join(cells)
            + f" | {p50} |"
        )
    lines += [
        "",
        "| items | parity check | users | agreement | same set | exact order | mean overlap | pass |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for size, par in report["parity"].items():
        for k, v in par.items():
            lines.append(
                f"| {int(size):,} | {k} | {v['users']} | {v['agreement']:.4%} | {v['same_set']:.4%} "
                f"| {v['exact_order']:.4%} | {v['mean_overlap']:.4f} | {v['pass']} |"
            )
    srv = report.get("served")
    if srv:
        lines += [
            "",
            f"| served ({srv['catalog']:,} items) | concurrency | QPS | p50 ms | p99 ms | mean batch | errors |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for dev in [k for k, v in srv.items() if isinstance(v, dict)]:
            if "error" in srv[dev]:
                lines.append(f"| {dev} | failed: {srv[dev]['error'][-200:]!r} |" + " |" * 5)
            for p in srv[dev].get("points", []):
                mb = p.get("server_mean_batch")
                lines.append(
                    f"| {dev} | {int(p['offered'])} | {p['qps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | "
                    f"{'-' if mb is None else f'{mb:.1f}'} | {p['errors'] or ''} |"
                )
    if report.get("errors"):
        lines += ["", "| part | error |", "|---|---|"]
        lines += [f"| {k} | {v.strip().splitlines()[-1][:300]} |" for k, v in report["errors"].items()]
    if report["skipped"]:
        lines += ["", "| skipped | why |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in report["skipped"].items()]
    lines += ["", "| part | seconds |", "|---|---:|"] + [
        f"| {k} | {v} |" for k, v in report.get("timings_s", {}).items()
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
