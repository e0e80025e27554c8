"""CLI command of the serving stage: ``serve``; it parses options and calls :func:`serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxrec.cli_options import config_options
from onnxrec.server.config import ServerConfig


@click.command("serve")
@config_options(ServerConfig, table="serve")
def serve_command(config_file: Path | None, **options: Any) -> None:
    """Serve the models of --repository over gRPC (health, reflection, metrics; TLS and tokens optional)."""
    from onnxrec.server.app import serve
    from onnxrec.server.config import load_server_config

    overrides = {k: v for k, v in options.items() if v is not None}
    serve(load_server_config(config_file, overrides))
