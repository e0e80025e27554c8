"""``onnxrec demo``: the whole product on the embedded default data, for a newcomer.

data -> train -> evaluate -> export -> start ``onnxrec serve`` -> query it with ``onnxrec recommend``
-> stop the server; then print where everything went and the commands to do it again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from onnxrec.errors import OnnxrecError


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


def serve_and_query(repository: Path, user: str, timeout: float = 120.0) -> tuple[str, str]:
    """Start ``onnxrec serve`` on a free port, run ``onnxrec recommend`` against it, stop the server.

    Returns the server address and the client's output.
    """
    from onnxrec.server.process import launch_server

    with tempfile.TemporaryDirectory() as tmp:
        server, address = launch_server(repository, Path(tmp) / "server.log", timeout=timeout)
        deadline = time.monotonic() + timeout
        try:
            health = [sys.executable, "-m", "onnxrec", "health", "--server", address]
            while subprocess.run(health, capture_output=True, check=False, timeout=30).returncode != 0:
                if time.monotonic() > deadline:
                    raise OnnxrecError(f"the server at {address} did not become SERVING in time")
                time.sleep(0.2)
            client = subprocess.run(
                [sys.executable, "-m", "onnxrec", "recommend", "--server", address, "--user", user, "-k", "10"],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            if client.returncode != 0:
                raise OnnxrecError(f"the client failed: {client.stderr.strip()}")
            return address, client.stdout
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Directory for the demo's data, run, repository and logs.",
)
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
    repository = out / "repository"
    user = _first_user(Path(report["exported"]))
    click.echo(f"\nstarting the server on {repository} and asking it for user {user}:")
    address, answer = serve_and_query(repository, user)
    click.echo(f"$ onnxrec recommend --server {address} --user {user} -k 10")
    click.echo(answer.rstrip())
    click.echo("(server stopped)\n")
    click.echo(f"model run:      {out / 'run'} (checkpoint.pt, config.toml, metrics.jsonl, eval.json)")
    click.echo(f"evaluation:     {out / 'evaluation.json'}  (again: onnxrec evaluate {out / 'run'})")
    click.echo(f"exported model: {report['exported']}  (inspect: onnxrec inspect {report['exported']})")
    click.echo(f"serve it:       onnxrec serve --repository {repository} --port 50051")
    click.echo(f"ask it:         onnxrec recommend --server 127.0.0.1:50051 --user {user}")


def _first_user(version_dir: Path) -> str:
    import pyarrow.parquet as pq

    return str(pq.read_table(version_dir / "users.parquet", columns=["user_id"])["user_id"][0])
