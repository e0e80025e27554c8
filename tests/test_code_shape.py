"""The product code stays readable in pieces: no module over 400 lines, no function over 80 (generated
stubs excepted). A long function is split by what it does; this only says when to look."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("onnxrec", "trainer", "exporter", "server", "clients")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    files = [p for root in PRODUCT for p in (REPO / root).rglob("*.py") if "_pb2" not in p.name]
    assert len(files) > 50, "the product folders were not found"
    return sorted(files)


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in _modules() if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_80_lines() -> None:
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
