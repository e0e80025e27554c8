"""Quality change of the fp16 variant on MovieLens-100K, next to fp32.

Trains MF, MLP, NeuMF and the two-tower model on ML-100K (default settings, 5 epochs), exports each with
``--precision fp16`` and reads the exporter's own measurement from the manifest: validation HR@10 and
NDCG@10 of the fp32 ``score`` graph and of its fp16 copy over the whole catalog, sampled (test item vs 99
negatives) and full-ranking views. The exporter runs both graphs on the CPU execution provider, so this is
fp16 storage and arithmetic as onnxruntime's CPU kernels do it; on a GPU, top-10 agreement between fp16 and
fp32 is measured by ``benchmarks/gpu.py`` on synthetic catalogs.

    python benchmarks/fp16_quality.py            # about 3 minutes on 2 cores
    python benchmarks/fp16_quality.py --quick    # 1 epoch each
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench_common import default_data, machine_info

from onnxrec.exporter.export import ExportOptions, export
from onnxrec.trainer.config import TrainConfig
from onnxrec.trainer.data.dataset import build_dataset, save_dataset
from onnxrec.trainer.data.preprocess import PreprocessSpec
from onnxrec.trainer.data.readers import read_movielens_100k
from onnxrec.trainer.data.split import SplitSpec
from onnxrec.trainer.train import train

REPO = Path(__file__).resolve().parents[1]
MODELS = ("mf", "mlp", "neumf", "twotower")


def main() -> None:
    """Train, export with fp16, collect the manifests' quality change, write JSON and a table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fp16_quality_ml100k.json")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "fp16_quality_ml100k",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python benchmarks/fp16_quality.py" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data = save_dataset(
            build_dataset(read_movielens_100k(args.data), PreprocessSpec(), SplitSpec(), "ml-100k"), tmp / "ml100k"
        )
        for model in MODELS:
            epochs = 1 if args.quick else 5
            run = train(TrainConfig(data=str(data), out=str(tmp / model), model=model, epochs=epochs, progress=False))
            version = export(run, tmp / "repo", model, options=ExportOptions(precisions=("fp16",)))
            manifest = json.loads((version / "manifest.json").read_text())
            report["models"][model] = {"epochs": epochs, "quality": manifest["variants"]["fp16"]["quality"]}
            print(model, json.dumps(report["models"][model]["quality"]), flush=True)
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    report["table_markdown"] = format_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(report["table_markdown"])


def format_table(report: dict[str, Any]) -> str:
    """Markdown: per model, fp32 and fp16 validation HR@10 / NDCG@10 and the change, both views."""
    lines = [
        "| model | view | HR@10 fp32 | HR@10 fp16 | change | NDCG@10 fp32 | NDCG@10 fp16 | change |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, r in report["models"].items():
        q = r["quality"]
        for view in ("sampled", "full"):
            lines.append(
                f"| {model} | {view} | {q[f'{view}/hr@10_fp32']:.4f} | {q[f'{view}/hr@10']:.4f} | "
                f"{q[f'{view}/hr@10_change']:+.4f} | {q[f'{view}/ndcg@10_fp32']:.4f} | {q[f'{view}/ndcg@10']:.4f} | "
                f"{q[f'{view}/ndcg@10_change']:+.4f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
