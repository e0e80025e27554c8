"""CLI commands of the export stage: ``export`` and ``inspect``; they parse options and call the stage."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from onnxrec.errors import ExportError
from onnxrec.exporter.spec import DEFAULT_ATOL, DEFAULT_RTOL


class NonNegativeNumber(click.ParamType):
    """A finite number >= 0; anything else is the one-line ``error: option 'rtol': ...`` (exit 2)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number >= 0):
            raise ExportError(f"option '{param.name if param else '?'}': {str(value)!r} is not a number >= 0")
        return number


@click.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--repository", required=True, type=click.Path(path_type=Path), help="Model repository directory.")
@click.option("--name", required=True, help="Model name in the repository.")
@click.option("--version", type=int, default=None, help="Version number (default: the next one).")
@click.option("--k-max", type=int, default=100, show_default=True, help="Top-k computed in the graphs.")
@click.option("--max-batch", type=int, default=256, show_default=True, help="Largest batch the parity check uses.")
@click.option(
    "--rtol",
    type=NonNegativeNumber(),
    default=DEFAULT_RTOL,
    show_default=True,
    help="Parity: onnxruntime's scores may differ from PyTorch's by atol + rtol x their largest |score|.",
)
@click.option(
    "--atol",
    type=NonNegativeNumber(),
    default=DEFAULT_ATOL,
    show_default=True,
    help="Parity: the absolute part of that bound (what rows of scores near 0 may differ by).",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(["fp16", "int8"]),
    help="Also write an fp16 (GPU) or int8 (CPU) variant; repeatable.",
)
def export_command(
    run: Path,
    repository: Path,
    name: str,
    version: int | None,
    k_max: int,
    max_batch: int,
    rtol: float,
    atol: float,
    precisions: tuple[str, ...],
) -> None:
    """Export a training run to ONNX into REPOSITORY/NAME/VERSION, with parity checked."""
    from onnxrec.exporter.export import ExportOptions, export
    from onnxrec.exporter.inspect import format_manifest, inspect_version

    opts = ExportOptions(k_max=k_max, max_batch=max_batch, atol=atol, rtol=rtol, precisions=precisions)
    out = export(run, repository, name, version, opts)
    click.echo(format_manifest(inspect_version(out)))
    click.echo(f"\nwrote {out}")


@click.command("inspect")
@click.argument("version_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect_command(version_dir: Path, as_json: bool) -> None:
    """Show a model version's signature, metrics and parity report (files verified against hashes)."""
    from onnxrec.exporter.inspect import format_manifest, inspect_version

    manifest = inspect_version(version_dir)
    click.echo(json.dumps(manifest, indent=2) if as_json else format_manifest(manifest))
