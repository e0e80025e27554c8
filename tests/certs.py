"""A throw-away CA, server and client certificates for TLS tests (openssl CLI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(root: Path) -> dict[str, Path]:
    """ca.pem, server.pem/server.key (SAN 127.0.0.1, localhost), client.pem/client.key, and an
    unrelated other-ca.pem with its other-client.pem/.key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    root.mkdir(parents=True, exist_ok=True)
    (root / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for ca in ("ca", "other-ca"):
        _run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={ca}",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            cwd=root,
        )
    for name, ca, ext in (("server", "ca", True), ("client", "ca", False), ("other-client", "other-ca", False)):
        _run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=root,
        )
        args = [
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            f"{ca}.pem",
            "-CAkey",
            f"{ca}.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
        ]
        if ext:
            args += ["-extfile", "san.cnf"]
        _run(*args, cwd=root)
    return {p.stem if p.suffix == ".pem" else p.name: p for p in root.iterdir()}
