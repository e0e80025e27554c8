"""The ``onnxrec`` command line: one group whose subcommands load lazily.

Subcommands live beside the stage they drive (``onnxrec.trainer.cli``, ...) and are imported only
when used, so ``onnxrec --help`` and the client commands start without importing torch. Every
:class:`~onnxrec.errors.OnnxrecError` becomes one line on stderr and exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from onnxrec import __version__
from onnxrec.errors import OnnxrecError

#: subcommand -> "module:attribute"
COMMANDS = {
    "data": "onnxrec.trainer.cli:data",
    "train": "onnxrec.trainer.cli:train_command",
    "evaluate": "onnxrec.trainer.cli:evaluate_command",
    "export": "onnxrec.exporter.cli:export_command",
    "inspect": "onnxrec.exporter.cli:inspect_command",
    "forget": "onnxrec.exporter.cli:forget_command",
    "serve": "onnxrec.server.cli:serve_command",
    "recommend": "onnxrec.clients.cli:recommend_command",
    "score": "onnxrec.clients.cli:score_command",
    "similar": "onnxrec.clients.cli:similar_command",
    "models": "onnxrec.clients.cli:models_command",
    "health": "onnxrec.clients.cli:health_command",
    "track": "onnxrec.clients.cli:track_command",
    "bench": "onnxrec.clients.cli:bench_command",
    "demo": "onnxrec.demo:demo_command",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module), attr)
            return command if isinstance(command, click.Command) else None
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OnnxrecError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxrec")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """onnxrec: train recommenders in PyTorch, export them to ONNX, serve them over gRPC."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    # OpenMP threads that spin while waiting make torch ~10x slower whenever another process shares
    # the cores (measured: 75 s vs 8 s for one ML-100K epoch); torch is imported after this line.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
