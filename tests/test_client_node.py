"""The Node.js example client (clients/node) against a real server: same answers as the Python stub.

The toolchain comes from `make clients` (scripts/ci/install_*.sh: Debian's packages and the npm registry),
which `make test` runs first; these tests (re)build the example when its sources are newer, and FAIL, never
skip, when the toolchain is missing: a skip would hide a broken client.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.example_clients import ExampleClientContract, require_toolchain

pytestmark = pytest.mark.clients  # needs `make clients` (toolchains from Debian and npm); not in the quick lane

REPO = Path(__file__).resolve().parents[1]
CLIENT_DIR = REPO / "clients" / "node"
SCRIPT = CLIENT_DIR / "recommend.js"
MODULES = [CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js", CLIENT_DIR / "node_modules" / "@grpc" / "proto-loader"]
TOOLS = ["node", "npm"]


@pytest.fixture(scope="module")
def client_command() -> list[str]:
    """The command line that runs clients/node/recommend.js, with node and the npm packages installed."""
    require_toolchain(
        "Node.js", [t for t in TOOLS if shutil.which(t) is None] + [str(m) for m in MODULES if not m.is_dir()]
    )
    node = shutil.which("node")
    assert node is not None
    return [node, str(SCRIPT)]


def test_node_client_formats_scores_as_printf(client_command: list[str]) -> None:
    """Exact ties round to even as printf's %.6f and Python's format do (toFixed alone rounds them up)."""
    scores = [0.0078125, -0.0078125, 0.0234375, 3.1415927410125732, -1e-9, 0.5, 123.4567885, 1e-7]
    code = (
        "const { formatScore } = require(process.argv[1]);"
        "for (const x of JSON.parse(process.argv[2])) console.log(formatScore(x));"
    )
    p = subprocess.run(
        [client_command[0], "-e", code, str(SCRIPT), json.dumps(scores)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"{x:.6f}" for x in scores]


class TestNodeClient(ExampleClientContract):
    """The example-client contract for clients/node."""
