"""``onnxrec demo``: the whole path on the embedded default data, for a newcomer.

Today the path is data -> train -> evaluate -> export; serving and clients join it as those stages land.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def run_demo(out: Path, data: str = "synthetic", epochs: int | None = None, overwrite: bool = True) -> dict[str, Any]:
    """Prepare ``data``, train the default model into ``out/run``, evaluate it with the baselines and
    export it to the model repository ``out/repository`` as model ``demo``."""
    from onnxrec.exporter.export import export
    from onnxrec.trainer.config import load_train_config
    from onnxrec.trainer.report import evaluate_run
    from onnxrec.trainer.train import train

    overrides: dict[str, Any] = {"data": data, "out": str(out / "run"), "overwrite": overwrite}
    if epochs is not None:
        overrides["epochs"] = epochs
    run = train(load_train_config(None, overrides))
    report = evaluate_run(run)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    report["exported"] = str(export(run, out / "repository", "demo"))
    return report


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option(
    "--data",
    default="synthetic",
    show_default=True,
    help="'synthetic', a MovieLens name fetched with 'onnxrec data fetch', or a path.",
)
@click.option("--epochs", type=int, default=None, help="Override the number of epochs.")
def demo_command(out: Path, data: str, epochs: int | None) -> None:
    """Run the whole product on the default data and print where everything went."""
    from onnxrec.trainer.report import format_table

    report = run_demo(out, data, epochs)
    click.echo("")
    click.echo(format_table(report))
    click.echo("")
    click.echo(f"model run:      {out / 'run'} (checkpoint.pt, config.toml, metrics.jsonl, eval.json)")
    click.echo(f"evaluation:     {out / 'evaluation.json'}")
    click.echo(f"evaluate again: onnxrec evaluate {out / 'run'}")
    click.echo(f"exported model: {report['exported']} (inspect it: onnxrec inspect {report['exported']})")
