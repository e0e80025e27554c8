"""The example config files in examples/ load as they are (so they never drift from the options)."""

from __future__ import annotations

from pathlib import Path

from onnxrec.server.config import ServerConfig, load_server_config
from onnxrec.trainer.config import load_train_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_train_toml_loads_and_sets_what_it_says() -> None:
    config = load_train_config(EXAMPLES / "train.toml", environ={})
    assert (config.model, config.out, config.eval_ks) == ("twotower", "runs/ml100k", (5, 10, 20))


def test_serve_toml_loads_and_sets_what_it_says() -> None:
    config = load_server_config(EXAMPLES / "serve.toml", environ={})
    assert isinstance(config, ServerConfig)
    assert (config.repository, config.metrics_port, config.grace_s) == ("repo", 9090, 10.0)
