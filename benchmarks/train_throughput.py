"""Training throughput of every onnxrec model on MovieLens-100K, side by side in one run.

Each model is trained with the default command settings (only ``model``, ``epochs`` and ``threads``
changed) through :func:`onnxrec.trainer.train.train`; the figures are the fit loop's own per-epoch
``examples_per_second`` from the run's ``metrics.jsonl``: training interactions (positives) processed
per second of training steps, per-epoch validation excluded. What one example costs differs per
model: MF and TwoTower use a full softmax over all items, MLP and NeuMF a BCE loss over the positive
and ``num_negatives`` (4) sampled negatives.

Run from the repository root::

    python benchmarks/train_throughput.py                 # 1 thread and torch's default, ~1-3 minutes
    python benchmarks/train_throughput.py --threads 1     # 1 thread only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_common
import torch

from onnxrec.trainer.checkpoint import CHECKPOINT_FILE, load_checkpoint
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.models.registry import MODEL_TYPES
from onnxrec.trainer.train import run_summary, train

REPO = Path(__file__).resolve().parents[1]
DISPLAY = {"mf": "MF", "mlp": "MLP", "neumf": "NeuMF", "twotower": "TwoTower"}


default_data = bench_common.default_data


def machine_info() -> dict[str, Any]:
    """The machine, torch's default thread count and load, for the record."""
    return bench_common.machine_info(torch_default_threads=torch.get_num_threads())


def measure(model: str, data: Path, out: Path, epochs: int, threads: int, default_threads: int) -> dict[str, Any]:
    """Train ``model`` for ``epochs`` epochs and return its per-epoch and overall throughput."""
    # train() calls torch.set_num_threads only when threads > 0, so put torch's default back first
    torch.set_num_threads(threads if threads > 0 else default_threads)
    cfg = TrainConfig(
        data=str(data), out=str(out), progress=False, model=model, epochs=epochs, threads=threads, patience=epochs
    )
    t0 = time.perf_counter()
    run = train(cfg)
    wall = time.perf_counter() - t0
    summary = run_summary(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ckpt = load_checkpoint(run / CHECKPOINT_FILE)
    params = sum(v.numel() for k, v in ckpt["state_dict"].items() if not k.startswith("item_feature_"))
    return {
        "model": model,
        "loss": summary["loss"],
        "threads": threads,
        "torch_threads_used": torch.get_num_threads(),
        "epochs": [
            {"epoch": r["epoch"], "examples_per_second": r["examples_per_second"], "seconds": r["seconds"]}
            for r in records
        ],
        "examples_per_second": summary["examples_per_second"],  # all epochs' examples / their training time
        "train_seconds": round(sum(r["seconds"] for r in records), 3),
        "wall_seconds": round(wall, 2),
        "parameters": int(params),
        "examples_per_epoch": int(ckpt["dataset"]["counts"].get("train", 0)),
    }


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per (threads, model); the last column is throughput relative to TwoTower at the same threads."""
    epochs = max(len(r["epochs"]) for r in results)
    head = ["model", "loss", "torch threads", *[f"epoch {i + 1} ex/s" for i in range(epochs)], "overall ex/s"]
    head += ["train s", "x TwoTower"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|" + "---:|" * (epochs + 3)]
    for r in results:
        ref = next((x for x in results if x["model"] == "twotower" and x["threads"] == r["threads"]), None)
        ratio = f"{r['examples_per_second'] / ref['examples_per_second']:.1f}" if ref else "-"
        cells = [DISPLAY.get(r["model"], r["model"]), r["loss"], str(r["torch_threads_used"])]
        cells += [f"{e['examples_per_second']:,.0f}" for e in r["epochs"]]
        cells += [f"{r['examples_per_second']:,.0f}", f"{r['train_seconds']:.1f}", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; writes the JSON report and prints the markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--data", type=Path, default=default_data(), help="MovieLens-100K folder (default: %(default)s)")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "train_throughput.json",
        help="JSON report path (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=2, help="epochs per model (default: %(default)s)")
    p.add_argument(
        "--threads", default="1,0", help="comma-separated torch thread counts to run, 0 = torch's default (%(default)s)"
    )
    p.add_argument("--models", default=",".join(MODEL_TYPES), help="comma-separated models (default: %(default)s)")
    args = p.parse_args(argv)
    if not args.data.exists():
        p.error(f"--data {args.data} does not exist")
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    models = [m for m in args.models.split(",") if m.strip()]

    started = time.perf_counter()
    info = machine_info()
    default_threads = torch.get_num_threads()
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxrec-throughput-") as tmpdir:
        for threads in thread_counts:
            for model in models:
                r = measure(
                    model, args.data, Path(tmpdir) / f"{model}-{threads}", args.epochs, threads, default_threads
                )
                print(
                    f"{model} threads={r['torch_threads_used']}: {r['examples_per_second']:,.0f} ex/s "
                    f"(epochs {[e['examples_per_second'] for e in r['epochs']]})",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(r)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    table = markdown_table(results)
    report = {
        "benchmark": "train_throughput",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python " + " ".join([str(Path(sys.argv[0])), *sys.argv[1:]]),
        "data": str(args.data),
        "epochs": args.epochs,
        "machine": info,
        "definition": (
            "examples/s = training interactions (positives) per second of the fit loop's training steps, "
            "from metrics.jsonl; per-epoch validation excluded"
        ),
        "results": results,
        "total_seconds": round(time.perf_counter() - started, 1),
        "table_markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(f"\ntotal {report['total_seconds']:.0f}s; report written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
