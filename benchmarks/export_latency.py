"""In-process onnxruntime latency of the exported ``recommend`` graph, fp32 beside int8.

For MovieLens-100K models (MF, MLP, NeuMF, two-tower) and a synthetic 100k-item catalog (MF,
64-dim, BPR, 20,000 users), this trains, exports with the int8 variant, and times ``recommend`` on the CPU execution
provider at batch 1, 64 and 256. fp32 and int8 are timed in alternating rounds in the same process,
so machine noise hits both alike. The int8 quality change is the one the exporter measured on the
validation split and wrote into the manifest.

The synthetic log has 20,000 users with about 100 interactions each (2.0M in all); 90,299 of the
requested 100,000 items get at least one and form the model's catalog. (100,000 users made the
full-ranking evaluations, which grow with users x items, take the run past 30 minutes on 2 cores.)

    python benchmarks/export_latency.py                # full run (about 20 minutes on 2 cores)
    python benchmarks/export_latency.py --quick        # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import onnxruntime as ort

from onnxrec.exporter.export import ExportOptions, export
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import build_dataset, save_dataset
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.readers import read_movielens_100k
from onnxrec.trainer.data.split import SplitSpec
from onnxrec.trainer.data.synth import generate_synthetic
from onnxrec.trainer.train import train

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 64, 256)


def _inputs(version: Path, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    seen = np.load(version / "seen.npz", allow_pickle=False)
    n_users = len(seen["indptr"]) - 1
    users = rng.integers(0, n_users, size=batch)
    rows = [seen["indices"][seen["indptr"][u] : seen["indptr"][u + 1]] for u in users]
    width = 1 + max([0, *(len(r) for r in rows)])  # at least one -1 in every row (model format 3)
    exclude = np.full((batch, width), -1, dtype=np.int64)
    for j, r in enumerate(rows):
        exclude[j, : len(r)] = r
    return {"user_idx": users.astype(np.int64), "exclude": exclude, "k": np.array([10], dtype=np.int64)}


def time_variants(version: Path, rounds: int, per_round: float) -> dict[str, dict[str, float]]:
    """Median ms per call and users/s for fp32 and int8 ``recommend``, alternating rounds."""
    sessions = {
        p: ort.InferenceSession(str(version / f), providers=["CPUExecutionProvider"])
        for p, f in (("fp32", "recommend.onnx"), ("int8", "recommend.int8.onnx"))
    }
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for batch in BATCHES:
        feeds = [_inputs(version, batch, rng) for _ in range(8)]
        samples: dict[str, list[float]] = {p: [] for p in sessions}
        for s in sessions.values():  # warm-up
            for f in feeds[:3]:
                s.run(None, f)
        for _ in range(rounds):
            for name, s in sessions.items():
                end = time.perf_counter() + per_round
                j = 0
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    s.run(None, feeds[j % len(feeds)])
                    samples[name].append(time.perf_counter() - t0)
                    j += 1
        for name, xs in samples.items():
            ms = float(np.median(xs) * 1000)
            out[f"{name}/b{batch}"] = {
                "ms": round(ms, 3),
                "p99_ms": round(float(np.percentile(xs, 99) * 1000), 3),
                "users_per_s": round(batch / (ms / 1000), 1),
            }
        ratio = out[f"int8/b{batch}"]["users_per_s"] / out[f"fp32/b{batch}"]["users_per_s"]
        out[f"int8_vs_fp32/b{batch}"] = {"speedup": round(ratio, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("ONNXREC_SHARED_DATA", REPO.parent / "shared" / "data")) / "ml-100k",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "export_latency.json")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds, per_round = (2, 0.3) if args.quick else (5, 1.0)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "onnxruntime": ort.__version__},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ml = save_dataset(
            build_dataset(read_movielens_100k(args.data), PreprocessSpec(), SplitSpec(), "ml-100k"), tmp / "ml100k"
        )
        jobs: list[tuple[str, Path, dict[str, Any]]] = [
            (f"ml100k-{m}", ml, {"model": m, "epochs": 2 if args.quick else 5})
            for m in ("mf", "mlp", "neumf", "twotower")
        ]
        users, items, per_user = (2000, 20_000, 20) if args.quick else (20_000, 100_000, 100)
        big = generate_synthetic(num_users=users, num_items=items, interactions_per_user=per_user, seed=0)
        big_dir = save_dataset(build_dataset(big, PreprocessSpec(), SplitSpec(), "synthetic-100k"), tmp / "big")
        jobs.append(
            (
                f"synthetic-{items // 1000}k-mf",
                big_dir,
                {"model": "mf", "loss": "bpr", "epochs": 1, "dim": 64, "batch_size": 4096},
            )
        )
        for name, data, kw in jobs:
            t0 = time.perf_counter()
            run = train(TrainConfig(data=str(data), out=str(tmp / "runs" / name), progress=False, **kw))
            version = export(run, tmp / "repo", name, options=ExportOptions(precisions=("int8",)))
            manifest = json.loads((version / "manifest.json").read_text())
            timing = time_variants(version, rounds, per_round)
            results["models"][name] = {
                "num_users": manifest["num_users"],
                "num_items": manifest["num_items"],
                "int8_quality_change": manifest["variants"]["int8"]["quality"],
                "latency": timing,
                "setup_seconds": round(time.perf_counter() - t0, 1),
            }
            print(name, json.dumps(timing), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))


def format_table(results: dict[str, Any]) -> str:
    """Markdown: one row per model, fp32 and int8 latency per batch size, and the quality change."""
    head = "| model | items | " + " | ".join(f"b{b} fp32 ms | b{b} int8 ms | b{b} int8/fp32 users/s" for b in BATCHES)
    head += " | int8 valid HR@10 change | int8 valid NDCG@10 change |"
    lines = [head, "|" + "---|" * (4 + 3 * len(BATCHES))]
    for name, r in results["models"].items():
        lat = r["latency"]
        cells = []
        for b in BATCHES:
            cells += [
                f"{lat[f'fp32/b{b}']['ms']:.3f}",
                f"{lat[f'int8/b{b}']['ms']:.3f}",
                f"{lat[f'int8_vs_fp32/b{b}']['speedup']:.2f}x",
            ]
        q = r["int8_quality_change"]
        lines.append(
            f"| {name} | {r['num_items']:,} | "
            + " | ".join(cells)
            + f" | {q['sampled/hr@10_change']:+.4f} | {q['sampled/ndcg@10_change']:+.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
