"""The server configuration: TOML, environment and CLI layered; unknown keys and wrong types rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxrec.errors import ConfigError
from onnxrec.server.config import load_server_config


def test_layers_and_types(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text(
        '[serve]\nrepository = "repo"\nmax_batch_size = 32\nversions = [1, 3]\nversion_policy = "specific"\n'
    )
    cfg = load_server_config(toml, {"port": "0"}, environ={"ONNXREC_SERVE_MAX_BATCH_SIZE": "16"})
    assert (cfg.repository, cfg.max_batch_size, cfg.port, cfg.versions) == ("repo", 16, 0, (1, 3))
    assert load_server_config(None, {"metrics_port": "none"}, environ={}).metrics_port is None


@pytest.mark.parametrize(
    ("toml", "env", "overrides", "needle"),
    [
        ("[serve]\nmax_batch = 3\n", {}, {}, "unknown option(s) max_batch"),
        ("", {"ONNXREC_SERVE_PORT": "http"}, {}, "'port'"),
        ("", {"ONNXREC_SERVE_BOGUS": "1"}, {}, "ONNXREC_SERVE_BOGUS"),
        ("", {}, {"device": "tpu"}, "device must be auto, cuda or cpu"),
        ("", {}, {"max_batch_size": "0"}, "max_batch_size"),
        ("", {}, {"inline_max_us": "-5"}, "inline_max_us must be 0 or more"),
        ("", {}, {"version_policy": "specific"}, "needs versions"),
        ("", {}, {"tls_cert": "c.pem"}, "go together"),
        ("", {}, {"warmup": "maybe"}, "'warmup'"),
        ("", {}, {"max_unread_bytes": "-1"}, "max_unread_bytes must be 0 or more"),
        ("", {}, {"max_unread_bytes_per_connection": "-1"}, "max_unread_bytes_per_connection must be 0 or more"),
        ("", {}, {"max_connection_age_s": "-0.5"}, "max_connection_age_s must be 0 or more"),
        ("", {"ONNXREC_SERVE_TLS_CLIENT_EKU": "sometimes"}, {}, "'tls_client_eku'"),
    ],
)
def test_rejections(tmp_path: Path, toml: str, env: dict[str, str], overrides: dict[str, str], needle: str) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_server_config(path, overrides, environ=env)
    assert needle in str(err.value)
